"""One completion of one prompt, produced a model step at a time, as text pieces aligned with tokens.

Iterating a `Completion` runs one model call per item and yields the pieces that became final at that step, so
a caller can stream them, interleave several completions on one model, or stop early (a client that went away)
without waste. Each piece is one token with the text it adds, so the pieces' texts join to the completion's text
and logprobs line up with the text offsets. The sequence ends at the end-of-document token (finish reason
"stop"), at a stop string (cut before it, also "stop"), or after max_tokens ("length").

A text prompt is read as the start of a document: after the end-of-document token every training document
follows, as the exported tokenizer's post-processor reads it for other tools (text that spells the token stays
text). A prompt of token ids is read as given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from tokenizers.decoders import DecodeStream

from scalelab.data.tokenizer import Tokenizer
from scalelab.deploy.model import DeployedModel
from scalelab.deploy.params import InvalidRequest, SamplingParams, not_unicode
from scalelab.deploy.sampling import Sampler


@dataclass(frozen=True)
class Piece:
    token: int
    text: str  # what the token adds to the text: '' while it ends inside a UTF-8 character
    logprob: float | None  # the model's ln p(token | everything before it); None unless logprobs were asked for
    top: dict[int, float] | None  # the `logprobs` most likely tokens at this position and their log-probabilities


def check_length(model: DeployedModel, prompt_tokens: int, max_tokens: int) -> None:
    """The tokens the model reads and those it writes must fit the context; the message names both lengths, as
    OpenAI's does."""
    room = model.context_length
    if prompt_tokens + max_tokens > room:
        raise InvalidRequest(
            f"This model's maximum context length is {room} tokens, however you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in your prompt; {max_tokens} for the "
            f"completion). Please reduce your prompt or completion length.",
            param="prompt" if prompt_tokens > room else "max_tokens", code="context_length_exceeded")


def read_prompt(model: DeployedModel, prompt: str | Sequence[int]) -> list[int]:
    """The token ids the model reads for a prompt of text or of token ids."""
    if not isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("a prompt of token ids must hold at least one token", param="prompt")
        return list(prompt)
    if (problem := not_unicode(prompt)) is not None:
        raise InvalidRequest(f"the prompt {problem}", param="prompt")
    return [model.eod_id, *model.tokenizer.encode(prompt)]


class Completion:
    def __init__(self, model: DeployedModel, prompt: str | Sequence[int], params: SamplingParams,
                 generator: torch.Generator):
        self.prompt_ids = read_prompt(model, prompt)
        check_length(model, len(self.prompt_ids), params.max_tokens)
        if any(not 0 <= token < model.vocab_size for token in self.prompt_ids):
            raise InvalidRequest(f"prompt token ids must lie in 0..{model.vocab_size - 1}", param="prompt")
        self.model = model
        self.params = params
        # Echo leaves out the end-of-document token read before a text: it is no part of the prompt.
        self.echo_from = 1 if isinstance(prompt, str) else 0
        self.sampler = Sampler(params, model.vocab_size, generator)
        self.finish_reason: str | None = None
        self.completion_tokens = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def __iter__(self) -> Iterator[list[Piece]]:
        """The pieces final after each model step (the prompt's first, when echoed); sets `finish_reason`."""
        params = self.params
        scored = params.echo and params.logprobs is not None
        rows = None
        if params.max_tokens > 0 or scored:
            state, rows = self.model.prefill(self.prompt_ids, every_position=scored)
        echoed = self._prompt_pieces(rows if scored else None) if params.echo else []
        if params.max_tokens == 0:
            self.finish_reason = "length"
            yield echoed
            return
        logprobs = rows[-1] if scored else rows
        text = TextStream(self.model.tokenizer, params.stop)
        while True:
            token = self.sampler.choose(logprobs)
            if token == self.model.eod_id:
                self.finish_reason = "stop"
                yield [*echoed, *text.finish()]
                return
            self.completion_tokens += 1
            pieces = text.push(token, *self._scores(logprobs, token))
            if text.stopped or self.completion_tokens == params.max_tokens:
                self.finish_reason = "stop" if text.stopped else "length"
                yield [*echoed, *pieces, *text.finish()]
                return
            yield [*echoed, *pieces]
            echoed = []
            # Only now: the last token needs no forward pass after it.
            state, logprobs = self.model.step(state, token)

    def _scores(self, logprobs: torch.Tensor, token: int) -> tuple[float | None, dict[int, float] | None]:
        if self.params.logprobs is None:
            return None, None
        top = torch.topk(logprobs, self.params.logprobs)
        return float(logprobs[token]), dict(zip(top.indices.tolist(), top.values.tolist(), strict=True))

    def _prompt_pieces(self, rows: torch.Tensor | None) -> list[Piece]:
        """The echoed prompt; `rows[i]` scores the token after position i, so the first token read has no score,
        as in OpenAI's echo."""
        decoder = DecodeStream(skip_special_tokens=False)
        pieces = []
        for position in range(self.echo_from, len(self.prompt_ids)):
            token = self.prompt_ids[position]
            scored = rows is not None and position > 0
            scores = self._scores(rows[position - 1], token) if scored else (None, None)
            pieces.append(Piece(token, decoder.step(self.model.tokenizer.hf, token) or "", *scores))
        return pieces


class TextStream:
    """Generated tokens -> final text pieces. A token's piece is held back while the text's end could still
    begin a stop string; at a stop string the text is cut before it and later tokens are dropped."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str]):
        self.hf = tokenizer.hf
        self.decoder = DecodeStream(skip_special_tokens=False)
        self.stops = stops
        self.text = ""
        self.released = 0  # characters of `text` handed out
        self.pending: list[tuple[int, int, float | None, dict[int, float] | None]] = []  # (end, token, lp, top)
        self.stopped = False

    def push(self, token: int, logprob: float | None, top: dict[int, float] | None) -> list[Piece]:
        start = len(self.text)
        self.text += self.decoder.step(self.hf, token) or ""
        self.pending.append((len(self.text), token, logprob, top))
        cut = self._find_stop(start)
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
            self.pending = [entry for entry, begin in zip(self.pending, self._starts(), strict=True) if begin < cut]
            return self.finish()
        return self._release(len(self.text) - self._held_back())

    def finish(self) -> list[Piece]:
        return self._release(len(self.text))

    def _starts(self) -> list[int]:
        ends = [self.released, *(end for end, *_ in self.pending)]
        return ends[:-1]

    def _release(self, upto: int) -> list[Piece]:
        pieces = []
        while self.pending and min(self.pending[0][0], len(self.text)) <= upto:
            end, token, logprob, top = self.pending.pop(0)
            end = min(end, len(self.text))
            pieces.append(Piece(token, self.text[self.released:end], logprob, top))
            self.released = end
        return pieces

    def _find_stop(self, start: int) -> int | None:
        found = [self.text.find(stop, max(self.released, start - len(stop) + 1)) for stop in self.stops]
        found = [position for position in found if position >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """The longest end of the unreleased text that begins some stop string."""
        tail = self.text[self.released:]
        return max((k for stop in self.stops for k in range(min(len(stop) - 1, len(tail)), 0, -1)
                    if tail.endswith(stop[:k])), default=0)
