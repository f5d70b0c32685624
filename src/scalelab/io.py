"""The file-system rules every output follows, defined once: checked before the work that produces it, written
to a temporary path beside it and renamed into place (a reader sees the old output or the new, never half of one),
with the permissions of any file the user makes (0644 under the usual umask), and never replacing what scalelab
did not write."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

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


@contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO]:
    """A handle on a fresh temporary file beside `path` that replaces `path` once written in full, or vanishes.
    Created with mode 0666 less the umask, as open() would (mkstemp's 0600 would hide an export from a server
    running as another user)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(descriptor, mode, encoding=None if "b" in mode else "utf-8") as handle:
                yield handle
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb") as handle:
        handle.write(data)


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


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (under any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def fresh_sibling_dir(path: Path) -> Path:
    """An empty directory beside `path` (the same file system, so renaming it into place is atomic), named for this
    process; those left by processes that are gone are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def replace_dir(tmp: Path, out: Path) -> None:
    """Rename the finished directory `tmp` to `out`. What stood at `out` (the caller has checked that scalelab
    wrote it) is set aside first and removed only once `tmp` is in place, or put back if that fails."""
    aside = out.parent / f".{out.name}.old-{os.getpid()}" if out.exists() else None
    if aside is not None:
        os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except BaseException:
        if aside is not None:
            os.replace(aside, out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def publish_directory(out: Path, build: Callable[[Path], None], marker: str, document: dict[str, Any]) -> None:
    """Build a directory output in a fresh sibling, mark it (`document` plus the list of its files), then rename it
    into place (`replace_dir`)."""
    out = Path(out)
    with writing(out):
        staging = fresh_sibling_dir(out)
        try:
            build(staging)
            (staging / marker).write_text(json.dumps({**document, "files": files_below(staging)}, indent=2),
                                          encoding="utf-8")
            _usual_permissions(staging)
            replace_dir(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _usual_permissions(directory: Path) -> None:
    """Give everything below `directory` the permissions a new file or folder gets (0644 / 0755 under umask 022):
    some writers, safetensors' among them, make their files private (0600) through a temporary file."""
    mask = _umask()
    for path in [directory, *directory.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    try:  # Linux says it without changing it; os.umask can only read it by setting it, racing other threads
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask
