from __future__ import annotations

import json.decoder
import random
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from scalelab.data.documents import Doc
from scalelab.data.filters import (
    C4Config,
    C4Filter,
    CodeConfig,
    CodeFilter,
    DocFilter,
    FiltersConfig,
    FineWebConfig,
    FineWebFilter,
    GopherQualityConfig,
    GopherQualityFilter,
    GopherRepetitionConfig,
    GopherRepetitionFilter,
    _duplicated_ngram_chars,
    _top_ngram_chars,
    all_rules,
    apply_filters,
)

PARAGRAPHS = [
    "The river town grew slowly during the nineteenth century, and most of its early houses were built from "
    "timber cut in the hills to the north. Merchants arrived with the railway in 1871, bringing brick, glass and "
    "new ideas about how a main street should look. By the turn of the century the town had two banks, a library "
    "and a small theatre that staged plays every summer. Floods in 1913 destroyed much of the lower district, so "
    "the council moved the market square to higher ground. Many families who had lived near the water for "
    "generations chose to rebuild anyway.",
    "Today the old warehouses along the quay have been turned into flats, cafés and workshops. Visitors often ask "
    "why the church tower leans slightly to the west; the answer is that its foundations rest on soft clay that "
    "shifted after the great flood. Local historians have collected letters, photographs and diaries from that "
    "period, and their archive is open to anyone who wants to learn more about the people who shaped the town.",
]
PROSE = "\n\n".join(PARAGRAPHS)
NO_STOP_WORDS = (
    "Bright lanterns glow above narrow streets while merchants count coins beside wooden stalls. Children chase "
    "pigeons across cobbled squares; musicians play violins under stone arches. Sailors mend torn nets near busy "
    "docks as gulls circle overhead. Farmers sell ripe apples, fresh bread, honey, cheese, eggs, herbs. Evening "
    "brings cool winds, distant bells, warm lights in every window, quiet laughter, soft music, slow footsteps."
)
MARKET_LINES = [f"Stall {i} sells fresh bread and honey to the people of the town every morning" for i in range(10)]
PYTHON_MODULE = Path(json.decoder.__file__).read_text(encoding="utf-8")
BASE64_LINES = ["".join(random.Random(i).choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                                                 k=76)) for i in range(30)]

GOPHER_QUALITY = GopherQualityFilter(GopherQualityConfig())
GOPHER_REPETITION = GopherRepetitionFilter(GopherRepetitionConfig())
C4 = C4Filter(C4Config())
FINEWEB = FineWebFilter(FineWebConfig())
CODE = CodeFilter(CodeConfig())


def doc(text: str) -> Doc:
    return Doc("d", text, "test", {"lang": "en"})


def repeated_phrase(n_words: int, phrase_words: int = 12) -> str:
    """`n_words` words of 6 characters, one phrase of them twice: repeats are phrase_words / n_words of the text."""
    phrase = [f"p{i:05d}" for i in range(phrase_words)]
    filler = [f"w{i:05d}" for i in range(n_words - 2 * phrase_words)]
    half = len(filler) // 2
    return " ".join(filler[:half] + phrase + filler[half:] + phrase)


def repeated_ngram(gram: list[str], times: int, filler_words: int) -> str:
    """`gram` `times` times, each occurrence followed by distinct filler words."""
    per_gap = filler_words // times
    parts = []
    for i in range(times):
        parts += gram + [f"filler{i:03d}x{j:02d}" for j in range(per_gap)]
    return " ".join(parts)


