"""Writing outputs: checked before the work that produces them, and written so that a reader never sees a
half-written file (write to a temporary path, then rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scalelab.errors import DataError, OutputError


def check_writable_file(path: Path) -> None:
    """Refuse a file output that could not be written, before the work that produces it: a directory, or a path
    whose nearest existing ancestor is not a writable directory."""
    if os.path.isdir(path):
        raise OutputError(f"cannot write {path}: {path} is a directory; give a file path")
    _check_place(path, Path(path).parent)


def check_writable_dir(path: Path) -> None:
    """Refuse a directory output that could not be written, before the work that produces it: a file, or a path
    whose nearest existing ancestor is not a writable directory."""
    _check_place(path, Path(path))


def _check_place(path: Path, directory: Path) -> None:
    # os.path rather than Path.exists: an unreadable ancestor then reads as absent, not as a PermissionError
    existing = next(p for p in (directory, *directory.parents) if os.path.exists(p))
    if not os.path.isdir(existing):
        raise OutputError(f"cannot write {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {existing} is not writable")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Report an OSError raised while writing `path` (a full disk, a place the checks could not foresee) as an
    OutputError naming it."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; a file that is unreadable, not JSON or not an object is a DataError naming it
    as `what` (a dataset manifest, a run's result), never a traceback."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not a readable {what}: {exc}") from None
    if not isinstance(document, dict):
        raise DataError(f"{path} is not a {what}: it holds a JSON {type(document).__name__}, not an object")
    return document


def files_below(directory: Path) -> list[str]:
    """Every file below `directory`, as sorted POSIX paths relative to it."""
    return sorted(path.relative_to(directory).as_posix() for path in Path(directory).rglob("*") if not path.is_dir())


def marked_files(directory: Path, marker: str) -> set[str] | None:
    """The files scalelab wrote into `directory`, as its marker lists them; None without a readable marker."""
    try:
        return {marker, *json.loads((Path(directory) / marker).read_text(encoding="utf-8"))["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_replaceable(out: Path, marker: str, what: str, *, force: bool) -> None:
    """Refuse, before any work, a directory output that would replace what scalelab did not write. `out` may be new,
    empty, or an earlier output of this kind (its `marker` lists every file in it), and then only with `force`."""
    check_writable_dir(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    written = marked_files(out, marker)
    if written is None:
        raise OutputError(f"{out} holds files and is not a scalelab {what}; give a new or empty directory")
    if not force:
        raise OutputError(f"{out} already holds a scalelab {what}; pass --force to replace it")
    foreign = [path for path in files_below(out) if path not in written]
    if foreign:
        raise OutputError(f"{out} holds files the {what} did not write ({', '.join(foreign[:5])}); move them or "
                          "give another directory")


def publish_directory(out: Path, build: Callable[[Path], None], marker: str, document: dict[str, Any]) -> None:
    """Build a directory output in a fresh sibling, mark it (`document` plus the list of its files), then rename it
    into place. What stood at `out` (checked by `check_replaceable`) is set aside first and removed only once the
    new output is in place, or put back if that fails: a reader sees the old output or the new, never half of one."""
    out = Path(out)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
        try:
            build(staging)
            (staging / marker).write_text(json.dumps({**document, "files": files_below(staging)}, indent=2),
                                          encoding="utf-8")
            staging.chmod(0o755)  # mkdtemp makes it private; an output is for reading, by other users too
            aside = staging.with_name(staging.name + ".old") if out.exists() else None
            if aside is not None:
                os.replace(out, aside)
            try:
                os.replace(staging, out)
            except BaseException:
                if aside is not None:
                    os.replace(aside, out)
                raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if aside is not None:
            shutil.rmtree(aside)
