import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scalelab.data.store import TokenSplit
from scalelab.data.tokenizer import TokenizerConfig, bytes_tokenizer, train_bpe
from scalelab.families.ngram import NgramFamily
from scalelab.models.accounting import logits as model_logits
from scalelab.models.lstm import LSTMConfig, build_lstm
from scalelab.models.ngram import KneserNeyLM
from scalelab.models.transformer import TransformerConfig, build_transformer
from scalelab.train.evaluate import (
    MAX_DOCUMENT_SHARE,
    EvalSet,
    _cap,
    _sampling_order,
    bootstrap_se,
    eval_set,
    neural_nll,
    result,
)


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/V: the NLL of n targets is n ln V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy


class Bigram(torch.nn.Module):
    """Embedding straight into a tied output layer: the output layer is all the arithmetic autocast touches."""

    def __init__(self, vocab, width=64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.head = torch.nn.Linear(width, vocab, bias=False)
        torch.nn.init.normal_(self.embed.weight, std=1.0)
        self.head.weight = self.embed.weight

    def forward(self, input_ids):
        return self.head(self.embed(input_ids))

    def get_output_embeddings(self):
        return self.head


def whole_documents(stream, lengths, doc_bytes):
    """An EvalSet of uncut documents laid end to end behind the stream's first token."""
    lengths = np.asarray(lengths)
    return EvalSet(np.asarray(stream), np.cumsum(lengths) - lengths, lengths, np.asarray(doc_bytes),
                   np.arange(len(lengths)), "validation")


def fake_store(tmp_path, tokenizer, texts):
    """What eval_set reads of a store, holding `texts` as its validation split in this order."""
    docs = tokenizer.encode_docs(texts)
    offsets = np.concatenate([[0], np.cumsum([len(doc) for doc in docs])]).astype(np.int64)
    hashes = np.array([random.Random(text).getrandbits(64) for text in texts], dtype=np.uint64)
    (tmp_path / "doc_hash.bin").write_bytes(hashes.tobytes())
    view = TokenSplit("validation", np.concatenate(docs), offsets,
                      np.array([len(text.encode()) for text in texts], dtype=np.int64), "fingerprint", tmp_path)
    return SimpleNamespace(path=tmp_path, tokenizer=tokenizer, split=lambda name: view)


def text(rng, words):
    vocabulary = ("naïve", "café", "Größe", "日本語", "données", "λόγος", "plain", "word", "ß", "→")
    return " ".join(rng.choice(vocabulary) for _ in range(words))


def test_bits_per_byte_by_hand():
    data = whole_documents([0, 5, 6, 0, 7, 0], lengths=[3, 2], doc_bytes=[8, 4])
    res = result(np.full(5, math.log(4)), data)
    # 5 targets at 2 bits each (uniform over 4) = 10 bits over 12 bytes.
    assert res.bits_per_byte == pytest.approx(10 / 12)
    assert res.nll == pytest.approx(math.log(4)) and res.perplexity == pytest.approx(4.0)
    assert res.tokens == 5 and res.bytes == 12
    assert res.documents == {"index": [0, 1], "nll": pytest.approx([3 * math.log(4), 2 * math.log(4)]),
                             "tokens": [3, 2], "bytes": [8, 4]}


def test_the_result_keeps_its_keys_and_adds_the_errors_and_documents():
    res = result(np.arange(1.0, 6.0), whole_documents([0, 5, 6, 0, 7, 0], lengths=[3, 2], doc_bytes=[8, 4]))
    assert list(res.to_dict()) == ["nll", "perplexity", "bits_per_byte", "tokens", "bytes", "split", "nll_se",
                                   "bits_per_byte_se", "documents"]
    assert res.documents["nll"] == pytest.approx([1 + 2 + 3, 4 + 5])


def test_a_cut_documents_unscored_end_is_left_out_of_every_total():
    # Document 0 cut to 2 tokens, then its unscored end-of-document token; document 1 whole.
    data = EvalSet(np.array([0, 5, 6, 0, 7, 0]), starts=np.array([0, 3]), doc_tokens=np.array([2, 2]),
                   doc_bytes=np.array([5, 4]), documents=np.array([3, 8]), split="validation")
    res = result(np.array([1.0, 2.0, 100.0, 3.0, 4.0]), data)
    assert res.documents == {"index": [3, 8], "nll": [3.0, 7.0], "tokens": [2, 2], "bytes": [5, 4]}
    assert res.tokens == 4 and res.nll == pytest.approx(10 / 4)


def test_the_whole_split_is_every_document_behind_an_eod(prepared):
    full = eval_set(prepared, "validation")
    view = prepared.split("validation")
    lengths = np.diff(view.offsets)
    assert full.stream[0] == prepared.tokenizer.eod_id
    assert full.documents.tolist() == list(range(view.n_docs))
    whole = full.doc_tokens == lengths
    assert (full.doc_bytes[whole] == view.doc_bytes[whole]).all()
    assert full.n_targets == full.n_tokens + int((~whole).sum())  # one unscored end per cut document
    assert full.doc_tokens.max() <= MAX_DOCUMENT_SHARE * full.n_tokens


def test_a_budget_draws_a_seeded_sample_of_whole_documents_not_the_first(prepared):
    view = prepared.split("validation")
    budget = int(view.offsets[4])
    part = eval_set(prepared, "validation", max_tokens=budget)
    assert (part.documents == eval_set(prepared, "validation", max_tokens=budget).documents).all()
    assert part.documents.tolist() != list(range(part.n_docs))
    assert (np.diff(part.documents) > 0).all() and part.n_tokens >= budget
    assert part.n_docs >= 1 / MAX_DOCUMENT_SHARE and part.doc_tokens.max() <= MAX_DOCUMENT_SHARE * part.n_tokens
    # A larger budget keeps the smaller one's documents and adds to them.
    assert set(part.documents) <= set(eval_set(prepared, "validation", max_tokens=2 * budget).documents)


def test_the_sampling_order_of_a_document_does_not_depend_on_the_others():
    hashes = np.random.default_rng(0).integers(0, 2**63, size=200, dtype=np.uint64)
    kept = np.sort(np.random.default_rng(1).choice(200, size=120, replace=False))
    full_order = _sampling_order(hashes)
    assert (kept[_sampling_order(hashes[kept])] == full_order[np.isin(full_order, kept)]).all()


@pytest.mark.parametrize("seed", range(20))
def test_the_cap_is_the_largest_that_bounds_every_share(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 50, size=rng.integers(10, 60))
    lengths[: rng.integers(1, 4)] *= 100  # a few dominant documents

    def largest_share(cap):
        kept = np.minimum(lengths, cap)
        return kept.max() / kept.sum()

    cap = _cap(lengths, MAX_DOCUMENT_SHARE)
    assert largest_share(cap) <= MAX_DOCUMENT_SHARE
    assert cap == lengths.max() or largest_share(cap + 1) > MAX_DOCUMENT_SHARE


def test_too_few_documents_for_the_cap_get_equal_shares():
    assert _cap(np.array([30, 500, 70]), MAX_DOCUMENT_SHARE) == 30
    assert _cap(np.array([500]), MAX_DOCUMENT_SHARE) == 500


@pytest.mark.parametrize("tokenizer", [bytes_tokenizer(), None], ids=["bytes", "bpe"])
def test_a_cut_document_counts_the_exact_bytes_of_its_kept_tokens(tmp_path, tokenizer):
    rng = random.Random(0)
    texts = [text(rng, 2000)] + [text(rng, rng.randint(20, 60)) for _ in range(30)]
    tokenizer = tokenizer or train_bpe(iter(texts), TokenizerConfig(vocab_size=400, min_frequency=1))
    store = fake_store(tmp_path, tokenizer, texts)
    data = eval_set(store, "validation")
    long = int(np.flatnonzero(data.documents == 0)[0])
    assert data.doc_tokens[long] < len(tokenizer.encode(texts[0])) + 1  # cut
    assert data.doc_tokens.max() <= MAX_DOCUMENT_SHARE * data.n_tokens
    kept = data.stream[1 + data.starts[long]:][:data.doc_tokens[long]]
    # Byte-level tokens: the kept prefix's bytes are a prefix of the document's UTF-8 bytes.
    spelt = "".join(tokenizer.hf.id_to_token(int(t)) for t in kept)
    assert data.doc_bytes[long] == len(spelt) and texts[0].encode().startswith(bytes(_byte_values(spelt)))
    assert data.stream[1 + data.starts[long] + data.doc_tokens[long]] == tokenizer.eod_id  # read, not scored
    others = np.arange(data.n_docs) != long
    assert (data.doc_bytes[others] == [len(texts[i].encode()) for i in data.documents[others]]).all()


def _byte_values(spelt):
    from scalelab.data.tokenizer import _bytes_to_unicode

    byte_of = {char: byte for byte, char in _bytes_to_unicode().items()}
    return [byte_of[char] for char in spelt]


def test_per_document_nll_sums_to_the_total(prepared):
    data = eval_set(prepared, "validation", max_tokens=3000)
    vocab = prepared.tokenizer.vocab_size
    res = result(neural_nll(Uniform(vocab), data, 64, batch_size=4, device=torch.device("cpu")), data)
    assert res.documents["nll"] == pytest.approx((data.doc_tokens * math.log(vocab)).tolist())
    assert sum(res.documents["nll"]) == pytest.approx(res.nll * res.tokens)
    assert res.nll == pytest.approx(math.log(vocab)) and res.tokens == data.n_tokens


def test_the_ngram_scores_each_document(prepared):
    data = eval_set(prepared, "validation")
    train = np.asarray(prepared.train().tokens)
    model = KneserNeyLM.fit(train, order=3, vocab_size=prepared.tokenizer.vocab_size)
    res = NgramFamily().score(model, None, data, torch.device("cpu"))
    logprobs = model.logprobs(data.stream)
    for k in range(data.n_docs):
        start, count = data.starts[k], data.doc_tokens[k]
        assert res.documents["nll"][k] == pytest.approx(-logprobs[start:start + count].sum())
    assert res.nll == pytest.approx(sum(res.documents["nll"]) / res.tokens)


def synthetic_documents(n, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(50, 500, size=n)
    rates = rng.normal(2.0, 0.4, size=n)  # documents differ in difficulty
    return rates * tokens, tokens, 4 * tokens


def test_the_bootstrap_error_is_positive_and_shrinks_with_more_documents():
    small = bootstrap_se(*synthetic_documents(50))
    large = bootstrap_se(*synthetic_documents(800))
    assert all(value > 0 for value in small + large)
    # About 1 / sqrt(n): 16x the documents, a quarter of the error.
    assert large[0] / small[0] == pytest.approx(0.25, rel=0.3)


def test_the_bootstrap_error_of_equal_documents_is_their_standard_error():
    rng = np.random.default_rng(3)
    rates = rng.normal(2.0, 0.5, size=400)
    tokens = np.full(400, 100)
    nll_se, bpb_se = bootstrap_se(rates * tokens, tokens, 3 * tokens)
    assert nll_se == pytest.approx(rates.std() / math.sqrt(400), rel=0.1)
    assert bpb_se == pytest.approx(nll_se / (3 * math.log(2)))


def test_the_bootstrap_is_seeded():
    documents = synthetic_documents(100)
    assert bootstrap_se(*documents) == bootstrap_se(*documents)
    assert bootstrap_se(*documents, seed=1) != bootstrap_se(*documents)
    assert bootstrap_se(np.array([5.0]), np.array([3]), np.array([9])) == pytest.approx((0.0, 0.0), abs=1e-12)


@pytest.mark.parametrize("context", [1, 7, 64, 1000])
def test_neural_nll_scores_every_target_once(context):
    data = whole_documents(np.arange(101) % 9, lengths=[100], doc_bytes=[100])
    nll = neural_nll(Uniform(9), data, context, batch_size=4, device=torch.device("cpu"))
    assert nll.shape == (100,) and nll == pytest.approx(np.full(100, math.log(9)))


def bigram_case() -> tuple[torch.nn.Module, EvalSet]:
    torch.manual_seed(0)
    data = whole_documents(np.random.default_rng(0).integers(0, 300, size=513), lengths=[512], doc_bytes=[512])
    return Bigram(300), data


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_the_output_layer_runs_in_fp32_under_autocast(compiled):
    model, data = bigram_case()
    cpu = torch.device("cpu")
    exact = neural_nll(model, data, 128, batch_size=2, device=cpu)
    mixed = neural_nll(torch.compile(model) if compiled else model, data, 128, batch_size=2, device=cpu,
                       autocast_dtype=torch.bfloat16)
    assert mixed == pytest.approx(exact, rel=1e-5, abs=1e-5)
    assert not model.head._forward_hooks and not model.head._forward_pre_hooks and not torch.is_autocast_enabled()


def test_logits_made_in_bf16_would_be_off():
    """The old way, logits out of autocast in bf16 and only then upcast, is off by far more than the above."""
    model, data = bigram_case()
    exact = neural_nll(model, data, 128, batch_size=2, device=torch.device("cpu"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model_logits(model, torch.from_numpy(data.stream[:-1])[None])
    old = torch.nn.functional.cross_entropy(out.float()[0], torch.from_numpy(data.stream[1:]), reduction="none")
    assert np.abs(old.numpy() - exact).max() > 1e-3


@pytest.mark.parametrize("model", [
    build_transformer(TransformerConfig(size="0.1M"), 300), build_lstm(LSTMConfig(size="0.1M"), 300)],
    ids=["transformer", "lstm"])
def test_each_family_meets_its_output_layer_in_fp32_under_autocast(model):
    seen = []
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: seen.append((args[0].dtype, module.weight.dtype, out.dtype)))
    data = whole_documents(np.arange(65) % 300, lengths=[64], doc_bytes=[64])
    neural_nll(model, data, 32, batch_size=2, device=torch.device("cpu"), autocast_dtype=torch.bfloat16)
    assert seen and set(seen) == {(torch.float32, torch.float32, torch.float32)}


