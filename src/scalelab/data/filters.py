"""Document quality filters: each one keeps a document (C4 may keep an edited copy) or names why it drops it.

A drop reason is `filter:rule`, e.g. `gopher_quality:word_count`; `all_rules()` lists every one. Filters run in
order and the first drop wins (`apply_filters`). The `prose` preset is the FineWeb pipeline (Gopher repetition,
Gopher quality, C4, FineWeb); `code` is the StarCoder / The Stack file filter.

Text units, chosen to be cheap: a regex or C-level string method per document and numpy for n-grams, never a
Python loop per character or per word (only per line):
- a *word* is a run of Unicode word characters (letters, digits, `_`) with inner apostrophes kept (`don't`,
  `O’Brien`); punctuation and symbols are not words. Counts, mean length, n-grams and stop words use words.
- a *token* is a whitespace-separated string; Gopher's alphabetic-word fraction is over tokens, since a
  token of symbols only (`***`, `|`) is exactly what that rule looks for.
- a *line* is a non-blank line for the Gopher and FineWeb line fractions, so blank lines between paragraphs
  do not dilute them; C4 visits every line; code statistics use every line, as The Stack did.

Fractions are compared as `count > limit * total`, so an empty denominator needs no special case.
Documents are assumed cleaned (`clean.py`): `\\n` newlines and some non-whitespace text.
"""

from __future__ import annotations

import dataclasses
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from itertools import islice
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from scalelab.config import StrictModel
from scalelab.data.documents import Doc

Preset = Literal["none", "prose", "code"]

_WORD = re.compile(r"\w+(?:['’]\w+)*")
# A token with a letter in it; anchored at the token start so a long letterless token is scanned once.
_ALPHA_TOKEN = re.compile(r"(?<!\S)\S*?[^\W\d_]")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# C4 and FineWeb both name . ! ? and closing quotes; typographic closing quotes are the same marks after NFC.
_TERMINAL = (".", "!", "?", '"', "'", "”", "’")


def _nonblank_lines(text: str) -> list[str]:
    return list(filter(str.strip, text.split("\n")))


