"""Does joint training make the retriever better than the one it starts from, and the answers
better than with a frozen retriever? Measured over seeds and tasks nobody tuned to.

Per task (a demo task built with its own seed and size, not the demo's): the task is built,
indexed and mined once; the untrained retriever and the teacher's ceiling (the mined top-N
re-ranked by the base generator's own utilities) are measured once. Per seed, two runs with
the same settings: the frozen-retriever baseline (``jmlr.train_retriever=false``) and the joint
run. Each run is measured on dev and test: gold recall@1/@7 and MRR re-ranking the mined
top-N, the same after searching the index again with the trained query encoder and after
searching an index rebuilt with the trained retriever (documents re-encoded), accuracy in
trained mode by letter, debiased-letter and option-text scoring (with the predicted-letter
distribution), and the training diagnostics (usable pairs, gold-pair accuracy of teacher and
retriever over the run, reading gain on dev before and after).

Reported per task: mean and sd over seeds, and paired bootstrap intervals (over test
questions, per-question values averaged over seeds) of joint − untrained and joint − frozen.

    .venv/bin/python -m benchmarks.efficacy            # 2 tasks x 3 seeds (hours on 2 cores)
    .venv/bin/python -m benchmarks.efficacy --quick    # 1 small task x 2 seeds, short runs

Runs are kept under ``--work-dir`` and reused when finished, so an interrupted benchmark
continues where it stopped. ``--set section.key=value`` changes the settings of both runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import efficacy_measures as em

TASKS = {"demo-s1-400": {"seed": 1, "diseases": 400, "questions": 400},
         "demo-s2-600": {"seed": 2, "diseases": 600, "questions": 600}}
QUICK_TASKS = {"quick-s1-120": {"seed": 1, "diseases": 120, "questions": 120}}
SCORINGS = ["letter", "option_text"]       # --debiased adds letter_debiased (5x the forwards)
METRICS = ("r@1", "r@7", "mrr")
FROZEN = ["jmlr.train_retriever=false", "jmlr.utilities_when_frozen=false"]


def parse_args() -> argparse.Namespace:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default=None, help="comma-separated run seeds (default 0,1,2)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names "
                        f"(default: {', '.join(TASKS)})")
    parser.add_argument("--config", default=str(common.REPO_ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="section.key=value",
                        help="a setting of both runs (repeatable)")
    parser.add_argument("--joint-set", action="append", default=[], metavar="section.key=value",
                        help="a setting of the joint runs only (repeatable); with --variant")
    parser.add_argument("--variant", default="",
                        help="name of the joint runs' settings: their folders are joint-VARIANT-"
                        "seedN, while the frozen runs (whose retriever never trains) are shared")
    parser.add_argument("--ceiling-questions", type=int, default=30,
                        help="test questions on which the teacher's ceiling is measured")
    parser.add_argument("--ceiling-top", type=int, default=10,
                        help="the ceiling re-orders the mined top-N's first this many by the "
                        "teacher (the rest keep the mined order)")
    parser.add_argument("--dev-curve", action="store_true",
                        help="dev recall and reading gain inside each run, before and after")
    parser.add_argument("--debiased", action="store_true",
                        help="also score accuracy by debiased letters (one forward per option)")
    parser.add_argument("--eval-limit", type=int, default=0,
                        help="test questions for accuracy (0: all)")
    parser.add_argument("--teacher-utilities", type=int, default=0, metavar="N",
                        help="write the base teacher's utilities of the first N training "
                        "questions once per task (jmlr utilities) and start the joint runs' "
                        "replay from them (jmlr.teacher_utilities; needs --joint-set "
                        "jmlr.replay_questions=M)")
    parser.add_argument("--name", default="efficacy", help="results file name")
    return parser.parse_args()


def scorings(args: argparse.Namespace) -> list[str]:
    return [*SCORINGS, "letter_debiased"] if args.debiased else SCORINGS


def task_config(args: argparse.Namespace, data: Path, run_dir: Path, seed: int, *extra: str):
    from jmlr.config import load_config

    return load_config(args.config, [
        f"run.out_dir={run_dir}", f"run.seed={seed}", f"run.cache_dir={args.cache_dir}",
        f"data.corpus={data / 'corpus.jsonl'}", f"data.train={data / 'train.jsonl'}",
        f"data.dev={data / 'dev.jsonl'}", f"data.test={data / 'test.jsonl'}",
        f"factuality.kb={data / 'kb.jsonl'}", f"retriever.index_dir={data.parent / 'index'}",
        f"candidates.path={data.parent / 'candidates'}", f"eval.scoring=[{', '.join(scorings(args))}]",
        f"eval.limit={args.eval_limit}", "eval.modes=[trained]", *args.set, *extra])


def prepare_task(args: argparse.Namespace, name: str, spec: dict[str, int]) -> dict[str, Any]:
    """Build, index and mine the task once; measure the untrained retriever and the ceiling."""
    from jmlr.data import load_split
    from jmlr.data.demo import prepare_demo
    from jmlr.evaluation.passages import corpus_texts
    from jmlr.retrieval.backends import backend_for
    from jmlr.retrieval.candidates import load_candidates, run_mine

    root = Path(args.work_dir).expanduser() / "efficacy" / name
    data = root / "data"
    if not (data / "README.md").is_file():
        prepare_demo(data, seed=spec["seed"], n_diseases=spec["diseases"],
                     n_questions=spec["questions"])
    cfg = task_config(args, data, root / "mine", 0)
    if not backend_for(cfg).index_exists(cfg):
        backend_for(cfg).build_index(cfg)
    if not (cfg.candidates_dir / "test.meta.json").is_file():
        run_mine(cfg, splits=["train", "dev", "test"])
    corpus = corpus_texts(cfg)
    splits = {s: load_split(cfg.data, s) for s in ("dev", "test")}
    pools = {s: load_candidates(cfg, s) for s in splits}
    measured = root / "untrained.json"
    if not measured.is_file():
        subset = splits["test"][:args.ceiling_questions]
        result = {s: em.rerank_ranks(cfg, None, qs, pools[s], corpus) for s, qs in splits.items()}
        result["ceiling"] = em.teacher_ranks(cfg, subset, pools["test"], corpus, args.ceiling_top)
        measured.write_text(json.dumps(result))
    teacher = []
    if args.teacher_utilities > 0:
        from jmlr.training.teacher_file import run_teacher_utilities

        path = root / "teacher" / "train.utilities.jsonl"
        run_teacher_utilities(task_config(args, data, root / "mine", 0, *args.joint_set),
                              limit=args.teacher_utilities, out=path)
        teacher = [f"jmlr.teacher_utilities={path}"]
    return {"root": root, "data": data, "corpus": corpus, "splits": splits, "pools": pools,
            "untrained": json.loads(measured.read_text()), "joint_set": [*args.joint_set, *teacher]}


def run_one(args: argparse.Namespace, task: dict[str, Any], seed: int, kind: str) -> dict[str, Any]:
    """Train one run (``joint`` or ``frozen``), evaluate it, measure its retriever."""
    from jmlr.evaluation.mcq import run_evaluate
    from jmlr.training.loop import run_train

    variant = f"-{args.variant}" if kind == "joint" and args.variant else ""
    run_dir = task["root"] / f"{kind}{variant}-seed{seed}"
    done = run_dir / "measured.json"
    extra = FROZEN if kind == "frozen" else task["joint_set"]
    if done.is_file():
        return with_reindexed(args, task, kind, run_dir, json.loads(done.read_text()), extra)
    cfg = task_config(args, task["data"], run_dir, seed, *extra)
    # Dev retrieval is measured after training below; --dev-curve adds the loop's own dev
    # passes (recall, reading gain) before and after training, minutes per run on a CPU.
    cfg.train.eval_every = cfg.train.max_steps if args.dev_curve else -1
    started = time.perf_counter()
    if not (run_dir / "final").is_dir():
        run_train(cfg, resume=(run_dir / "checkpoints").is_dir())
    train_s = time.perf_counter() - started
    run_evaluate(cfg, run_dir, split="test", modes=["trained"])
    correct, letters = em.correct_by_scoring(run_dir)
    final = run_dir / "final" / "retriever"
    if kind == "frozen":        # its retriever is the untrained one: measured once per task
        ranks = {s: task["untrained"][s] for s in task["splits"]}
        ranks["test_research"] = task["untrained"]["test"]
    else:
        ranks = {s: em.rerank_ranks(cfg, final, qs, task["pools"][s], task["corpus"])
                 for s, qs in task["splits"].items()}
        ranks["test_research"] = em.research_ranks(cfg, final, task["splits"]["test"],
                                                   task["corpus"])
    ranks["ceiling_subset"] = {q: ranks["test"][q] for q in task["untrained"]["ceiling"]}
    ranks["test_reindexed"] = task["untrained"]["test"] if kind == "frozen" else em.reindexed_ranks(
        cfg, final, run_dir / "index-trained", task["splits"]["test"], task["corpus"])
    result = {"kind": kind, "seed": seed, "train_s": round(train_s, 1),
              "seconds": round(time.perf_counter() - started, 1), "ranks": ranks,
              "correct": correct, "letters": letters,
              "diagnostics": em.training_diagnostics(run_dir)}
    done.write_text(json.dumps(result))
    return result


def with_reindexed(args: argparse.Namespace, task: dict[str, Any], kind: str, run_dir: Path,
                   result: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """A run measured before the re-indexed search existed gets it now (and keeps it)."""
    if "test_reindexed" not in result["ranks"]:
        cfg = task_config(args, task["data"], run_dir, result["seed"], *extra)
        result["ranks"]["test_reindexed"] = task["untrained"]["test"] if kind == "frozen" else \
            em.reindexed_ranks(cfg, run_dir / "final" / "retriever", run_dir / "index-trained",
                               task["splits"]["test"], task["corpus"])
        (run_dir / "measured.json").write_text(json.dumps(result))
    return result


def summarise_task(task: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    untrained, joint, frozen = task["untrained"], runs["joint"], runs["frozen"]
    out: dict[str, Any] = {"retrieval": {}, "accuracy": {}, "ceiling": {}}
    for split in ("dev", "test", "test_research", "test_reindexed"):
        base = untrained["test" if split.startswith("test_") else split]
        for metric in METRICS:
            value = em.metric_fn(metric)
            out["retrieval"][f"{split} {metric}"] = {
                "untrained": round(value(base), 4),
                "joint": em.mean_sd([value(run["ranks"][split]) for run in joint]),
                "joint_minus_untrained": em.paired_bootstrap(
                    [em.per_question(run["ranks"][split], metric) for run in joint],
                    [em.per_question(base, metric)])}
    for metric in ("r@1", "mrr"):
        value = em.metric_fn(metric)
        subset = {q: untrained["test"][q] for q in untrained["ceiling"]}
        low, high = value(subset), value(untrained["ceiling"])
        reached = [value(run["ranks"]["ceiling_subset"]) for run in joint]
        out["ceiling"][metric] = {
            "n_questions": len(subset), "untrained": round(low, 4), "teacher_ceiling": round(high, 4),
            "joint": em.mean_sd(reached),
            "gap_closed": round((sum(reached) / len(reached) - low) / (high - low), 3)
            if high > low else None}
    for scoring in joint[0]["correct"]:
        out["accuracy"][scoring] = {
            "frozen": em.mean_sd([statistics_mean(r["correct"][scoring]) for r in frozen]),
            "joint": em.mean_sd([statistics_mean(r["correct"][scoring]) for r in joint]),
            "joint_minus_frozen": em.paired_bootstrap([r["correct"][scoring] for r in joint],
                                                      [r["correct"][scoring] for r in frozen]),
            "letters": {kind: [r["letters"].get(scoring) for r in runs[kind]] for kind in runs}}
    out["diagnostics"] = {kind: [r["diagnostics"] for r in runs[kind]] for kind in runs}
    out["seconds"] = {kind: [r["train_s"] for r in runs[kind]] for kind in runs}
    return out


def statistics_mean(values: dict[str, float]) -> float:
    return sum(values.values()) / max(len(values), 1)


def print_tables(name: str, summary: dict[str, Any]) -> None:
    def ms(entry: dict[str, Any]) -> str:
        return f"{entry['mean']:.3f} ± {entry['sd']:.3f}"

    def ci(entry: dict[str, Any]) -> str:
        return f"{entry['diff']:+.3f} [{entry['ci_low']:+.3f}, {entry['ci_high']:+.3f}]"

    rows = [[key, f"{v['untrained']:.3f}", ms(v["joint"]), ci(v["joint_minus_untrained"])]
            for key, v in summary["retrieval"].items()]
    print(f"\n### {name}: retrieval (gold passage)\n")
    print(common.markdown_table(["split metric", "untrained", "joint (mean ± sd)",
                                 "joint − untrained [95% CI]"], rows))
    rows = [[m, v["n_questions"], f"{v['untrained']:.3f}", f"{v['teacher_ceiling']:.3f}", ms(v["joint"]),
             v["gap_closed"]] for m, v in summary["ceiling"].items()]
    print(f"\n### {name}: the teacher's ceiling (test subset)\n")
    print(common.markdown_table(["metric", "questions", "untrained", "teacher ceiling", "joint",
                                 "gap closed"], rows))
    rows = [[s, ms(v["frozen"]), ms(v["joint"]), ci(v["joint_minus_frozen"])]
            for s, v in summary["accuracy"].items()]
    print(f"\n### {name}: accuracy in trained mode (test)\n")
    print(common.markdown_table(["scoring", "frozen run", "joint run", "joint − frozen [95% CI]"], rows))


def main() -> int:
    args = parse_args()
    device = common.setup_torch(args)
    tasks = QUICK_TASKS if args.quick else TASKS
    if args.tasks:
        tasks = {n: {**TASKS, **QUICK_TASKS}[n] for n in args.tasks.split(",")}
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2")).split(",")]
    if args.quick:
        args.set = ["train.max_steps=12", *args.set]
        args.eval_limit = args.eval_limit or 24
        args.ceiling_questions = min(args.ceiling_questions, 12)
    results: dict[str, Any] = {"settings": {"config": args.config, "set": args.set, "seeds": seeds,
                                            "variant": args.variant, "joint_set": args.joint_set,
                                            "teacher_utilities": args.teacher_utilities,
                                            "tasks": tasks, "ceiling_questions": args.ceiling_questions,
                                            "eval_limit": args.eval_limit},
                               "tasks": {}, "runs": {}}
    for name, spec in tasks.items():
        task = prepare_task(args, name, spec)
        runs = {kind: [run_one(args, task, seed, kind) for seed in seeds]
                for kind in ("frozen", "joint")}
        results["tasks"][name] = summarise_task(task, runs)
        results["runs"][name] = runs
        print_tables(name, results["tasks"][name])
    results["environment"] = common.environment(device)
    common.write_results(common.results_path(args.results_dir, args.name, device, args.quick), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
