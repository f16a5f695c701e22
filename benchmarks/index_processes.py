"""PLAID index build in several processes: passages/s of ``jmlr index`` run as a user runs it,
in one process and under ``accelerate launch --num_processes N`` (CPU processes, gloo).

Each layout runs the real command in a fresh child (``OMP_NUM_THREADS`` threads per process),
builds the same corpus into its own folder and reads the manifest it writes. The layouts
compare equal hardware: on a machine of C cores, one process with C threads against N
processes with C / N threads each (and one process with one thread, for the per-core rate).
The corpus is the demo task's (3,529 passages) plus, unless ``--quick``, a synthetic corpus of
disease-like passages; the retriever and settings are configs/demo.yaml's. Afterwards the
indexes are searched with the demo's questions and their top-10 compared, so that a faster
build that finds other passages does not pass unseen.

    python -m benchmarks.index_processes --quick      # the demo corpus, doc_maxlen 32
    python -m benchmarks.index_processes              # demo + 20,000 synthetic passages
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.synthetic import cached_jsonl, synthetic_passages

REPO = common.REPO_ROOT
MANIFEST = "jmlr_index.json"


def layouts(cores: int, processes: list[int]) -> list[tuple[int, int]]:
    """(processes, threads per process): one thread, all cores in one process, then N
    processes sharing the cores.

    >>> layouts(2, [2])
    [(1, 1), (1, 2), (2, 1)]
    """
    found = [(1, 1), (1, cores)] + [(n, max(1, cores // n)) for n in processes if n > 1]
    return list(dict.fromkeys(found))


def build(config: Path, corpus: Path, index_dir: Path, processes: int, threads: int,
          overrides: list[str], timeout: float) -> dict[str, Any]:
    """One ``jmlr index`` run; the manifest's figures and the command's wall time."""
    jmlr = ["-m", "jmlr", "index", "-c", str(config), f"data.corpus={corpus}",
            f"retriever.index_dir={index_dir}", *overrides, "--overwrite"]
    if processes == 1:
        command = [sys.executable, *jmlr]
    else:
        command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                   str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
                   "--num_processes", str(processes), "--main_process_port", "29533", *jmlr]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    manifest = json.loads((index_dir / MANIFEST).read_text())
    return {"processes": manifest.get("processes", 1), "threads": threads,
            "passages": manifest["corpus"]["n_passages"], "build_seconds": manifest["build_seconds"],
            "passages_per_s": manifest["passages_per_second"],
            "passages_encoded": manifest["passages_encoded"],
            "phase_seconds": manifest["phase_seconds"], "command_seconds": round(wall, 1),
            "command": " ".join(command[command.index("-m") - 1 if processes == 1 else 0:])}


def top10(config: Path, corpus: Path, index_dir: Path, overrides: list[str],
          questions: Path) -> dict[str, list[str]]:
    from jmlr.config import load_config
    from jmlr.data import load_split
    from jmlr.retrieval.colbert_backend import search_questions

    cfg = load_config(config, [f"data.corpus={corpus}", f"retriever.index_dir={index_dir}",
                               f"data.dev={questions}", "candidates.top_n=10", *overrides])
    found = search_questions(cfg, load_split(cfg.data, "dev"))
    return {q: c.passage_ids for q, c in found.items()}


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--processes", default="2", help="comma-separated process counts (>1)")
    parser.add_argument("--large", type=int, default=None,
                        help="synthetic passages added to the demo corpus (default 20000; quick 0)")
    parser.add_argument("--timeout", type=float, default=3 * 3600)
    args = parser.parse_args(argv)
    device = common.setup_torch(args)
    cores = os.cpu_count() or 1
    large = args.large if args.large is not None else (0 if args.quick else 20_000)
    demo = common.demo_data(args.work_dir)
    work = Path(args.work_dir).expanduser() / "index-processes"
    work.mkdir(parents=True, exist_ok=True)
    corpus = demo / "corpus.jsonl"
    if large:
        from jmlr.io import read_jsonl

        corpus = cached_jsonl(args.work_dir, f"demo-plus-synthetic-{large}.jsonl", lambda: [
            *(row for _, row in read_jsonl(demo / "corpus.jsonl")), *synthetic_passages(large)])
    config = REPO / "configs" / "demo.yaml"
    overrides = [f"run.cache_dir={Path(args.cache_dir).expanduser()}", f"run.out_dir={work / 'run'}"]
    if args.quick:
        overrides.append("retriever.doc_maxlen=32")
    # the demo's (ColBERT head) checkpoint is converted once before anything is timed
    from jmlr.config import load_config
    from jmlr.retrieval.colbert import prepare_checkpoint

    cfg = load_config(config, overrides)
    prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim, cfg.run.cache_dir)

    results = []
    found = {}
    for processes, threads in layouts(cores, [int(n) for n in args.processes.split(",")]):
        name = f"{processes}proc-{threads}thr"
        print(f"[{name}] jmlr index ...", flush=True)
        result = build(config, corpus, work / name, processes, threads, overrides, args.timeout)
        results.append({"layout": name, **result})
        if "error" not in result:
            found[name] = top10(config, corpus, work / name, overrides, demo / "dev.jsonl")
    reference = next(iter(found.values()), {})
    for row in results:
        if row["layout"] in found and reference:
            mine = found[row["layout"]]
            row["top10_same_as_first"] = round(sum(mine[q] == reference[q] for q in reference)
                                               / len(reference), 3)
    rows = [[r["layout"], r.get("passages"), r.get("build_seconds"), r.get("passages_per_s"),
             r.get("command_seconds"), r.get("passages_encoded"), r.get("top10_same_as_first"),
             r.get("error", "")] for r in results]
    print()
    print(common.markdown_table(["layout", "passages", "build s", "passages/s", "command s",
                                 "passages encoded", "top-10 as 1 process", "error"], rows))
    common.write_results(common.results_path(args.results_dir, "index-processes", device, args.quick),
                         {"benchmark": "index_processes", "quick": args.quick, "cores": cores,
                          "synthetic_passages": large, "results": results,
                          "environment": common.environment(device)})
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
