import math

import numpy as np
import pytest
import torch

from scalelab.train.evaluate import EvalSet, eval_set, neural_nll, result


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/V: the NLL of n targets is n ln V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        return torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy


def test_bits_per_byte_by_hand():
    data = EvalSet(np.array([0, 5, 6, 0, 7, 0]), n_bytes=12, n_docs=2, split="validation")
    res = result(total_nll=5 * math.log(4), data=data)
    # 5 targets at 2 bits each (uniform over 4) = 10 bits over 12 bytes.
    assert res.bits_per_byte == pytest.approx(10 / 12)
    assert res.nll == pytest.approx(math.log(4)) and res.perplexity == pytest.approx(4.0)
    assert res.tokens == 5 and res.bytes == 12


def test_eval_set_is_whole_documents_behind_an_eod(prepared):
    full = eval_set(prepared, "validation")
    view = prepared.split("validation")
    assert full.stream[0] == prepared.tokenizer.eod_id
    assert full.n_targets == view.n_tokens and full.n_bytes == int(view.doc_bytes.sum())
    budget = int(view.offsets[2]) - 3
    part = eval_set(prepared, "validation", max_tokens=budget)
    assert part.n_docs == 2 and part.n_targets == int(view.offsets[2])
    assert part.n_bytes == int(view.doc_bytes[:2].sum())
    assert eval_set(prepared, "validation", max_tokens=int(view.offsets[2])).n_docs == 2
    assert eval_set(prepared, "validation", max_tokens=1).n_docs == 1


@pytest.mark.parametrize("context", [1, 7, 64, 1000])
def test_neural_nll_scores_every_target_once(context):
    data = EvalSet(np.arange(101) % 9, n_bytes=100, n_docs=1, split="validation")
    total = neural_nll(Uniform(9), data, context, batch_size=4, device=torch.device("cpu"))
    assert total == pytest.approx(100 * math.log(9))
