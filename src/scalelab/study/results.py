"""The results store of a study: one SQLite file, one row per run, every state change one transaction.

A run's row moves pending -> running -> done | failed. `release` (a clean stop) and `recover` (its runner died)
put a running row back to pending, `retry_failed` a failed one. One process writes (the study runner); others
(`status`, `export`) may read at the same time and see the store as of the last commit.

Crash safety is SQLite's:
- the WAL journal lets readers run beside the writer and keeps the file whole when a writer dies mid-transaction;
- each transition is one `BEGIN IMMEDIATE ... COMMIT`, so a killed runner leaves every row as of its last commit,
  at worst `running` under a dead pid, which `recover` sends back to pending;
- synchronous=FULL fsyncs the WAL at each commit. NORMAL already survives a killed process; FULL also survives a
  power cut or kernel crash, which under NORMAL could roll back the last commits. A study commits a few times per
  run and a run lasts seconds to hours, so the fsync costs nothing that shows, and a run recorded done stays done;
- a busy timeout makes a second connection wait for the write lock instead of failing.
WAL needs shared memory between the processes, so the file must be on a local filesystem, not NFS.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from scalelab.choices import ExportFormat
from scalelab.errors import ConfigError, ScalelabError
from scalelab.io import check_writable_file, process_alive, write_bytes_atomic

if TYPE_CHECKING:
    import pandas

    from scalelab.train.config import TrainConfig

Status = Literal["pending", "running", "done", "failed"]
STATUSES: tuple[Status, ...] = get_args(Status)
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 60.0

_SCHEMA = (
    """CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
        config TEXT NOT NULL,
        family TEXT NOT NULL,
        size TEXT NOT NULL,
        variant TEXT NOT NULL,
        D INTEGER NOT NULL,
        U INTEGER NOT NULL,
        seed INTEGER NOT NULL,
        metrics TEXT,
        error TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        runner_pid INTEGER,
        runner_host TEXT,
        started_at REAL,
        finished_at REAL,
        estimated_seconds REAL
    )""",
    "CREATE INDEX runs_status ON runs (status)",
)
# A pending row is held by nobody and has no timing of its own.
_TO_PENDING = "status = 'pending', runner_pid = NULL, runner_host = NULL, started_at = NULL, finished_at = NULL"

# Column -> dtype of `frame`: nullable integers and strings, so unfinished runs read back as missing, not 0 or "None".
FRAME_COLUMNS: dict[str, str] = {
    "id": "string", "status": "string", "family": "string", "size": "string", "variant": "string",
    "D": "int64", "U": "int64", "seed": "int64", "epochs": "float64",
    "loss": "float64", "loss_se": "float64", "perplexity": "float64", "bits_per_byte": "float64",
    "bits_per_byte_se": "float64", "tokens_seen": "Int64",
    "flops": "float64", "N": "Int64", "params": "Int64", "wall_seconds": "float64", "throughput": "float64",
    "eval_split": "string", "eval_tokens": "Int64", "reliable": "boolean",
    "error": "string", "attempts": "int64", "started_at": "float64", "finished_at": "float64",
}


class StoreError(ScalelabError):
    """The store file is unreadable, or a run was asked for a transition its state forbids (a runner bug)."""


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """One run of a study: as planned (pending, with the plan's estimate and cost) and as a row of the store.

    The fields up to `estimated_seconds` are the store's columns. `train_tokens` and `flops` are the plan's cost
    of the run; the store does not keep them, so a record read back from it has them None.
    """

    id: str
    status: Status = "pending"
    config: dict[str, Any]  # the resolved TrainConfig as JSON; `train_config()` validates it back
    family: str
    size: str
    variant: str
    D: int
    U: int
    seed: int
    metrics: dict[str, Any] | None = None  # the run's eval.json when done
    error: str | None = None  # the last failure's text; cleared when the run finishes
    attempts: int = 0  # how many times the run was claimed
    runner_pid: int | None = None  # who holds the run while running (and who last ran it once done or failed)
    runner_host: str | None = None
    started_at: float | None = None  # Unix time of the last claim
    finished_at: float | None = None
    estimated_seconds: float | None = None  # the plan's estimate of the run's wall time (None when not probed)
    train_tokens: int | None = None  # plan only: tokens the run trains on
    flops: float | None = None  # plan only: its training FLOPs (0 for a model counted in one pass)

    def train_config(self) -> TrainConfig:
        from scalelab.config import validate
        from scalelab.train.config import TrainConfig

        return validate(TrainConfig, self.config, origin=f"config of study run {self.id}")


class ResultsStore:
    """The study's `results.sqlite`. Methods may be called from several threads of the one writer process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Transactions are explicit (isolation_level=None); the lock keeps one thread's transaction whole.
        self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"{self.path} is not a readable results store: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (journal mode is {mode})")
        self._db.execute("PRAGMA synchronous = FULL")
        if self._version() == SCHEMA_VERSION:
            return
        with self._transaction() as db:
            version = self._version()
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has results store schema {version}; this scalelab reads "
                                 f"{SCHEMA_VERSION}: upgrade scalelab")
            if version == 0:
                if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                    raise StoreError(f"{self.path} is an SQLite file of something else, not a results store")
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front, where the busy timeout applies; a deferred transaction that
        # upgrades from read to write can fail at once with SQLITE_BUSY instead of waiting.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may have rolled back already
                    self._db.execute("ROLLBACK")
                raise

    def _select(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def sync_plan(self, runs: list[RunRecord]) -> None:
        """Add the planned runs the store lacks, as pending (whatever their records' status). Rows that exist are
        never touched: a run keeps its state, and a changed config has a new id, hence a new row."""
        rows = [(r.id, json.dumps(r.config, ensure_ascii=False), r.family, r.size, r.variant, r.D, r.U, r.seed,
                 r.estimated_seconds) for r in runs]
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO runs (id, status, config, family, size, variant, D, U, seed, "
                           "estimated_seconds) VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def recover(self, is_alive: Callable[[int], bool] | None = None) -> list[str]:
        """Send back to pending the rows left running by a dead runner on this host; returns their ids.

        Rows of a live runner, and of runners on other hosts (whose pids cannot be checked from here), stay.
        By default a row under this process's own pid counts as dead: call this before claiming anything, and
        such a row is a previous runner's whose pid was reused, as happens when a container restarts.
        """
        alive = is_alive or _other_process_alive
        with self._transaction() as db:
            rows = db.execute("SELECT id, runner_pid FROM runs WHERE status = 'running' AND runner_host = ? "
                              "ORDER BY rowid", (socket.gethostname(),)).fetchall()
            dead = [row["id"] for row in rows if not alive(row["runner_pid"])]
            db.executemany(f"UPDATE runs SET {_TO_PENDING} WHERE id = ?", [(run_id,) for run_id in dead])
        return dead

    def claim(self, run_id: str, pid: int, host: str) -> bool:
        """pending -> running for the runner `pid` on `host`; False when the run was not pending."""
        with self._transaction() as db:
            claimed = db.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, runner_pid = ?, "
                                 "runner_host = ?, started_at = ?, finished_at = NULL "
                                 "WHERE id = ? AND status = 'pending'", (pid, host, time.time(), run_id)).rowcount
            if not claimed and _status(db, run_id) is None:
                raise StoreError(f"cannot claim run {run_id}: it is not in the results store")
        return bool(claimed)

    def finish(self, run_id: str, metrics: dict[str, Any]) -> None:
        self._move(run_id, "running", "done", metrics=json.dumps(metrics, ensure_ascii=False), error=None,
                   finished_at=time.time())

    def fail(self, run_id: str, error: str) -> None:
        self._move(run_id, "running", "failed", error=error, finished_at=time.time())

    def release(self, run_id: str) -> None:
        """running -> pending, for a run stopped cleanly before it ended."""
        self._move(run_id, "running", "pending", runner_pid=None, runner_host=None, started_at=None,
                   finished_at=None)

    def _move(self, run_id: str, source: Status, target: Status, **fields: Any) -> None:
        assignments = "".join(f", {name} = ?" for name in fields)
        with self._transaction() as db:
            moved = db.execute(f"UPDATE runs SET status = ?{assignments} WHERE id = ? AND status = ?",
                               (target, *fields.values(), run_id, source)).rowcount
            if not moved:
                status = _status(db, run_id)
                where = "it is not in the results store" if status is None else f"it is {status}, not {source}"
                raise StoreError(f"cannot mark run {run_id} {target}: {where}")

    def retry_failed(self) -> int:
        """Every failed run back to pending; returns how many. The last error stays until a run finishes."""
        with self._transaction() as db:
            return db.execute(f"UPDATE runs SET {_TO_PENDING} WHERE status = 'failed'").rowcount

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._select("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _record(rows[0]) if rows else None

    def records(self, ids: Iterable[str] | None = None, status: Status | None = None) -> list[RunRecord]:
        """Runs in the order they were planned, optionally only those among `ids` and/or in `status`; ids the
        store lacks are skipped."""
        if status is None:
            rows = self._select("SELECT * FROM runs ORDER BY rowid")
        else:
            rows = self._select("SELECT * FROM runs WHERE status = ? ORDER BY rowid", (status,))
        if ids is not None:
            wanted = set(ids)
            rows = [row for row in rows if row["id"] in wanted]
        return [_record(row) for row in rows]

    def counts(self) -> dict[Status, int]:
        """Runs per status, every status present (read in one snapshot, so they add up to the total)."""
        found = dict(self._select("SELECT status, COUNT(*) FROM runs GROUP BY status"))
        return {status: found.get(status, 0) for status in STATUSES}

    def frame(self, ids: Iterable[str] | None = None) -> pandas.DataFrame:
        """One row per run, with its eval.json flattened into the columns of `FRAME_COLUMNS`; the metric columns
        are missing (NA) for runs not done."""
        return records_frame(self.records(ids))

    def export(self, path: Path, fmt: ExportFormat, ids: Iterable[str] | None = None) -> None:
        """Write `frame(ids)` to `path`; a reader of `path` sees the old file or the new one, never part of one."""
        if fmt not in ("csv", "parquet"):
            raise ConfigError(f"export format must be csv or parquet, not {fmt!r}")
        check_writable_file(Path(path))
        table = self.frame(ids)
        data = table.to_csv(index=False).encode("utf-8") if fmt == "csv" else table.to_parquet(index=False)
        write_bytes_atomic(Path(path), data)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _status(db: sqlite3.Connection, run_id: str) -> Status | None:
    row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
    return row["status"] if row else None


def _record(row: sqlite3.Row) -> RunRecord:
    fields = dict(row)
    fields["config"] = json.loads(fields["config"])
    fields["metrics"] = json.loads(fields["metrics"]) if fields["metrics"] is not None else None
    return RunRecord(**fields)


def records_frame(records: list[RunRecord]) -> pandas.DataFrame:
    """`ResultsStore.frame` of records already read."""
    import pandas as pd

    return pd.DataFrame([_flat(record) for record in records], columns=list(FRAME_COLUMNS)).astype(FRAME_COLUMNS)


def _flat(record: RunRecord) -> dict[str, Any]:
    metrics = record.metrics or {}
    evaluation = metrics.get("eval", {})
    seen, wall = metrics.get("tokens_seen"), metrics.get("wall_seconds")
    return {
        "id": record.id, "status": record.status, "family": record.family, "size": record.size,
        "variant": record.variant, "D": record.D, "U": record.U, "seed": record.seed,
        "epochs": metrics.get("epochs"), "loss": evaluation.get("nll"), "loss_se": evaluation.get("nll_se"),
        "perplexity": evaluation.get("perplexity"), "bits_per_byte": evaluation.get("bits_per_byte"),
        "bits_per_byte_se": evaluation.get("bits_per_byte_se"), "tokens_seen": seen, "flops": metrics.get("flops"),
        "N": metrics.get("N"), "params": metrics.get("params"), "wall_seconds": wall,
        "throughput": seen / wall if seen is not None and wall else None,
        "eval_split": evaluation.get("split"), "eval_tokens": evaluation.get("tokens"),
        # Results written before runs were judged on their steps count as reliable.
        "reliable": metrics.get("reliable", True) if metrics else None,
        "error": record.error, "attempts": record.attempts, "started_at": record.started_at,
        "finished_at": record.finished_at,
    }


def runner_gone(record: RunRecord) -> bool:
    """A row left running by a runner on this host that no longer exists (a `study run` killed outright); the
    next `study run` resumes it. A runner on another host cannot be checked from here and counts as alive."""
    return (record.status == "running" and record.runner_host == socket.gethostname()
            and record.runner_pid is not None and not _other_process_alive(record.runner_pid))


def _other_process_alive(pid: int) -> bool:
    return pid != os.getpid() and process_alive(pid)
