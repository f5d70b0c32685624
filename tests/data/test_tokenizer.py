import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalelab.data.tokenizer import EOD, TokenizerConfig, bytes_tokenizer, train_bpe


@pytest.fixture(scope="module")
def bpe():
    texts = ["def scale(data):\n    return data * 2\n", "héllo wörld — ünïcode ✓ 数据规模", "loss curves flatten"] * 50
    return train_bpe(iter(texts), TokenizerConfig(vocab_size=400))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bytes_roundtrip(text):
    tok = bytes_tokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == list(text.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_roundtrip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


def test_special_token_text_is_not_a_boundary(bpe):
    for tok in (bpe, bytes_tokenizer()):
        ids = tok.encode(f"a{EOD}b")
        assert tok.eod_id not in ids
        assert tok.decode(ids) == f"a{EOD}b"


def test_encode_docs_appends_eod(bpe):
    docs = bpe.encode_docs(["abc", "loss curves"])
    assert [d[-1] for d in docs] == [bpe.eod_id, bpe.eod_id]
    assert all(d.dtype == np.uint16 for d in docs)
    assert bpe.decode(docs[1][:-1]) == "loss curves"


def test_bpe_vocab_size_and_compression(bpe):
    assert 257 < bpe.vocab_size <= 400  # a tiny corpus runs out of pairs to merge
    text = "def scale(data):\n    return data * 2\n"
    assert len(bpe.encode(text)) < len(text.encode()) / 2


def test_bytes_tokenizer_layout():
    tok = bytes_tokenizer()
    assert tok.vocab_size == 257 and tok.eod_id == 256
