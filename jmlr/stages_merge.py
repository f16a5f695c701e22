"""``jmlr merge``: expert runs combined into one run folder with mergekit
(jmlr/merging/run.py). Registered like the pipeline's stages in :mod:`jmlr.stages`."""

from __future__ import annotations

import argparse
import json

from jmlr.config import Config
from jmlr.registry import STAGES
from jmlr.stage import Stage


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace a run in run.out_dir")


def _merge(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.merging.run import run_merge

    print(json.dumps(run_merge(cfg, overwrite=args.overwrite), indent=2))


STAGES.register("merge", Stage(
    help="merge expert runs' generators and retrievers (mergekit: linear, slerp, task "
         "arithmetic, TIES, DARE, BreadCrumbs, ...) into one run folder",
    run=_merge, arguments=_merge_args, section="merge",
    reads=("merge.experts", "generator.model", "retriever.checkpoint"),
    writes=("RUN/final", "RUN/merge_card.json"), report="jmlr.merging.run:merge_report"))
