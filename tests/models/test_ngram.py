import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from scalelab.errors import ConfigError, DataError
from scalelab.models.ngram import KneserNeyLM, _estimate_discounts

VOCAB = 30
EOD = 0
SEEN = 25  # training uses ids below this, so 25..29 are never seen


def markov_stream(seed: int, n_tokens: int) -> np.ndarray:
    """Documents from one fixed sparse second-order Markov chain over ids 1..24, each ending in EOD."""
    chain = np.random.default_rng(0)
    successors = chain.integers(1, SEEN, size=(SEEN, SEEN, 3))
    weights = chain.dirichlet(np.ones(3), size=(SEEN, SEEN))
    rng = np.random.default_rng(seed)
    out, a, b = [], EOD, EOD
    while len(out) < n_tokens:
        token = EOD if rng.random() < 0.04 else int(successors[a, b, rng.choice(3, p=weights[a, b])])
        out.append(token)
        a, b = b, token
    return np.array(out, dtype=np.uint16)


def eval_stream(seed: int) -> np.ndarray:
    """Held-out text from the same chain, with never-seen ids and runs of random ids (unseen contexts)."""
    rng = np.random.default_rng(seed)
    stream = markov_stream(seed, 600).astype(np.int64)
    stream[rng.choice(stream.shape[0], 20, replace=False)] = rng.integers(SEEN, VOCAB, 20)
    noise = rng.integers(0, VOCAB, 60)
    return np.concatenate([stream[:300], noise, stream[300:]])


class ReferenceKneserNey:
    """The same estimator with dicts and loops, straight from the definitions in the module docstring."""

    def __init__(self, tokens: np.ndarray, order: int, vocab_size: int):
        tokens = [int(t) for t in tokens]
        self.order, self.vocab_size = order, vocab_size
        self.counts = {order: Counter(tuple(tokens[i:i + order]) for i in range(len(tokens) - order + 1))}
        for k in range(1, order):
            left = defaultdict(set)
            for i in range(1, len(tokens) - k + 1):
                left[tuple(tokens[i:i + k])].add(tokens[i - 1])
            self.counts[k] = {gram: len(extensions) for gram, extensions in left.items()}
        self.discounts, self.fallback_orders = {}, []
        for k in range(1, order + 1):
            self.discounts[k] = self.estimate(Counter(self.counts[k].values()))
            if self.discounts[k] is None:
                self.fallback_orders.append(k)
                self.discounts[k] = [0.5, 1.0, 1.5]
        self.total = {k: Counter() for k in self.counts}
        self.mass = {k: Counter() for k in self.counts}
        for k, counts in self.counts.items():
            for gram, count in counts.items():
                self.total[k][gram[:-1]] += count
                self.mass[k][gram[:-1]] += self.discount(k, count)

    @staticmethod
    def estimate(counts_of_counts: Counter) -> list[float] | None:
        t = [counts_of_counts[j] for j in (1, 2, 3, 4)]
        if not all(t):
            return None
        y = t[0] / (t[0] + 2 * t[1])
        discounts = [j - (j + 1) * y * t[j] / t[j - 1] for j in (1, 2, 3)]
        return discounts if all(0 < d < j for j, d in zip((1, 2, 3), discounts, strict=True)) else None

    def discount(self, k: int, count: int) -> float:
        return 0.0 if count == 0 else self.discounts[k][min(count, 3) - 1]

    def prob(self, context: list[int], word: int) -> float:
        context = tuple(context[max(0, len(context) - self.order + 1):])
        p = 1.0 / self.vocab_size
        for k in range(1, len(context) + 2):
            h = context[len(context) - k + 1:]
            if self.total[k][h] == 0:
                continue
            count = self.counts[k].get(h + (word,), 0)
            p = (max(count - self.discount(k, count), 0.0) + self.mass[k][h] * p) / self.total[k][h]
        return p

    def logprobs(self, stream: np.ndarray) -> np.ndarray:
        ids = [int(t) for t in stream]
        return np.array([math.log(self.prob(ids[max(0, i - self.order + 1):i], ids[i]))
                         for i in range(1, len(ids))])


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    """A Markov stream that starts with a bigram found nowhere else, so the n-grams starting the stream have no
    left extension (continuation count zero) yet are prefixes of the n-grams that follow them."""
    stream = markov_stream(1, 4000)
    seen = set(ngrams(stream, 2))
    start = next((a, b) for a in range(1, SEEN) for b in range(1, SEEN) if (a, b) not in seen)
    return np.concatenate([np.array(start, dtype=stream.dtype), stream])


