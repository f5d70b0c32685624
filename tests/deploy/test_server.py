"""The server through the official `openai` client and raw HTTP, against a live uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
import uvicorn

from scalelab.deploy.params import ServeConfig
from scalelab.deploy.server import create_app
from tests.deploy.conftest import CONTEXT
from tests.deploy.test_completion import Recording

KEY = "sk-test"


@contextmanager
def live_server(model, **config) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(create_app(model, ServeConfig(**config)), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def url(models) -> Iterator[str]:
    with live_server(models["transformer"]) as address:
        yield address


def client(url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=60)


def test_completion_through_the_openai_client(url, models):
    model = models["transformer"]
    answer = client(url).completions.create(model=model.name, prompt=["the data", "the loss"], n=2, max_tokens=5,
                                            seed=1, temperature=0.9)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason in ("stop", "length") for c in answer.choices)
    # What the model read: each text after the end-of-document token.
    prompt_tokens = len(model.tokenizer.encode("the data")) + len(model.tokenizer.encode("the loss")) + 2
    assert answer.usage.prompt_tokens == prompt_tokens and answer.usage.completion_tokens <= 20
    again = client(url).completions.create(model=model.name, prompt=["the data", "the loss"], n=2, max_tokens=5,
                                           seed=1, temperature=0.9)
    assert [c.text for c in again.choices] == [c.text for c in answer.choices]
    listed = client(url).models.list()
    assert [m.id for m in listed.data] == [model.name]


def test_streaming_matches_the_whole_answer(url, models):
    name = models["transformer"].name
    kwargs = {"model": name, "prompt": "the model", "max_tokens": 12, "seed": 5}
    whole = client(url).completions.create(**kwargs).choices[0]
    chunks = list(client(url).completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
    assert chunks[-1].usage.completion_tokens > 0
    with httpx.stream("POST", f"{url}/v1/completions", json={**kwargs, "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_logprobs_with_echo_score_the_prompt(url, models):
    model = models["transformer"]
    text = "the data model loss"
    answer = client(url).completions.create(model=model.name, prompt=text, max_tokens=0, echo=True, logprobs=3)
    choice = answer.choices[0]
    assert choice.text == text and "".join(choice.logprobs.tokens) == text
    ids = [model.eod_id, *model.tokenizer.encode(text)]
    _, every = model.prefill(ids, every_position=True)
    torch.testing.assert_close(torch.tensor(choice.logprobs.token_logprobs),
                               every[torch.arange(len(ids) - 1), ids[1:]])
    assert choice.logprobs.text_offset == [text.index(t, o) for t, o in
                                           zip(choice.logprobs.tokens, choice.logprobs.text_offset, strict=True)]
    assert all(len(top) <= 3 for top in choice.logprobs.top_logprobs)


def test_usage_counts_what_the_model_read(models):
    model = Recording(models["transformer"])
    with live_server(model) as address:
        text = client(address).completions.create(model=model.name, prompt="the data", max_tokens=1)
        ids = client(address).completions.create(model=model.name, prompt=[5, 6, 7], max_tokens=1)
    assert model.read == [[model.eod_id, *model.tokenizer.encode("the data")], [5, 6, 7]]
    assert text.usage.prompt_tokens == len(model.read[0]) and ids.usage.prompt_tokens == 3


@pytest.mark.parametrize("body, status, param, fragment", [
    ({"prompt": "data " * 80}, 400, "prompt", f"maximum context length is {CONTEXT} tokens"),
    ({"prompt": "x", "max_tokens": 100}, 400, "max_tokens", "102 tokens (2 in your prompt; 100 for the completion)"),
    ({"prompt": "x", "temperature": 3}, 400, "temperature", "less than or equal to 2"),
    ({"prompt": "x", "top_p": 0}, 400, "top_p", "greater than 0"),
    ({"prompt": "x", "n": 0}, 400, "n", "greater than or equal to 1"),
    ({"prompt": "x", "logprobs": 9}, 400, "logprobs", "less than or equal to 5"),
    ({"prompt": "x", "frobnicate": 1}, 400, "frobnicate", "Unrecognized request argument"),
    ({"prompt": [10**9]}, 400, "prompt", "token ids must lie"),
    ({"prompt": "x", "model": "gpt-4"}, 404, "model", "does not exist"),
    ({"prompt": ["x"] * 9, "n": 8}, 400, None, "at most 64 choices"),
    ({"prompt": [[]]}, 400, "prompt", "at least one token"),
    ({"prompt": "x", "seed": 2**64}, 400, "seed", "less than or equal to 18446744073709551615"),
    ({"prompt": "x", "max_tokens": True}, 400, "max_tokens", "valid integer"),
    ({"prompt": "x", "n": True}, 400, "n", "valid integer"),
    ({"prompt": "x", "logprobs": True}, 400, "logprobs", "valid integer"),
    ({"prompt": "x", "temperature": True}, 400, "temperature", "valid number"),
    ({"prompt": "x", "echo": "yes"}, 400, "echo", "valid boolean"),
])
def test_bad_requests_get_openai_errors(url, models, body, status, param, fragment):
    response = httpx.post(f"{url}/v1/completions", json={"model": models["transformer"].name, **body})
    error = response.json()["error"]
    assert response.status_code == status and error["param"] == param and fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.APIStatusError) as raised:  # the client sees the same status
        rest = {key: value for key, value in body.items() if key not in ("model", "prompt")}
        client(url).completions.create(model=body.get("model", models["transformer"].name), prompt=body["prompt"],
                                       extra_body=rest)
    assert raised.value.status_code == status


def test_malformed_bodies_and_unknown_routes(url):
    response = httpx.post(f"{url}/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/completions", json=[1, 2]).status_code == 400
    unknown = httpx.get(f"{url}/v1/nothing")
    assert unknown.status_code == 404 and "Invalid URL (GET /v1/nothing)" in unknown.json()["error"]["message"]


def test_chat_completions_answer_an_openai_404_naming_the_route_served(url, models):
    with pytest.raises(openai.NotFoundError) as raised:
        client(url).chat.completions.create(model=models["transformer"].name,
                                            messages=[{"role": "user", "content": "hello"}])
    message = raised.value.body["message"]
    assert "POST /v1/chat/completions" in message and "POST /v1/completions" in message


JSON = {"content-type": "application/json"}


# Lone surrogates come from JSON escapes; UTF-8 cannot encode them, so neither the tokenizer nor an answer that
# quotes them can take them.
@pytest.mark.parametrize("body, status, param, fragment", [
    (b'{"model": "MODEL", "prompt": "the \\ud800"}', 400, "prompt", "U+D800"),
    (b'{"model": "MODEL", "prompt": ["the", "\\udc80 data"]}', 400, "prompt", "U+DC80"),
    (b'{"model": "MODEL", "prompt": "the", "stop": ["\\ud800"]}', 400, "stop", "lone surrogate"),
    (b'{"model": "MODEL", "prompt": "the", "stop": "a\\udfff"}', 400, "stop", "lone surrogate"),
    (b'{"model": "\\ud800", "prompt": "the"}', 404, "model", "does not exist"),
    (b'{"model": "MODEL", "prompt": "the", "\\ud800": 1}', 400, None, "unicode string"),  # a field name
    (b'{"model": "MODEL", "prompt": "the \xff"}', 400, None, ""),  # bytes that are not UTF-8
])
def test_text_that_is_not_unicode_gets_an_openai_error(url, models, body, status, param, fragment):
    response = httpx.post(f"{url}/v1/completions", content=body.replace(b"MODEL", models["transformer"].name.encode()),
                          headers=JSON)
    error = response.json()["error"]
    assert response.status_code == status and error["param"] == param and fragment in error["message"], error
    assert httpx.get(f"{url}/health").json()["admitted"] == 0


def test_bodies_over_the_limit_are_refused_before_they_are_read(url, models):
    model = models["transformer"]
    small = json.dumps({"model": model.name, "prompt": "the", "max_tokens": 1}).encode()
    with live_server(model, max_body_bytes=1000) as address:
        assert httpx.post(f"{address}/v1/completions", content=small, headers=JSON).status_code == 200
        # Not JSON either: a 413, not a 400, shows the body was refused before it was parsed.
        declared = httpx.post(f"{address}/v1/completions", content=b"{" * 1001, headers=JSON)
        chunked = httpx.post(f"{address}/v1/completions", content=iter([b"{" * 600] * 2), headers=JSON)
        assert "content-length" not in chunked.request.headers
        for response in (declared, chunked):
            error = response.json()["error"]
            assert response.status_code == 413 and error["code"] == "request_too_large", error
            assert "1000 bytes" in error["message"] and set(error) == {"message", "type", "param", "code"}
    with pytest.raises(openai.APIStatusError) as raised:  # the default limit is 1 MiB
        client(url).completions.create(model=model.name, prompt="x" * (1 << 20))
    assert raised.value.status_code == 413


def test_api_key_is_required_on_v1_only(models):
    model = models["transformer"]
    with live_server(model, api_key=KEY) as address:
        assert client(address, KEY).completions.create(model=model.name, prompt="x", max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError) as wrong:
            client(address, "sk-wrong").completions.create(model=model.name, prompt="x")
        assert wrong.value.body["code"] == "invalid_api_key"
        missing = httpx.get(f"{address}/v1/models")
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        assert httpx.get(f"{address}/health").json()["status"] == "ok"


def test_bounded_load_has_no_server_errors(url, models):
    name = models["transformer"].name

    def one(seed: int) -> tuple[int, float]:
        started = time.perf_counter()
        try:
            client(url).completions.create(model=name, prompt="the data", max_tokens=8, seed=seed)
            status = 200
        except openai.APIStatusError as error:
            status = error.status_code
        return status, time.perf_counter() - started

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(200)))
    statuses = Counter(status for status, _ in results)
    latencies = sorted(latency for _, latency in results)
    print(f"\n200 requests at concurrency 16: {dict(statuses)}; latency p50 {statistics.median(latencies):.3f} s, "
          f"p99 {latencies[197]:.3f} s")
    assert statuses == {200: 200}
    assert httpx.get(f"{url}/health").json()["admitted"] == 0


class Gated:
    """A model whose first step waits for a gate: requests stay in flight, whatever the machine's speed, until the
    test opens it."""

    def __init__(self, model):
        self.model = model
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self.model, name)

    def prefill(self, ids, every_position=False):
        assert self.gate.wait(timeout=120), "the gate was never opened"
        return self.model.prefill(ids, every_position)


def wait_for_health(address: str, **expected) -> None:
    deadline = time.monotonic() + 60
    while any(httpx.get(f"{address}/health").json()[key] != value for key, value in expected.items()):
        assert time.monotonic() < deadline, f"the server never reached {expected}"
        time.sleep(0.02)


def test_beyond_the_bound_requests_are_refused_at_once(models):
    gated = Gated(models["transformer"])
    body = {"model": gated.name, "prompt": "the", "max_tokens": 4}
    with live_server(gated, max_running=1, max_waiting=1) as address, ThreadPoolExecutor(2) as pool:
        post = lambda: httpx.post(f"{address}/v1/completions", json=body, timeout=120)  # noqa: E731
        running = pool.submit(post)
        wait_for_health(address, running=1, admitted=1)
        waiting = pool.submit(post)
        wait_for_health(address, admitted=2)
        refused = post()  # one running and one waiting fill the server: refused while both are in flight
        gated.gate.set()
        assert running.result().status_code == waiting.result().status_code == 200
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "server_overloaded" and refused.headers["retry-after"] == "1"


def test_a_client_leaving_mid_stream_does_not_hurt_later_requests(models):
    """The n-gram streams 16 choices of 8,000 tokens (seconds of work); leaving after the first chunk must free
    the server within a moment, not after the work is done."""
    model = models["ngram"]
    body = {"model": model.name, "prompt": "the", "max_tokens": 8000, "n": 16, "stream": True,
            "logit_bias": {str(model.eod_id): -100}}
    with live_server(model) as address:
        for _ in range(3):
            with httpx.stream("POST", f"{address}/v1/completions", json=body) as response:
                first = next(line for line in response.iter_lines() if line)
                assert json.loads(first.removeprefix("data: "))["choices"]
            wait_until_idle(address)
        with pytest.raises(httpx.ReadTimeout):  # the same work, not streamed: the client gives up waiting
            httpx.post(f"{address}/v1/completions", json={**body, "stream": False}, timeout=0.5)
        wait_until_idle(address)
        answer = client(address).completions.create(model=model.name, prompt="the", max_tokens=4)
    assert answer.choices[0].finish_reason in ("stop", "length")


def wait_until_idle(address: str) -> None:
    left = time.monotonic()
    while httpx.get(f"{address}/health").json()["admitted"]:
        # Freeing takes one token step; the work left behind would take tens of seconds.
        assert time.monotonic() - left < 10.0, "the server kept generating for a client that left"
        time.sleep(0.02)


@pytest.mark.parametrize("family", ["lstm", "ngram"])
def test_every_family_serves(models, family):
    model = models[family]
    with live_server(model) as address:
        answer = client(address).completions.create(model=model.name, prompt="the data", max_tokens=6, logprobs=1)
    assert answer.model == model.name and len(answer.choices[0].logprobs.tokens) <= 6


class Broken:
    """A model whose every step fails, as a bug or an exhausted machine would make it."""

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    def prefill(self, ids, every_position=False):
        raise RuntimeError("the model broke")


def test_a_failing_request_never_takes_the_server_down(models):
    broken = Broken(models["transformer"])
    body = {"model": broken.name, "prompt": "the", "max_tokens": 4}
    with live_server(broken) as address:
        failed = httpx.post(f"{address}/v1/completions", json=body)
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "server_error"
        with httpx.stream("POST", f"{address}/v1/completions", json={**body, "stream": True}) as response:
            events = [line for line in response.iter_lines() if line]
        assert "the model broke" in events[0] and events[-1] == "data: [DONE]"
        assert httpx.get(f"{address}/health").json()["admitted"] == 0
        assert httpx.post(f"{address}/v1/completions", json={**body, "max_tokens": 0}).status_code == 200
