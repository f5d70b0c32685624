import pytest

from scalelab.errors import OutputError
from scalelab.io import check_writable_dir, check_writable_file, write_json_atomic


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