def _repeats(items: Sequence[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters (first occurrences are not counted)."""
    counts = Counter(items)
    chars = sum(len(item) * (n - 1) for item, n in counts.items() if n > 1)
    return len(items) - len(counts), chars


class FilterConfig(StrictModel):
    """What every filter's settings share."""

    enabled: bool = Field(True, description="Run this filter; `false` turns it off even where a preset has it.")


class DocFilter(ABC):
    """One quality filter: `apply` returns the document to keep, or the reason `name:rule` to drop it."""

    name: ClassVar[str]
    rules: ClassVar[tuple[str, ...]]

    def __init__(self, config: FilterConfig):
        self.config = config

    @abstractmethod
    def apply(self, doc: Doc) -> Doc | str: ...

    def drop(self, rule: str) -> str:
        return f"{self.name}:{rule}"


# --- Gopher quality ------------------------------------------------------------------------------------------

class GopherQualityConfig(FilterConfig):
    """Gopher's quality rules.

    Defaults: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training Gopher",
    appendix A.1.1; the same values as datatrove's GopherQualityFilter, which FineWeb ran unchanged.
    """

    min_words: int = Field(50, ge=0, description="Drop documents with fewer words than this.")
    max_words: int = Field(100_000, ge=0, description="Drop documents with more words than this.")
    min_mean_word_length: float = Field(3, ge=0, description="Drop when the mean word length (characters) is "
                                                             "below this.")
    max_mean_word_length: float = Field(10, ge=0, description="Drop when the mean word length is above this.")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="Drop when `#` characters, or ellipses (`...`, "
                                                                "`…`), per word exceed this.")
    max_bullet_lines: float = Field(0.9, ge=0, le=1, description="Drop when more than this fraction of lines "
                                                                 "start with a bullet (•, ‣, ◦, ▪, ●, -, *).")
    max_ellipsis_lines: float = Field(0.3, ge=0, le=1, description="Drop when more than this fraction of lines "
                                                                   "end with an ellipsis.")
    min_alpha_words: float = Field(0.8, ge=0, le=1, description="Drop when fewer than this fraction of "
                                                                "whitespace-separated tokens contain a letter.")
    min_stop_words: int = Field(2, ge=0, description="Drop when the stop words occur fewer times than this "
                                                     "(case-insensitive).")
    stop_words: list[str] = Field(default_factory=lambda: ["the", "be", "to", "of", "and", "that", "have", "with"],
                                  min_length=1, description="The stop words counted by `min_stop_words`.")


class GopherQualityFilter(DocFilter):
    name = "gopher_quality"
    rules = ("word_count", "mean_word_length", "hash_ratio", "ellipsis_ratio", "bullet_lines", "ellipsis_lines",
             "alpha_words", "stop_words")
    _BULLETS = ("•", "‣", "◦", "▪", "●", "-", "*")
    _ELLIPSES = ("...", "…")

    config: GopherQualityConfig

    def __init__(self, config: GopherQualityConfig):
        super().__init__(config)
        alternatives = "|".join(re.escape(word) for word in config.stop_words)
        self._stop_words = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)

    def apply(self, doc: Doc) -> Doc | str:
        c, text = self.config, doc.text
        words = _WORD.findall(text)
        n_words = len(words)
        if not c.min_words <= n_words <= c.max_words:
            return self.drop("word_count")
        word_chars = sum(map(len, words))
        if not c.min_mean_word_length * n_words <= word_chars <= c.max_mean_word_length * n_words:
            return self.drop("mean_word_length")
        if text.count("#") > c.max_symbol_word_ratio * n_words:
            return self.drop("hash_ratio")
        if text.count("...") + text.count("…") > c.max_symbol_word_ratio * n_words:
            return self.drop("ellipsis_ratio")
        lines = _nonblank_lines(text)
        if sum(line.lstrip().startswith(self._BULLETS) for line in lines) > c.max_bullet_lines * len(lines):
            return self.drop("bullet_lines")
        if sum(line.rstrip().endswith(self._ELLIPSES) for line in lines) > c.max_ellipsis_lines * len(lines):
            return self.drop("ellipsis_lines")
        if len(_ALPHA_TOKEN.findall(text)) < c.min_alpha_words * len(text.split()):
            return self.drop("alpha_words")
        # Only whether the minimum is reached matters, so stop scanning once it is.
        if sum(1 for _ in islice(self._stop_words.finditer(text), c.min_stop_words)) < c.min_stop_words:
            return self.drop("stop_words")
        return doc


# --- Gopher repetition ---------------------------------------------------------------------------------------

TOP_NGRAM_SIZES = (2, 3, 4)
DUP_NGRAM_SIZES = (5, 6, 7, 8, 9, 10)
_KEY_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2**64: multiplying never merges keys


class GopherRepetitionConfig(FilterConfig):
    """Gopher's repetition rules.

    Defaults: Rae et al. 2021, appendix A.1.1, table A1; the same values as datatrove's GopherRepetitionFilter.
    Character fractions of lines and paragraphs are over all characters; of n-grams, over word characters.
    """

    max_dup_para_fraction: float = Field(0.30, ge=0, le=1, description="Drop when more than this fraction of "
                                                                       "paragraphs repeat an earlier one.")
    max_dup_para_chars: float = Field(0.20, ge=0, le=1, description="Drop when repeated paragraphs hold more "
                                                                    "than this fraction of the characters.")
    max_dup_line_fraction: float = Field(0.30, ge=0, le=1, description="Drop when more than this fraction of "
                                                                       "lines repeat an earlier one.")
    max_dup_line_chars: float = Field(0.20, ge=0, le=1, description="Drop when repeated lines hold more than "
                                                                    "this fraction of the characters.")
    max_top_ngram_chars: tuple[float, float, float] = Field(
        (0.20, 0.18, 0.16), description="For word 2-, 3- and 4-grams: drop when the most frequent n-gram's "
                                        "occurrences hold more than this fraction of the word characters.")
    max_dup_ngram_chars: tuple[float, float, float, float, float, float] = Field(
        (0.15, 0.14, 0.13, 0.12, 0.11, 0.10),
        description="For word 5- to 10-grams: drop when the words inside n-grams that repeat an earlier "
                    "n-gram hold more than this fraction of the word characters.")


