"""The retriever-adaptation stages (Synthesize-Train-Merge): ``jmlr synthesize`` writes
label-free query/positive/negatives rows with the generator (jmlr/retrieval/synthesis.py);
the warm-up on them is ``jmlr train`` with ``train.step=retriever_contrastive``; ``jmlr
optimize-prompt`` chooses the query template (jmlr/retrieval/query_prompts.py). Registered
like the pipeline's stages in :mod:`jmlr.stages`; not part of the demo."""

from __future__ import annotations

import argparse
import json

from jmlr.config import Config
from jmlr.registry import STAGES
from jmlr.stage import Stage


def _synthesize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace rows written with other settings")


def _synthesize(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.retrieval.synthesis import run_synthesize

    print(json.dumps(run_synthesize(cfg, overwrite=args.overwrite), indent=2))


STAGES.register("synthesize", Stage(
    help="synthetic questions with mined and LLM-judged hard negatives, for the retriever "
         "warm-up (train.step=retriever_contrastive)",
    run=_synthesize, arguments=_synthesize_args, section="synthesize",
    reads=("data.corpus", "data.train", "retriever.index_dir", "generator.model"),
    writes=("synthesize.out",)))


def _optimize_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="dev", help="the split that chooses (default dev)")
    p.add_argument("--report-split", default="test",
                   help="a held-out split scored for the report only ('' for none)")
    p.add_argument("--out", default=None, help="report and winning config (default RUN/prompt)")


def _optimize_prompt(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.retrieval.query_prompts import print_report, run_optimize_prompt

    print_report(run_optimize_prompt(cfg, split=args.split, report_split=args.report_split,
                                     out_dir=args.out))


STAGES.register("optimize-prompt", Stage(
    help="choose retriever.query_template: seed templates and the generator's rewrites, scored "
         "by gold passages or by agreement with the LLM's utilities",
    run=_optimize_prompt, arguments=_optimize_prompt_args, section="optimize_prompt",
    reads=("data.<split>", "candidates.path", "retriever.checkpoint", "generator.model"),
    writes=("RUN/prompt/report.json", "RUN/prompt/config.yaml")))
