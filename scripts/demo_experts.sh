#!/usr/bin/env bash
# Experts on the demo (README "Merging experts"): the demo task split by specialty, one joint
# run per specialty, both merged with configs/demo.yaml's `merge` section, and each model
# evaluated on every specialty's test questions. After `bash scripts/setup.sh`.
#   bash scripts/demo_experts.sh [section.key=value ...]     (overrides for every stage)
# OUT (default runs/demo-experts) holds everything; run again, it keeps the task, index,
# candidates, experts and merge, and evaluates again.
# QUESTIONS (default 1000): the size of the task before it is split.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo-experts}
QUESTIONS=${QUESTIONS:-1000}
J=.venv/bin/jmlr
C=configs/demo.yaml
if [ ! -f "$OUT/data/specialties/specialties.json" ]; then
  $J prepare-demo --out "$OUT/data" --diseases "$QUESTIONS" --questions "$QUESTIONS" --specialties 2
fi
SHARED=("data.corpus=$OUT/data/corpus.jsonl" "retriever.index_dir=$OUT/index"
        "factuality.kb=$OUT/data/kb.jsonl" "eval.limit=0" "$@")
[ -f "$OUT/index/jmlr_index.json" ] || $J index -c $C "${SHARED[@]}"
EXPERTS=() DATASETS=()
for dir in "$OUT"/data/specialties/*/; do
  name=$(basename "$dir")
  SPLITS=("data.train=$dir/train.jsonl" "data.dev=$dir/dev.jsonl" "data.test=$dir/test.jsonl"
          "candidates.path=$OUT/candidates-$name")
  [ -f "$OUT/candidates-$name/dev.meta.json" ] || $J mine -c $C "${SHARED[@]}" "${SPLITS[@]}" --splits train,dev
  if [ ! -d "$OUT/$name/final" ]; then
    RESUME=(); [ -d "$OUT/$name/checkpoints" ] && RESUME=(--resume)
    $J train -c $C "${SHARED[@]}" "${SPLITS[@]}" "run.out_dir=$OUT/$name" "${RESUME[@]}"
  fi
  EXPERTS+=("{run: $OUT/$name}") DATASETS+=("$name: ${dir}test.jsonl")
done
[ -f "$OUT/merged/merge_card.json" ] || \
  $J merge -c $C "${SHARED[@]}" "run.out_dir=$OUT/merged" "merge.experts=[$(IFS=,; echo "${EXPERTS[*]}")]"
# Every model on each specialty's test questions (one accuracy column per specialty).
EVAL=("eval.datasets={$(IFS=,; echo "${DATASETS[*]}")}" "eval.scoring=[letter, option_text]")
MODES=frozen,trained     # frozen (the base generator and retriever): once, with the first run
for run in "$OUT"/*/; do
  [ -d "$run/final" ] || continue
  $J evaluate -c $C "${SHARED[@]}" "${EVAL[@]}" --run "$run" --mode $MODES
  MODES=trained
done
