"""Experts per specialty, merged: does one merged pair hold up against each expert on its own
specialty, and beat the base model on both? On a demo task split by specialty.

The task is built with its own seed, split into its two most common specialties (`jmlr
prepare-demo --specialties 2`), indexed once over the whole corpus. One joint run (the demo's
settings) per specialty is an expert; `jmlr merge` (mergekit, each method in its own process,
so its time and peak memory are its own) combines both parts with each method. Every model
answers the union of the two specialties' test questions (trained mode: its own retriever
re-scoring the mined top-30; the base model with the untrained retriever), and the results are
split by specialty: accuracy (letter and option text) and gold-passage R@1 / MRR, each with a
95% bootstrap interval over questions.

    .venv/bin/python -m benchmarks.experts            # 600-question task, 24 steps per expert
    .venv/bin/python -m benchmarks.experts --quick    # 200 questions, 6 steps

Stages that finished are kept under ``--work-dir`` and reused. One training seed per expert.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import efficacy_measures as em

METHODS: dict[str, dict[str, Any]] = {
    "linear": {"per_expert": {"weight": [0.5, 0.5]}},
    "task_arithmetic": {"per_expert": {"weight": [1.0, 1.0]}},
    "ties": {"parameters": {"lambda": 1.0}, "per_expert": {"weight": [1.0, 1.0], "density": [0.5, 0.5]}},
    "dare_linear": {"per_expert": {"weight": [1.0, 1.0], "density": [0.5, 0.5]}},
    "breadcrumbs": {"per_expert": {"weight": [1.0, 1.0], "density": [0.9, 0.9], "gamma": [0.01, 0.01]}},
}
MEASURES = ("letter", "option_text", "R@1", "MRR")


def parse_args():
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(common.REPO_ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--task-seed", type=int, default=5)
    parser.add_argument("--questions", type=int, default=600)
    parser.add_argument("--steps", type=int, default=24, help="joint steps per expert")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="section.key=value")
    parser.add_argument("--name", default="experts")
    return parser.parse_args()


def overrides(args, root: Path, data: Path, candidates: Path, *extra: str) -> list[str]:
    return [f"run.cache_dir={args.cache_dir}", f"data.corpus={root / 'data' / 'corpus.jsonl'}",
            f"data.train={data / 'train.jsonl'}", f"data.dev={data / 'dev.jsonl'}",
            f"data.test={data / 'test.jsonl'}", f"retriever.index_dir={root / 'index'}",
            f"candidates.path={candidates}", "eval.limit=0", "eval.scoring=[letter, option_text]",
            "train.eval_every=-1", *args.set, *extra]


def config(args, root: Path, data: Path, candidates: Path, *extra: str):
    from jmlr.config import load_config

    return load_config(args.config, overrides(args, root, data, candidates, *extra))


def per_question(run_dir: Path, mode: str, gold: dict[str, set[str]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for line in (run_dir / "eval" / "test" / "predictions.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["mode"] != mode:
            continue
        values = out.setdefault(row["id"], {})
        values[row["scoring"]] = float(row["correct"])
        ranked = [c["id"] for c in row["candidates"]]
        rank = next((i + 1 for i, pid in enumerate(ranked) if pid in gold[row["id"]]), None)
        values["R@1"] = float(rank == 1)
        values["MRR"] = 1.0 / rank if rank else 0.0
    return out


def main() -> int:
    from jmlr.data.demo import prepare_demo
    from jmlr.data.demo_specialties import split_by_specialty
    from jmlr.evaluation.mcq import run_evaluate
    from jmlr.retrieval.backends import backend_for
    from jmlr.retrieval.candidates import run_mine
    from jmlr.training.loop import run_train

    args = parse_args()
    device = common.setup_torch(args)
    questions = 200 if args.quick else args.questions
    steps = 6 if args.quick else args.steps
    methods = args.methods.split(",")
    root = Path(args.work_dir).expanduser() / "experts" / f"demo-s{args.task_seed}-{questions}"
    seconds: dict[str, float] = {}
    data = root / "data"
    if not (data / "specialties" / "specialties.json").is_file():
        prepare_demo(data, seed=args.task_seed, n_diseases=questions, n_questions=questions)
        split_by_specialty(data, 2)
    specialties = [s["name"] for s in
                   json.loads((data / "specialties" / "specialties.json").read_text())["specialties"]]
    # The union of the specialties' test questions: every model answers it once.
    union = root / "union"
    union.mkdir(parents=True, exist_ok=True)
    which: dict[str, str] = {}
    lines = []
    for name in specialties:
        for line in (data / "specialties" / name / "test.jsonl").read_text().splitlines():
            if line.strip():
                which[json.loads(line)["id"]] = name
                lines.append(line)
    (union / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split in ("train", "dev"):
        (union / f"{split}.jsonl").write_text((data / f"{split}.jsonl").read_text(), encoding="utf-8")
    gold = {json.loads(line)["id"]: set(json.loads(line).get("gold_passage_ids") or []) for line in lines}

    base_cfg = config(args, root, union, root / "candidates-union")
    if not backend_for(base_cfg).index_exists(base_cfg):
        started = time.perf_counter()
        backend_for(base_cfg).build_index(base_cfg)
        seconds["index"] = round(time.perf_counter() - started, 1)
    if not (base_cfg.candidates_dir / "test.meta.json").is_file():
        run_mine(base_cfg, ["test"])
    runs: dict[str, Path] = {}
    for name in specialties:
        folder = data / "specialties" / name
        cfg = config(args, root, folder, root / f"candidates-{name}", f"run.out_dir={root / name}",
                     f"train.max_steps={steps}")
        if not (cfg.candidates_dir / "dev.meta.json").is_file():
            run_mine(cfg, ["train", "dev"])
        if not (root / name / "final").is_dir():
            started = time.perf_counter()
            run_train(cfg, resume=(root / name / "checkpoints").is_dir())
            seconds[f"train {name}"] = round(time.perf_counter() - started, 1)
        runs[name] = root / name

    cards = {}
    for method in methods:
        out = root / f"merged-{method}"
        runs[f"merged-{method}"] = out
        if (out / "merge_card.json").is_file():
            cards[method] = json.loads((out / "merge_card.json").read_text())
            continue
        # The whole merge section written into the run's own config file (a command-line
        # override would merge into configs/demo.yaml's section, keeping its parameters).
        from jmlr.merging.config import Expert, MergeConfig, PartMerge

        part = {"method": method, "parameters": {}, "per_expert": {}, **METHODS[method]}
        merge_cfg = config(args, root, union, root / "candidates-union", f"run.out_dir={out}")
        merge_cfg.extra["merge"] = MergeConfig(experts=[Expert(run=str(root / n)) for n in specialties],
                                      generator=PartMerge(**part), retriever=PartMerge(**part))
        merge_yaml = root / f"merge-{method}.yaml"
        merge_cfg.save(merge_yaml)
        cmd = [sys.executable, "-m", "jmlr", "merge", "-c", str(merge_yaml)]
        subprocess.run(cmd, check=True)
        cards[method] = json.loads((out / "merge_card.json").read_text())

    measured: dict[str, dict[str, dict[str, float]]] = {}
    for model in ["base", *runs]:
        run = root / model if model == "base" else runs[model]
        mode = "frozen" if model == "base" else "trained"
        if not (run / "eval" / "test" / "metrics.json").is_file():
            run.mkdir(parents=True, exist_ok=True)
            run_cfg = config(args, root, union, root / "candidates-union", f"run.out_dir={run}")
            if not (run / "config.yaml").is_file():      # the base model's folder: no training
                run_cfg.save(run / "config.yaml")
            started = time.perf_counter()
            run_evaluate(run_cfg, run, "test", [mode])
            seconds[f"evaluate {model}"] = round(time.perf_counter() - started, 1)
        measured[model] = per_question(run, mode, gold)

    groups = {**{name: [q for q, s in which.items() if s == name] for name in specialties},
              "union": list(which)}
    table: dict[str, Any] = {}
    rows = []
    for model, values in measured.items():
        table[model] = {g: {m: em.mean_interval([values[q][m] for q in ids]) for m in MEASURES}
                        for g, ids in groups.items()}
        rows.append([model, *(f"{table[model][g][m]['mean']:.3f} [{table[model][g][m]['ci_low']:.2f}, "
                              f"{table[model][g][m]['ci_high']:.2f}]" for g in groups for m in ("option_text", "R@1"))])
    print(f"\n### test by specialty ({', '.join(f'{g}: {len(i)}' for g, i in groups.items())} questions)\n")
    print(common.markdown_table(["model", *(f"{g} {m}" for g in groups for m in ("option text", "R@1"))], rows))
    print("\nmerge time and peak memory:", json.dumps({m: [c["seconds"], c["peak_rss_mib"]]
                                                      for m, c in cards.items()}))
    results = {"settings": {"task_seed": args.task_seed, "questions": questions, "steps": steps,
                            "specialties": specialties, "methods": {m: METHODS[m] for m in methods},
                            "set": args.set},
               "table": table, "merge": {m: {"seconds": c["seconds"], "peak_rss_mib": c["peak_rss_mib"]}
                                         for m, c in cards.items()},
               "seconds": seconds, "environment": common.environment(device)}
    common.write_results(common.results_path(args.results_dir, args.name, device, args.quick), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
