"""An OpenAI-compatible HTTP server for one model: `scalelab serve DIR`.

Routes: `POST /v1/completions` (streaming or not, logprobs with echo for scoring), `GET /v1/models`,
`GET /v1/models/{id}`, `GET /health`; no chat completions, as the models are base models, so any other route,
`/v1/chat/completions` included, answers 404 naming the one served. Every error is an OpenAI error body; user
mistakes are 4xx, so clients do not retry them. A request body over `max_body_bytes` is refused with 413 before it
is parsed.

Concurrency: the model runs on one thread. The requests in flight, at most `max_running`, take turns on it one
model step (one token) at a time, so a long completion does not hold up a short one and each stream starts
soon; `max_waiting` more wait for a turn; beyond that a request is refused at once with 503 and Retry-After,
rather than left waiting without limit. A client that disconnects mid-stream gives its turn up at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scalelab.deploy import protocol
from scalelab.deploy.completion import Completion, Piece
from scalelab.deploy.model import DeployedModel
from scalelab.deploy.params import InvalidRequest, ServeConfig
from scalelab.deploy.sampling import make_generator
from scalelab.errors import ConfigError

log = logging.getLogger("scalelab.serve")


class Overloaded(Exception):
    pass


class Scheduler:
    """Admission and turns on the model thread."""

    def __init__(self, max_running: int, max_waiting: int):
        self.capacity = max_running + max_waiting
        self.slots = asyncio.Semaphore(max_running)
        self.admitted = 0
        self.running = 0
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="scalelab-model")

    def admit(self) -> None:
        if self.admitted >= self.capacity:
            raise Overloaded
        self.admitted += 1

    def leave(self) -> None:
        self.admitted -= 1

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self.slots:
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1

    async def call(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)

    async def step(self, steps: Iterator[list[Piece]]) -> list[Piece] | None:
        """The next step's pieces, or None when the completion has ended."""
        return await self.call(next, steps, None)


class _AdmittedStream(StreamingResponse):
    """Gives the admission back however the stream ends, even if it never started."""

    def __init__(self, content: AsyncIterator[str], scheduler: Scheduler):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.scheduler = scheduler

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            self.scheduler.leave()


class _ErrorResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        # ASCII, escaping the rest: a message may quote the caller's text, and a lone surrogate in it (from a JSON
        # "\ud800") has no UTF-8 form.
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return _ErrorResponse(protocol.error_body(message, type_, param, code), status_code=status, headers=headers)


class _BodyLimit:
    """Reads each request's body before the app does, refusing it with 413 once it passes `max_bytes`: at once
    when Content-Length declares more, else as soon as the bytes received do (a chunked body). The app then
    receives the messages read, so an oversized body is never parsed or tokenised."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        read: list[Message] = []
        size, more = 0, not too_large
        while more:
            message = await receive()
            read.append(message)
            size += len(message.get("body", b""))
            too_large = size > self.max_bytes
            more = message.get("more_body", False) and not too_large
        if too_large:
            refusal = _error(413, f"The request body is larger than the {self.max_bytes} bytes this server accepts.",
                             "invalid_request_error", code="request_too_large")
            await refusal(scope, receive, send)
            return

        async def replay() -> Message:
            return read.pop(0) if read else await receive()

        await self.app(scope, replay, send)


def create_app(model: DeployedModel, config: ServeConfig) -> FastAPI:
    app = FastAPI(title="scalelab", summary=f"OpenAI-compatible completions from {model.name} ({model.family})")
    scheduler = Scheduler(config.max_running, config.max_waiting)
    app.state.scheduler = scheduler
    _install_error_handlers(app)
    app.add_middleware(_BodyLimit, max_bytes=config.max_body_bytes)  # added first, so inside authentication
    if config.api_key is not None:
        _install_authentication(app, config.api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.name, "family": model.family, "running": scheduler.running,
                "admitted": scheduler.admitted}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(model)]}

    @app.get("/v1/models/{model_id}")
    async def model_card(model_id: str) -> dict[str, Any]:
        _check_model(model, model_id)
        return _model_card(model)

    @app.post("/v1/completions")
    async def completions(request: protocol.CompletionRequest, connection: Request):
        _check_model(model, request.model)
        scheduler.admit()
        try:
            runs = await scheduler.call(_start, model, request)
        except BaseException:
            scheduler.leave()
            raise
        if request.stream:
            return _AdmittedStream(_stream(model, request, runs, scheduler), scheduler)
        try:
            return await _complete(model, request, runs, scheduler, connection)
        finally:
            scheduler.leave()

    return app


def _model_card(model: DeployedModel) -> dict[str, Any]:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": "scalelab",
            "family": model.family, "context_length": model.context_length}


def _check_model(model: DeployedModel, name: str) -> None:
    if name != model.name:
        raise InvalidRequest(f"The model '{name}' does not exist; this server serves '{model.name}'",
                             param="model", code="model_not_found")


class _Run:
    """One choice: its completion, the prompt it continues, and where its logprobs' text offsets start."""

    def __init__(self, index: int, prompt_index: int, completion: Completion, offset: int):
        self.index = index
        self.prompt_index = prompt_index
        self.completion = completion
        self.steps = iter(completion)
        self.logprobs = protocol.LogprobsBuilder(completion.model.tokenizer, offset)


