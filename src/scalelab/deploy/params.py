"""What a user asks of a deployed model, validated once for the CLI and the server alike: the sampling
parameters (OpenAI's completion parameters and ranges) and the server's settings. The command line's flags and
their help are read from these fields. Numbers and flags are strict: a JSON `true` is not the number 1, nor 1 or
"yes" a flag. Only pydantic is imported here, so that `scalelab --help` stays fast.
"""

from __future__ import annotations

from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator

from scalelab.config import StrictModel
from scalelab.errors import ConfigError

# `scalelab generate` writes to a terminal: a longer and slightly cooler sample reads better there than one
# with the API's defaults (16 tokens at temperature 1).
GENERATE_DEFAULTS = {"max_tokens": 100, "temperature": 0.8, "top_p": 0.95}
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


class ServeConfig(StrictModel):
    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 keeps the server to this machine, "
                                               "0.0.0.0 exposes it to the network.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    api_key: str | None = Field(None, description="When set, /v1/* requires 'Authorization: Bearer <key>'.")
    max_running: int = Field(4, ge=1, description="Requests generating at once, taking turns a token at a time.")
    max_waiting: int = Field(64, ge=0, description="Requests waiting for a turn; more are refused with 503.")
    max_body_bytes: int = Field(1 << 20, ge=1, description="Largest request body read; a larger one is refused "
                                                           "with 413 before any of it is parsed.")

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("must not be empty: no request could match it; leave --api-key and SCALELAB_API_KEY "
                             "unset to serve without a key")
        return value
