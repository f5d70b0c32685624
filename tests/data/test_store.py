import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.data import TokenStore
from scalelab.errors import DataError


def test_reopen_yields_identical_arrays(prepared):
    again = TokenStore.open(prepared.path)
    assert again.fingerprint == prepared.fingerprint
    for name in ("train", "validation", "test"):
        a, b = prepared.split(name), again.split(name)
        assert isinstance(b.tokens, np.memmap)
        assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.offsets, b.offsets)


def test_split_arrays_are_consistent(prepared):
    eod = prepared.tokenizer.eod_id
    for name in ("train", "validation", "test"):
        split = prepared.split(name)
        info = prepared.manifest["held_out"].get(name) or prepared.manifest["train"]["raw"]
        assert split.n_docs == info["documents"] and split.n_tokens == info["tokens"]
        assert split.n_bytes == pytest.approx(info["bytes"])
        ends = split.offsets[1:] - 1
        assert np.all(split.tokens[ends] == eod)
        assert int((split.tokens == eod).sum()) == split.n_docs


def test_documents_decode_to_their_text(prepared):
    split = prepared.split("validation")
    first = next(split.documents())
    text = prepared.tokenizer.decode(first[:-1])
    assert len(text.encode()) == int(split.doc_bytes[0])
    assert split.doc_records()[0]["source"] == "corpus"


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_subsets_are_nested_prefixes(prepared, data):
    train = prepared.train()
    a = data.draw(st.integers(1, train.n_tokens))
    b = data.draw(st.integers(a, train.n_tokens))
    small, large = train.subset(a), train.subset(b)
    assert np.array_equal(large.tokens[:a], small.tokens)
    assert np.shares_memory(small.tokens, train.tokens)  # a view, not a copy
    assert large.subset(a).fingerprint == small.fingerprint
    assert (a == b) == (small.fingerprint == large.fingerprint)
    assert small.offsets[-1] == a and small.n_docs == int(np.searchsorted(train.offsets, a))
    assert 0 < small.n_bytes <= large.n_bytes


def test_subset_fingerprint_differs_from_parent_and_other_stores(prepared):
    train = prepared.train()
    assert train.subset(train.n_tokens - 1).fingerprint != train.fingerprint
    assert train.subset(10).fingerprint != prepared.split("validation").subset(10).fingerprint


def test_subset_too_large_states_what_exists(prepared):
    n = prepared.train().n_tokens
    with pytest.raises(DataError, match=f"has only {n:,}"):
        prepared.subset(n + 1)
    with pytest.raises(DataError, match="positive"):
        prepared.subset(0)


def test_unknown_variant_and_split(prepared):
    with pytest.raises(DataError, match="no train variant 'clean'"):
        prepared.train("clean")
    with pytest.raises(DataError, match="no split 'dev'"):
        prepared.split("dev")


def test_open_rejects_non_dataset(tmp_path):
    with pytest.raises(DataError, match="not a prepared dataset"):
        TokenStore.open(tmp_path)


@pytest.fixture
def copied(prepared, tmp_path) -> Path:
    """A private copy of the session's dataset, free to damage."""
    return Path(shutil.copytree(prepared.path, tmp_path / "dataset"))


@pytest.mark.parametrize(("name", "cut"), [
    ("validation/tokens.bin", 2),  # a whole token: used to be read silently, scoring fewer held-out tokens
    ("validation/tokens.bin", 1),  # half a token: used to be a traceback
    ("test/offsets.bin", 8),
    ("train/raw/doc_bytes.bin", 8),
    ("train/raw/doc_hash.bin", 3),
])
def test_open_refuses_arrays_whose_size_disagrees_with_the_manifest(copied, name, cut):
    path = copied / name
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size - cut)
    with pytest.raises(DataError, match=re.escape(f"dataset is corrupt: {path}: expected {size} bytes, "
                                                  f"found {size - cut}")):
        TokenStore.open(copied)


def test_open_refuses_a_missing_array(copied):
    (copied / "test" / "doc_hash.bin").unlink()
    with pytest.raises(DataError, match="dataset is corrupt: .*doc_hash.bin: expected .* bytes, found none"):
        TokenStore.open(copied)


def test_verify_finds_a_flipped_byte_that_open_does_not(copied, prepared):
    assert TokenStore.open(copied).verify() == []
    path = copied / "validation" / "tokens.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    store = TokenStore.open(copied)  # the sizes still agree
    assert store.split("validation").n_tokens == prepared.split("validation").n_tokens
    assert store.verify() == ["validation"]
    tokenizer = copied / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"unk_token"', '"unk_tokeN"', 1))
    assert TokenStore.open(copied).verify() == ["validation", "tokenizer.json"]


@pytest.mark.parametrize("document", ["[]", "3", '"text"'])
def test_open_refuses_a_manifest_that_is_not_an_object(copied, document):
    (copied / "manifest.json").write_text(document)
    with pytest.raises(DataError, match=f"{re.escape(str(copied / 'manifest.json'))} is not a dataset manifest"):
        TokenStore.open(copied)
