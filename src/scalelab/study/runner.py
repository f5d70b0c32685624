"""Run what a study is missing, on one machine (a process pool) or a Ray cluster, recording every state change.

The runner is the only writer of the results store. A run is claimed (pending -> running) when it is handed to a
worker and finished or failed when its result comes back; a failure is recorded with its error and the study
goes on. Killed at any moment, the runner loses nothing: workers die with it (PR_SET_PDEATHSIG), their rows are
reclaimed on the next start because their runner is gone, and each interrupted run resumes from its last
checkpoint. Ctrl-C releases the runs in flight back to pending and stops.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import socket
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from scalelab.errors import ScalelabError
from scalelab.parallel import SINGLE_THREADED_TOKENIZERS, single_threaded_tokenizers
from scalelab.study.plan import run_dir
from scalelab.study.results import ResultsStore, RunRecord
from scalelab.study.spec import StudySpec
from scalelab.train.config import TrainConfig

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class RunTask:
    id: str
    config: TrainConfig
    run_dir: Path
    threads: int


@dataclass(frozen=True)
class RunOutcome:
    id: str
    metrics: dict[str, Any] | None
    error: str | None


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One process at a time per run directory, whoever started it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def execute(task: RunTask) -> RunOutcome:
    """Train one run; never raises, so one failing run cannot take the study down."""
    import torch

    from scalelab.train.run import train_run

    torch.set_num_threads(task.threads)
    try:
        with run_lock(task.run_dir):
            metrics = train_run(task.config.model_copy(update={"num_threads": task.threads}), task.run_dir,
                                show_progress=False)
        return RunOutcome(task.id, metrics, None)
    except ScalelabError as exc:
        return RunOutcome(task.id, None, f"{type(exc).__name__}: {exc}")
    except Exception:  # a bug in one run is recorded with its traceback; the study goes on
        return RunOutcome(task.id, None, traceback.format_exc(limit=20))


def _die_with_parent() -> None:
    """Workers must not outlive a killed runner: an orphan would keep training a run the next runner resumes."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the run-directory lock still keeps two trainers apart
    single_threaded_tokenizers()


class Backend(Protocol):
    """Where runs execute: hands out a handle per submitted task and its outcome once done."""

    @property
    def capacity(self) -> int: ...

    def submit(self, task: RunTask) -> Any: ...

    def wait(self, pending: set[Any]) -> set[Any]: ...

    def outcome(self, handle: Any, run_id: str) -> RunOutcome: ...

    def shutdown(self) -> None: ...


class LocalBackend:
    def __init__(self, workers: int):
        self.workers = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_die_with_parent)

    @property
    def capacity(self) -> int:
        return self.workers

    def submit(self, task: RunTask) -> Future[RunOutcome]:
        return self._pool.submit(execute, task)

    def wait(self, pending: set[Future[RunOutcome]]) -> set[Future[RunOutcome]]:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        return done

    def outcome(self, future: Future[RunOutcome], run_id: str) -> RunOutcome:
        try:
            return future.result()
        except BrokenProcessPool:
            # A worker died outright (killed, out of memory): record it against this run, start fresh workers.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return RunOutcome(run_id, None, "the worker process running this run died (killed or out of memory)")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class RayBackend:
    """Each run is a Ray task asking for num_cpus / num_gpus; results come back to this process."""

    def __init__(self, address: str | None, num_cpus: float, num_gpus: float):
        try:
            import ray
        except ImportError as exc:
            raise ScalelabError("the ray backend needs Ray: pip install 'scalelab[ray]'") from exc
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": SINGLE_THREADED_TOKENIZERS})
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(execute)
        self._capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))

    @property
    def capacity(self) -> int:
        return self._capacity

    def submit(self, task: RunTask):
        return self._remote.remote(task)

    def wait(self, pending: set) -> set:
        done, _ = self._ray.wait(list(pending), num_returns=1)
        return set(done)

    def outcome(self, ref, run_id: str) -> RunOutcome:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayError as exc:
            return RunOutcome(run_id, None, f"Ray task failed: {exc}")

    def shutdown(self) -> None:
        return None  # a cluster outlives the study; a local Ray stops with this process


def run_all(runs: list[RunRecord], store: ResultsStore, study_dir: Path, backend: Backend, threads: int,
            on_outcome: Callable[[RunRecord, RunOutcome], None] = lambda run, outcome: None) -> None:
    """Claim and run every pending run of `runs` (planned records), each in its directory under `study_dir`,
    keeping the backend's capacity busy."""
    pid, host = os.getpid(), socket.gethostname()
    by_id = {run.id: run for run in runs}
    # Longest first, so the last runs to finish are short ones and no worker idles long at the end.
    todo = sorted((run for run in runs if store.get(run.id).status == "pending"),
                  key=lambda run: -(run.estimated_seconds or run.train_tokens or 0))
    in_flight: dict[Any, str] = {}
    try:
        while todo or in_flight:
            while todo and len(in_flight) < backend.capacity:
                run = todo.pop(0)
                task = RunTask(run.id, run.train_config(), run_dir(study_dir, run.id), threads)
                if store.claim(run.id, pid, host):
                    in_flight[backend.submit(task)] = run.id
            for handle in backend.wait(set(in_flight)):
                run_id = in_flight.pop(handle)
                outcome = backend.outcome(handle, run_id)
                if outcome.error is None:
                    store.finish(run_id, outcome.metrics)
                else:
                    store.fail(run_id, outcome.error)
                on_outcome(by_id[run_id], outcome)
    except BaseException:
        for run_id in in_flight.values():
            store.release(run_id)
        raise
    finally:
        backend.shutdown()


def make_backend(spec: StudySpec, workers: int | None = None, backend: str | None = None) -> Backend:
    resources = spec.resources
    if (backend or resources.backend) == "ray":
        return RayBackend(resources.ray_address, resources.num_cpus, resources.num_gpus)
    return LocalBackend(workers or resources.workers)


def threads_per_run(spec: StudySpec, workers: int | None = None) -> int:
    if spec.resources.threads_per_run:
        return spec.resources.threads_per_run
    return max(1, (os.cpu_count() or 1) // (workers or spec.resources.workers))
