"""OpenAI's completions protocol: the request as scalelab validates it, and the bodies it answers with.

Field names, defaults and ranges are OpenAI's (`/v1/completions`), so its clients work unchanged; unknown fields
are rejected, as OpenAI rejects them, rather than silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from scalelab.config import StrictModel
from scalelab.data.tokenizer import Tokenizer
from scalelab.deploy.completion import Piece
from scalelab.deploy.params import SamplingParams

MAX_CHOICES = 64  # one request holds one turn on the model: bound what it may queue behind it
Prompt = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]


class StreamOptions(StrictModel):
    include_usage: StrictBool = False


class CompletionRequest(SamplingParams):
    model: str
    prompt: Prompt = ""
    n: StrictInt = Field(1, ge=1, le=16)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    best_of: StrictInt | None = Field(None, ge=1, le=16)
    suffix: str | None = None
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        # Many clients send null for every parameter they leave unset.
        return {key: value for key, value in data.items() if value is not None} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by left-to-right models")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options apply only with stream: true")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(f"prompts x n may be at most {MAX_CHOICES} choices in one request")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt as text or as token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)

    @property
    def sampling(self) -> SamplingParams:
        return SamplingParams.model_validate(self.model_dump(include=set(SamplingParams.model_fields)))


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class LogprobsBuilder:
    """OpenAI's legacy logprobs object of one choice, built piece by piece; text offsets count from the start of
    the prompt, as OpenAI's do."""

    def __init__(self, tokenizer: Tokenizer, offset: int):
        self.tokenizer = tokenizer
        self.offset = offset

    def build(self, pieces: list[Piece]) -> dict[str, Any]:
        tokens, offsets = [], []
        for piece in pieces:
            tokens.append(piece.text)
            offsets.append(self.offset)
            self.offset += len(piece.text)
        return {"tokens": tokens, "token_logprobs": [piece.logprob for piece in pieces],
                "top_logprobs": [None if piece.top is None else
                                 {self.tokenizer.decode([token]): value for token, value in piece.top.items()}
                                 for piece in pieces],
                "text_offset": offsets}


def choice(index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_body(id_: str, created: int, model: str, choices: list[dict[str, Any]],
                    usage: dict[str, int] | None) -> dict[str, Any]:
    body = {"id": id_, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
