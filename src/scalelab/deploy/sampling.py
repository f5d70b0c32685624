"""How the next token is chosen: temperature, nucleus (top-p), penalties and biases, seeded, as
`SamplingParams` (deploy/params.py) ask. Reported log-probabilities are always the model's own (temperature 1,
before penalties and biases), which is what scoring text needs; the choice itself uses the adjusted distribution.
"""

from __future__ import annotations

import torch

from scalelab.deploy.params import InvalidRequest, SamplingParams


class Sampler:
    """Chooses tokens for one sequence; `generator` carries the seed across the sequences of one request."""

    def __init__(self, params: SamplingParams, vocab_size: int, generator: torch.Generator):
        self.params = params
        self.generator = generator
        if any(not 0 <= token < vocab_size for token in params.logit_bias):
            raise InvalidRequest(f"logit_bias names a token outside the vocabulary (0..{vocab_size - 1})",
                                 param="logit_bias")
        self.bias = torch.zeros(vocab_size)
        for token, bias in params.logit_bias.items():
            self.bias[token] = bias
        self.counts = torch.zeros(vocab_size)

    def choose(self, logprobs: torch.Tensor) -> int:
        """A token from (V,) model log-probabilities, remembered for the repetition penalties."""
        scores = logprobs + self.bias
        p = self.params
        if p.presence_penalty or p.frequency_penalty:
            scores = scores - p.presence_penalty * (self.counts > 0) - p.frequency_penalty * self.counts
        token = self._pick(scores)
        self.counts[token] += 1
        return token

    def _pick(self, scores: torch.Tensor) -> int:
        if self.params.temperature == 0.0:
            return int(torch.argmax(scores))
        probs = torch.softmax(scores / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep each token whose predecessors hold less than top_p: the smallest set reaching it.
            keep = (torch.cumsum(sorted_probs, 0) - sorted_probs) < self.params.top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator
