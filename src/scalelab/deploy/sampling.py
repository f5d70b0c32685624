"""How the next token is chosen: temperature, nucleus (top-p), penalties and biases, seeded.

The parameters and their ranges are OpenAI's completion parameters, so the CLI and the server validate them
once, in one place. Numbers and flags are strict: a JSON `true` is not the number 1, nor 1 or "yes" a flag.
Reported log-probabilities are always the model's own (temperature 1, before penalties and biases), which is
what scoring text needs; the choice itself uses the adjusted distribution.
"""

from __future__ import annotations

import torch
from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator

from scalelab.config import StrictModel
from scalelab.errors import ConfigError

MAX_STOPS = 4
MAX_TOP_LOGPROBS = 5
MAX_SEED = 2**64 - 1  # torch seeds with 64 bits; a negative seed would only alias a positive one


class InvalidRequest(ConfigError):
    """A request the model cannot serve as asked; `param` and `code` name the cause as OpenAI's API does."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


def not_unicode(text: str) -> str | None:
    """Why `text` is not valid Unicode, or None. A lone surrogate has no UTF-8 form, so no tokenizer takes it;
    a JSON escape such as \\ud800 makes one, and so does Python of argv bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"is not valid Unicode: character {exc.start} is a lone surrogate, U+{ord(text[exc.start]):04X} "
                "(from bytes that are not UTF-8, or a JSON escape such as \\ud800)")
    return None


class SamplingParams(StrictModel):
    max_tokens: StrictInt = Field(16, ge=0, description="Tokens to generate at most.")
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0, description="0 picks the most likely token (greedy).")
    top_p: StrictFloat = Field(1.0, gt=0.0, le=1.0, description="Sample from the smallest set of tokens whose "
                                                                "probability reaches top_p.")
    seed: StrictInt | None = Field(None, ge=0, le=MAX_SEED, description="Seed for reproducible samples.")
    stop: list[str] = Field([], max_length=MAX_STOPS, description="Strings that end the completion (not "
                                                                  "included in it).")
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                       description="Return each token's log-probability and this many "
                                                   "alternatives.")
    echo: StrictBool = Field(False, description="Return the prompt before the completion (with logprobs: scored).")
    presence_penalty: StrictFloat = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: StrictFloat = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, StrictFloat] = Field({}, description="Token id -> bias added to its logit (-100..100).")

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value):
        return [value] if isinstance(value, str) else ([] if value is None else value)

    @field_validator("stop")
    @classmethod
    def _valid_stops(cls, value: list[str]) -> list[str]:
        if any(not stop for stop in value):
            raise ValueError("stop strings must not be empty")
        for stop in value:
            if (problem := not_unicode(stop)) is not None:
                raise ValueError(f"a stop string {problem}")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias_range(cls, value: dict[int, float]) -> dict[int, float]:
        if any(not -100.0 <= bias <= 100.0 for bias in value.values()):
            raise ValueError("logit_bias values must lie in [-100, 100]")
        return value


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
