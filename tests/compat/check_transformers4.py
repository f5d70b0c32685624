"""Does a Transformer that scalelab exports under transformers 5 load the same under transformers 4.x?

transformers 5 keeps RoPE's base period in `rope_parameters`, a key 4.x does not read, so without a top-level
`rope_theta` a 4.x user silently gets the default period. Two halves, in two environments (.ci/transformers4.sh):

    python -m tests.compat.check_transformers4 export DIR   # scalelab's environment: train, export, reference
    python -m tests.compat.check_transformers4 check DIR    # an environment with transformers<5: load, compare

Not a pytest module: it needs a second environment. The check half imports only torch and transformers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROPE_THETA = 500.0  # far from the default 10,000, so reading the wrong period moves the logits
CONTEXT = 64
TEXT = "the data model loss falls with more tokens of text"  # ~40 tokens, so later positions rotate far
NEW_TOKENS = 8
TOLERANCE = 1e-4


def export_half(directory: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scalelab.data import prepare
    from scalelab.deploy.export import export_run
    from scalelab.train.run import train_run
    from tests.conftest import tiny_config, write_corpus
    from tests.train.test_run import TINY, tiny

    corpus = write_corpus(directory / "corpus", n_docs=120, seed=1)
    store = prepare(tiny_config(corpus, directory / "dataset"), show_progress=False)
    shape = {**TINY["transformer"], "context_length": CONTEXT, "rope_theta": ROPE_THETA}
    config = tiny(store, "transformer", steps=30, transformer=shape)
    train_run(config, directory / "run", show_progress=False)
    model_dir = export_run(directory / "run", directory / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer(TEXT, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        greedy = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    torch.save({"ids": inputs["input_ids"], "logits": logits, "greedy": greedy}, directory / "reference.pt")
    print(f"exported a {inputs['input_ids'].shape[1]}-token reference with rope_theta={ROPE_THETA} to {directory}")


def check_half(directory: Path) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = torch.load(directory / "reference.pt")
    model_dir = directory / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer(TEXT, return_tensors="pt")
    problems = []
    if not torch.equal(inputs["input_ids"], reference["ids"]):
        problems.append(f"the tokenizer reads {inputs['input_ids'].tolist()}, transformers 5 read "
                        f"{reference['ids'].tolist()}")
    else:
        with torch.no_grad():
            diff = (model(**inputs).logits - reference["logits"]).abs().max().item()
            greedy = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        print(f"transformers {transformers.__version__}: rope_theta={getattr(model.config, 'rope_theta', None)}, "
              f"max |logit difference| = {diff:.2e}")
        if diff >= TOLERANCE:
            problems.append(f"logits differ by up to {diff:.2e} (tolerance {TOLERANCE:g})")
        if not torch.equal(greedy, reference["greedy"]):
            problems.append(f"greedy generation gives {greedy.tolist()}, transformers 5 gave "
                            f"{reference['greedy'].tolist()}")
    for problem in problems:
        print(f"transformers {transformers.__version__}: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("half", choices=("export", "check"))
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    if args.half == "export":
        export_half(args.directory)
        return 0
    return check_half(args.directory)


if __name__ == "__main__":
    sys.exit(main())
