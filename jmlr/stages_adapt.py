"""The retriever-adaptation stages (Synthesize-Train-Merge): ``jmlr synthesize`` writes
label-free query/positive/negatives rows with the generator (jmlr/retrieval/synthesis.py);
the warm-up on them is ``jmlr train`` with ``train.step=retriever_contrastive``. Registered
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
