"""The ``jmlr`` command: parse arguments, load the config, call one function per subcommand.

Every pipeline command takes ``-c CONFIG`` plus any number of ``section.key=value``
overrides. User errors (bad data, bad config) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from jmlr.errors import UserError

log = logging.getLogger("jmlr")


def _target(module: str, name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(module), name)


def _config(args: argparse.Namespace):
    from jmlr.config import load_config

    return load_config(args.config, args.overrides)


def cmd_prepare_demo(args: argparse.Namespace) -> int:
    summary = _target("jmlr.data.demo", "prepare_demo")(
        out_dir=args.out, seed=args.seed, n_diseases=args.diseases, n_questions=args.questions,
        overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    summary = _target("jmlr.data.formats", "check_data")(
        args.path, fmt=args.format, medmcqa_one_based=args.one_based)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    cfg = _config(args)  # validate the config before importing heavy modules
    _target("jmlr.retrieval.candidates", "run_index")(cfg, overwrite=args.overwrite)
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _target("jmlr.retrieval.candidates", "run_mine")(cfg, splits=args.splits)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _target("jmlr.training.loop", "run_train")(cfg, resume=args.resume)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _target("jmlr.evaluation.mcq", "run_evaluate")(
        cfg, run_dir=args.run, split=args.split, modes=args.mode)
    return 0


def cmd_factuality(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _target("jmlr.evaluation.factuality", "run_factuality")(
        cfg, predictions=args.predictions, kb=args.kb or cfg.factuality.kb, out_dir=args.out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _target("jmlr.evaluation.report", "run_report")(cfg, run_dir=args.run)
    return 0


def cmd_warmup(args: argparse.Namespace) -> int:
    cfg = _config(args)
    timings = _target("jmlr.warmup", "run_warmup")(cfg)
    print(json.dumps(timings, indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = _config(args)
    _target("jmlr.pipeline", "run_demo")(cfg, quick=args.quick)
    return 0


def _comma_list(text: str) -> list[str]:
    """``"train,dev"`` -> ``["train", "dev"]`` (a list option that cannot swallow overrides).

    >>> _comma_list("none, trained")
    ['none', 'trained']
    """
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_config_args(sub: argparse.ArgumentParser, default: str | None = None) -> None:
    sub.add_argument("-c", "--config", default=default,
                     help="YAML config (configs/*.yaml)" + (f"; default {default}" if default else ""))
    sub.add_argument("overrides", nargs="*", metavar="section.key=value",
                     help="override any config key, e.g. train.generator_lr=2e-5")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jmlr", description="Joint Medical LLM and Retrieval training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = subs.add_parser("prepare-demo", help="build the embedded demo task from installed packages")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--diseases", type=int, default=600, help="diseases in the corpus")
    p.add_argument("--questions", type=int, default=600, help="questions over all splits")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder that holds no demo task")
    p.set_defaults(func=cmd_prepare_demo)

    p = subs.add_parser("check-data", help="validate a question file or corpus and summarise it")
    p.add_argument("path")
    p.add_argument("--format", default="auto", help="format name, or auto-detect")
    p.add_argument("--one-based", action="store_true", help="MedMCQA 'cop' is 1-based")
    p.set_defaults(func=cmd_check_data)

    p = subs.add_parser("index", help="build the PLAID index over the corpus")
    _add_config_args(p)
    p.add_argument("--overwrite", action="store_true", help="rebuild an existing index")
    p.set_defaults(func=cmd_index)

    p = subs.add_parser("mine", help="top-N candidates for every question")
    _add_config_args(p)
    p.add_argument("--splits", type=_comma_list, default=["train", "dev", "test"],
                   help="comma-separated splits (default train,dev,test)")
    p.set_defaults(func=cmd_mine)

    p = subs.add_parser("train", help="joint training (also under accelerate launch -m jmlr)")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_train)

    p = subs.add_parser("evaluate", help="accuracy with retrieval in the loop")
    _add_config_args(p)
    p.add_argument("--run", required=True, help="run folder written by jmlr train")
    p.add_argument("--split", default=None, choices=["train", "dev", "test"])
    p.add_argument("--mode", type=_comma_list, default=None,
                   help="comma-separated modes among trained, frozen, none (default eval.modes)")
    p.set_defaults(func=cmd_evaluate)

    p = subs.add_parser("factuality", help="UMLS-F of generated rationales")
    _add_config_args(p)
    p.add_argument("--predictions", required=True)
    p.add_argument("--kb", default="", help="KnowledgeBase jsonl (default: factuality.kb)")
    p.add_argument("--out", default=None, help="output folder (default: beside predictions)")
    p.set_defaults(func=cmd_factuality)

    p = subs.add_parser("report", help="HTML / Markdown report for a run")
    _add_config_args(p)
    p.add_argument("--run", required=True)
    p.set_defaults(func=cmd_report)

    p = subs.add_parser("warmup", help="compile colbert-ai's extensions and cache the config's "
                        "models once (set-up time)")
    _add_config_args(p)
    p.set_defaults(func=cmd_warmup)

    p = subs.add_parser("demo", help="the whole pipeline on the embedded demo task")
    _add_config_args(p, default=None)
    p.add_argument("--quick", action="store_true", help="a smaller, faster pass")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except UserError as err:
        print(f"jmlr {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"jmlr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
