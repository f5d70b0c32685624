import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from scalelab.errors import ConfigError
from scalelab.study.results import FRAME_COLUMNS, SCHEMA_VERSION, ResultsStore, RunRecord, StoreError

HOST = socket.gethostname()
NEURAL = {"eval": {"nll": 3.5, "perplexity": 33.1, "bits_per_byte": 1.2, "tokens": 2000, "bytes": 8000,
                   "split": "validation"},
          "N": 12_000, "params": 30_000, "tokens_seen": 40_000, "epochs": 2.0, "flops": 2.88e9, "D": 20_000,
          "U": 20_000, "run_id": "r0", "family": "transformer", "variant": "raw", "wall_seconds": 8.0}
NGRAM = {"eval": {"nll": 4.0, "perplexity": 54.6, "bits_per_byte": 1.4, "tokens": 2000, "bytes": 8000,
                  "split": "validation"},
         "N": None, "params": 5_000, "tokens_seen": 20_000, "epochs": 1.0, "flops": 0.0, "wall_seconds": 0.5}


def row(run_id: str, family: str = "transformer", D: int = 20_000, **config) -> RunRecord:
    return RunRecord(id=run_id, config={"family": family, "tokens": D, **config}, family=family, size="tiny",
                     variant="raw", D=D, U=D, seed=0, estimated_seconds=10.0)


@pytest.fixture
def store(tmp_path):
    with ResultsStore(tmp_path / "results.sqlite") as opened:
        opened.sync_plan([row(f"r{i}") for i in range(4)])
        yield opened


def test_schema_is_versioned_and_in_wal_mode(store):
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert ("runs_status",) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    db.close()
    with ResultsStore(store.path) as again:
        assert [r.id for r in again.records()] == ["r0", "r1", "r2", "r3"]


def test_refuses_files_that_are_not_a_results_store(tmp_path):
    (tmp_path / "text.sqlite").write_text("not a database at all, just some text that is long enough" * 20)
    with pytest.raises(StoreError, match="not a readable results store"):
        ResultsStore(tmp_path / "text.sqlite")
    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE things (x)")
    other.close()
    with pytest.raises(StoreError, match="something else"):
        ResultsStore(tmp_path / "other.sqlite")
    newer = sqlite3.connect(tmp_path / "newer.sqlite")
    newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    newer.close()
    with pytest.raises(StoreError, match="upgrade scalelab"):
        ResultsStore(tmp_path / "newer.sqlite")


def test_transitions_and_their_guards(store):
    assert store.claim("r0", 123, HOST)
    held = store.get("r0")
    assert (held.status, held.attempts, held.runner_pid, held.runner_host) == ("running", 1, 123, HOST)
    assert held.started_at is not None and held.finished_at is None
    assert not store.claim("r0", 456, HOST)  # already running: nobody else gets it
    assert store.get("r0").runner_pid == 123

    store.finish("r0", NEURAL)
    done = store.get("r0")
    assert done.status == "done" and done.metrics == NEURAL and done.finished_at >= done.started_at
    assert not store.claim("r0", 123, HOST)
    with pytest.raises(StoreError, match="cannot mark run r0 done: it is done, not running"):
        store.finish("r0", NEURAL)
    with pytest.raises(StoreError, match="it is done, not running"):
        store.release("r0")
    with pytest.raises(StoreError, match="cannot mark run r1 failed: it is pending, not running"):
        store.fail("r1", "boom")
    with pytest.raises(StoreError, match="not in the results store"):
        store.claim("nope", 1, HOST)
    with pytest.raises(StoreError, match="not in the results store"):
        store.finish("nope", NEURAL)
    assert store.get("nope") is None

    store.claim("r1", 123, HOST)
    store.fail("r1", "Traceback ...\nRuntimeError: out of memory")
    failed = store.get("r1")
    assert failed.status == "failed" and failed.metrics is None and failed.error.endswith("out of memory")

    store.claim("r2", 123, HOST)
    store.release("r2")
    released = store.get("r2")
    assert (released.status, released.runner_pid, released.runner_host, released.started_at) == \
        ("pending", None, None, None)
    assert released.attempts == 1
    assert store.counts() == {"pending": 2, "running": 0, "done": 1, "failed": 1}
    assert [r.id for r in store.records(status="pending")] == ["r2", "r3"]
    assert [r.id for r in store.records(ids=["r3", "r0", "absent"])] == ["r0", "r3"]