@pytest.fixture(scope="module")
def models(train) -> dict[int, KneserNeyLM]:
    return {order: KneserNeyLM.fit(train, order, VOCAB) for order in (2, 3, 4, 5)}


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_logprobs_match_the_reference(train, models, order):
    model, reference = models[order], ReferenceKneserNey(train, order, VOCAB)
    stream = eval_stream(order)
    ids = stream.tolist()
    contexts = [tuple(ids[max(0, i - order + 1):i]) for i in range(1, len(ids))]
    assert any(reference.total[len(h) + 1][h] == 0 for h in contexts), "no unseen context was scored"
    assert any(w >= SEEN for w in ids), "no unseen word was scored"

    np.testing.assert_allclose(model.logprobs(stream), reference.logprobs(stream), rtol=0, atol=1e-9)
    assert model.fallback_orders == reference.fallback_orders
    np.testing.assert_allclose(model.discounts, [reference.discounts[k] for k in range(1, order + 1)], atol=1e-12)
    assert model.num_ngrams == {1: VOCAB, **{k: len(set(ngrams(train, k))) for k in range(2, order + 1)}}


def ngrams(tokens: np.ndarray, k: int) -> list[tuple[int, ...]]:
    ids = tokens.tolist()
    return [tuple(ids[i:i + k]) for i in range(len(ids) - k + 1)]


def random_contexts(train: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    contexts = [np.zeros(0, dtype=np.int64)]
    for _ in range(40):
        length = int(rng.integers(1, 7))
        start = int(rng.integers(0, train.shape[0] - length))
        seen = train[start:start + length].astype(np.int64)
        contexts += [seen, rng.integers(0, VOCAB, length), np.append(seen[1:], rng.integers(SEEN, VOCAB))]
    return contexts


@pytest.mark.parametrize("order", [2, 3, 5])
def test_distributions_sum_to_one_and_agree_with_logprobs(train, models, order):
    model = models[order]
    for context in random_contexts(train, np.random.default_rng(order)):
        dist = model.distribution(context)
        assert dist.shape == (VOCAB,) and np.all(dist > 0)
        assert abs(dist.sum() - 1.0) < 1e-9
        if context.shape[0]:
            scored = [model.logprobs(np.append(context, w))[-1] for w in range(VOCAB)]
            np.testing.assert_allclose(scored, np.log(dist), rtol=0, atol=1e-12)


def test_discounts_follow_counts_of_counts(train, models):
    top = Counter(Counter(ngrams(train, 3)).values())
    t1, t2, t3, t4 = (top[j] for j in (1, 2, 3, 4))
    y = t1 / (t1 + 2 * t2)
    expected = [1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3]
    np.testing.assert_allclose(models[3].discounts[2], expected, atol=1e-12)

    # Order 2 of a trigram model counts distinct left neighbours of each bigram.
    left_neighbours = defaultdict(set)
    for previous, *bigram in ngrams(train, 3):
        left_neighbours[tuple(bigram)].add(previous)
    middle = Counter(len(s) for s in left_neighbours.values())
    t1, t2, t3, t4 = (middle[j] for j in (1, 2, 3, 4))
    y = t1 / (t1 + 2 * t2)
    np.testing.assert_allclose(models[3].discounts[1],
                               [1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3], atol=1e-12)
    # Every id follows many distinct ids, so no unigram has a continuation count of 1: order 1 falls back.
    assert models[3].fallback_orders == [1]
    np.testing.assert_array_equal(models[3].discounts[0], [0.5, 1.0, 1.5])


def test_discounts_by_hand():
    # t1..t4 = 10, 4, 2, 1: Y = 5/9, D1 = 1 - 2Y(4/10) = 5/9, D2 = 2 - 3Y(2/4) = 7/6, D3+ = 3 - 4Y(1/2) = 17/9.
    counts = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] + [7, 9])
    np.testing.assert_allclose(_estimate_discounts(counts), [5 / 9, 7 / 6, 17 / 9], atol=1e-12)
    # D2 = 2 - 3 (10/12)(10/1) < 0.
    assert _estimate_discounts(np.array([1] * 10 + [2] + [3] * 10 + [4])) is None
    assert _estimate_discounts(np.array([1, 1, 2, 3])) is None


def test_fallback_discounts_on_a_tiny_corpus():
    tokens = np.array([5, 1, 2, 3, 4, 0, 1, 2])
    model = KneserNeyLM.fit(tokens, 3, 7)
    assert model.fallback_orders == [1, 2, 3]
    np.testing.assert_array_equal(model.discounts, [[0.5, 1.0, 1.5]] * 3)
    reference = ReferenceKneserNey(tokens, 3, 7)
    stream = np.array([5, 1, 2, 6, 4, 0, 3, 1, 5, 1, 6])
    np.testing.assert_allclose(model.logprobs(stream), reference.logprobs(stream), rtol=0, atol=1e-12)
    for context in ([], [1], [0, 1], [5, 1], [6, 6], [4, 0]):
        assert abs(model.distribution(np.array(context, dtype=np.int64)).sum() - 1) < 1e-12