class GopherRepetitionFilter(DocFilter):
    name = "gopher_repetition"
    rules = ("dup_para_fraction", "dup_para_chars", "dup_line_fraction", "dup_line_chars",
             *(f"top_{n}gram" for n in TOP_NGRAM_SIZES), *(f"dup_{n}gram" for n in DUP_NGRAM_SIZES))

    config: GopherRepetitionConfig

    def apply(self, doc: Doc) -> Doc | str:
        c, text = self.config, doc.text
        paragraphs = _PARAGRAPH_BREAK.split(text.strip())
        repeated, chars = _repeats(paragraphs)
        if repeated > c.max_dup_para_fraction * len(paragraphs):
            return self.drop("dup_para_fraction")
        if chars > c.max_dup_para_chars * len(text):
            return self.drop("dup_para_chars")
        lines = _nonblank_lines(text)
        repeated, chars = _repeats(lines)
        if repeated > c.max_dup_line_fraction * len(lines):
            return self.drop("dup_line_fraction")
        if chars > c.max_dup_line_chars * len(text):
            return self.drop("dup_line_chars")

        words = _WORD.findall(text)
        if len(words) < TOP_NGRAM_SIZES[0]:
            return doc
        lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        total = int(lengths.sum())
        top_limits = dict(zip(TOP_NGRAM_SIZES, c.max_top_ngram_chars, strict=True))
        dup_limits = dict(zip(DUP_NGRAM_SIZES, c.max_dup_ngram_chars, strict=True))
        # N-grams are compared by a 64-bit key: a polynomial in the words' str hashes, extended by one word per
        # n. Equal n-grams always share a key; two different n-grams sharing one is too rare to matter.
        word_keys = np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)
        keys = word_keys
        for n in range(TOP_NGRAM_SIZES[0], DUP_NGRAM_SIZES[-1] + 1):
            if len(words) < n:
                break
            keys = keys[:-1] * _KEY_MULTIPLIER + word_keys[n - 1:]
            if n in top_limits:
                if _top_ngram_chars(keys, lengths, n) > top_limits[n] * total:
                    return self.drop(f"top_{n}gram")
                continue
            chars = _duplicated_ngram_chars(keys, lengths, n)
            if chars > dup_limits[n] * total:
                return self.drop(f"dup_{n}gram")
            # Words inside repeated (n+1)-grams are inside repeated n-grams too, so this only falls as n grows:
            # once it is within every larger n's limit, none of them can fail.
            if chars <= min((limit for m, limit in dup_limits.items() if m > n), default=1.0) * total:
                break
        return doc


def _top_ngram_chars(keys: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Word characters in all occurrences of the most frequent n-gram; of equally frequent ones, the first."""
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    top = counts.max()
    # Keys follow the per-process str hash, so break ties by position, not by key, to stay reproducible.
    start = first[counts == top].min()
    return int(top) * int(lengths[start:start + n].sum())


def _duplicated_ngram_chars(keys: np.ndarray, lengths: np.ndarray, n: int) -> int:
    """Characters of the words inside n-grams that repeat an earlier n-gram, each word counted once."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    repeats = np.flatnonzero(first[inverse] != np.arange(len(keys)))
    # +1 where a repeat starts and -1 where it ends: a word lies inside one where the running sum is positive.
    bounds = len(lengths) + 1
    depth = np.cumsum(np.bincount(repeats, minlength=bounds) - np.bincount(repeats + n, minlength=bounds))
    return int(lengths[depth[:-1] > 0].sum())


# --- C4 ------------------------------------------------------------------------------------------------------

class C4Config(FilterConfig):
    """C4's page cleaning: drops lines, then drops the page if too little is left.

    Defaults: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
    Transformer", section 2.2, as implemented in TFDS `c4_utils.clean_page` (which adds the 1000-character
    word, citation and policy rules) and mirrored by datatrove's C4QualityFilter.
    """

    terminal_punctuation: bool = Field(True, description="Drop lines that do not end in . ! ? or a closing "
                                                         "quote, or that end in `...`. FineWeb turned this off.")
    min_words_per_line: int = Field(3, ge=0, description="Drop lines with fewer words (whitespace-separated).")
    max_word_length: int = Field(1000, ge=1, description="Drop lines holding a word longer than this.")
    min_sentences: int = Field(5, ge=1, description="Drop the page when the kept lines hold fewer sentences.")


class C4Filter(DocFilter):
    """Keeps the lines C4 keeps (stripped, joined by `\\n`); drops the page for lorem ipsum, a curly bracket
    (both looked for in lines that survived the line rules, as TFDS does) or too few sentences."""

    name = "c4"
    rules = ("lorem_ipsum", "curly_bracket", "too_few_sentences")
    _CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
    _POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
    # Sentence ends, for counting only: a run of . ! ? (closing quotes or brackets allowed) before a space or the
    # end. TFDS counts with NLTK's punkt; this overcounts abbreviations such as "Dr." and needs no model.
    _SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")

    config: C4Config

    def apply(self, doc: Doc) -> Doc | str:
        c = self.config
        kept: list[str] = []
        sentences = 0
        for line in doc.text.split("\n"):
            line = line.strip()
            # Only a line longer than the limit can hold a word longer than it; most lines skip the split.
            if len(line) > c.max_word_length and max(map(len, line.split())) > c.max_word_length:
                continue
            if "[" in line:
                line = self._CITATION.sub("", line)
            if c.terminal_punctuation and (not line.endswith(_TERMINAL) or line.endswith("...")):
                continue
            if len(line.split()) < c.min_words_per_line:
                continue
            lower = line.lower()
            if "lorem ipsum" in lower:
                return self.drop("lorem_ipsum")
            if "javascript" in lower:
                continue
            if "{" in line:
                return self.drop("curly_bracket")
            if any(phrase in lower for phrase in self._POLICY):
                continue
            # A kept line is at least one sentence even when it has no sentence-ending mark.
            sentences += max(1, len(self._SENTENCE_END.findall(line)))
            kept.append(line)
        if sentences < c.min_sentences:
            return self.drop("too_few_sentences")
        text = "\n".join(kept)
        if text == doc.text:
            return doc
        return dataclasses.replace(doc, text=text, meta=dict(doc.meta))


# --- FineWeb -------------------------------------------------------------------------------------------------

class FineWebConfig(FilterConfig):
    """FineWeb's own rules, run after Gopher and C4.

    Defaults: Penedo et al. 2024, "The FineWeb Datasets: Decanting the Web for the Finest Text Data at Scale"
    (its custom heuristic filters); the values of datatrove's FineWebQualityFilter.
    """

    min_punct_lines: float = Field(0.12, ge=0, le=1, description="Drop when at most this fraction of lines end "
                                                                 "in terminal punctuation.")
    short_line_length: int = Field(30, ge=0, description="A line of at most this many characters is short.")
    max_short_lines: float = Field(0.67, ge=0, le=1, description="Drop when at least this fraction of lines are "
                                                                 "short.")
    max_dup_line_chars: float = Field(0.01, ge=0, le=1, description="Drop when repeated lines hold at least this "
                                                                    "fraction of the characters (newlines "
                                                                    "excluded).")
    max_newline_ratio: float = Field(0.3, ge=0, description="Drop when newlines per word exceed this (lists).")


class FineWebFilter(DocFilter):
    name = "fineweb"
    rules = ("punct_lines", "short_lines", "dup_line_chars", "newline_ratio")

    config: FineWebConfig

    def apply(self, doc: Doc) -> Doc | str:
        c, text = self.config, doc.text
        lines = _nonblank_lines(text)
        if sum(line.rstrip().endswith(_TERMINAL) for line in lines) <= c.min_punct_lines * len(lines):
            return self.drop("punct_lines")
        if sum(len(line) <= c.short_line_length for line in lines) >= c.max_short_lines * len(lines):
            return self.drop("short_lines")
        newlines = text.count("\n")
        if _repeats(lines)[1] >= c.max_dup_line_chars * (len(text) - newlines):
            return self.drop("dup_line_chars")
        if newlines > c.max_newline_ratio * len(_WORD.findall(text)):
            return self.drop("newline_ratio")
        return doc


# --- Code ----------------------------------------------------------------------------------------------------

class CodeConfig(FilterConfig):
    """Source-file rules from the code-model datasets.

    Defaults: line length and alphanumeric fraction from Codex (Chen et al. 2021) as The Stack's basic filter
    (Kocetkov et al. 2022; bigcode-dataset `preprocessing/filtering.py`) and StarCoder (Li et al. 2023);
    alphabetic fraction from StarCoder's per-extension filter for data formats, which DeepSeek-Coder (Guo et al.
    2024) applies to every file; auto-generated markers in the first lines from CodeParrot's preprocessing;
    encoded data from StarCoder2 / The Stack v2 (Lozhkov et al. 2024, section 3).
    """

    max_line_length: int = Field(1000, ge=1, description="Drop files with a longer line (characters).")
    max_mean_line_length: float = Field(100, gt=0, description="Drop files whose mean line length is above this.")
    min_alphanum_fraction: float = Field(0.25, ge=0, le=1, description="Drop files with a smaller fraction of "
                                                                       "letters and digits.")
    min_alpha_fraction: float = Field(0.25, ge=0, le=1, description="Drop files with a smaller fraction of "
                                                                    "letters: number tables and other data.")
    autogenerated_lines: int = Field(5, ge=0, description="How many leading lines to search for the markers.")
    autogenerated_markers: list[str] = Field(
        default_factory=lambda: ["auto-generated", "autogenerated", "automatically generated", "generated by",
                                 "do not edit"],
        description="Drop files whose first lines contain one of these (case-insensitive).")
    max_encoded_run: int = Field(1024, ge=1, description="Drop files with a longer run of base64, hex bytes or "
                                                         "\\u escapes (characters).")
    max_encoded_fraction: float = Field(0.5, ge=0, le=1, description="Drop files where such runs hold more than "
                                                                     "this fraction of the characters.")


class CodeFilter(DocFilter):
    name = "code"
    rules = ("max_line_length", "mean_line_length", "alphanum_fraction", "alpha_fraction", "autogenerated",
             "encoded_run", "encoded_fraction")
    _NOT_ALPHANUMERIC = re.compile(r"[\W_]+")
    _DIGITS = re.compile(r"\d+")
    # StarCoder2's encoded-data expressions: base64, hex byte sequences, \uXXXX escapes. The hex lookahead and
    # the unrolled first escape match the same text as published; they let the engine skip most positions.
    _ENCODED = (re.compile(r"[a-zA-Z0-9+/\n=]{64,}"),
                re.compile(r"(?=[0-9a-fA-F\\])(?:\b(?:0x|\\x)?[0-9a-fA-F]{2}(?:,|\b\s*)){8,}"),
                re.compile(r"\\u[0-9a-fA-F]{4}(?:\\u[0-9a-fA-F]{4}){7,}"))

    config: CodeConfig

    def __init__(self, config: CodeConfig):
        super().__init__(config)
        self._markers = [marker.lower() for marker in config.autogenerated_markers]

    def apply(self, doc: Doc) -> Doc | str:
        c, text = self.config, doc.text
        lines = text.splitlines()
        if max(map(len, lines)) > c.max_line_length:
            return self.drop("max_line_length")
        if sum(map(len, lines)) > c.max_mean_line_length * len(lines):
            return self.drop("mean_line_length")
        alphanumeric = self._NOT_ALPHANUMERIC.sub("", text)
        if len(alphanumeric) < c.min_alphanum_fraction * len(text):
            return self.drop("alphanum_fraction")
        if len(self._DIGITS.sub("", alphanumeric)) < c.min_alpha_fraction * len(text):
            return self.drop("alpha_fraction")
        head = "\n".join(lines[:c.autogenerated_lines]).lower()
        if any(marker in head for marker in self._markers):
            return self.drop("autogenerated")
        encoded = 0
        for pattern in self._ENCODED:
            for match in pattern.finditer(text):
                if match.end() - match.start() > c.max_encoded_run:
                    return self.drop("encoded_run")
                encoded += match.end() - match.start()
        if encoded > c.max_encoded_fraction * len(text):
            return self.drop("encoded_fraction")
        return doc


# --- Presets and the whole chain -----------------------------------------------------------------------------

# The order filters run in when several are on: FineWeb's pipeline order, then code.
FILTER_CLASSES: tuple[type[DocFilter], ...] = (GopherRepetitionFilter, GopherQualityFilter, C4Filter,
                                               FineWebFilter, CodeFilter)


def _preset_configs(preset: Preset) -> dict[str, FilterConfig]:
    if preset == "prose":
        # FineWeb ran C4 without its terminal-punctuation line rule (datatrove examples/fineweb.py): of C4's
        # rules it removes by far the most text, and FineWeb's milder punctuated-lines fraction replaces it.
        return {"gopher_repetition": GopherRepetitionConfig(), "gopher_quality": GopherQualityConfig(),
                "c4": C4Config(terminal_punctuation=False), "fineweb": FineWebConfig()}
    if preset == "code":
        return {"code": CodeConfig()}
    return {}


class FiltersConfig(StrictModel):
    """Which quality filters run. A filter given here is used as given; one left out follows the preset."""

    preset: Preset = Field("none", description="`prose`: Gopher repetition, Gopher quality, C4 (without its "
                                               "terminal-punctuation rule, as FineWeb) and FineWeb; `code`: the "
                                               "code filter; `none`: nothing.")
    gopher_quality: GopherQualityConfig | None = Field(None, description="Overrides the preset's.")
    gopher_repetition: GopherRepetitionConfig | None = Field(None, description="Overrides the preset's.")
    c4: C4Config | None = Field(None, description="Overrides the preset's.")
    fineweb: FineWebConfig | None = Field(None, description="Overrides the preset's.")
    code: CodeConfig | None = Field(None, description="Overrides the preset's.")

    def build(self) -> list[DocFilter]:
        preset = _preset_configs(self.preset)
        filters = []
        for cls in FILTER_CLASSES:
            config = getattr(self, cls.name)
            if config is None:
                config = preset.get(cls.name)
            if config is not None and config.enabled:
                filters.append(cls(config))
        return filters


def apply_filters(doc: Doc, filters: list[DocFilter]) -> Doc | str:
    """Run the filters in order, each on the previous one's output; the first drop reason wins."""
    for doc_filter in filters:
        verdict = doc_filter.apply(doc)
        if isinstance(verdict, str):
            return verdict
        doc = verdict
    return doc


def all_rules() -> list[str]:
    """Every drop reason a filter can give, as `name:rule`."""
    return [f"{cls.name}:{rule}" for cls in FILTER_CLASSES for rule in cls.rules]