def test_sync_plan_is_idempotent_and_never_resets_a_run(store):
    store.claim("r0", 1, HOST)
    store.finish("r0", NEURAL)
    store.claim("r1", 1, HOST)
    store.claim("r2", 1, HOST)
    store.fail("r2", "boom")
    before = store.records()
    store.sync_plan([row(f"r{i}") for i in range(4)])
    assert store.records() == before
    # The same id with another config or estimate is still the same run: its row stays as it is.
    store.sync_plan([row("r0", lr=1.0), row("r4", D=40_000)])
    assert store.get("r0") == before[0]
    assert store.get("r4").status == "pending" and store.get("r4").D == 40_000
    assert store.counts() == {"pending": 2, "running": 1, "done": 1, "failed": 1}


def test_recover_releases_only_dead_runners_on_this_host(store):
    store.claim("r0", 100, HOST)  # dead
    store.claim("r1", 200, HOST)  # alive
    store.claim("r2", 100, "elsewhere")  # cannot be checked from here
    assert store.recover(is_alive=lambda pid: pid == 200) == ["r0"]
    assert [store.get(f"r{i}").status for i in range(4)] == ["pending", "running", "running", "pending"]
    assert store.get("r0").attempts == 1 and store.get("r0").runner_pid is None
    assert store.recover(is_alive=lambda pid: pid == 200) == []


def test_recover_by_default_checks_pids_and_counts_its_own_as_stale(store):
    store.claim("r0", os.getpid(), HOST)  # a previous runner whose pid this process now has
    store.claim("r1", os.getppid(), HOST)  # a live process
    assert store.recover() == ["r0"]
    assert store.get("r1").status == "running"


def test_retry_failed(store):
    for run_id in ("r0", "r1", "r2"):
        store.claim(run_id, 1, HOST)
    store.fail("r0", "boom")
    store.fail("r1", "bang")
    store.finish("r2", NEURAL)
    assert store.retry_failed() == 2
    retried = store.get("r0")
    assert (retried.status, retried.error, retried.attempts, retried.runner_pid) == ("pending", "boom", 1, None)
    assert store.get("r2").status == "done"
    assert store.retry_failed() == 0
    assert store.claim("r0", 1, HOST) and store.get("r0").attempts == 2
    store.finish("r0", NEURAL)
    assert store.get("r0").error is None


CHILD = """
import os, socket, sys
from pathlib import Path
from scalelab.study.results import ResultsStore, RunRecord

store = ResultsStore(Path(sys.argv[1]))
pid, host = os.getpid(), socket.gethostname()
store.claim("held", pid, host)
store.claim("early", pid, host)
store.finish("early", {"eval": {"nll": 1.0}})
print("ready", flush=True)
for i in range(10**7):
    run_id = f"loop{i:07d}"
    store.sync_plan([RunRecord(id=run_id, config={"i": i}, family="ngram", size="s", variant="raw", D=i + 1,
                               U=i + 1, seed=0)])
    store.claim(run_id, pid, host)
    store.finish(run_id, {"i": i})
    print(run_id, flush=True)
"""


