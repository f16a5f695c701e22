"""The alignment stages (MediPhi's last steps, with this project's factuality signal): ``jmlr
preferences`` samples answers and pairs them by correctness, UMLS-F and unsupported concepts
(jmlr/alignment/sampling.py); ``jmlr sft`` and ``jmlr dpo`` train the generator with trl's
trainers (jmlr/alignment/trl_train.py). Registered like the pipeline's stages in
:mod:`jmlr.stages`; not part of the demo."""

from __future__ import annotations

import argparse
import json

from jmlr.config import Config
from jmlr.registry import STAGES
from jmlr.stage import Stage


def _overwrite_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="start again: replace what an earlier run with other settings wrote")


def _preferences(cfg: Config, args: argparse.Namespace) -> None:
    from jmlr.alignment.sampling import run_preferences

    print(json.dumps(run_preferences(cfg, overwrite=args.overwrite), indent=2))


def _trainer(kind: str):  # noqa: ANN202  (a stage function)
    def run(cfg: Config, args: argparse.Namespace) -> None:
        from accelerate import PartialState

        from jmlr.alignment.trl_train import run_alignment

        summary = run_alignment(cfg, kind, overwrite=args.overwrite)
        if PartialState().is_main_process:      # one summary under accelerate launch
            print(json.dumps(summary, indent=2))
    return run


STAGES.register("preferences", Stage(
    help="sample answers with rationales and pair them by correctness, UMLS-F and unsupported "
         "concepts, in trl's preference layout",
    run=_preferences, arguments=_overwrite_arg, section="preferences",
    reads=("data.<split>", "data.corpus", "factuality.kb", "generator.model",
           "preferences.start_from"),
    writes=("RUN/preferences/samples.jsonl", "preferences.out")))

STAGES.register("sft", Stage(
    help="supervised fine-tuning of the generator with trl (questions with rationales after "
         "the retrieved passages, or chat / prompt-completion jsonl)",
    run=_trainer("sft"), arguments=_overwrite_arg, section="sft",
    reads=("sft.data", "sft.start_from", "generator.model"),
    writes=("RUN/final", "RUN/sft-checkpoints", "RUN/sft_summary.json")))

STAGES.register("dpo", Stage(
    help="direct preference optimisation of the generator with trl, on {prompt, chosen, "
         "rejected} rows (jmlr preferences)",
    run=_trainer("dpo"), arguments=_overwrite_arg, section="dpo",
    reads=("dpo.data", "dpo.start_from", "generator.model"),
    writes=("RUN/final", "RUN/dpo-checkpoints", "RUN/dpo_summary.json")))
