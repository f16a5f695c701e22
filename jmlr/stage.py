"""What a stage of the pipeline is: one subcommand of ``jmlr``, and possibly a step of
``jmlr demo`` and a section of the run report.

A :class:`Stage` is registered under its command name in :data:`jmlr.registry.STAGES`;
``jmlr/cli.py`` builds its subcommands from that registry and ``jmlr demo`` runs the stages
that have a ``demo`` function, in registration order. Functions are given as
``"module:function"`` so that listing the commands imports nothing heavy.

Adding a stage (from a plug-in module or a test, no edit elsewhere)::

    @dataclass
    class ToyConfig:            # its own config section, checked at load like the others
        level: int = 1

    CONFIG_SECTIONS.register("toy", ToyConfig)
    STAGES.register("toy", Stage(help="a toy", run="mypkg.toy:run_toy", section="toy"))
    # run_toy(cfg, args) is called by `jmlr toy -c CONFIG [section.key=value ...]`
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Function = str | Callable[..., Any]


def resolve(function: Function) -> Callable[..., Any]:
    """A callable from itself or from ``"package.module:name"``."""
    if callable(function):
        return function
    module, _, name = function.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``run(cfg, args)`` does the work of the subcommand (``cfg`` is None when the stage takes
    no config); it may return an exit code (None means 0). ``arguments(parser)`` adds the
    stage's own command-line options. ``demo(cfg, quick)`` runs the stage inside ``jmlr
    demo`` (absent: not part of the demo); it returns what the demo summary keeps, and
    should continue work that an interrupted run left. ``demo_io(cfg, quick)`` returns the
    stage's :class:`jmlr.demo_stamps.DemoIO` (the config keys and files it reads, the outputs
    it writes), so that a second ``jmlr demo`` keeps the stage while they are unchanged
    (absent: the stage runs every time, and so do the stages after it).
    ``report(cfg, run_dir)`` returns a
    ``report_render.Section`` for the run report (or None when it has nothing to show).
    ``reads`` / ``writes`` name the stage's inputs and outputs (config keys or run-folder
    paths), for ``jmlr --help`` and the docs. ``passthrough``: the stage takes the rest of the
    command line as it is, in ``args.passthrough`` (for a command that wraps another tool's
    command line, as ``jmlr lm-eval`` does lm-eval's).
    """

    help: str
    run: Function
    arguments: Function | None = None
    uses_config: bool = True
    config_default: str | None = None
    section: str | None = None
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    demo: Function | None = None
    demo_io: Function | None = None
    report: Function | None = None
    passthrough: bool = False

    def add_to(self, name: str, subparsers: Any) -> argparse.ArgumentParser:
        flow = ""
        if self.reads or self.writes:
            flow = f" ({', '.join(self.reads) or '-'} -> {', '.join(self.writes) or '-'})"
        parser = subparsers.add_parser(name, help=self.help, description=self.help + flow)
        if self.uses_config:
            parser.add_argument("-c", "--config", default=self.config_default,
                                help="YAML config (configs/*.yaml)" + (
                                    f"; default {self.config_default}" if self.config_default else ""))
            parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                                help="override any config key, e.g. train.generator_lr=2e-5")
        if self.arguments is not None:
            resolve(self.arguments)(parser)
        return parser


def comma_list(text: str) -> list[str]:
    """``"train,dev"`` -> ``["train", "dev"]`` (a list option that cannot swallow overrides).

    >>> comma_list("none, trained")
    ['none', 'trained']
    """
    return [part.strip() for part in text.split(",") if part.strip()]
