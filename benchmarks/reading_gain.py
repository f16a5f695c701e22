"""How much accuracy can better retrieval buy? From the test predictions an efficacy run left
(``benchmarks.efficacy``), no model loaded: per task, the share of questions whose gold passage
was read, accuracy when it was and when it was not (the generator's reading gain), the
accuracy gain that the joint runs' extra gold reads predict at the frozen runs' reading gain,
the gain measured, and how many test questions a paired interval would need to tell that gain
from zero.

    .venv/bin/python -m benchmarks.reading_gain --work-dir DIR --variant teacher160

Option-text scoring, trained mode (each run's own generator with its own retriever).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from benchmarks import common


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default=str(common.DEFAULT_WORK_DIR))
    parser.add_argument("--variant", default="", help="the joint runs' variant (joint-VARIANT-seedN)")
    parser.add_argument("--tasks", default=None, help="comma-separated task folders (default all)")
    parser.add_argument("--scoring", default="option_text")
    parser.add_argument("--results-dir", default=str(common.RESULTS_DIR))
    parser.add_argument("--name", default="reading-gain")
    return parser.parse_args()


def run_rows(run_dir: Path, gold: dict[str, set[str]], scoring: str) -> dict[str, tuple[bool, bool]]:
    """question id → (gold passage read, answered correctly), trained mode."""
    path = run_dir / "eval" / "test" / "predictions.jsonl"
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["mode"] == "trained" and row["scoring"] == scoring:
            read = {p["id"] for p in row["retrieved"]}
            out[row["id"]] = (bool(read & gold[row["id"]]), bool(row["correct"]))
    return out


def pooled(runs: list[dict[str, tuple[bool, bool]]]) -> dict[str, Any]:
    """Gold-read share and accuracy given read / not read, pooled over runs.

    >>> pooled([{"q1": (True, True), "q2": (False, False)}, {"q1": (True, False), "q2": (True, True)}])
    {'answers': 4, 'gold_read': 0.75, 'accuracy': 0.5, 'accuracy_gold_read': 0.6667, 'accuracy_not_read': 0.0}
    """
    rows = [v for run in runs for v in run.values()]
    read = [c for g, c in rows if g]
    unread = [c for g, c in rows if not g]
    share = (lambda xs: round(sum(xs) / len(xs), 4) if xs else None)  # noqa: E731
    return {"answers": len(rows), "gold_read": share([g for g, _ in rows]),
            "accuracy": share([c for _, c in rows]), "accuracy_gold_read": share(read),
            "accuracy_not_read": share(unread)}


def questions_needed(effect: float, sd_diff: float) -> int | None:
    """Test questions for a paired 95% interval of half-width ``effect`` (normal approximation).

    >>> questions_needed(0.03, 0.45)
    865
    """
    return math.ceil((1.96 * sd_diff / effect) ** 2) if effect > 0 else None


def main() -> int:
    args = parse_args()
    root = Path(args.work_dir).expanduser() / "efficacy"
    tasks = args.tasks.split(",") if args.tasks else sorted(p.name for p in root.iterdir() if p.is_dir())
    joint_prefix = f"joint-{args.variant}-seed" if args.variant else "joint-seed"
    results: dict[str, Any] = {"variant": args.variant, "scoring": args.scoring, "tasks": {}}
    table = []
    for task in tasks:
        folder = root / task
        gold = {}
        for line in (folder / "data" / "test.jsonl").read_text().splitlines():
            row = json.loads(line)
            gold[row["id"]] = set(row.get("gold_passage_ids") or [])
        kinds: dict[str, list[dict[str, tuple[bool, bool]]]] = {"frozen": [], "joint": []}
        for run in sorted(folder.iterdir()):
            prefix = "frozen-seed" if run.name.startswith("frozen-seed") else joint_prefix
            if run.name.startswith(prefix) and (run / "eval" / "test" / "predictions.jsonl").is_file():
                kinds["frozen" if prefix == "frozen-seed" else "joint"].append(
                    run_rows(run, gold, args.scoring))
        if not kinds["frozen"] or not kinds["joint"]:
            continue
        frozen, joint = pooled(kinds["frozen"]), pooled(kinds["joint"])
        reading_gain = frozen["accuracy_gold_read"] - frozen["accuracy_not_read"]
        predicted = (joint["gold_read"] - frozen["gold_read"]) * reading_gain
        measured = joint["accuracy"] - frozen["accuracy"]
        # per-question joint − frozen correctness, each side averaged over its seeds
        ids = sorted(set.intersection(*(set(r) for r in kinds["frozen"] + kinds["joint"])))
        diffs = [sum(r[q][1] for r in kinds["joint"]) / len(kinds["joint"])
                 - sum(r[q][1] for r in kinds["frozen"]) / len(kinds["frozen"]) for q in ids]
        mean = sum(diffs) / len(diffs)
        sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / max(1, len(diffs) - 1))
        results["tasks"][task] = {
            "frozen": frozen, "joint": joint, "runs": {k: len(v) for k, v in kinds.items()},
            "test_questions": len(ids), "reading_gain": round(reading_gain, 4),
            "predicted_gain": round(predicted, 4), "measured_gain": round(measured, 4),
            "sd_paired_diff": round(sd, 4),
            "questions_for_3_points": questions_needed(0.03, sd),
            "questions_for_predicted": questions_needed(predicted, sd)}
        t = results["tasks"][task]
        table.append([task, f"{frozen['gold_read']:.3f} → {joint['gold_read']:.3f}",
                      f"{frozen['accuracy_gold_read']:.3f} / {frozen['accuracy_not_read']:.3f}",
                      f"{joint['accuracy_gold_read']:.3f} / {joint['accuracy_not_read']:.3f}",
                      f"{predicted:+.3f}", f"{measured:+.3f}", len(ids),
                      t["questions_for_3_points"]])
    print(common.markdown_table(
        ["task", "gold read (frozen → joint)", "acc read / not (frozen)", "acc read / not (joint)",
         "predicted gain", "measured gain", "test questions", "questions for ±3 points"], table))
    out = Path(args.results_dir) / f"{args.name}{'-' + args.variant if args.variant else ''}.json"
    common.write_results(out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
