import os
import shutil

import numpy as np
import pytest

import scalelab.data.pipeline as pipeline
from scalelab.data import TokenStore, prepare
from scalelab.errors import DataError
from tests.conftest import tiny_config, write_corpus


def ids(store, split):
    return [r["id"] for r in store.split(split).doc_records()]


def test_prepare_accounts_for_every_document(tmp_path, corpus):
    (corpus / "blob.bin").write_bytes(b"\x7fELF\x00\x00")
    (corpus / "blank.txt").write_text("  \n")
    store = prepare(tiny_config(corpus, tmp_path / "ds"), show_progress=False)
    stats = store.manifest["stats"]
    assert stats["documents_read"] == 82
    assert stats["skipped"] == {"binary": 1, "empty": 1}
    assert store.manifest["funnel"]["cleaned"] == 80
    splits = [set(ids(store, s)) for s in ("train", "validation", "test")]
    assert sum(map(len, splits)) == 80 and len(set.union(*splits)) == 80
    assert all(len(s) > 0 for s in splits)


def test_duplicates_share_a_split_end_to_end(tmp_path, corpus):
    for i in range(10):
        shutil.copy(corpus / "part0" / f"doc{3 * i:03d}.txt", corpus / f"copy{i}.txt")
    store = prepare(tiny_config(corpus, tmp_path / "ds"), show_progress=False)
    hashes = {s: set(np.fromfile(store.path / d / "doc_hash.bin", dtype=np.uint64).tolist())
              for s, d in (("train", "train/raw"), ("validation", "validation"), ("test", "test"))}
    assert not hashes["train"] & hashes["validation"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["validation"] & hashes["test"]


def test_tokenizer_sees_only_train_documents(tmp_path, corpus, monkeypatch):
    seen = []
    original = pipeline.build_tokenizer

    def spy(config, texts, length=None):
        texts = list(texts)
        seen.extend(texts)
        return original(config, iter(texts), length)

    monkeypatch.setattr(pipeline, "build_tokenizer", spy)
    store = prepare(tiny_config(corpus, tmp_path / "ds"), show_progress=False)
    held_out = {store.tokenizer.decode(doc[:-1]) for s in ("validation", "test")
                for doc in store.split(s).documents()}
    assert len(seen) == store.manifest["train"]["raw"]["documents"]
    assert not held_out & set(seen)


def test_workers_do_not_change_the_result(tmp_path, corpus):
    one = prepare(tiny_config(corpus, tmp_path / "w1", batch_bytes=2000), show_progress=False)
    two = prepare(tiny_config(corpus, tmp_path / "w2", batch_bytes=2000, workers=2), show_progress=False)
    assert one.fingerprint == two.fingerprint
    assert np.array_equal(one.train().tokens, two.train().tokens)


def test_tokenizer_sample_limit(tmp_path, corpus):
    store = prepare(tiny_config(corpus, tmp_path / "ds", tokenizer={"vocab_size": 300, "max_train_bytes": 3000}),
                    show_progress=False)
    assert store.train().n_tokens > 0


def test_bytes_tokenizer_dataset(tmp_path, corpus):
    store = prepare(tiny_config(corpus, tmp_path / "ds", tokenizer={"kind": "bytes"}), show_progress=False)
    info = store.manifest["train"]["raw"]
    assert info["tokens"] == info["bytes"] + info["documents"]
    assert store.manifest["tokenizer"]["vocab_size"] == 257


def test_train_order_is_seeded_shuffle(tmp_path, corpus):
    a = prepare(tiny_config(corpus, tmp_path / "a"), show_progress=False)
    b = prepare(tiny_config(corpus, tmp_path / "b", shuffle_seed=1), show_progress=False)
    assert sorted(ids(a, "train")) == sorted(ids(b, "train"))
    assert ids(a, "train") != ids(b, "train")
    assert ids(a, "train") != sorted(ids(a, "train"))


def test_interrupted_run_leaves_nothing_and_rerun_is_clean(tmp_path, corpus, monkeypatch):
    out = tmp_path / "ds"
    calls = []
    original = pipeline._write_split

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_write_split", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(tiny_config(corpus, out), show_progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [corpus]
    monkeypatch.undo()
    stale = tmp_path / ".ds.tmp-999999999"  # left by a killed run whose pid is gone
    stale.mkdir()
    store = prepare(tiny_config(corpus, out), show_progress=False)
    assert not stale.exists()
    assert TokenStore.open(out).fingerprint == store.fingerprint


def test_reuse_conflict_and_force(tmp_path, corpus):
    out = tmp_path / "ds"
    first = prepare(tiny_config(corpus, out), show_progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = prepare(tiny_config(corpus, out, workers=2), show_progress=False)  # execution settings don't matter
    assert again.fingerprint == first.fingerprint
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="different config"):
        prepare(tiny_config(corpus, out, shuffle_seed=5), show_progress=False)
    rebuilt = prepare(tiny_config(corpus, out, shuffle_seed=5), force=True, show_progress=False)
    assert rebuilt.fingerprint != first.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ds"]


def test_strict_mode_fails_on_binary(tmp_path, corpus):
    (corpus / "blob.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match=r"binary: blob.bin.*--strict"):
        prepare(tiny_config(corpus, tmp_path / "ds", strict=True), show_progress=False)
    assert not (tmp_path / "ds").exists()


def test_too_small_and_empty_corpora(tmp_path):
    small = write_corpus(tmp_path / "small", n_docs=2)
    with pytest.raises(DataError, match="corpus too small for the requested splits"):
        prepare(tiny_config(small, tmp_path / "ds"), show_progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.bin").write_bytes(b"\x00")
    with pytest.raises(DataError, match=r"empty corpus: .*binary 1"):
        prepare(tiny_config(empty, tmp_path / "ds"), show_progress=False)


def test_multiple_sources_are_labelled(tmp_path, corpus):
    other = write_corpus(tmp_path / "other", n_docs=40, seed=9)
    config = tiny_config(corpus, tmp_path / "ds", sources=[{"path": str(corpus)}, {"path": str(other), "name": "o"}])
    store = prepare(config, show_progress=False)
    sources = {r["source"] for r in store.train().doc_records()}
    assert sources == {"corpus", "o"}
    assert [s["files"] for s in store.manifest["sources"]] == [80, 40]
    assert os.path.isfile(store.path / "tokenizer.json")


def test_force_never_replaces_a_directory_that_is_not_a_dataset(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    with pytest.raises(DataError, match="not a scalelab dataset"):
        prepare(tiny_config(write_corpus(tmp_path / "corpus", n_docs=10), mine), force=True, show_progress=False)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
