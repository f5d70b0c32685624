import json

import numpy as np
import pytest

from scalelab.config import validate
from scalelab.data import PrepareConfig, TokenStore, prepare
from scalelab.data.dedup import LSHIndex, candidate_pairs
from scalelab.errors import ConfigError, DataError
from tests.conftest import tiny_config, write_mixed_corpus

ALL = ["raw", "filtered", "dedup", "filtered+dedup"]


@pytest.fixture(scope="module")
def variants_store(tmp_path_factory) -> TokenStore:
    root = tmp_path_factory.mktemp("variants")
    corpus = write_mixed_corpus(root / "corpus")
    config = tiny_config(corpus, root / "ds", variants=ALL, filters={"preset": "prose"})
    return prepare(config, show_progress=False)


def ids(view):
    return [r["id"] for r in view.doc_records()]


def test_all_variants_written_with_one_tokenizer(variants_store):
    assert variants_store.variants == ALL
    raw = set(ids(variants_store.train("raw")))
    for variant in ALL[1:]:
        assert set(ids(variants_store.train(variant))) < raw
    assert set(ids(variants_store.train("filtered+dedup"))) <= set(ids(variants_store.train("filtered")))
    assert set(ids(variants_store.train("filtered+dedup"))) <= set(ids(variants_store.train("dedup")))
    assert not any(i.startswith("junk") for i in ids(variants_store.train("filtered")))
    assert any(i.startswith("junk") for i in ids(variants_store.train("raw")))


def test_deduplicated_variants_hold_no_duplicates(variants_store):
    for variant in ("dedup", "filtered+dedup"):
        view = variants_store.train(variant)
        assert len(set(view.doc_hashes().tolist())) == view.n_docs
        assert candidate_pairs(np.asarray(view.lsh_bands())).shape[0] == 0
    raw = variants_store.train("raw")
    assert candidate_pairs(np.asarray(raw.lsh_bands())).shape[0] > 0


def test_held_out_is_clean_and_uncontaminated(variants_store):
    raw = variants_store.train("raw")
    index = LSHIndex.build(np.asarray(raw.lsh_bands()), np.asarray(raw.doc_hashes()))
    for split in ("validation", "test"):
        view = variants_store.split(split)
        assert view.n_docs > 0
        assert (index.query(np.asarray(view.lsh_bands()), np.asarray(view.doc_hashes())) == -1).all()
        assert not any(i.startswith("junk") for i in ids(view))


def test_filter_edits_reach_filtered_variants_only(variants_store):
    # Every prose document ends its lines with "." so C4 keeps them whole; junk is dropped, not edited.
    funnel = variants_store.manifest["funnel"]
    assert sum(v["documents"] for v in funnel["filtered"].values()) >= 20
    raw_bytes = dict(zip(ids(variants_store.train("raw")), variants_store.train("raw").doc_bytes, strict=True))
    filtered = variants_store.train("filtered")
    for doc_id, n_bytes in zip(ids(filtered), filtered.doc_bytes, strict=True):
        assert n_bytes <= raw_bytes[doc_id]


def test_variant_subsets_stay_nested(variants_store):
    view = variants_store.train("filtered+dedup")
    small, large = view.subset(view.n_tokens // 3), view.subset(2 * view.n_tokens // 3)
    assert np.array_equal(large.tokens[: small.n_tokens], small.tokens)


def test_repetition_view(variants_store):
    unique = variants_store.subset(500, "dedup")
    short, long = variants_store.repeated(500, 1200, "dedup"), variants_store.repeated(500, 2000, "dedup")
    assert len(long) == 2000 and long.epochs == 4.0 and long.unique_tokens == 500
    assert np.array_equal(long[:1200], short[:1200])
    assert np.array_equal(long[0:500], unique.tokens) and np.array_equal(long[1500:2000], unique.tokens)
    assert np.array_equal(long[450:550], np.concatenate([unique.tokens[450:], unique.tokens[:50]]))
    assert short.fingerprint != long.fingerprint != unique.fingerprint
    with pytest.raises(DataError, match="at least the 500 unique tokens"):
        unique.repeat(400)


def test_workers_do_not_change_variants(tmp_path):
    corpus = write_mixed_corpus(tmp_path / "corpus", n_good=60, seed=3)
    kwargs = {"variants": ALL, "filters": {"preset": "prose"}, "batch_bytes": 5000}
    one = prepare(tiny_config(corpus, tmp_path / "one", **kwargs), show_progress=False)
    two = prepare(tiny_config(corpus, tmp_path / "two", workers=2, **kwargs), show_progress=False)
    assert one.fingerprint == two.fingerprint


def test_deduplicate_against_a_reference_dataset(tmp_path):
    corpus = write_mixed_corpus(tmp_path / "a", n_good=60, seed=4)
    reference = prepare(tiny_config(corpus, tmp_path / "ref"), show_progress=False)
    other = write_mixed_corpus(tmp_path / "b", n_good=60, seed=5)
    (other / "copied.txt").write_text((corpus / "good007.txt").read_text())
    store = prepare(tiny_config(other, tmp_path / "ds", dedup={"reference": [str(tmp_path / "ref")]}),
                    show_progress=False)
    matches = [json.loads(line) for line in (store.path / "reference_matches.jsonl").read_text().splitlines()]
    assert {m["id"] for m in matches} == {"copied.txt"}
    assert matches[0]["reference_id"] in {"good007.txt", "exact07.txt"}  # exact07 is a copy of good007
    assert store.manifest["funnel"]["reference_matches"] == 1
    assert "copied.txt" not in {i for v in ("validation", "test") for i in ids(store.split(v))}
    assert "copied.txt" not in ids(store.train())
    assert reference.fingerprint != store.fingerprint


def test_filtered_variant_without_filters_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="filtered variant needs quality filters"):
        validate(PrepareConfig, {"sources": [{"path": "stdlib"}], "out": "x", "variants": ["filtered"]})
    with pytest.raises(ConfigError, match="variants"):
        validate(PrepareConfig, {"sources": [{"path": "stdlib"}], "out": "x", "variants": ["raw", "raw"]})


def test_reference_with_other_minhash_settings_is_refused(tmp_path):
    corpus = write_mixed_corpus(tmp_path / "a", n_good=40, seed=6)
    prepare(tiny_config(corpus, tmp_path / "ref", dedup={"minhash": {"ngram": 3}}), show_progress=False)
    with pytest.raises(DataError, match="other MinHash settings"):
        prepare(tiny_config(corpus, tmp_path / "ds", dedup={"reference": [str(tmp_path / "ref")]}),
                show_progress=False)