def test_a_killed_writer_loses_nothing_it_committed(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        store.sync_plan([row("held"), row("early")])
    log = tmp_path / "child.log"
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    # "ready" and then at least 30 committed rows, so the kill lands well inside the loop.
    while log.read_text().count("\n") < 31 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, log.read_text()
    reported = log.read_text().split()
    assert reported[0] == "ready" and len(reported) > 30

    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with ResultsStore(path) as store:
        records = store.records()
        ids = [r.id for r in records]
        loop = records[2:]
        # Rows are never lost or duplicated: every loop row up to the last one begun is there, once.
        assert ids[:2] == ["held", "early"] and len(ids) == len(set(ids))
        assert [r.id for r in loop] == [f"loop{i:07d}" for i in range(len(loop))]
        assert set(reported[1:]) <= {r.id for r in loop if r.status == "done"}
        assert all(r.status == "done" and r.metrics == {"i": i} and r.attempts == 1 for i, r in enumerate(loop[:-1]))
        assert store.get("early").metrics == {"eval": {"nll": 1.0}}
        assert store.get("held").runner_pid == child.pid
        running = [r.id for r in records if r.status == "running"]
        assert running[0] == "held" and running[1:] in ([], [loop[-1].id])
        assert store.recover() == running
        assert store.counts()["running"] == 0


def test_readers_see_the_last_commit_and_a_second_writer_waits(store):
    with ResultsStore(store.path) as reader:
        raw = sqlite3.connect(store.path, isolation_level=None)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("UPDATE runs SET status = 'failed' WHERE id = 'r1'")
        assert reader.counts()["failed"] == 0  # not blocked, and not shown the uncommitted change
        claimed = []
        waiting = threading.Thread(target=lambda: claimed.append(store.claim("r0", 1, HOST)))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and not claimed  # waiting for the write lock rather than failing
        raw.execute("COMMIT")
        raw.close()
        waiting.join(10)
        assert claimed == [True]
        assert reader.counts() == {"pending": 2, "running": 1, "done": 0, "failed": 1}


def test_a_concurrent_reader_sees_whole_transactions(tmp_path):
    path = tmp_path / "results.sqlite"
    batches, stop = 20, threading.Event()

    def write() -> None:
        with ResultsStore(path) as writer:
            for b in range(batches):
                writer.sync_plan([row(f"b{b}-{i}") for i in range(10)])
                writer.claim(f"b{b}-0", 1, HOST)
                writer.finish(f"b{b}-0", NEURAL)
        stop.set()

    ResultsStore(path).close()
    with ResultsStore(path) as reader:
        writer = threading.Thread(target=write)
        writer.start()
        seen = set()
        while not stop.is_set():
            counts = reader.counts()
            total = sum(counts.values())
            assert total % 10 == 0 and counts["running"] <= 1
            assert len(reader.records()) % 10 == 0
            seen.add(total)
        writer.join()
        assert reader.counts() == {"pending": 9 * batches, "running": 0, "done": batches, "failed": 0}
        assert len(seen) > 1  # the reader did look while the writer was at work


def test_frame_and_exports_round_trip(store, tmp_path):
    store.claim("r0", 1, HOST)
    store.finish("r0", NEURAL)
    store.sync_plan([row("ng", family="ngram")])
    store.claim("ng", 1, HOST)
    store.finish("ng", NGRAM)
    store.claim("r1", 1, HOST)
    store.claim("r2", 1, HOST)
    store.fail("r2", "boom")

    table = store.frame()
    assert list(table.columns) == list(FRAME_COLUMNS)
    assert list(table["id"]) == ["r0", "r1", "r2", "r3", "ng"]
    done = table.set_index("id")
    assert done.loc["r0", "loss"] == 3.5 and done.loc["r0", "throughput"] == 5_000.0
    assert done.loc["r0", "N"] == 12_000 and done.loc["r0", "eval_split"] == "validation"
    assert pd.isna(done.loc["ng", "N"]) and done.loc["ng", "params"] == 5_000
    assert done.loc[["r1", "r2", "r3"], ["loss", "tokens_seen", "throughput", "eval_split"]].isna().all().all()
    assert done.loc["r2", "error"] == "boom" and pd.isna(done.loc["r0", "error"])
    assert list(store.frame(ids=["ng", "r0"])["id"]) == ["r0", "ng"]
    with ResultsStore(tmp_path / "empty.sqlite") as empty:
        assert list(empty.frame().columns) == list(FRAME_COLUMNS)

    out = tmp_path / "export"
    store.export(out / "runs.csv", "csv")
    store.export(out / "runs.parquet", "parquet")
    store.export(out / "done.csv", "csv", ids=["r0", "ng"])
    assert sorted(p.name for p in out.iterdir()) == ["done.csv", "runs.csv", "runs.parquet"]  # no temp files
    for back in (pd.read_csv(out / "runs.csv"), pd.read_parquet(out / "runs.parquet")):
        assert list(back.columns) == list(FRAME_COLUMNS)
        assert list(back["id"]) == list(table["id"])
        assert back["loss"].tolist()[:1] == [3.5] and back["loss"].isna().tolist() == [False, True, True, True,
                                                                                       False]
        assert back["throughput"].iloc[0] == 5_000.0
    assert list(pd.read_csv(out / "done.csv")["id"]) == ["r0", "ng"]
    with pytest.raises(ConfigError, match="csv or parquet"):
        store.export(out / "runs.json", "json")
