import io
import json
import random
import string
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from scalelab.data import prepare
from scalelab.data.clean import content_hash
from scalelab.data.contamination import DecontaminateConfig, count_train, covered_shares, held_out_grams, matched
from scalelab.data.report import data_report
from scalelab.data.split import SplitConfig, assign_split
from scalelab.data.summary import examples_table, funnel_table
from tests.conftest import tiny_config

SPLIT = SplitConfig(validation=0.1, test=0.1, min_tokens=0)


def words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choices(string.ascii_lowercase, k=7)) for _ in range(n)]


def text(parts: list[list[str]]) -> str:
    flat = [w for part in parts for w in part]
    return "\n".join(" ".join(flat[i:i + 10]) for i in range(0, len(flat), 10))


def shares(held_out: list[str], train: list[str], config: DecontaminateConfig) -> np.ndarray:
    grams = held_out_grams(held_out, config)
    return covered_shares(grams, matched(count_train(grams, train, config), config), config.ngram)


def test_covered_share_counts_words_inside_shared_ngrams():
    rng = random.Random(0)
    passage = words(rng, 40)
    held = text([words(rng, 30), passage, words(rng, 30)])
    train = text([words(rng, 200), passage, words(rng, 100)])
    assert shares([held], [train], DecontaminateConfig()) == pytest.approx([0.4])
    # A passage shorter than n shares no n-gram.
    short = text([words(rng, 50), passage[:12], words(rng, 50)])
    assert shares([short], [train], DecontaminateConfig()) == pytest.approx([0.0])


def test_ngrams_in_many_train_documents_are_ignored():
    rng = random.Random(1)
    header = words(rng, 40)
    held = text([header, words(rng, 60)])
    config = DecontaminateConfig()
    ten = [text([header, words(rng, 80)]) for _ in range(10)]
    assert shares([held], ten, config) == pytest.approx([0.4])
    eleven = ten + [text([header, words(rng, 80)])]
    assert shares([held], eleven, config) == pytest.approx([0.0])
    # The same train document holding a passage twice counts once.
    assert shares([held], [text([header, header])] * 10, config) == pytest.approx([0.4])


def placed(rng: random.Random, parts: list[list[str]], held_out: bool) -> str:
    """`parts` and a few fresh words, drawn until the content hash puts the text in train or held out."""
    while True:
        candidate = text([*parts, words(rng, 5)])
        if (assign_split(content_hash(candidate), SPLIT) != "train") == held_out:
            return candidate


def planted_corpus(root: Path) -> dict[str, str]:
    """Train documents, a boilerplate header in 12 of them, and three held-out documents: one sharing 40 % of
    its words with one train document, one sharing only the header, one sharing 7 %."""
    rng = random.Random(7)
    root.mkdir(parents=True)
    header, source = words(rng, 40), words(rng, 300)
    passage = source[100:140]
    train_texts = {"source.txt": placed(rng, [source], held_out=False)}
    train_texts |= {f"lic{i}.txt": placed(rng, [header, words(rng, 120)], held_out=False) for i in range(12)}
    train_texts |= {f"doc{i:03d}.txt": text([words(rng, rng.randint(50, 200))]) for i in range(150)}
    planted = {
        "leak.txt": placed(rng, [words(rng, 30), passage, words(rng, 25)], held_out=True),
        "boilerplate.txt": placed(rng, [header, words(rng, 55)], held_out=True),
        "below.txt": placed(rng, [words(rng, 90), source[200:213], words(rng, 90)], held_out=True),
    }
    for name, body in {**train_texts, **planted}.items():
        (root / name).write_text(body)
    return planted


def held_out_ids(store) -> set[str]:
    return {r["id"] for s in ("validation", "test") for r in store.split(s).doc_records()}


def train_ids(store) -> set[str]:
    return {r["id"] for r in store.train().doc_records()}


@pytest.fixture
def planted(tmp_path):
    return tmp_path / "corpus", planted_corpus(tmp_path / "corpus")


def test_planted_overlap_is_dropped_and_boilerplate_is_not(tmp_path, planted):
    corpus, _ = planted
    store = prepare(tiny_config(corpus, tmp_path / "ds", split=SPLIT.model_dump()), show_progress=False)
    kept = held_out_ids(store)
    assert "leak.txt" not in kept and "leak.txt" not in train_ids(store)
    assert {"boilerplate.txt", "below.txt"} <= kept
    assert "source.txt" in train_ids(store)
    funnel = store.manifest["funnel"]
    assert funnel["removed"]["held-out: n-gram overlap with train"] == 1
    assert funnel["decontamination"] == {"near duplicate (MinHash)": 0, "13-gram overlap": 1, "both": 0}
    [example] = store.manifest["stats"]["contamination_examples"]
    assert example["id"] == "leak.txt" and example["train_id"] == "source.txt"
    assert example["covered"] == pytest.approx(40 / 100, abs=0.05)
    shown = render(funnel_table(store.manifest), examples_table(store.manifest))
    assert "contaminated: 13-gram overlap" in shown and "removed: held-out: n-gram overlap with train" in shown
    assert "leak.txt" in shown and "with train source.txt" in shown
    assert data_report(store)["contamination_examples"] == [example]
    assert [json.loads(line) for line in (store.path / "contamination.jsonl").read_text().splitlines()] == [example]


def render(*tables) -> str:
    console = Console(width=250, record=True, file=io.StringIO())
    for table in tables:
        console.print(table)
    return console.export_text()


def test_cut_removes_the_train_document_instead(tmp_path, planted):
    corpus, _ = planted
    config = tiny_config(corpus, tmp_path / "ds", split=SPLIT.model_dump(), decontaminate={"action": "cut"})
    store = prepare(config, show_progress=False)
    assert "leak.txt" in held_out_ids(store)
    assert "source.txt" not in train_ids(store)
    removed = store.manifest["funnel"]["removed"]
    assert removed["train: shares passages with a held-out document"] == 1
    assert "held-out: n-gram overlap with train" not in removed


def test_threshold_and_ngram_are_configurable(tmp_path, planted):
    corpus, _ = planted
    config = tiny_config(corpus, tmp_path / "ds", split=SPLIT.model_dump(),
                         decontaminate={"ngram": 8, "threshold": 0.05})
    store = prepare(config, show_progress=False)
    assert not {"leak.txt", "below.txt"} & held_out_ids(store)
    assert "boilerplate.txt" in held_out_ids(store)


def test_config_is_validated_once():
    with pytest.raises(ValueError, match="action"):
        DecontaminateConfig(action="delete")
    with pytest.raises(ValueError, match="threshold"):
        DecontaminateConfig(threshold=1.5)
