import os

import pytest

from scalelab.errors import OutputError
from scalelab.io import (
    atomic_file,
    check_writable_dir,
    check_writable_file,
    fresh_sibling_dir,
    process_alive,
    replace_dir,
    write_bytes_atomic,
    write_json_atomic,
)


@pytest.fixture
def blocker(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("mine")
    return path


def test_a_file_output_must_not_be_a_directory_or_lie_under_a_file(tmp_path, blocker):
    with pytest.raises(OutputError, match=f"{tmp_path} is a directory"):
        check_writable_file(tmp_path)
    with pytest.raises(OutputError, match=f"{blocker} is a file, not a directory"):
        check_writable_file(blocker / "deeper" / "out.json")
    check_writable_file(blocker)
    check_writable_file(tmp_path / "new" / "deeper" / "out.json")
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_a_directory_output_must_not_be_a_file_or_lie_under_one(tmp_path, blocker):
    with pytest.raises(OutputError, match=f"{blocker} is a file, not a directory"):
        check_writable_dir(blocker)
    with pytest.raises(OutputError, match=f"{blocker} is a file, not a directory"):
        check_writable_dir(blocker / "out")
    check_writable_dir(tmp_path)
    check_writable_dir(tmp_path / "new" / "out")


def test_a_failed_write_is_an_output_error_naming_the_path(tmp_path, blocker):
    with pytest.raises(OutputError, match="cannot write .*out.json"):
        write_json_atomic(blocker / "out.json", {})
    with pytest.raises(OutputError, match=f"cannot write {tmp_path}"):
        write_json_atomic(tmp_path, {})
    assert blocker.read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["file.txt"]


@pytest.fixture
def usual_umask():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_atomic_writes_have_the_permissions_of_any_new_file(tmp_path, usual_umask):
    write_bytes_atomic(tmp_path / "a.parquet", b"data")
    with atomic_file(tmp_path / "b.txt", "w") as handle:
        handle.write("text")
    (tmp_path / "plain.txt").write_text("what open() makes")
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == \
        {"a.parquet": "0o644", "b.txt": "0o644", "plain.txt": "0o644"}


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"] and target.read_text() == "old"


def test_replace_dir_swaps_whole_directories(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    new = fresh_sibling_dir(out)
    (new / "new.txt").write_text("new")
    replace_dir(new, out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and [p.name for p in out.iterdir()] == ["new.txt"]


def test_fresh_sibling_dirs_clear_those_of_dead_processes_only(tmp_path):
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".out.tmp-{int(gone.stdout)}"
    alive = tmp_path / f".out.tmp-{os.getppid()}"
    dead.mkdir()
    alive.mkdir()
    fresh = fresh_sibling_dir(tmp_path / "out")
    assert fresh.is_dir() and not any(fresh.iterdir()) and not dead.exists() and alive.exists()
    assert process_alive(os.getpid()) and not process_alive(int(gone.stdout))