DROP_CASES = [
    # Gopher quality
    (GOPHER_QUALITY, "The town has two banks and a library.", "gopher_quality:word_count"),
    (GopherQualityFilter(GopherQualityConfig(max_words=20)), PROSE, "gopher_quality:word_count"),
    (GOPHER_QUALITY, " ".join(["the of a to be I an"] * 10), "gopher_quality:mean_word_length"),
    (GOPHER_QUALITY, " ".join(["the internationalization"] * 30), "gopher_quality:mean_word_length"),
    (GOPHER_QUALITY, PROSE + "\n" + " ".join(["#news"] * 30), "gopher_quality:hash_ratio"),
    (GOPHER_QUALITY, PROSE + "\n" + "Wait… " * 30, "gopher_quality:ellipsis_ratio"),
    (GOPHER_QUALITY, "\n".join(f"• {line}." for line in MARKET_LINES), "gopher_quality:bullet_lines"),
    (GOPHER_QUALITY, "\n".join(f"{line}..." for line in MARKET_LINES), "gopher_quality:ellipsis_lines"),
    (GOPHER_QUALITY, PROSE + "\n" + " | " * 60, "gopher_quality:alpha_words"),
    (GOPHER_QUALITY, NO_STOP_WORDS, "gopher_quality:stop_words"),
    # Gopher repetition
    (GOPHER_REPETITION, "\n\n".join([PARAGRAPHS[0], "Read more.", "Read more.", "Read more."]),
     "gopher_repetition:dup_para_fraction"),
    (GOPHER_REPETITION, "\n\n".join(["Home.", "About us.", PARAGRAPHS[1], PARAGRAPHS[1]]),
     "gopher_repetition:dup_para_chars"),
    (GOPHER_REPETITION, "\n".join(MARKET_LINES[:5] + ["Read more."] * 5), "gopher_repetition:dup_line_fraction"),
    (GOPHER_REPETITION, "\n".join(["Home.", "About us.", "Contact.", PARAGRAPHS[1], PARAGRAPHS[1], "News."]),
     "gopher_repetition:dup_line_chars"),
    (GOPHER_REPETITION, repeated_ngram(["alpha", "beta"], 30, 60), "gopher_repetition:top_2gram"),
    (GOPHER_REPETITION, repeated_ngram(["ab", "cd", "elephantine"], 10, 45), "gopher_repetition:top_3gram"),
    (GOPHER_REPETITION, repeated_ngram(["ab", "cd", "ef", "extraordinarily"], 10, 62),
     "gopher_repetition:top_4gram"),
    *((GOPHER_REPETITION, repeated_phrase(n_words), f"gopher_repetition:dup_{n}gram")
      for n, n_words in {5: 70, 6: 83, 7: 89, 8: 96, 9: 105, 10: 115}.items()),
    # C4
    (C4, PROSE + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4:lorem_ipsum"),
    (C4, PROSE + "\nThe function returns {x} for every input.", "c4:curly_bracket"),
    (C4, "The town has a library. It opens at nine.\nIt closes at five.", "c4:too_few_sentences"),
    # FineWeb
    (FINEWEB, "\n".join(MARKET_LINES), "fineweb:punct_lines"),
    (FINEWEB, "\n".join([PARAGRAPHS[0]] + [f"Item {i} is here." for i in range(5)]), "fineweb:short_lines"),
    (FINEWEB, PROSE + "\nThis line appears twice in the page.\nThis line appears twice in the page.",
     "fineweb:dup_line_chars"),
    (FINEWEB, "\n".join(f"Extraordinarily{i} documentation." for i in range(10)),
     "fineweb:newline_ratio"),
    # Code
    (CODE, ";".join(f"function f{i}(a,b){{return a+b*{i}}}" for i in range(200)), "code:max_line_length"),
    (CODE, "\n".join(f"total_{i} = " + " + ".join(["value"] * 18) for i in range(20)), "code:mean_line_length"),
    (CODE, "\n".join(["}}}}};;;;;;(((())))"] * 10 + ["x = 1"]), "code:alphanum_fraction"),
    (CODE, "\n".join(", ".join(str(100 + i * 7 + j) for j in range(10)) for i in range(30)), "code:alpha_fraction"),
    (CODE, "# This file is automatically generated.\nimport os\n\nprint(os.getcwd())\n", "code:autogenerated"),
    (CODE, 'import base64\n\nDATA = """\n' + "\n".join(BASE64_LINES) + '\n"""\n', "code:encoded_run"),
    (CODE, "\n".join(f'blob_{i} = "{line}"' for i, line in enumerate(BASE64_LINES)), "code:encoded_fraction"),
]


@pytest.mark.parametrize(("doc_filter", "text", "reason"), DROP_CASES, ids=[case[2] for case in DROP_CASES])
def test_each_rule_drops_with_its_reason(doc_filter: DocFilter, text: str, reason: str):
    assert doc_filter.apply(doc(text)) == reason


def test_drop_cases_cover_every_rule_and_nothing_else():
    assert {reason for _, _, reason in DROP_CASES} == set(all_rules())
    assert len(all_rules()) == len(set(all_rules()))


@pytest.mark.parametrize("doc_filter", [GOPHER_QUALITY, GOPHER_REPETITION, FINEWEB], ids=lambda f: f.name)
def test_prose_passes_each_prose_filter_unchanged(doc_filter: DocFilter):
    original = doc(PROSE)
    assert doc_filter.apply(original) is original


def test_gopher_quality_near_misses_pass():
    assert isinstance(GOPHER_QUALITY.apply(doc(NO_STOP_WORDS + " The end, THE end.")), Doc)  # any case counts
    mostly_bullets = "\n".join(f"• {line}." for line in MARKET_LINES[:8]) + "\n" + "\n".join(MARKET_LINES[8:])
    assert isinstance(GOPHER_QUALITY.apply(doc(mostly_bullets)), Doc)
    # Blank lines between bullets do not count as lines without one.
    spaced_bullets = "\n\n".join(f"• {line}." for line in MARKET_LINES)
    assert GOPHER_QUALITY.apply(doc(spaced_bullets)) == "gopher_quality:bullet_lines"


def test_gopher_repetition_phrase_repeated_below_five_words_passes():
    assert isinstance(GOPHER_REPETITION.apply(doc(repeated_phrase(60, phrase_words=4))), Doc)


def test_ngram_statistics_match_a_slow_reference():
    rng = random.Random(0)
    for _ in range(30):
        words = [rng.choice(["a", "bb", "ccc", "dddd", "eeeee"]) for _ in range(rng.randint(10, 80))]
        lengths = np.array([len(w) for w in words])
        for n in range(2, 11):
            grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
            ids = {gram: i for i, gram in enumerate(dict.fromkeys(grams))}
            keys = np.array([ids[gram] for gram in grams], dtype=np.uint64)
            counts = {gram: grams.count(gram) for gram in ids}
            top = max(counts.values())
            first_top = next(gram for gram in grams if counts[gram] == top)
            assert _top_ngram_chars(keys, lengths, n) == top * sum(map(len, first_top))
            covered = {i + k for i, gram in enumerate(grams) if gram in grams[:i] for k in range(n)}
            assert _duplicated_ngram_chars(keys, lengths, n) == sum(len(words[i]) for i in covered)


def test_c4_keeps_a_clean_page_as_is():
    page = doc(PARAGRAPHS[0])
    assert C4.apply(page) is page


def test_c4_removes_lines_and_returns_a_copy():
    page = doc("\n".join([
        PARAGRAPHS[0],
        "Home",
        "Please enable JavaScript to view this page.",
        "This site uses cookies to improve your experience.",
        "A line without terminal punctuation here",
        "And then the story went on...",
        "A fact that needs a source.[1]",
        "x" * 1001 + " is a very long word.",
        "function() {",
    ]))
    kept = C4.apply(page)
    assert isinstance(kept, Doc) and kept is not page
    assert kept.text == PARAGRAPHS[0] + "\nA fact that needs a source."
    assert (kept.id, kept.source, kept.meta) == (page.id, page.source, page.meta)
    assert kept.meta is not page.meta
    assert "function() {" in page.text  # the original is untouched

    without_punctuation_rule = C4Filter(C4Config(terminal_punctuation=False)).apply(page)
    assert isinstance(without_punctuation_rule, Doc)
    assert "A line without terminal punctuation here" in without_punctuation_rule.text


def test_c4_counts_sentences_not_lines():
    five_on_one_line = "One thing happened. Then another! Was it late? Nobody knew. The end came soon."
    assert isinstance(C4.apply(doc(five_on_one_line)), Doc)
    assert C4.apply(doc(five_on_one_line.rsplit(" The", 1)[0])) == "c4:too_few_sentences"


def test_code_filter_passes_a_real_module_and_near_misses():
    module = doc(PYTHON_MODULE)
    assert CODE.apply(module) is module
    late_marker = "import os\n" * 5 + "# This file is automatically generated.\n"
    assert isinstance(CODE.apply(doc(late_marker)), Doc)
    a_few_blobs = PYTHON_MODULE + "\n".join(f'BLOB_{i} = "{line}"' for i, line in enumerate(BASE64_LINES[:5]))
    assert isinstance(CODE.apply(doc(a_few_blobs)), Doc)


def test_presets_build_their_filters_in_pipeline_order():
    assert FiltersConfig().build() == []
    prose = FiltersConfig(preset="prose").build()
    assert [type(f) for f in prose] == [GopherRepetitionFilter, GopherQualityFilter, C4Filter, FineWebFilter]
    assert prose[2].config == C4Config(terminal_punctuation=False)  # as FineWeb ran it
    assert [type(f) for f in FiltersConfig(preset="code").build()] == [CodeFilter]


def test_explicit_sub_configs_override_the_preset():
    no_c4 = FiltersConfig(preset="prose", c4=C4Config(enabled=False)).build()
    assert [f.name for f in no_c4] == ["gopher_repetition", "gopher_quality", "fineweb"]
    strict_c4 = FiltersConfig(preset="prose", c4=C4Config()).build()
    assert strict_c4[2].config.terminal_punctuation
    added = FiltersConfig(preset="none", code=CodeConfig(), gopher_quality=GopherQualityConfig()).build()
    assert [f.name for f in added] == ["gopher_quality", "code"]
    tight = FiltersConfig(preset="code", code=CodeConfig(max_line_length=40)).build()
    assert apply_filters(doc(PYTHON_MODULE), tight) == "code:max_line_length"


def test_filters_config_validates_and_round_trips():
    with pytest.raises(ValidationError):
        FiltersConfig(preset="web")
    with pytest.raises(ValidationError):
        FiltersConfig(c4={"min_sentence": 3})
    with pytest.raises(ValidationError):
        GopherRepetitionConfig(max_top_ngram_chars=(0.2, 0.18))
    config = FiltersConfig(preset="prose", c4={"enabled": False}, fineweb={"max_short_lines": 0.5})
    again = FiltersConfig.model_validate_json(config.model_dump_json())
    assert again == config
    assert [f.config for f in again.build()] == [f.config for f in config.build()]


def test_presets_on_real_documents():
    prose = FiltersConfig(preset="prose").build()
    kept = apply_filters(doc(PROSE), prose)
    assert isinstance(kept, Doc) and kept.text == "\n".join(PARAGRAPHS)  # C4 drops the blank line
    code = FiltersConfig(preset="code").build()
    assert isinstance(apply_filters(doc(PYTHON_MODULE), code), Doc)
    minified = "".join(f"var v{i}=function(a,b){{return a*{i}+b}};" for i in range(100))
    assert apply_filters(doc(minified), code) == "code:max_line_length"


def test_apply_filters_chains_edits_and_stops_at_the_first_drop():
    cookie_banner = "This website uses cookies to give you the best experience."
    page = doc(PROSE + f"\n{cookie_banner}\n{cookie_banner}")
    assert FINEWEB.apply(page) == "fineweb:dup_line_chars"
    assert isinstance(apply_filters(page, [C4, FINEWEB]), Doc)  # C4 removed the banner first
    short = doc("Too short to keep. {braces}")
    assert apply_filters(short, [GOPHER_QUALITY, C4]) == "gopher_quality:word_count"
    assert apply_filters(short, [C4, GOPHER_QUALITY]) == "c4:too_few_sentences"
