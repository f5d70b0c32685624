import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalelab.data import prepare
from scalelab.data.clean import content_hash
from scalelab.data.split import SplitConfig, assign_split, mix64, mix64_array, resolve_fractions, shuffle_order
from tests.conftest import tiny_config, write_corpus


def test_split_depends_on_content_only():
    config = SplitConfig(validation=0.2, test=0.2)
    docs = [f"document number {i}" for i in range(500)]
    alone = {d: assign_split(content_hash(d), config) for d in docs}
    shuffled = docs[:]
    random.Random(3).shuffle(shuffled)
    more = shuffled + [f"new document {i}" for i in range(500)]
    again = {d: assign_split(content_hash(d), config) for d in more}
    assert all(again[d] == alone[d] for d in docs)


def test_split_fractions_and_seed():
    hashes = [content_hash(f"doc {i}") for i in range(20_000)]
    counts = Counter(assign_split(h, SplitConfig(validation=0.1, test=0.05)) for h in hashes)
    assert abs(counts["validation"] / 20_000 - 0.1) < 0.01
    assert abs(counts["test"] / 20_000 - 0.05) < 0.01
    other = [assign_split(h, SplitConfig(validation=0.1, test=0.05, seed=7)) for h in hashes]
    assert other != [assign_split(h, SplitConfig(validation=0.1, test=0.05)) for h in hashes]


def test_duplicates_share_a_split():
    config = SplitConfig(validation=0.3, test=0.3)
    for i in range(200):
        text = f"same text {i}"
        assert assign_split(content_hash(text), config) == assign_split(content_hash(f" same  text {i}\n"), config)


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=50), st.integers(0, 2**32))
def test_vectorised_mix_matches_scalar(values, seed):
    arr = np.array(values, dtype=np.uint64)
    assert [int(x) for x in mix64_array(arr, seed)] == [mix64(v, seed) for v in values]


def test_shuffle_order_is_a_stable_permutation():
    hashes = np.array([content_hash(f"d{i}") for i in range(1000)], dtype=np.uint64)
    order = shuffle_order(hashes, seed=0)
    assert sorted(order.tolist()) == list(range(1000))
    assert not np.array_equal(order, np.arange(1000))
    # Adding documents keeps the relative order of the old ones.
    grown = np.concatenate([hashes, np.array([content_hash(f"x{i}") for i in range(300)], dtype=np.uint64)])
    grown_order = shuffle_order(grown, seed=0)
    assert [i for i in grown_order.tolist() if i < 1000] == order.tolist()


def test_resolution_widens_to_min_tokens_within_bounds():
    rng = np.random.default_rng(0)
    positions = rng.random(10_000)
    tokens = np.full(10_000, 100)
    config = SplitConfig(validation=0.05, test=0.02, min_tokens=70_000, max_fraction=0.1)
    resolved = resolve_fractions(config, positions, tokens)
    assert resolved.min_tokens == 0 and resolved.widest() == resolved
    v, t = resolved.validation, resolved.test

    def held(start: float, stop: float) -> int:
        return int(tokens[(positions >= start) & (positions < stop)].sum())

    # Each split is the narrowest (to the 1e-4 step) that holds min_tokens.
    assert held(0, v) >= 70_000 > held(0, v - 1e-4)
    assert held(v, v + t) >= 70_000 > held(v, v + t - 1e-4)
    # Discarded documents (0 tokens) do not count; the configured fraction is a lower bound; the cap holds.
    tokens[positions < 0.03] = 0
    assert resolve_fractions(config, positions, tokens).validation > v
    assert resolve_fractions(config.model_copy(update={"min_tokens": 100}), positions, tokens).validation == 0.05
    capped = resolve_fractions(config.model_copy(update={"min_tokens": 10**9}), positions, tokens)
    assert (capped.validation, capped.test) == (0.1, 0.1)
    assert resolve_fractions(config.model_copy(update={"test": 0.0}), positions, tokens).test == 0.0


def test_widest_split_bounds_every_resolution():
    config = SplitConfig(validation=0.02, test=0.2, max_fraction=0.1)
    assert (config.widest().validation, config.widest().test) == (0.1, 0.2)
    assert SplitConfig(min_tokens=0).widest() == SplitConfig(min_tokens=0)
    with pytest.raises(ValueError, match="max_fraction"):
        SplitConfig(validation=0.95, test=0.01)


def test_fixture_fractions_are_resolved_unchanged(prepared):
    assert prepared.manifest["split"] == {"validation": 0.1, "test": 0.1, "min_tokens": 0, "max_fraction": 0.1,
                                          "seed": 0}


def splits_of(store) -> dict[str, str]:
    return {r["id"]: s for s in ("train", "validation", "test") for r in store.split(s).doc_records()}


def test_min_tokens_honoured_and_growth_never_moves_documents(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", n_docs=150)
    split = {"validation": 0.02, "test": 0.02, "min_tokens": 1500, "max_fraction": 0.3}
    store = prepare(tiny_config(corpus, tmp_path / "a", split=split), show_progress=False)
    resolved = store.manifest["split"]
    assert 0.02 < resolved["validation"] < 0.3 and 0.02 < resolved["test"] < 0.3
    assert all(store.manifest["held_out"][s]["tokens"] >= 1500 for s in ("validation", "test"))
    for i in range(60):
        (corpus / f"new{i}.txt").write_text(f"a new document {i} " + "with several words " * (i % 7 + 1))
    grown = prepare(tiny_config(corpus, tmp_path / "b", split=resolved), show_progress=False)
    before, after = splits_of(store), splits_of(grown)
    assert all(after[doc] == split for doc, split in before.items())
    assert grown.manifest["split"] == resolved
