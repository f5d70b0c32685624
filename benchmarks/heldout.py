"""What the held-out set measures, with the old settings and the new, side by side (issue #14).

    .venv/bin/python benchmarks/heldout.py [--out /tmp/scalelab-heldout] [--sizes 2560000 5120000]

The stdlib is prepared twice as the demo prepares it (code filters, raw variant): once with the old held-out
settings (2 % per split, no minimum size, no n-gram decontamination) and once with the defaults. On each, the
demo's 5-gram is fitted at the two largest data sizes of its curve and scored as the demo scores it (20,000
tokens): the old way, the first whole validation documents in stored order with no cap, and the new way, a
seeded sample of whole documents with no document above 10 % of the scored tokens. Printed, per setting: how many
documents and tokens are scored, the largest single document's share of them, the change in bits per byte
between the two sizes, and the documents that account for most of that change. Results go to
benchmarks/results/heldout.json.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from scalelab.data import PrepareConfig, TokenStore, prepare
from scalelab.models.ngram import KneserNeyLM
from scalelab.train.evaluate import EvalSet, eval_set, result

ORDER = 5
EVAL_TOKENS = 20_000
SETTINGS = {
    "old": {"split": {"validation": 0.02, "test": 0.02, "min_tokens": 0}, "decontaminate": {"threshold": 1.0}},
    "new": {},
}
RESULTS = Path(__file__).parent / "results" / "heldout.json"


def dataset(root: Path, name: str) -> TokenStore:
    config = {"sources": [{"path": "stdlib"}], "out": str(root / name), "filters": {"preset": "code"},
              "variants": ["raw"], **SETTINGS[name]}
    return prepare(PrepareConfig.model_validate(config), show_progress=False)


def first_documents(store: TokenStore) -> EvalSet:
    """The old evaluation: the fewest first whole documents in stored order holding EVAL_TOKENS, uncapped."""
    whole = eval_set(store, "validation", None, max_share=1.0)
    keep = int(np.searchsorted(np.cumsum(whole.doc_tokens), EVAL_TOKENS, side="left")) + 1
    end = int(whole.starts[keep - 1] + whole.doc_tokens[keep - 1])
    return EvalSet(whole.stream[:end + 1], whole.starts[:keep], whole.doc_tokens[:keep], whole.doc_bytes[:keep],
                   whole.documents[:keep], whole.split)


def measure(store: TokenStore, data: EvalSet, sizes: list[int]) -> dict:
    names = [record["id"] for record in store.split("validation").doc_records()]
    per_size = []
    for size in sizes:
        model = KneserNeyLM.fit(np.asarray(store.train().tokens[:size]), ORDER, store.tokenizer.vocab_size)
        per_size.append(result(-model.logprobs(data.stream), data))
    shares = data.doc_tokens / data.n_tokens
    change = per_size[0].bits_per_byte - per_size[-1].bits_per_byte
    # A document's part of the change in bits per byte: its own drop in NLL over the scored bytes.
    drops = (np.array(per_size[0].documents["nll"]) - np.array(per_size[-1].documents["nll"])) / (
        np.log(2) * data.n_bytes)
    largest = np.argsort(-np.abs(drops))[:3]
    return {
        "documents": data.n_docs, "tokens": data.n_tokens,
        "largest_share": float(shares.max()), "largest_share_document": names[int(data.documents[shares.argmax()])],
        "bits_per_byte": [r.bits_per_byte for r in per_size],
        "bits_per_byte_se": [r.bits_per_byte_se for r in per_size],
        "change": change,
        "largest_contributions": [{"document": names[int(data.documents[i])],
                                   "share_of_change": float(drops[i] / change)} for i in largest],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/scalelab-heldout"))
    parser.add_argument("--sizes", type=int, nargs=2, default=[2_560_000, 5_120_000])
    args = parser.parse_args()
    report = {"machine": platform.platform(), "order": ORDER, "eval_tokens": EVAL_TOKENS, "sizes": args.sizes}
    for name in SETTINGS:
        store = dataset(args.out, name)
        data = first_documents(store) if name == "old" else eval_set(store, "validation", EVAL_TOKENS)
        report[name] = {"validation_documents": store.split("validation").n_docs,
                        "validation_tokens": store.split("validation").n_tokens, **measure(store, data, args.sizes)}
    for key in ("validation_documents", "validation_tokens", "documents", "tokens", "largest_share",
                "largest_share_document", "bits_per_byte", "bits_per_byte_se", "change"):
        print(f"{key:24} {str(report['old'][key]):>40}   {report['new'][key]}")
    for name in SETTINGS:
        print(f"{name}: largest parts of the change in bits per byte")
        for item in report[name]["largest_contributions"]:
            print(f"    {item['share_of_change']:7.1%}  {item['document']}")
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
