"""Distil the teacher into the retriever before a joint run (``distill.before_joint_steps``).

A joint run whose config asks for it first runs ``train.step=retriever_distill`` into
``RUN/distill`` (the base teacher's utilities of the first ``distill.questions`` training
questions, written when missing; ``distill.batch_size`` rows and ``distill.lr`` per step), then
trains with ``retriever.train_from`` set to what that run exported. A finished distil run is
kept, an interrupted one continues from its checkpoint, so the joint run resumes as before.
``retriever.checkpoint`` stays the index's encoder and the frozen baseline of evaluation.

Why: on the demo, 16 joint steps give the retriever 16 updates from two questions each, and
where it ended up depended on the seed (benchmarks/RESULTS.md, section 5); the teacher's
utilities of 160 questions, paid once (~30 min of a 2-core CPU for the demo's 135M generator,
seconds on a GPU), give it many cheap steps first. Measured there: every distil run above the
untrained retriever on test, on two demo tasks over three seeds; 64 questions were too few.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jmlr.config import Config

log = logging.getLogger(__name__)

FOLDER = "distill"


def distill_config(cfg: Config) -> Config:
    """The config of the distil run before ``cfg``'s joint run (``RUN/distill``).

    >>> from jmlr.config import load_config
    >>> d = distill_config(load_config(None, ["run.out_dir=runs/x", "distill.before_joint_steps=40",
    ...                                          "jmlr.utility_model=base", "generator.lora_r=8"]))
    >>> d.train.step, d.train.max_steps, d.train.batch_size, d.jmlr.teacher_questions, d.run.out_dir
    ('retriever_distill', 40, 8, 64, 'runs/x/distill')
    >>> str(d.candidates_dir), str(d.index_dir)       # the joint run's, not under runs/x/distill
    ('runs/x/candidates', 'runs/x/index')
    """
    from jmlr.config_fields import apply_path

    section = cfg.distill
    out = copy.deepcopy(cfg)
    for key, value in [("train.step", "retriever_distill"),
                       ("train.max_steps", section.before_joint_steps),
                       ("train.batch_size", section.batch_size), ("train.grad_accum", 1),
                       ("train.retriever_lr", section.lr), ("train.warmup_steps", 0),
                       ("train.lr_scheduler", "constant"), ("train.eval_every", -1),
                       ("train.save_every", section.before_joint_steps),
                       ("jmlr.teacher_questions", section.questions),
                       # the joint run's candidates and index, not ones under RUN/distill
                       ("candidates.path", str(cfg.candidates_dir)),
                       ("retriever.index_dir", str(cfg.index_dir)),
                       ("run.out_dir", str(Path(cfg.run.out_dir) / FOLDER))]:
        head, name = key.split(".")
        apply_path(getattr(out, head), [name], value, head)
    out.distill.before_joint_steps = 0
    return out


def distill_before_joint(cfg: Config) -> Config:
    """Run (or keep, or continue) the distil run; the joint run's config starting from it.
    ``cfg`` itself is left as it was."""
    from jmlr.errors import Stopped
    from jmlr.training import checkpoint as ckpt
    from jmlr.training.loop import run_train

    if cfg.distill.before_joint_steps <= 0 or cfg.retriever.train_from:
        return cfg
    sub = distill_config(cfg)
    folder = Path(sub.run.out_dir)
    final = folder / "final" / "retriever"
    if final.is_dir():
        check_kept(sub, folder)
    else:
        log.info("distilling the teacher into the retriever first: %d steps into %s",
                 sub.train.max_steps, folder)
        summary = run_train(sub, resume=ckpt.find_latest(folder) is not None)
        if summary.get("stopped_by"):
            raise Stopped(summary["stopped_by"], f"stopped by {summary['stopped_by']} while "
                          f"distilling into {folder} (checkpoint saved); the same command "
                          "continues it")
    out = copy.deepcopy(cfg)
    out.retriever.train_from = str(final)
    return out


def check_kept(sub: Config, folder: Path) -> None:
    """A finished distil run is kept only when it was made with the settings asked for now."""
    from jmlr.config import load_config
    from jmlr.errors import ConfigError

    saved = folder / "config.yaml"
    if not saved.is_file() or load_config(saved).to_dict() != sub.to_dict():
        raise ConfigError(f"{folder} holds a distil run made with other settings (or none "
                          f"recorded): remove that folder, or set distill.before_joint_steps=0 "
                          f"and retriever.train_from={folder / 'final' / 'retriever'} to use it")
