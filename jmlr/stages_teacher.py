"""``jmlr utilities``: the base teacher's utilities of the mined candidates, written once for
the replay of every joint run over the same data and generator (jmlr/training/teacher_file.py).
Registered like the pipeline's stages in :mod:`jmlr.stages`; not part of the demo."""

from __future__ import annotations

import argparse
import json

from jmlr.config import Config
from jmlr.registry import STAGES
from jmlr.stage import Stage


def _utilities_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="train", help="the questions' split (default train)")
    p.add_argument("--top", type=int, default=0, help="mined candidates per question (0: "
                   "jmlr.teacher_top, else jmlr.sample_pool, the pool the joint step draws "
                   "from, else candidates.top_n)")
    p.add_argument("--limit", type=int, default=0, help="the first N questions only (0: all)")
    p.add_argument("--out", default=None,
                   help="the file to write (default: candidates.path/<split>.utilities.jsonl)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a file computed with other settings")


def _utilities(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.training.teacher_file import run_teacher_utilities

    summary = run_teacher_utilities(cfg, split=args.split, top=args.top, limit=args.limit,
                                    out=args.out, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))


STAGES.register("utilities", Stage(
    help="the base generator's utilities of each question's mined candidates, for "
         "jmlr.teacher_utilities (the replay of joint runs)",
    run=_utilities, arguments=_utilities_args,
    reads=("data.<split>", "data.corpus", "candidates.path", "generator.model"),
    writes=("candidates.path/<split>.utilities.jsonl",)))
