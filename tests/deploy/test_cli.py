"""`scalelab generate` and `scalelab serve` as a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.conftest import run_cli
from tests.deploy.conftest import FAMILIES
from tests.test_cli import assert_user_error


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_streams_a_seeded_sample(exported, family):
    args = ("generate", str(exported[family]), "--prompt", "the data", "--max-tokens", "12", "--seed", "4")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("the data") and first.stdout == second.stdout
    assert f"{family} " in first.stderr and "tokens/s" in first.stderr


def test_generate_several_samples_int8(exported):
    result = run_cli("generate", str(exported["lstm"]), "-n", "2", "-m", "5", "--quantize", "int8", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("tokens/s") == 2


@pytest.mark.parametrize("args, fragments", [
    (["--temperature", "5"], ["temperature", "less than or equal to 2"]),
    (["--max-tokens", "500"], ["maximum context length is 64 tokens", "500 for the completion"]),
    (["--quantize", "int4"], ["--quantize", "'int4' is not one of 'int8'"]),
    (["--num", "0"], ["--num must be at least 1"]),
    (["--seed", str(2**64)], ["seed", "less than or equal to 18446744073709551615"]),
    # Python decodes argv bytes that are not UTF-8 into lone surrogates (surrogateescape).
    (["--prompt", os.fsdecode(b"the \xff")], ["prompt", "not valid Unicode", "U+DCFF"]),
    (["--stop", os.fsdecode(b"\xff")], ["stop", "lone surrogate"]),
])
def test_generate_bad_options_are_one_line_exit_2(exported, args, fragments):
    assert_user_error(run_cli("generate", str(exported["transformer"]), *args), *fragments)


def test_generate_refuses_what_is_not_a_model(exported, tmp_path):
    assert_user_error(run_cli("generate", str(tmp_path)), "neither an exported model")
    assert_user_error(run_cli("generate", str(exported["ngram"]), "--quantize", "int8"), "neural models")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_answers_the_openai_client(exported):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "scalelab", "serve", str(exported["transformer"]), "--port",
                               str(port), "--model-name", "tiny", "--api-key", "sk-1", "--max-running", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").json()["model"] == "tiny":
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-1", max_retries=0)
        assert client.completions.create(model="tiny", prompt="the", max_tokens=3).model == "tiny"
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells how it ended.
    assert server.returncode == -signal.SIGTERM and "Finished server process" in output
    assert f"http://127.0.0.1:{port}/v1" in output


def test_serve_bad_options_are_one_line_exit_2(exported):
    assert_user_error(run_cli("serve", str(exported["transformer"]), "--max-running", "0"), "max_running")
    assert_user_error(run_cli("serve", str(exported["transformer"]), "--max-body-bytes", "0"), "max_body_bytes")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert_user_error(run_cli("serve", str(exported["ngram"]), "--port", port),
                          f"cannot listen on 127.0.0.1:{port}")


def test_serve_refuses_an_empty_api_key(exported):
    """An empty key would answer 401 to every request, or, read as no key, leave the server open."""
    assert_user_error(run_cli("serve", str(exported["ngram"]), "--api-key", ""), "api_key", "empty")
    from_env = subprocess.run([sys.executable, "-m", "scalelab", "serve", str(exported["ngram"]), "--port", "0"],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "SCALELAB_API_KEY": ""})
    assert_user_error(from_env, "SCALELAB_API_KEY", "empty")


def test_greedy_generate_writes_what_the_transformers_pipeline_writes(exported):
    from transformers import pipeline

    out = exported["transformer"]
    generator = pipeline("text-generation", model=str(out))
    for prompt in ("the data", "loss", "model", "held out", "x"):
        expected = generator(prompt, max_new_tokens=10, do_sample=False)[0]["generated_text"]
        result = run_cli("generate", str(out), "--prompt", prompt, "--max-tokens", "10", "--temperature", "0")
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected + "\n", prompt
