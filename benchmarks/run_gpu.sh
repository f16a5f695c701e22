#!/usr/bin/env bash
# Every GPU benchmark in one command, on a machine with a CUDA GPU where `jmlr` and its
# dependencies (torch with CUDA, transformers, peft, colbert-ai, the model carriers) are
# importable. Installs nothing. Writes benchmarks/results/*-cuda-<gpu>.json (or $RESULTS_DIR).
#
#   benchmarks/run_gpu.sh            # full sizes (about 20 minutes on one H100)
#   benchmarks/run_gpu.sh --quick    # smoke run of every script
#
# A failing script does not stop the others; the exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${RESULTS_DIR:-benchmarks/results}
EXTRA=("$@")
mkdir -p "$OUT"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "run_gpu.sh: torch sees no CUDA device" >&2
    exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

failed=()
run() {
    echo
    echo "=== $PY -m $* --device cuda ${EXTRA[*]:-}"
    if ! "$PY" -m "$@" --device cuda --results-dir "$OUT" "${EXTRA[@]}"; then
        failed+=("$1 ${2:-} ${3:-}")
    fi
}

# Figure 1: the training step, ours vs the authors' loop (7B: speed, MFU, profile; 13B: fit).
run benchmarks.joint_step --model llama2-7b-random --profile
run benchmarks.joint_step --model llama2-13b-random
# Figure 1 at small scale on the GPU too (fp32: the rank-loss equality check applies).
run benchmarks.joint_step --model smollm2
# Figure 2: PLAID index build and search (demo corpus, 100k synthetic passages).
run benchmarks.retrieval
# Figure 3: answering speed, batched vs one at a time.
run benchmarks.evaluation --model llama2-7b-random
run benchmarks.evaluation --model smollm2
# Figure 4 (UMLS-F) is CPU-only work (spaCy, nmslib): run benchmarks.factuality on any machine.

echo
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU benchmarks done; results in $OUT"
