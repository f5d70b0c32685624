import random
from collections import Counter

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from scalelab.data.clean import content_hash
from scalelab.data.split import SplitConfig, assign_split, mix64, mix64_array, shuffle_order


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
