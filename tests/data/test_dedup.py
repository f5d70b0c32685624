from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from scalelab.data import dedup
from scalelab.data.clean import content_hash
from scalelab.data.dedup import (
    DedupConfig,
    LSHIndex,
    MinHashConfig,
    band_hashes,
    candidate_pairs,
    exact_labels,
    minhash_signatures,
    near_duplicate_labels,
    normalize_for_shingles,
    survivors,
)

CONFIG = MinHashConfig()
EMPTY_ENTRY = 2**32 - 1


def make_vocabulary(rng: np.random.Generator, size: int = 5_000) -> np.ndarray:
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    words = {"".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(size)}
    return np.array(sorted(words))


def render(words: np.ndarray, rng: np.random.Generator, noisy: bool = False) -> str:
    """Words as prose; `noisy` adds case, punctuation and whitespace changes that normalisation removes."""
    pieces = []
    for i, word in enumerate(words):
        if noisy and rng.random() < 0.1:
            word = word.upper() + rng.choice([",", ";", "!", " -"])
        pieces.append(word + (".\n" if i % 12 == 11 else " "))
    return "".join(pieces)


def edit(words: np.ndarray, fraction: float, vocabulary: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy with `fraction` of the words replaced by random ones."""
    edited = words.copy()
    where = rng.choice(words.size, int(round(fraction * words.size)), replace=False)
    edited[where] = rng.choice(vocabulary, where.size)
    return edited


def shingle_set(text: str, ngram: int = 5) -> set[tuple[str, ...]]:
    words = normalize_for_shingles(text).split()
    return {tuple(words[i:i + ngram]) for i in range(max(len(words) - ngram + 1, 1))} if words else set()


def brute_force_jaccard(texts: list[str]) -> dict[tuple[int, int], float]:
    """True Jaccard of every pair sharing at least one shingle (all other pairs have Jaccard 0)."""
    sets = [shingle_set(text) for text in texts]
    holders: dict[tuple[str, ...], list[int]] = {}
    for doc, shingles in enumerate(sets):
        for shingle in shingles:
            holders.setdefault(shingle, []).append(doc)
    pairs = {pair for docs in holders.values() for pair in itertools.combinations(docs, 2)}
    return {(i, j): len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i, j in pairs}


@dataclass
class Planted:
    texts: list[str]
    jaccard: dict[tuple[int, int], float]
    signatures: np.ndarray
    bands: np.ndarray
    labels: np.ndarray


def plant(seed: int) -> Planted:
    """About 2000 documents: singletons, and groups of a base with variants at Jaccard ~0.35-1 to it."""
    rng = np.random.default_rng(seed)
    vocabulary = make_vocabulary(rng)
    texts = []
    for _ in range(650):
        texts.append(render(rng.choice(vocabulary, rng.integers(40, 200)), rng))
    for _ in range(430):
        base = rng.choice(vocabulary, rng.integers(60, 200))
        texts.append(render(base, rng))
        for _ in range(rng.integers(1, 4)):
            texts.append(render(edit(base, rng.uniform(0.0, 0.1), vocabulary, rng), rng, noisy=rng.random() < 0.3))
    for i in rng.choice(len(texts), 60, replace=False):
        texts.append(texts[i])
    signatures = minhash_signatures(texts, CONFIG)
    bands = band_hashes(signatures, CONFIG)
    return Planted(texts, brute_force_jaccard(texts), signatures, bands, near_duplicate_labels(bands))


@pytest.fixture(scope="module")
def planted() -> Planted:
    return plant(7)


def test_recall_and_precision_against_brute_force(planted: Planted):
    similar = [pair for pair, jaccard in planted.jaccard.items() if jaccard >= 0.8]
    assert len(similar) >= 250
    found = [planted.labels[i] == planted.labels[j] for i, j in similar]
    assert np.mean(found) >= 0.95
    # Precision here: of the candidate pairs (sharing at least one band), the fraction whose true Jaccard is
    # at least 0.5. Pairs between 0.5 and the ~0.72 threshold count as right: the S-curve of 14 x 8 bands
    # is not a step, and what it must avoid is pulling in clearly different documents.
    candidates = candidate_pairs(planted.bands)
    assert len(candidates) >= 300
    true_jaccard = np.array([planted.jaccard.get((i, j), 0.0) for i, j in candidates])
    assert np.mean(true_jaccard >= 0.5) >= 0.95


def test_estimated_jaccard_tracks_the_truth(planted: Planted):
    pairs = np.array(list(planted.jaccard))
    truth = np.array(list(planted.jaccard.values()))
    estimate = (planted.signatures[pairs[:, 0]] == planted.signatures[pairs[:, 1]]).mean(axis=1)
    error = estimate - truth
    assert len(pairs) >= 1000
    assert abs(error.mean()) < 0.01  # unbiased
    assert np.mean(np.abs(error) <= 0.1) >= 0.95  # one standard deviation is at most 0.047 at 112 permutations
    unrelated = planted.signatures[:300] == planted.signatures[300:600]
    assert unrelated.mean() < 0.01


def test_survivors_do_not_depend_on_input_order(planted: Planted):
    def kept(texts: list[str]) -> list[str]:
        labels = near_duplicate_labels(band_hashes(minhash_signatures(texts, CONFIG), CONFIG))
        priority = np.array([content_hash(text) for text in texts], dtype=np.uint64)
        keep = survivors(labels, priority, "keep_one")
        assert keep.sum() == np.unique(labels).size
        return sorted(text for text, k in zip(texts, keep, strict=True) if k)

    order = np.random.default_rng(1).permutation(len(planted.texts))
    survivors_in_order = kept(planted.texts)
    assert survivors_in_order == kept([planted.texts[i] for i in order])
    assert len(survivors_in_order) < len(planted.texts) - 300


def test_survivors_rules():
    labels = np.array([0, 0, 0, 3, 3, 5])
    priority = np.array([5, 2, 2, 1, 1, 9], dtype=np.uint64)
    assert survivors(labels, priority, "keep_one").tolist() == [False, True, False, True, False, True]
    assert survivors(labels, priority, "drop_cluster").tolist() == [False] * 5 + [True]
    assert survivors(np.empty(0, dtype=np.int64), np.empty(0), "keep_one").size == 0


def test_exact_labels_name_the_first_copy():
    hashes = np.array([content_hash(t) for t in ["a b", "c", "a  b\n", "d", "c"]], dtype=np.uint64)
    assert exact_labels(hashes).tolist() == [0, 1, 0, 3, 1]


def test_lsh_index_finds_copies_of_reference_documents():
    rng = np.random.default_rng(3)
    vocabulary = make_vocabulary(rng)
    bases = [rng.choice(vocabulary, rng.integers(80, 200)) for _ in range(300)]
    reference = [render(words, rng) for words in bases]
    exact = [reference[i] for i in range(0, 300, 10)]
    near = [render(edit(bases[i], 0.01, vocabulary, rng), rng, noisy=True) for i in range(5, 300, 10)]
    unrelated = [render(rng.choice(vocabulary, 150), rng) for _ in range(30)] + [""]
    queries = exact + near + unrelated

    def prepared(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        hashes = np.array([content_hash(text) for text in texts], dtype=np.uint64)
        return band_hashes(minhash_signatures(texts, CONFIG), CONFIG), hashes

    index = LSHIndex.build(*prepared(reference))
    assert len(index) == 300
    found = index.query(*prepared(queries))
    assert found[:30].tolist() == list(range(0, 300, 10))
    assert found[30:60].tolist() == list(range(5, 300, 10))
    assert (found[60:] == -1).all()
    assert (LSHIndex.build(*prepared([])).query(*prepared(queries)) == -1).all()


@pytest.mark.parametrize("shingle", ["word", "char"])
def test_signatures_do_not_depend_on_batching(planted: Planted, shingle: str, monkeypatch: pytest.MonkeyPatch):
    config = MinHashConfig(shingle=shingle)
    accented = [text.replace("e", "\u00e9").replace("a", "\u00e2") for text in planted.texts[:50]]
    texts = planted.texts[:300] + ["", "one", "!!", "two words"] + accented + planted.texts[300:400]
    whole = minhash_signatures(texts, config)
    cuts = [0, 1, 2, 57, 58, 200, 303, 304, 305, 330, 360, len(texts)]
    pieces = [minhash_signatures(texts[a:b], config) for a, b in itertools.pairwise(cuts)]
    assert (np.concatenate(pieces) == whole).all()
    # Tiny batches and blocks, so that documents straddle the permutation step's blocks.
    monkeypatch.setattr(dedup, "_BATCH_CHARS", 700)
    monkeypatch.setattr(dedup, "_BLOCK_VALUES", 37 * config.num_perm)
    assert (minhash_signatures(texts, config) == whole).all()
    assert (whole[304:354] == minhash_signatures(planted.texts[:50], config)).all()  # diacritics are stripped


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_ascii_and_unicode_paths_agree(text: str):
    # An all-ASCII text takes the byte-wide path; one non-ASCII character sends it down the general one.
    assert normalize_for_shingles(text + " \u00e9") == (normalize_for_shingles(text) + " e").lstrip()


def test_normalisation_matches_simplify_text():
    assert normalize_for_shingles("  Héllo,  WÖRLD!! 2024-05\tok\n") == "hello world 0 ok"
    assert normalize_for_shingles("a - b") == "a b"
    assert normalize_for_shingles("x1y22z 007 ٣٤") == "x0y0z 0 0"
    assert normalize_for_shingles("zero\u200bwidth soft\u00adhyphen") == "zerowidth softhyphen"
    assert normalize_for_shingles("don't “quote” — ok…") == "dont quote ok"
    assert normalize_for_shingles("") == normalize_for_shingles(" ,;! \n") == ""


def test_empty_and_short_documents():
    texts = ["", "?!", "Hello", "hello!", "world", "The cat sat", "the CAT, sat.", "the cat sat on"]
    signatures = minhash_signatures(texts, CONFIG)
    assert (signatures[:2] == EMPTY_ENTRY).all()
    assert (signatures[2:] != EMPTY_ENTRY).any(axis=1).all()
    assert (signatures[2] == signatures[3]).all()
    assert (signatures[2] != signatures[4]).mean() > 0.99
    assert (signatures[5] == signatures[6]).all()
    assert (signatures[5] != signatures[7]).mean() > 0.99
    bands = band_hashes(signatures, CONFIG)
    labels = near_duplicate_labels(bands)
    assert labels.tolist() == [0, 1, 2, 2, 4, 5, 5, 7]
    assert candidate_pairs(bands).tolist() == [[2, 3], [5, 6]]
    assert minhash_signatures([], CONFIG).shape == (0, 112)


def test_char_shingles():
    config = MinHashConfig(shingle="char", ngram=5)
    rng = np.random.default_rng(5)
    text = render(rng.choice(make_vocabulary(rng), 80), rng)
    typo = text[:200] + "q" + text[201:]
    signatures = minhash_signatures([text, typo, "ab cd", "abcd", "abc", "A.B.C!"], config)
    assert (signatures[0] == signatures[1]).mean() > 0.9
    assert (signatures[2] != signatures[3]).mean() > 0.99  # a space is a character
    assert (signatures[4] == signatures[5]).all()  # shorter than n: one shingle of all characters
    assert not (signatures[0] == minhash_signatures([text], MinHashConfig(shingle="word"))[0]).all()


def test_candidates_and_clusters_against_brute_force():
    rng = np.random.default_rng(11)
    bands = rng.integers(0, 12, size=(60, 3)).astype(np.uint64)
    no_band = band_hashes(minhash_signatures([""], CONFIG), CONFIG)[0, 0]
    bands[rng.random(bands.shape) < 0.3] = no_band
    shares = [(i, j) for i, j in itertools.combinations(range(60), 2)
              if ((bands[i] == bands[j]) & (bands[i] != no_band)).any()]
    assert candidate_pairs(bands).tolist() == [list(pair) for pair in shares]
    parent = list(range(60))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in shares:
        parent[max(root(i), root(j))] = min(root(i), root(j))
    assert near_duplicate_labels(bands).tolist() == [root(i) for i in range(60)]


def test_configs():
    assert CONFIG.num_perm == 112
    assert CONFIG.threshold == pytest.approx(0.7190, abs=1e-4)
    assert CONFIG.describe() == ("MinHash 14 bands x 8 rows = 112 permutations over word 5-grams; "
                                 "pairs above Jaccard ~0.72 are likely caught")
    assert DedupConfig().model_dump()["minhash"]["num_bands"] == 14
    with pytest.raises(ValidationError):
        DedupConfig.model_validate({"mode": "keep_all"})
    with pytest.raises(ValidationError):
        MinHashConfig.model_validate({"bands": 20})
