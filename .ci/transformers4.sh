#!/usr/bin/env bash
# A Transformer exported under transformers 5 (scalelab's .venv) must load and score the same under the latest
# transformers 4.x, which many users still run: tests/compat/check_transformers4.py, its second half in a
# throwaway environment. Needs .venv (make setup); pip's cache makes the install quick after the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
work=$(mktemp -d "${TMPDIR:-/tmp}/scalelab-transformers4.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m venv "$work/venv"
# --no-compile: byte-compiling all of torch would take most of this step; the check imports a small part of it.
# shellcheck disable=SC2086  # TORCH_SPEC may carry options, e.g. --index-url, as in the Makefile
"$work/venv/bin/python" -m pip install --quiet --no-compile $TORCH_SPEC "transformers<5" safetensors tokenizers
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
.venv/bin/python -m tests.compat.check_transformers4 export "$work/export"
"$work/venv/bin/python" -m tests.compat.check_transformers4 check "$work/export"
