"""The stages that measure with the field's own tools: ``jmlr eval-retriever`` (a BEIR-layout
task, ir_measures) and ``jmlr lm-eval`` (lm-evaluation-harness with the ``jmlr`` model).
Registered like the pipeline's stages in :mod:`jmlr.stages`; neither is part of the demo."""

from __future__ import annotations

import argparse

from jmlr.config import Config
from jmlr.errors import ConfigError
from jmlr.registry import STAGES
from jmlr.stage import Stage


def _eval_retriever_args(p: argparse.ArgumentParser) -> None:
    task = p.add_mutually_exclusive_group(required=True)
    task.add_argument("--beir", help="a folder in BEIR's layout (corpus.jsonl, queries.jsonl, "
                      "qrels/<split>.tsv); prepare-demo writes DIR/beir")
    task.add_argument("--mteb", metavar="NAME", help="an MTEB retrieval task by name (e.g. "
                      "NFCorpus, SciFact, TRECCOVID), its data from the Hugging Face cache")
    p.add_argument("--mteb-data", metavar="DIR", default=None,
                   help="with --mteb: a local copy of the task's Hugging Face dataset")
    p.add_argument("--split", default="test")
    p.add_argument("--run", action="append", default=[], metavar="RUN",
                   help="a trained run: its final/retriever (repeatable)")
    p.add_argument("--retriever", action="append", default=[], metavar="NAME=PATH",
                   help="any ColBERT checkpoint folder (repeatable)")
    p.add_argument("--top-k", type=int, default=100, help="passages ranked per query")
    p.add_argument("--out", default=None, help="write the results (JSON, per query too) here")


def _eval_retriever(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.evaluation.retriever_eval import run_eval_retriever

    if args.mteb_data and not args.mteb:
        raise ConfigError("--mteb-data goes with --mteb NAME")
    run_eval_retriever(cfg, args.beir, args.split, runs=args.run, named=args.retriever,
                       top_k=args.top_k, out=args.out, mteb=args.mteb, mteb_data=args.mteb_data)


STAGES.register("eval-retriever", Stage(
    help="retrievers side by side on a BEIR-layout folder or an MTEB retrieval task: nDCG@10, "
         "R@1/10/100, MRR@10",
    run=_eval_retriever, arguments=_eval_retriever_args,
    reads=("--beir DIR | --mteb NAME", "retriever.checkpoint", "RUN/final/retriever"), writes=("--out",)))


def _lm_eval(cfg: Config | None, args: argparse.Namespace) -> int:
    try:
        from jmlr.evaluation.harness import run_harness_cli
    except ImportError as err:
        if "lm_eval" not in str(err):
            raise
        raise ConfigError("lm-eval is not installed: pip install 'jmlr[harness]' "
                          "(scripts/setup.sh installs it)") from None
    return run_harness_cli(cfg, args)


STAGES.register("lm-eval", Stage(
    help="lm-evaluation-harness with the `jmlr` model registered (retrieval in the loop): "
         "jmlr lm-eval --model jmlr --model_args run=RUN,mode=trained --tasks ...",
    run=_lm_eval, uses_config=False, passthrough=True,
    reads=("RUN/final", "RUN/config.yaml"), writes=("lm-eval's --output_path",)))
