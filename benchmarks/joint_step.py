"""Figure 1: one JMLR training step, ours against the authors' loop structure.

Both implementations get the same models, the same question (batch 1, as the authors' code),
the same candidate passages and the same drawn passages; each step is: retriever scoring with
gradient, per-passage utilities, rank loss, generator forward, one backward of
``L_gen + λ·L_rank``, an AdamW step. Ours is :func:`jmlr.training.objective.joint_step` (all
utilities in one batched, eval-mode forward that projects only the target positions onto the
vocabulary); the reference is :mod:`benchmarks.reference_loop` (one train-mode forward per
passage with full logits).

Before timing, both run once with every dropout set to 0 and must give the same rank loss
(fp32: within 1e-5). Phases are timed with wrappers around the functions ``joint_step`` calls
(``score_fn``, ``encode_fn``, ``passage_utilities``, ``generator_loss``); the median over the
timed repeats is reported.

    python -m benchmarks.joint_step --quick                       # tiny model, CPU, < 2 min
    python -m benchmarks.joint_step --model smollm2 --profile     # CPU
    python -m benchmarks.joint_step --model llama2-7b-random --device cuda
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import torch

from benchmarks import common
from benchmarks.reference_loop import reference_step
from benchmarks.step_setup import (
    FLOP_FORMULA,
    SPECS,
    generator_param_counts,
    load_models,
    load_settings,
    load_step_data,
    model_flops,
    set_dropout,
)

PHASES = ("retriever_scoring", "encode", "per_passage_losses", "rank_loss", "generator_forward",
          "backward", "optimizer_step", "other")
EQUALITY_TOLERANCE = 1e-5


@contextlib.contextmanager
def timed_objective(timer: common.PhaseTimer) -> Iterator[None]:
    """Time the utility and generator-loss calls that ``joint_step`` makes (module attributes
    of ``jmlr.training.objective``, swapped for timed wrappers while the block runs)."""
    from jmlr.training import objective

    originals = objective.passage_utilities, objective.generator_loss

    def utilities(*args: Any, **kwargs: Any) -> torch.Tensor:
        with timer("per_passage_losses"):
            return originals[0](*args, **kwargs)

    def gen_loss(*args: Any, **kwargs: Any) -> torch.Tensor:
        with timer("generator_forward"):
            return originals[1](*args, **kwargs)

    objective.passage_utilities, objective.generator_loss = utilities, gen_loss
    try:
        yield
    finally:
        objective.passage_utilities, objective.generator_loss = originals


class Bench:
    """Models, optimizer and data, and one step of either implementation."""

    def __init__(self, args: Any, device: torch.device) -> None:
        from jmlr.training.objective import prompt_encoder

        spec = SPECS[args.model]
        overrides = {k: v for k, v in (("k_sample", args.k), ("r_read", args.r),
                                       ("n_candidates", args.candidates),
                                       ("passage_tokens", args.passage_tokens)) if v}
        self.spec = dataclasses.replace(spec, **overrides)
        settings: dict[str, Any] = {"retriever.query_maxlen": 128}
        if args.gradient_checkpointing != "config":
            settings["generator.gradient_checkpointing"] = args.gradient_checkpointing == "on"
        self.cfg = load_settings(self.spec, settings)
        self.device = device
        started = time.perf_counter()
        self.model, self.tokenizer, self.scorer = load_models(self.cfg, self.spec, device,
                                                              args.cache_dir, args.retriever)
        self.load_seconds = time.perf_counter() - started
        self.param_counts = generator_param_counts(self.model)
        n_questions = max(1, args.questions)
        self.data = load_step_data(self.tokenizer, args.work_dir, n_questions,
                                   self.spec.n_candidates, self.spec.passage_tokens)
        self.encode = prompt_encoder(self.tokenizer, self.cfg.jmlr, self.cfg.generator.max_length)
        params = [{"params": [p for p in self.model.parameters() if p.requires_grad],
                   "lr": self.cfg.train.generator_lr},
                  {"params": [p for p in self.scorer.parameters() if p.requires_grad],
                   "lr": self.cfg.train.retriever_lr}]
        self.optimizer = torch.optim.AdamW(params)
        self.timer = common.PhaseTimer(device)
        # Per encode_fn call, its sequences' lengths; the last call is L_gen's batch.
        self.encoded_lengths: list[list[int]] = []
        self.bucket_tokens = args.bucket_tokens or None
        self.autocast = args.autocast

    def _autocast(self) -> Any:
        """bf16 autocast around a step's forwards (``--autocast``; what
        ``train.mixed_precision=bf16`` does), or nothing."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        with self.timer("retriever_scoring"):
            return self.scorer.score(queries, docs)

    def _encode(self, questions: list, passages: list[list[str]]) -> dict[str, torch.Tensor]:
        with self.timer("encode"):
            return self._encode_counted(questions, passages)

    def _encode_counted(self, questions: list, passages: list[list[str]]) -> dict[str, torch.Tensor]:
        batch = self.encode(questions, passages)
        self.encoded_lengths.append([int(n) for n in batch["attention_mask"].sum(-1)])
        return batch

    def ours(self, index: int, seed: int, train: bool = True) -> Any:
        from jmlr.training.objective import joint_step

        question = self.data.questions[index % len(self.data.questions)]
        cands = self.data.candidates[index % len(self.data.candidates)]
        with timed_objective(self.timer), self._autocast():
            out = joint_step([question], [cands], score_fn=self._score, model=self.model,
                             encode_fn=self._encode, cfg=self.cfg.jmlr,
                             generator=torch.Generator().manual_seed(seed),
                             max_tokens_per_forward=self.bucket_tokens)
        if train:
            self._train(out.loss)
        return out

    def reference(self, index: int, sampled: torch.Tensor | None, train: bool = True,
                  seed: int = 0) -> Any:
        question = self.data.questions[index % len(self.data.questions)]
        cands = self.data.candidates[index % len(self.data.candidates)]
        # reference_step times its own phases (score_fn and encode_fn included)
        with self._autocast():
            out = reference_step(question, cands, score_fn=self.scorer.score, model=self.model,
                                 encode_fn=self._encode_counted, cfg=self.cfg.jmlr, sampled=sampled,
                                 generator=torch.Generator().manual_seed(seed), phase=self.timer)
        if train:
            self._train(out.loss)
        return out

    def _train(self, loss: torch.Tensor) -> None:
        with self.timer("backward"):
            loss.backward()
        with self.timer("optimizer_step"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def timed(self, run: Any) -> dict[str, Any]:
        """One step: its output, phase seconds (with "other": sampling, rank loss and
        bookkeeping outside the named phases), phase peak memory (when the timer tracks
        memory), total seconds, and the tokens of the utilities and of L_gen."""
        self.timer.take()
        self.encoded_lengths = []
        common.sync(self.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = run()
        common.sync(self.device)
        total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
        seconds, peaks, cpu = self.timer.take()
        seconds["other"] = max(0.0, total - sum(seconds.values()))
        cpu["other"] = max(0.0, cpu_total - sum(cpu.values()))
        return {"out": out, "seconds": seconds, "peaks": peaks, "total": total, "cpu": cpu,
                "cpu_total": cpu_total,
                "utility_lengths": [n for call in self.encoded_lengths[:-1] for n in call],
                "gen_lengths": self.encoded_lengths[-1]}


def equality_check(bench: Bench) -> dict[str, Any]:
    """Both implementations once with dropout 0 (same weights, same draw), without autocast:
    rank loss, utilities and generator loss must agree."""
    saved = set_dropout([bench.model, bench.scorer], 0.0)
    autocast, bench.autocast = bench.autocast, False
    try:
        with torch.no_grad():
            ours = bench.ours(0, seed=1234, train=False)
            ref = bench.reference(0, ours.sampled[0], train=False)
    finally:
        set_dropout([bench.model, bench.scorer], None, saved)
        bench.autocast = autocast
        bench.timer.take()
    rank_diff = abs(float(ours.rank_loss) - float(ref.rank_loss))
    ours_pairs = int(ours.rank_stats["n_pairs"].total)
    fp32 = bench.spec.dtype == "float32"
    return {
        "dtype": bench.spec.dtype,
        "rank_loss_ours": float(ours.rank_loss), "rank_loss_reference": float(ref.rank_loss),
        "rank_loss_abs_diff": rank_diff,
        "utilities_max_abs_diff": float((ours.utilities[0].float().cpu() - ref.utilities.cpu()).abs().max()),
        "gen_loss_abs_diff": abs(float(ours.gen_loss) - float(ref.gen_loss)),
        "n_pairs": [ours_pairs, ref.n_pairs],
        "same_read": bool(torch.equal(ours.read[0].cpu(), ref.read)),
        "tolerance": EQUALITY_TOLERANCE if fp32 else None,
        "passed": (rank_diff <= EQUALITY_TOLERANCE and ours_pairs == ref.n_pairs) if fp32 else None,
    }


def run_steps(bench: Bench, repeats: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Steps of both implementations on the same question: ours, then the reference on the
    passages ours drew (so both read the same passages); medians over the timed repeats. The
    global RNG is seeded before each pair (reproducible dropout masks). Then one more step
    each with peak memory tracked per phase (kept apart: resetting the peak costs time)."""
    steps: dict[str, list[dict[str, Any]]] = {"ours": [], "reference": []}

    def pair(rep: int) -> tuple[dict[str, Any], dict[str, Any]]:
        torch.manual_seed(10_000 + rep)
        ours = bench.timed(lambda: bench.ours(rep, seed=rep))
        return ours, bench.timed(lambda: bench.reference(rep, ours["out"].sampled[0]))

    for rep in range(warmup + repeats):
        ours, ref = pair(rep)
        if rep >= warmup:
            steps["ours"].append(ours)
            steps["reference"].append(ref)
    bench.timer.memory = True
    try:
        memory = dict(zip(("ours", "reference"), pair(0), strict=True))
    finally:
        bench.timer.memory = False
    counts = bench.param_counts
    summary = {}
    for name, recs in steps.items():
        peaks = {ph: v for ph, v in memory[name]["peaks"].items() if v}
        step = common.summarize([r["total"] for r in recs])
        utility_tokens = sum(sum(r["utility_lengths"]) for r in recs) / len(recs)
        gen_tokens = sum(sum(r["gen_lengths"]) for r in recs) / len(recs)
        tokens = utility_tokens + gen_tokens
        summary[name] = {
            "phase_median_s": common.median_phases([r["seconds"] for r in recs]),
            "phase_median_cpu_s": common.median_phases([r["cpu"] for r in recs]),
            "step_cpu": common.summarize([r["cpu_total"] for r in recs]),
            "phase_peak_bytes": peaks, "step_peak_bytes": max(peaks.values()),
            "step": step, "tokens_per_step": tokens, "tokens_per_s": tokens / step["median_s"],
            "utility_tokens": utility_tokens, "gen_tokens": gen_tokens,
            "model_flops_per_step": sum(model_flops(counts, r["utility_lengths"], r["gen_lengths"])
                                        for r in recs) / len(recs),
        }
    return summary


def profile_steps(bench: Bench, top: int = 20) -> dict[str, Any]:
    """torch.profiler over one step of each implementation: top ops by self CPU time (and
    self CUDA time on a GPU), and the phase marks."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if bench.device.type == "cuda" else "self_cpu_time_total"
    out: dict[str, Any] = {}
    sampled = bench.ours(0, seed=0, train=True).sampled[0]
    for name, run in (("ours", lambda: bench.ours(0, seed=0)),
                      ("reference", lambda: bench.reference(0, sampled))):
        with profile(activities=activities) as prof:
            run()
        events = prof.key_averages()
        table = events.table(sort_by=sort, row_limit=top)
        print(f"\n### torch.profiler, one step, {name} (top {top} by {sort})\n{table}")
        phase_names = set(PHASES)
        ops = sorted((e for e in events if e.key not in phase_names),
                     key=lambda e: -e.self_cpu_time_total)[:top]
        out[name] = {"table": table, "top_ops": [
            {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 2),
             "cpu_total_ms": round(e.cpu_time_total / 1e3, 2)} for e in ops],
            "phases_cpu_total_ms": {e.key: round(e.cpu_time_total / 1e3, 2)
                                    for e in events if e.key in phase_names}}
    bench.timer.take()
    return out


def report(bench: Bench, summary: dict[str, Any], check: dict[str, Any],
           ceiling_tflops: float | None, ceiling_dtype: str) -> dict[str, Any]:
    ours, ref = summary["ours"], summary["reference"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return b / a if a and b else None

    rows = []
    for phase in PHASES:
        a, b = ours["phase_median_s"].get(phase), ref["phase_median_s"].get(phase)
        rows.append([phase, a, b, ratio(a, b),
                     ratio(ours["phase_median_cpu_s"].get(phase), ref["phase_median_cpu_s"].get(phase)),
                     common.mib(ours["phase_peak_bytes"].get(phase)),
                     common.mib(ref["phase_peak_bytes"].get(phase))])
    rows.append(["step total", ours["step"]["median_s"], ref["step"]["median_s"],
                 ratio(ours["step"]["median_s"], ref["step"]["median_s"]),
                 ratio(ours["step_cpu"]["median_s"], ref["step_cpu"]["median_s"]),
                 common.mib(ours["step_peak_bytes"]), common.mib(ref["step_peak_bytes"])])
    peak_label = "peak GPU MiB" if bench.device.type == "cuda" else "peak RSS MiB"
    print(common.markdown_table(["phase", "ours s", "reference s", "speed-up (wall)",
                                 "speed-up (CPU time)", f"ours {peak_label}",
                                 f"ref {peak_label}"], rows))
    counts = bench.param_counts
    flops: dict[str, Any] = {"formula": FLOP_FORMULA, "ceiling_tflops": ceiling_tflops,
                             "ceiling_dtype": ceiling_dtype}
    for name, rec in summary.items():
        step_flops = rec["model_flops_per_step"]
        achieved = step_flops / rec["step"]["median_s"] / 1e12
        flops[name] = {"step_tflop": step_flops / 1e12, "achieved_tflops": achieved,
                       "mfu": achieved / ceiling_tflops if ceiling_tflops else None}
    print(f"\nrank-loss equality (dropout 0, {check['dtype']}): ours {check['rank_loss_ours']:.8f}"
          f" reference {check['rank_loss_reference']:.8f} |diff| {check['rank_loss_abs_diff']:.2e}"
          f" -> {'PASS' if check['passed'] else 'FAIL' if check['passed'] is False else 'n/a (not fp32)'}")
    print(f"tokens/s: ours {ours['tokens_per_s']:.1f}, reference {ref['tokens_per_s']:.1f}; "
          f"per-passage speed-up {rows[2][3] or float('nan'):.2f}x wall, "
          f"{rows[2][4] or float('nan'):.2f}x CPU time; step speed-up {rows[-1][3]:.2f}x")
    for name in ("ours", "reference"):
        if name in flops:
            mfu = flops[name]["mfu"]
            print(f"{name}: {flops[name]['achieved_tflops']:.4g} TFLOP/s"
                  + (f", MFU {100 * mfu:.1f}% of measured {ceiling_dtype} {ceiling_tflops:.1f} TFLOP/s"
                     if mfu is not None else ""))
    return {"params": counts, "flops": flops, "table_rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=sorted(SPECS))
    parser.add_argument("--k", type=int, default=0, help="passages drawn (default: per model)")
    parser.add_argument("--r", type=int, default=0, help="passages read (default: per model)")
    parser.add_argument("--candidates", type=int, default=0, help="N candidates scored")
    parser.add_argument("--passage-tokens", type=int, default=0)
    parser.add_argument("--questions", type=int, default=4, help="distinct questions cycled")
    parser.add_argument("--bucket-tokens", type=int, default=0,
                        help="ours: max_tokens_per_forward for the utilities (0: one forward)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one step each")
    parser.add_argument("--autocast", action="store_true",
                        help="bf16 autocast around both implementations' forwards (as "
                             "train.mixed_precision=bf16); the equality check stays in fp32")
    parser.add_argument("--gradient-checkpointing", choices=("config", "on", "off"),
                        default="config", help="the generator's activation checkpointing "
                        "(default: as the model's config; the 7B/13B configs turn it on)")
    args = parser.parse_args(argv)
    if args.quick:   # a smoke run: fewer and shorter passages
        args.k, args.r = args.k or 5, args.r or 3
        args.candidates, args.passage_tokens = args.candidates or 10, args.passage_tokens or 96
    repeats = args.repeats or (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    device = common.setup_torch(args)
    torch.manual_seed(0)
    try:
        bench = Bench(args, device)
    except ImportError as err:
        print(common.missing_module_message(err, "the joint-step benchmark"))
        return 0
    print(f"model {args.model} ({bench.spec.dtype}) on {device}: k={bench.spec.k_sample} "
          f"r={bench.spec.r_read} N={bench.spec.n_candidates} passages of "
          f"~{bench.data.mean_passage_tokens:.0f} tokens; loaded in {bench.load_seconds:.1f} s")
    check = equality_check(bench)
    summary = run_steps(bench, repeats, warmup)
    ceiling, ceiling_dtype = None, "bfloat16" if device.type == "cuda" else "float32"
    if device.type == "cuda" or not args.quick:
        size = 8192 if device.type == "cuda" else 1024
        ceiling = common.matmul_tflops(device, getattr(torch, ceiling_dtype), size,
                                       seconds=3.0 if device.type == "cuda" else 2.0)
    extra = report(bench, summary, check, ceiling, ceiling_dtype)
    profile = profile_steps(bench) if args.profile else None
    payload = {
        "benchmark": "joint_step", "model": args.model, "quick": args.quick,
        "settings": {**dataclasses.asdict(bench.spec), "repeats": repeats, "warmup": warmup,
                     "mean_passage_tokens": bench.data.mean_passage_tokens,
                     "lora_r": bench.cfg.generator.lora_r,
                     "lora_dropout": bench.cfg.generator.lora_dropout,
                     "gradient_checkpointing": bench.cfg.generator.gradient_checkpointing,
                     "bucket_tokens": args.bucket_tokens, "autocast_bf16": args.autocast},
        "memory_method": common.memory_method(device),
        "equality_check": check, "results": summary, **extra, "profile": profile,
        "environment": common.environment(device),
    }
    variant = ("-autocast" if args.autocast else "") + \
        (f"-bucket{args.bucket_tokens}" if args.bucket_tokens else "") + \
        (f"-ckpt-{args.gradient_checkpointing}" if args.gradient_checkpointing != "config" else "")
    common.write_results(common.results_path(args.results_dir, f"joint_step-{args.model}{variant}",
                                              device, args.quick), payload)
    return 0 if check["passed"] is not False else 1


if __name__ == "__main__":
    raise SystemExit(main())
