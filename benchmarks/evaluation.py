"""Figure 3: multiple-choice answering speed, questions/s, batched against one at a time.

``jmlr.evaluation.mcq.answer_questions`` (what ``jmlr evaluate`` runs) answers demo-task test
questions with r = 7 passages each in the prompt (about 128 tokens per passage), by letter
scoring (one forward per batch, only the last position projected onto the vocabulary) and,
for comparison, option-text scoring (the prompt's key/value cache reused for each option).
``eval.batch_size`` 1 is one question at a time; larger batches are left padded and sorted
by length. Scores of the batched runs must match the one-at-a-time scores (max |diff| shown).

    python -m benchmarks.evaluation --quick                  # tiny model, CPU
    python -m benchmarks.evaluation --model smollm2          # CPU
    python -m benchmarks.evaluation --model llama2-7b-random --device cuda
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks import common
from benchmarks.step_setup import (
    SPECS,
    llama_tokenizer,
    load_settings,
    load_step_data,
    random_llama,
)


def load_eval_model(name: str, device: torch.device, cache_dir: str) -> tuple[Any, Any, Any]:
    """(model in eval mode, nothing trainable; tokenizer; config) for ``--model``."""
    from jmlr.generation.model import load_generator

    spec = SPECS[name]
    cfg = load_settings(spec, {})
    if spec.random_shape:
        cfg.generator.lora_r = 0
        cfg.generator.gradient_checkpointing = False
        model = random_llama(spec.random_shape, cfg.generator, device).eval().requires_grad_(False)
        tokenizer = llama_tokenizer(cache_dir)
    else:
        model, tokenizer = load_generator(cfg.generator, cache_dir, device=str(device),
                                          for_training=False)
    return model, tokenizer, cfg


def time_answers(model: Any, tokenizer: Any, questions: list, readings: list[list[str]],
                 scoring: str, cfg: Any, batch_size: int, device: torch.device
                 ) -> tuple[float, list[list[float]]]:
    """(seconds, option scores per question) of ``answer_questions`` at ``batch_size``."""
    from jmlr.evaluation.mcq import answer_questions

    cfg.eval.batch_size = batch_size
    common.sync(device)
    started = time.perf_counter()
    answers = answer_questions(model, tokenizer, questions, readings, [scoring], cfg,
                               desc=f"{scoring} b={batch_size}")
    common.sync(device)
    seconds = time.perf_counter() - started
    return seconds, [list(a["option_scores"].values()) for a in answers[scoring]]


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=sorted(SPECS))
    parser.add_argument("--questions", type=int, default=None, help="default 32; quick 8")
    parser.add_argument("--batch-sizes", default="1,4,8", help="comma-separated")
    parser.add_argument("--passages", type=int, default=7, help="passages read per question")
    parser.add_argument("--passage-tokens", type=int, default=None, help="default 128; quick 64")
    parser.add_argument("--scorings", default="letter,option_text")
    args = parser.parse_args(argv)
    device = common.setup_torch(args)
    n_questions = args.questions or (8 if args.quick else 32)
    passage_tokens = args.passage_tokens or (64 if args.quick else 128)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    scorings = args.scorings.split(",")
    repeats = args.repeats or 1
    model, tokenizer, cfg = load_eval_model(args.model, device, args.cache_dir)
    data = load_step_data(tokenizer, args.work_dir, n_questions, args.passages, passage_tokens,
                          split="test")
    questions, readings = data.questions, data.candidates
    cfg.eval.max_new_tokens = 1
    # warm-up: one batch of each size
    for b in batch_sizes:
        time_answers(model, tokenizer, questions[:b], readings[:b], scorings[0], cfg, b, device)

    results: dict[str, Any] = {}
    rows = []
    for scoring in scorings:
        baseline_scores = None
        results[scoring] = {}
        for b in batch_sizes:
            runs = [time_answers(model, tokenizer, questions, readings, scoring, cfg, b, device)
                    for _ in range(repeats)]
            seconds = sorted(r[0] for r in runs)[len(runs) // 2]
            scores = runs[0][1]
            if baseline_scores is None:
                baseline_scores = scores
            diff = max(abs(x - y) for a, c in zip(scores, baseline_scores, strict=True)
                       for x, y in zip(a, c, strict=True))
            qps = len(questions) / seconds
            results[scoring][str(b)] = {"seconds": seconds, "questions_per_s": qps,
                                        "max_abs_score_diff_vs_first": diff}
            first = results[scoring][str(batch_sizes[0])]["questions_per_s"]
            rows.append([scoring, b, seconds, qps, qps / first, diff])
    print(common.markdown_table(["scoring", "batch size", "seconds", "questions/s",
                                 f"vs batch {batch_sizes[0]}", "max |score diff|"], rows))
    common.write_results(common.results_path(args.results_dir, f"evaluation-{args.model}", device,
                                              args.quick), {
        "benchmark": "evaluation", "model": args.model, "quick": args.quick,
        "settings": {"questions": len(questions), "passages": args.passages,
                     "mean_passage_tokens": data.mean_passage_tokens, "batch_sizes": batch_sizes,
                     "repeats": repeats, "dtype": cfg.generator.dtype,
                     "max_length": cfg.generator.max_length},
        "results": results, "environment": common.environment(device)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
