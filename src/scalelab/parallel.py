"""Ordered parallel map with a bounded window, so a stream larger than memory can flow through workers."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


# Parallelism comes from worker processes; `tokenizers`' own thread pool would only fight them over cores, and it
# warns (then disables itself) in every process forked after it ran.
SINGLE_THREADED_TOKENIZERS = {"TOKENIZERS_PARALLELISM": "false"}


def single_threaded_tokenizers() -> None:
    os.environ.update(SINGLE_THREADED_TOKENIZERS)


def _init_worker() -> None:
    single_threaded_tokenizers()
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int | None = None) -> Iterator[R]:
    """`map(fn, items)` over `workers` processes, yielding results in input order.

    At most `window` items (default 2 per worker) are in flight, unlike `Pool.imap`, which drains its input
    eagerly. With one worker everything runs inline, in this process.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or 2 * workers
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
