"""Does adapting the retriever without labels help? Synthesize → warm up → evaluate, and the
query-template search, on a demo task, with the cost of each stage.

The task is built with its own seed and size (not the demo's), indexed and mined once. Then:
`jmlr synthesize` over the task's disease passages (one synthetic set, seed 0: the costly
part); the `retriever_contrastive` warm-up on it once per training seed; `jmlr eval-retriever`
in the task's BEIR layout (dev and test: nDCG@10, R@1, R@10, MRR@10 over the whole corpus) for
the untrained retriever and each warmed-up one; and `jmlr optimize-prompt` (gold signal on
dev, test held out) for the untrained retriever. Reported: mean and sd over training seeds,
and a paired bootstrap interval over queries of warmed-up − untrained.

    .venv/bin/python -m benchmarks.retriever_adaptation            # 400-question task, 3 seeds
    .venv/bin/python -m benchmarks.retriever_adaptation --quick    # 120 questions, 2 seeds

Stages that finished are kept under ``--work-dir`` and reused.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import efficacy_measures as em

MEASURES = ("nDCG@10", "R@1", "R@10", "RR@10")


def parse_args():
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default=None, help="warm-up seeds (default 0,1,2)")
    parser.add_argument("--config", default=str(common.REPO_ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--task-seed", type=int, default=3)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--passages", type=int, default=0, help="synthesize for the first N "
                        "disease passages (0: all)")
    parser.add_argument("--epochs", type=int, default=2, help="warm-up passes over the rows")
    parser.add_argument("--set", action="append", default=[], metavar="section.key=value")
    parser.add_argument("--name", default="retriever-adaptation")
    return parser.parse_args()


def config(args, root: Path, *extra: str):
    from jmlr.config import load_config

    data = root / "data"
    return load_config(args.config, [
        f"run.cache_dir={args.cache_dir}", f"data.corpus={data / 'corpus.jsonl'}",
        f"data.train={data / 'train.jsonl'}", f"data.dev={data / 'dev.jsonl'}",
        f"data.test={data / 'test.jsonl'}", f"retriever.index_dir={root / 'index'}",
        f"candidates.path={root / 'candidates'}", "synthesize.passage_pattern=^(OMIM|ORPHA)",
        f"synthesize.passages={args.passages}", f"synthesize.out={root / 'synthetic.jsonl'}",
        *args.set, *extra])


def timed(seconds: dict[str, float], name: str, fn, *a, **kw):
    started = time.perf_counter()
    out = fn(*a, **kw)
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - started, 1)
    return out


def main() -> int:
    from jmlr.data.demo import prepare_demo
    from jmlr.evaluation.retriever_eval import run_eval_retriever
    from jmlr.retrieval.backends import backend_for
    from jmlr.retrieval.candidates import run_mine
    from jmlr.retrieval.query_prompts import run_optimize_prompt
    from jmlr.retrieval.synthesis import meta_path, run_synthesize
    from jmlr.training.loop import run_train

    args = parse_args()
    device = common.setup_torch(args)
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2")).split(",")]
    questions = 120 if args.quick else args.questions
    root = Path(args.work_dir).expanduser() / "adaptation" / f"demo-s{args.task_seed}-{questions}"
    seconds: dict[str, float] = {}
    if not (root / "data" / "README.md").is_file():
        prepare_demo(root / "data", seed=args.task_seed, n_diseases=questions, n_questions=questions)
    cfg = config(args, root, *(["synthesize.passages=24"] if args.quick else []))
    if not backend_for(cfg).index_exists(cfg):
        timed(seconds, "index", backend_for(cfg).build_index, cfg)
    if not (cfg.candidates_dir / "test.meta.json").is_file():
        timed(seconds, "mine", run_mine, cfg, ["train", "dev", "test"])
    synth = timed(seconds, "synthesize", run_synthesize, cfg)
    meta = json.loads(meta_path(Path(cfg.synthesize.out)).read_text())
    rows = sum(1 for line in Path(cfg.synthesize.out).read_text().splitlines() if line.strip())
    batch = 16          # in-batch negatives: the more rows per batch, the more negatives
    steps = max(1, math.ceil(rows / batch) * args.epochs)
    warmed = {}
    for seed in seeds:
        run = root / f"warm-seed{seed}"
        if not (run / "final" / "retriever").is_dir():
            timed(seconds, "warm-up", run_train, config(
                args, root, "train.step=retriever_contrastive", f"contrastive.data={cfg.synthesize.out}",
                f"run.out_dir={run}", f"run.seed={seed}", f"train.max_steps={steps}",
                f"train.batch_size={batch}", "train.grad_accum=1",
                "train.eval_every=-1", "train.save_every=0"), resume=(run / "checkpoints").is_dir())
        warmed[seed] = str(run / "final" / "retriever")
    results: dict[str, Any] = {"settings": {"task_seed": args.task_seed, "questions": questions,
                                            "seeds": seeds, "rows": rows, "warmup_steps": steps,
                                            "set": args.set},
                               "synthesis": {k: meta.get(k) for k in ("questions_per_s",
                                             "false_negatives_dropped", "seconds")}, "splits": {}}
    for split in ("dev", "test"):
        named = [f"warm-seed{s}={p}" for s, p in warmed.items()]
        found = timed(seconds, f"eval-retriever {split}", run_eval_retriever, cfg,
                      root / "data" / "beir", split, named=named)["retrievers"]
        base = found["untrained"]
        table = {}
        for measure in MEASURES:
            per_seed = [found[f"warm-seed{s}"] for s in seeds]
            table[measure] = {
                "untrained": round(base["measures"][measure], 4),
                "warmed": em.mean_sd([r["measures"][measure] for r in per_seed]),
                "warmed_minus_untrained": em.paired_bootstrap(
                    [{q: v[measure] for q, v in r["per_query"].items()} for r in per_seed],
                    [{q: v[measure] for q, v in base["per_query"].items()}])}
        results["splits"][split] = table
        print(f"\n### {split}: untrained vs warmed up on synthetic rows (mean ± sd over seeds)\n")
        print(common.markdown_table(["measure", "untrained", "warmed up", "diff [95% CI]"], [
            [m, f"{v['untrained']:.3f}", f"{v['warmed']['mean']:.3f} ± {v['warmed']['sd']:.3f}",
             f"{v['warmed_minus_untrained']['diff']:+.3f} [{v['warmed_minus_untrained']['ci_low']:+.3f}, "
             f"{v['warmed_minus_untrained']['ci_high']:+.3f}]"] for m, v in table.items()]))
    report = timed(seconds, "optimize-prompt", run_optimize_prompt,
                   config(args, root, f"run.out_dir={root / 'prompt-run'}", "optimize_prompt.rounds=1"),
                   split="dev", report_split="test", out_dir=root / "prompt")
    results["prompt"] = {"winner": report["winner"], "plain": report["plain"],
                         "candidates": len(report["candidates"])}
    results["seconds"] = seconds
    results["synthesize_summary"] = synth
    print("\nprompt: plain", json.dumps(report["plain"]), "\nwinner", json.dumps(report["winner"]))
    print("\nseconds per stage:", json.dumps(seconds))
    results["environment"] = common.environment(device)
    common.write_results(common.results_path(args.results_dir, args.name, device, args.quick), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
