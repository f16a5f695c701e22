"""Retriever runs that come before a joint run, in its own folder (``RUN/<name>``).

A joint ``jmlr train`` (and ``jmlr demo``) may first train its retriever alone, and then start
from what that run exported (``retriever.train_from``), while ``retriever.checkpoint`` stays
the index's encoder and the frozen baseline of evaluation. Each such run is a ``FirstRun``:
the config section that switches it on (``<section>.before_joint_steps`` > 0), the config of
its sub-run, and the inputs it writes before training (the synthetic rows of a warm-up, say).
They run in :data:`ORDER`, each starting from where the one before ended, so the contrastive
warm-up and the teacher's distillation can be chained. A finished sub-run is kept, an
interrupted one continues from its checkpoint, and one made with other settings is refused
with one line, so the joint run resumes as before.

Adding one: a module with a ``FirstRun`` and its name in :data:`ORDER`.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jmlr.config import Config

log = logging.getLogger(__name__)

# "module:attribute" of each FirstRun, in the order they run (a warm-up before a distillation).
ORDER = ("jmlr.training.warmup_first:WARMUP", "jmlr.training.distill_first:DISTILL")


@dataclass(frozen=True)
class FirstRun:
    name: str                                   # its folder, RUN/<name>
    noun: str                                   # "distil": "RUN/distill holds a distil run"
    section: str                                # <section>.before_joint_steps switches it on
    what: str                                   # "distilling the teacher into the retriever"
    sub_config: Callable[[Config], Config]      # the sub-run's config from the joint run's
    prepare: Callable[[Config, Config], None] | None = None   # (joint cfg, sub cfg): inputs
    # Beyond RUN/<name>: the config sections and the files that prepare() writes, which the
    # demo's train stage depends on and removes before training again (jmlr/stages.py).
    sections: tuple[str, ...] = ()
    writes: Callable[[Config], list[Path]] | None = None

    def enabled(self, cfg: Config) -> bool:
        return getattr(cfg, self.section).before_joint_steps > 0


def first_runs() -> list[FirstRun]:
    out = []
    for entry in ORDER:
        module, attribute = entry.split(":")
        out.append(getattr(importlib.import_module(module), attribute))
    return out


def switched_on(cfg: Config) -> tuple[tuple[str, ...], list[Path]]:
    """The config sections and the outputs of ``cfg``'s switched-on runs of :data:`ORDER`.

    >>> from jmlr.config import load_config
    >>> keys, paths = switched_on(load_config(None, ["run.out_dir=runs/x",
    ...                                              "distill.before_joint_steps=4"]))
    >>> keys, [str(p) for p in paths]
    (('distill',), ['runs/x/distill'])
    """
    keys: list[str] = []
    paths: list[Path] = []
    for first in first_runs():
        if first.enabled(cfg):
            keys += [first.section, *first.sections]
            paths += [Path(cfg.run.out_dir) / first.name,
                      *(first.writes(cfg) if first.writes else [])]
    return tuple(keys), paths


def retriever_run_config(cfg: Config, name: str, step: str, steps: int, batch_size: int,
                         lr: float, settings: Sequence[tuple[str, Any]] = ()) -> Config:
    """``cfg`` as a run of ``steps`` retriever steps (``train.step=step``, ``batch_size`` items
    and constant ``lr`` per step, no dev passes, saved at the end) into ``RUN/<name>``, on the
    joint run's candidates and index, with ``settings`` (``("section.key", value)``) on top;
    no run of :data:`ORDER` switched on inside it.

    >>> from jmlr.config import load_config
    >>> sub = retriever_run_config(load_config(None, ["run.out_dir=runs/x"]), "warmup",
    ...                            "retriever_contrastive", 5, 16, 1e-4)
    >>> sub.run.out_dir, sub.train.step, sub.train.max_steps, sub.train.save_every
    ('runs/x/warmup', 'retriever_contrastive', 5, 5)
    >>> str(sub.candidates_dir), str(sub.index_dir)    # the joint run's, not under runs/x/warmup
    ('runs/x/candidates', 'runs/x/index')
    """
    from jmlr.config_fields import apply_path

    out = copy.deepcopy(cfg)
    for key, value in [("train.step", step), ("train.max_steps", steps),
                       ("train.batch_size", batch_size), ("train.grad_accum", 1),
                       ("train.retriever_lr", lr), ("train.warmup_steps", 0),
                       ("train.lr_scheduler", "constant"), ("train.eval_every", -1),
                       ("train.save_every", steps), *settings,
                       ("candidates.path", str(cfg.candidates_dir)),
                       ("retriever.index_dir", str(cfg.index_dir)),
                       ("run.out_dir", str(Path(cfg.run.out_dir) / name))]:
        head, field_name = key.split(".")
        apply_path(getattr(out, head), [field_name], value, head)
    for first in first_runs():
        getattr(out, first.section).before_joint_steps = 0
    return out


def before_joint(cfg: Config) -> Config:
    """Run (or keep, or continue) each switched-on run of :data:`ORDER`; the joint run's config
    starting from the last one's export. ``cfg`` itself is left as it was."""
    for first in first_runs():
        if first.enabled(cfg):
            cfg = run_first(cfg, first)
    return cfg


def run_first(cfg: Config, first: FirstRun) -> Config:
    """One sub-run before the joint run; ``cfg`` starting from its exported retriever."""
    from jmlr.errors import Stopped
    from jmlr.training import checkpoint as ckpt
    from jmlr.training.loop import run_train

    sub = first.sub_config(cfg)
    folder = Path(sub.run.out_dir)
    final = folder / "final" / "retriever"
    if final.is_dir():
        check_kept(sub, folder, first)
    else:
        if first.prepare is not None:
            first.prepare(cfg, sub)
        log.info("%s first: %d steps into %s", first.what, sub.train.max_steps, folder)
        summary = run_train(sub, resume=ckpt.find_latest(folder) is not None)
        if summary.get("stopped_by"):
            raise Stopped(summary["stopped_by"], f"stopped by {summary['stopped_by']} while "
                          f"{first.what} in {folder} (checkpoint saved); the same command "
                          "continues it")
    out = copy.deepcopy(cfg)
    out.retriever.train_from = str(final)
    return out


def check_kept(sub: Config, folder: Path, first: FirstRun) -> None:
    """A finished sub-run is kept only when it was made with the settings asked for now."""
    from jmlr.config import load_config
    from jmlr.errors import ConfigError

    saved = folder / "config.yaml"
    if not saved.is_file() or load_config(saved).to_dict() != sub.to_dict():
        raise ConfigError(f"{folder} holds a {first.noun} run made with other settings (or none "
                          f"recorded): remove that folder, or set {first.section}."
                          f"before_joint_steps=0 and retriever.train_from="
                          f"{folder / 'final' / 'retriever'} to use it")
