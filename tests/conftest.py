"""Shared fixtures: small corpora generated on the fly, and one prepared dataset per session."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from scalelab.data import PrepareConfig, SourceConfig, TokenStore, prepare

WORDS = ("data", "model", "token", "scale", "loss", "law", "curve", "train", "held", "out", "byte", "text",
         "corpus", "filter", "dedup", "gram", "neural", "network", "layer", "weight", "batch", "step", "learning",
         "rate", "value", "size", "order")


def make_text(rng: random.Random, n_words: int) -> str:
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(WORDS))
        if rng.random() < 0.1:
            lines.append(" ".join(line) + ".")
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines)


def write_corpus(root: Path, n_docs: int = 80, seed: int = 0) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"doc{i:03d}.txt").write_text(make_text(rng, rng.randint(20, 200)), encoding="utf-8")
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def tiny_config(source: Path, out: Path, **kwargs) -> PrepareConfig:
    base = {"sources": [{"path": str(source)}], "out": str(out),
            "split": {"validation": 0.1, "test": 0.1},
            "tokenizer": {"kind": "bpe", "vocab_size": 300}}
    base.update(kwargs)
    return PrepareConfig.model_validate(base)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> TokenStore:
    root = tmp_path_factory.mktemp("prepared")
    source = write_corpus(root / "corpus", n_docs=120, seed=1)
    return prepare(tiny_config(source, root / "dataset"), show_progress=False)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scalelab", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def signal_when(process: subprocess.Popen, ready: Callable[[], bool], sig: int, timeout: float = 180) -> None:
    """Send `sig` to the process group of `process` (started with start_new_session=True) at a moment when
    `ready()` holds. The group is frozen with SIGSTOP while `ready()` looks, so the state it saw is the state the
    signal meets: a run cannot finish between the look and the signal, however slow or busy the machine."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            if ready():
                os.killpg(process.pid, sig)
                return
        finally:
            with contextlib.suppress(ProcessLookupError):  # a SIGKILL may have ended the whole group
                os.killpg(process.pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "the awaited state never came"
        time.sleep(0.02)
    raise AssertionError(f"the process ended (exit {process.returncode}) before the awaited state")


__all__ = ["SourceConfig", "make_text", "run_cli", "signal_when", "tiny_config", "write_corpus"]


PROSE = ("the", "model", "learns", "from", "data", "and", "the", "loss", "falls", "with", "more", "tokens", "of",
         "text", "that", "have", "been", "cleaned", "to", "be", "useful", "for", "training", "with", "care")


def prose_doc(rng: random.Random, n_sentences: int) -> str:
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(PROSE) for _ in range(rng.randint(8, 16))]
        sentences.append(" ".join(words).capitalize() + f" {rng.choice(WORDS)} {rng.randint(0, 10**6)}.")
    return "\n".join(" ".join(sentences[i:i + 2]) for i in range(0, len(sentences), 2))


def write_mixed_corpus(root: Path, n_good: int = 150, seed: int = 0) -> Path:
    """Prose that passes the `prose` filters, junk that fails them, and exact and near duplicates."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    good = [prose_doc(rng, rng.randint(8, 20)) for _ in range(n_good)]
    for i, text in enumerate(good):
        (root / f"good{i:03d}.txt").write_text(text)
    for i in range(20):
        (root / f"junk{i:02d}.txt").write_text(f"#### $$$ ||| {chr(97 + seed % 26) * 3} " * rng.randint(5, 30))
    for i in range(10):
        (root / f"exact{i:02d}.txt").write_text(good[i])
    for i in range(10):
        words = good[20 + i].split(" ")
        words[len(words) // 2] = "changed"
        (root / f"near{i:02d}.txt").write_text(" ".join(words))
    return root
