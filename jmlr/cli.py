"""The ``jmlr`` command: one subcommand per registered stage (``jmlr.registry.STAGES``).

Every stage that takes a config reads ``-c CONFIG`` plus any number of
``section.key=value`` overrides, loaded and checked before the stage imports anything heavy.
User errors (bad data, bad config) print one line and exit with code 2; a run that SIGTERM
or SIGINT stopped after a checkpoint prints how to continue and exits with 128 + the signal.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from jmlr.errors import Stopped, UserError
from jmlr.registry import STAGES
from jmlr.stage import resolve

log = logging.getLogger("jmlr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jmlr", description="Joint Medical LLM and Retrieval training.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, stage in STAGES.items():
        stage.add_to(name, subs).set_defaults(stage=stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not args.stage.passthrough:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.passthrough = rest
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage = args.stage
    try:
        cfg = None
        if stage.uses_config:
            from jmlr.config import load_config

            cfg = load_config(args.config, args.overrides)
        code = resolve(stage.run)(cfg, args)
        return int(code or 0)
    except UserError as err:
        print(f"jmlr {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except Stopped as err:
        if int(os.environ.get("RANK", "0")) == 0:     # one line per launch, not per process
            print(f"jmlr {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"jmlr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