def test_inputs_are_checked():
    with pytest.raises(ConfigError, match="order"):
        KneserNeyLM.fit(np.arange(10), 7, 10)
    with pytest.raises(DataError, match="outside the vocabulary"):
        KneserNeyLM.fit(np.arange(10), 3, 9)
    with pytest.raises(DataError, match="at least 3"):
        KneserNeyLM.fit(np.arange(2), 3, 9)
    model = KneserNeyLM.fit(np.arange(10) % 4, 2, 4)
    with pytest.raises(DataError, match="outside the vocabulary"):
        model.logprobs(np.array([0, 4]))
    assert model.logprobs(np.array([1])).shape == (0,)


def test_save_load_round_trip(train, models, tmp_path):
    model = models[4]
    model.save(tmp_path / "lm")
    assert sorted(p.name for p in (tmp_path / "lm").iterdir()) == ["ngram.json", "ngram.npz"]
    loaded = KneserNeyLM.load(tmp_path / "lm")
    stream = eval_stream(7)
    np.testing.assert_array_equal(loaded.logprobs(stream), model.logprobs(stream))
    np.testing.assert_array_equal(loaded.discounts, model.discounts)
    assert (loaded.order, loaded.vocab_size, loaded.fallback_orders, loaded.num_ngrams) == \
        (model.order, model.vocab_size, model.fallback_orders, model.num_ngrams)
    with pytest.raises(DataError, match="no saved n-gram model"):
        KneserNeyLM.load(tmp_path / "missing")


def read_arpa(path) -> tuple[dict[int, int], dict[tuple[str, ...], tuple[float, float]]]:
    """Declared counts, and (log10 p, log10 backoff) of every listed n-gram."""
    declared, entries, order = {}, {}, 0
    for line in path.read_text().splitlines():
        if line.startswith("ngram "):
            k, count = line[len("ngram "):].split("=")
            declared[int(k)] = int(count)
        elif line.endswith("-grams:"):
            order = int(line[1:line.index("-")])
        elif line and order and not line.startswith("\\"):
            fields = line.split("\t")
            entries[tuple(fields[1].split(" "))] = (float(fields[0]), float(fields[2]) if len(fields) > 2 else 0.0)
            assert len(fields[1].split(" ")) == order
    return declared, entries


def arpa_log10(entries, context: tuple[str, ...], word: str) -> float:
    """Backoff semantics: p(w | h) = p(hw) if listed, else backoff(h) p(w | h')."""
    if context + (word,) in entries:
        return entries[context + (word,)][0]
    return entries.get(context, (0.0, 0.0))[1] + arpa_log10(entries, context[1:], word)


@pytest.mark.parametrize("order", [2, 4, 5])
def test_arpa_reproduces_logprobs(train, models, order, tmp_path):
    model = models[order]
    words = [f"w{i}" for i in range(VOCAB)]
    model.to_arpa(tmp_path / "lm.arpa", words=words)
    declared, entries = read_arpa(tmp_path / "lm.arpa")
    assert declared == {k: n + (3 if k == 1 else 0) for k, n in model.num_ngrams.items()}
    assert sum(1 for gram in entries if len(gram) == order) == declared[order]
    for gram in entries:
        assert gram[:-1] in entries or len(gram) == 1, f"prefix of {gram} missing"
        assert gram[1:] in entries or len(gram) == 1, f"suffix of {gram} missing"

    stream = eval_stream(order + 10)
    spelt = [words[i] for i in stream]
    scored = [arpa_log10(entries, tuple(spelt[max(0, i - order + 1):i]), spelt[i]) for i in range(1, len(spelt))]
    np.testing.assert_allclose(np.array(scored) * math.log(10), model.logprobs(stream), rtol=0, atol=1e-6)


def test_arpa_through_kenlm(train, models, tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed (pip install kenlm)")
    stream = eval_stream(3)
    for order in (3, 5):
        model = models[order]
        model.to_arpa(tmp_path / f"lm{order}.arpa")
        scorer = kenlm.Model(str(tmp_path / f"lm{order}.arpa"))
        scores = [score for score, _, _ in scorer.full_scores(" ".join(map(str, stream)), bos=False, eos=False)]
        np.testing.assert_allclose(np.array(scores[1:]) * math.log(10), model.logprobs(stream), rtol=0, atol=1e-4)


def test_higher_orders_help_on_a_prepared_dataset(prepared):
    train_tokens = prepared.train().tokens
    vocab_size = prepared.tokenizer.vocab_size
    eod = prepared.tokenizer.eod_id
    held_out = np.concatenate([[eod], prepared.split("validation").tokens]).astype(np.int64)
    nll = {order: -KneserNeyLM.fit(train_tokens, order, vocab_size).logprobs(held_out).mean() for order in (2, 3, 5)}
    assert nll[2] < math.log(vocab_size)
    assert nll[3] <= nll[2] + 0.05 and nll[5] <= nll[2] + 0.05
