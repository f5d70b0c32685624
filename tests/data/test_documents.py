import gzip
import json

import pytest
import zstandard

from scalelab.data.documents import RawDoc, Skipped, SourceConfig, SourceFingerprint, read_source, resolve_type
from scalelab.errors import DataError


def read(path, **kwargs):
    return list(read_source(SourceConfig(path=str(path), **kwargs), SourceFingerprint()))


def docs(items):
    return [i for i in items if isinstance(i, RawDoc)]


def test_directory_recursive_with_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.py").write_text("print(1)")
    (tmp_path / "a" / "y.md").write_text("# y")
    (tmp_path / "z.py").write_text("z = 1")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.py").write_text("h")
    assert [d.id for d in docs(read(tmp_path))] == ["z.py", "a/x.py", "a/y.md"]  # stable walk order
    assert [d.id for d in docs(read(tmp_path, include=["*.py"]))] == ["z.py", "a/x.py"]
    assert [d.id for d in docs(read(tmp_path, include=["*.py"], exclude=["a/*"]))] == ["z.py"]
    assert docs(read(tmp_path, include=["*.py"]))[1].data == b"print(1)"


def test_txt_units(tmp_path):
    path = tmp_path / "play.txt"
    path.write_bytes(b"First para\nline two\n\n\n\nSecond\r\n\r\nThird\n")
    assert [d.data for d in docs(read(path))] == [b"First para\nline two\n", b"Second\r\n", b"Third\n"]
    assert len(docs(read(path, txt_unit="line"))) == 4
    assert len(docs(read(path, txt_unit="file"))) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_compressed_fields_and_bad_lines(tmp_path, suffix):
    lines = [json.dumps({"body": "one", "key": "k1"}), "{not json", json.dumps({"other": 1}),
             json.dumps([1, 2]), "", json.dumps({"body": "two ✓"})]
    raw = ("\n".join(lines) + "\n").encode()
    path = tmp_path / f"data{suffix}"
    if suffix.endswith(".gz"):
        raw = gzip.compress(raw)
    elif suffix.endswith(".zst"):
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    items = read(path, text_field="body", id_field="key")
    assert [(d.id, d.data) for d in docs(items)] == [("k1", "one"), (f"data{suffix}:6", "two ✓")]
    reasons = [i.reason for i in items if isinstance(i, Skipped)]
    assert reasons == ["invalid_json", "missing_text", "invalid_json"]


def test_truncated_compressed_file_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:60])
    items = read(path)
    assert any(isinstance(i, Skipped) and i.reason == "unreadable" for i in items)


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b", None], "n": [1, 2, 3]}), path)
    items = read(path)
    assert [d.data for d in docs(items)] == ["a", "b"]
    with pytest.raises(DataError, match="no column 'content'"):
        read(path, text_field="content")


def test_hf_dataset_saved_to_disk(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["x", "y"]}).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": ["p", "q", "r"]})}).save_to_disk(
        str(tmp_path / "dict"))
    assert [d.data for d in docs(read(tmp_path / "single"))] == ["x", "y"]
    assert len(docs(read(tmp_path / "dict", text_field="content"))) == 3
    with pytest.raises(DataError, match="no split 'validation'"):
        read(tmp_path / "dict", text_field="content", hf_split="validation")


def test_hf_local_data_files(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "part.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    assert [d.data for d in docs(read(folder, type="hf"))] == ["hello", "world"]


def test_stdlib_source_reads_python_files_only():
    fingerprint = SourceFingerprint()
    items = []
    for item in read_source(SourceConfig(path="stdlib"), fingerprint):
        items.append(item)
        if len(items) == 200:
            break
    assert all(d.id.endswith(".py") and "site-packages" not in d.id for d in docs(items))
    assert any(d.id == "abc.py" for d in docs(items))


def test_resolve_type_errors(tmp_path):
    with pytest.raises(DataError, match="source not found"):
        resolve_type(SourceConfig(path=str(tmp_path / "missing")))
    (tmp_path / "table.xlsx").write_bytes(b"x")
    with pytest.raises(DataError, match="unknown source type"):
        resolve_type(SourceConfig(path=str(tmp_path / "table.xlsx")))
    assert resolve_type(SourceConfig(path=str(tmp_path / "table.xlsx"), type="txt")) == "txt"


def test_fingerprint_tracks_changes(tmp_path):
    (tmp_path / "a.txt").write_text("one")

    def fp():
        f = SourceFingerprint()
        list(read_source(SourceConfig(path=str(tmp_path)), f))
        return f.summary()["fingerprint"]

    before = fp()
    assert fp() == before
    (tmp_path / "b.txt").write_text("two")
    assert fp() != before