def _start(model: DeployedModel, request: protocol.CompletionRequest) -> list[_Run]:
    """Tokenise the prompts and check every choice before any is generated, so a bad request fails whole."""
    params = request.sampling
    generator = make_generator(params.seed)
    runs = []
    for prompt_index, prompt in enumerate(request.prompts()):
        # Logprobs' text offsets count from the prompt's start; only an unechoed prompt's length is needed.
        offset = 0 if params.echo or params.logprobs is None else len(
            prompt if isinstance(prompt, str) else model.tokenizer.decode(prompt))
        for _ in range(request.n):
            runs.append(_Run(len(runs), prompt_index, Completion(model, prompt, params, generator), offset))
    return runs


def _logprobs(run: _Run, request: protocol.CompletionRequest, pieces: list[Piece]) -> dict[str, Any] | None:
    return run.logprobs.build(pieces) if request.logprobs is not None else None


async def _complete(model: DeployedModel, request: protocol.CompletionRequest, runs: list[_Run],
                    scheduler: Scheduler, connection: Request) -> dict[str, Any] | Response:
    choices = []
    async with scheduler.turn():
        for run in runs:
            pieces = []
            while (step := await scheduler.step(run.steps)) is not None:
                if await connection.is_disconnected():  # nobody is left to read the answer
                    return Response(status_code=499)
                pieces += step
            choices.append(protocol.choice(run.index, "".join(piece.text for piece in pieces),
                                           _logprobs(run, request, pieces), run.completion.finish_reason))
    return protocol.completion_body(protocol.completion_id(), protocol.now(), model.name, choices,
                                    _usage(runs))


def _usage(runs: list[_Run]) -> dict[str, int]:
    # Each prompt counts once, however many choices it has (as OpenAI counts it).
    prompts = {run.prompt_index: run.completion.prompt_tokens for run in runs}
    return protocol.usage(sum(prompts.values()), sum(run.completion.completion_tokens for run in runs))


async def _stream(model: DeployedModel, request: protocol.CompletionRequest, runs: list[_Run],
                  scheduler: Scheduler) -> AsyncIterator[str]:
    id_, created = protocol.completion_id(), protocol.now()

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        return f"data: {json.dumps(protocol.completion_body(id_, created, model.name, choices, usage))}\n\n"

    try:
        async with scheduler.turn():
            for run in runs:
                while (pieces := await scheduler.step(run.steps)) is not None:
                    finished = run.completion.finish_reason
                    if pieces or finished:
                        text = "".join(piece.text for piece in pieces)
                        yield event([protocol.choice(run.index, text, _logprobs(run, request, pieces), finished)])
        if request.stream_options is not None and request.stream_options.include_usage:
            yield event([], _usage(runs))
    except Exception as exc:  # headers are sent: the error can only travel as an event
        log.exception("stream failed")
        yield f"data: {json.dumps(protocol.error_body(f'generation failed: {exc}', 'server_error'))}\n\n"
    yield "data: [DONE]\n\n"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InvalidRequest)
    async def invalid(_: Request, exc: InvalidRequest) -> JSONResponse:
        status = 404 if exc.code == "model_not_found" else 400
        return _error(status, str(exc), "invalid_request_error", exc.param, exc.code)

    @app.exception_handler(ConfigError)
    async def config(_: Request, exc: ConfigError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request_error")

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        location = [str(part) for part in first["loc"] if part != "body"]
        param = ".".join(location) or None
        if first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        elif first["type"] == "json_invalid":
            message, param = f"The request body is not valid JSON: {first['msg']}", None
        else:
            message = f"{param}: {first['msg'].removeprefix('Value error, ')}" if param else first["msg"]
        return _error(400, message, "invalid_request_error", param, first["type"])

    @app.exception_handler(HTTPException)
    async def http(request: Request, exc: HTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404:  # no such route (a model that does not exist is an InvalidRequest)
            message = (f"Invalid URL ({request.method} {request.url.path}): this server completes text with a base "
                       "model at POST /v1/completions and serves no chat completions; it also answers "
                       "GET /v1/models and GET /health.")
        return _error(exc.status_code, message, "invalid_request_error", headers=exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return _error(503, "The server is at capacity; retry shortly.", "server_error", code="server_overloaded",
                      headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")


def _install_authentication(app: FastAPI, api_key: str) -> None:
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            given = request.headers.get("authorization")
            if given is None:
                return _error(401, "You didn't provide an API key: send 'Authorization: Bearer <key>'.",
                              "invalid_request_error", code="missing_api_key")
            if not hmac.compare_digest(given.encode(), expected):
                return _error(401, "Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
        return await call_next(request)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: any free one); a busy port or a bad address is the user's to fix."""
    try:
        family, kind, protocol_, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, protocol_)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(model: DeployedModel, config: ServeConfig, on_ready=None) -> None:
    """Serve until interrupted; `on_ready(url)` is called with the API's address once the port is bound."""
    import uvicorn

    sock = listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    if on_ready is not None:
        on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}/v1")
    server = uvicorn.Server(uvicorn.Config(create_app(model, config), log_level="info", timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
