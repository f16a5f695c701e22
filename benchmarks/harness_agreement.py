"""Do ``lm_eval --model jmlr`` and ``jmlr evaluate`` agree? The none mode (the base generator,
no passages) on the demo's test questions, asked both ways with the same prompt.

The harness side is a local lm-eval task written by ``jmlr.evaluation.harness.write_mcq_task``
(jmlr's prompt, the letters as choices) run by ``lm_eval.simple_evaluate``; the jmlr side is
``jmlr evaluate``'s letter scoring (``evaluation.mcq.answer_questions``). One generator serves
both. Printed: each side's accuracy with its predicted-letter distribution, the share of
questions where they predict the same letter, and the largest difference between the two
log-probabilities of a letter.

    python -m benchmarks.harness_agreement            # all the demo's test questions (90)
    python -m benchmarks.harness_agreement --quick    # the first 20
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

from benchmarks import common

TASK = "jmlr_demo_test"


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="test questions (0: all; quick 20)")
    args = parser.parse_args(argv)
    device = common.setup_torch(args)
    import lm_eval
    from lm_eval.tasks import TaskManager

    from jmlr.data import load_split
    from jmlr.evaluation.harness import JmlrLM, write_mcq_task
    from jmlr.evaluation.mcq import answer_questions

    demo = common.demo_data(args.work_dir)
    overrides = [f"data.corpus={demo / 'corpus.jsonl'}", f"data.train={demo / 'train.jsonl'}",
                 f"data.dev={demo / 'dev.jsonl'}", f"data.test={demo / 'test.jsonl'}",
                 f"run.cache_dir={Path(args.cache_dir).expanduser()}", "eval.batch_size=8"]
    config = common.REPO_ROOT / "configs" / "demo.yaml"
    lm = JmlrLM(config=str(config), mode="none", overrides=";".join(overrides), device=device.type)
    questions = load_split(lm.cfg.data, "test")
    limit = args.limit or (20 if args.quick else 0)
    questions = questions[:limit] if limit else questions

    answers = answer_questions(lm.model, lm.tokenizer, questions, [[] for _ in questions],
                               ["letter"], lm.cfg, desc="jmlr evaluate")["letter"]
    with tempfile.TemporaryDirectory() as folder:
        write_mcq_task(folder, questions, TASK)
        out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], log_samples=True,
                                      task_manager=TaskManager(include_path=folder))
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])

    agree, largest, rows = 0, 0.0, []
    harness_letters, jmlr_letters, correct = [], [], {"harness": 0, "jmlr": 0}
    for q, answer, sample in zip(questions, answers, samples, strict=True):
        letters = list(q.options)
        loglik = [float(r[0]) for r in sample["filtered_resps"]]
        harness = letters[max(range(len(letters)), key=lambda i: loglik[i])]
        agree += harness == answer["predicted"]
        largest = max(largest, *(abs(loglik[i] - answer["option_scores"][letter])
                                 for i, letter in enumerate(letters)))
        harness_letters.append(harness)
        jmlr_letters.append(answer["predicted"])
        correct["harness"] += harness == q.answer
        correct["jmlr"] += answer["predicted"] == q.answer
    n = len(questions)
    for side, letters in (("lm_eval --model jmlr", harness_letters), ("jmlr evaluate", jmlr_letters)):
        key = "harness" if side.startswith("lm_eval") else "jmlr"
        counts = collections.Counter(letters).most_common()
        rows.append([side, n, round(correct[key] / n, 4),
                     " ".join(f"{letter}:{count}" for letter, count in counts)])
    print()
    print(common.markdown_table(["scored by", "questions", "letter accuracy",
                                 "predicted letters"], rows))
    print(f"\nsame predicted letter: {agree}/{n}; largest |log p(letter)| difference "
          f"{largest:.2e} nats; harness acc {out['results'][TASK]['acc,none']:.4f}")
    common.write_results(common.results_path(args.results_dir, "harness-agreement", device, args.quick),
                         {"benchmark": "harness_agreement", "questions": n, "agree": agree,
                          "largest_logprob_diff": largest, "rows": rows,
                          "environment": common.environment(device)})
    return 0 if agree == n else 1


if __name__ == "__main__":
    raise SystemExit(main())
