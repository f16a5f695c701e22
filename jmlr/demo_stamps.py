"""What ``jmlr demo`` records of each stage, so that running it again keeps finished stages.

A demo stage declares what it depends on and what it writes (:class:`DemoIO`, from the
stage's ``demo_io`` function). When the stage completes, ``RUN/.demo/<stage>.json`` records a
fingerprint of its inputs: the config values it depends on, a few other values (sizes,
package versions) and its input files. Files up to :data:`HASH_LIMIT` are identified by their
sha256; larger files, and the files inside a folder (model weights, an index), by size and
modification time, which is cheap and changes whenever one is written again. Models named by
a ``pkg:`` location or a path are identified by that config value, not by their bytes.

A record is first written when the stage starts (``"finished": null``), so that a stage that
was interrupted is told apart from one that finished: it continues where it stopped when its
inputs are unchanged (training resumes from its checkpoint), and starts over when they changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jmlr.config import Config
from jmlr.config_fields import to_plain
from jmlr.io import file_sha256, write_json

log = logging.getLogger(__name__)

STAMPS = ".demo"                    # RUN/.demo/<stage>.json
HASH_LIMIT = 64 << 20               # bytes: larger files are identified by size and mtime
MAX_REASONS = 4                     # changes named in one log line


@dataclass(frozen=True)
class DemoIO:
    """What one demo stage depends on and writes.

    ``config``: config sections (``"train"``) or dotted keys (``"run.seed"``) it depends on.
    ``values``: other inputs, by name (demo sizes, a data package's version). ``files``: files
    or folders it reads (a missing one is recorded as missing). ``outputs``: what it writes;
    removed before the stage is redone. ``unfinished``: why the outputs are not complete, or
    "" when they are; None: complete when every output exists.
    """

    config: tuple[str, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)
    files: tuple[str | Path, ...] = ()
    outputs: tuple[str | Path, ...] = ()
    unfinished: str | None = None

    def why_unfinished(self) -> str:
        if self.unfinished is not None:
            return self.unfinished
        return missing(*self.outputs)


def missing(*paths: str | Path) -> str:
    """Says which of ``paths`` is missing (the first one), or "" when all exist."""
    for path in paths:
        if not Path(path).exists():
            return f"{path} is missing"
    return ""


# --------------------------------------------------------------------------- fingerprints


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def file_id(path: str | Path) -> dict[str, Any] | str:
    """How a file or folder is recognised again (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        size = path.stat().st_size
        if size <= HASH_LIMIT:
            return {"sha256": file_sha256(path)}
        return {"bytes": size, "mtime_ns": path.stat().st_mtime_ns}
    if path.is_dir():
        listing = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in path.rglob("*") if p.is_file())
        return {"files": len(listing), "bytes": sum(size for _, size, _ in listing),
                "listing": _digest(listing)}
    return "missing"


def _digest(obj: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def fingerprint(cfg: Config, io: DemoIO) -> dict[str, Any]:
    """The stage's inputs now, as the plain values a stamp stores (JSON round-tripped, so
    that a fresh fingerprint compares equal to a stored one)."""
    flat = _flatten(cfg.to_dict())
    config = {key: value for key, value in flat.items()
              if any(key == want or key.startswith(want + ".") for want in io.config)}
    inputs = {"config": config, "values": to_plain(io.values),
              "files": {str(path): file_id(path) for path in io.files}}
    return json.loads(json.dumps(inputs))


def changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, in words: ``train.max_steps 2 -> 3``."""
    said = []
    for part in ("config", "values"):
        old, new = before.get(part, {}), now.get(part, {})
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                said.append(f"{key} removed")
            elif key not in old:
                said.append(f"{key} added ({json.dumps(new[key])})")
            elif old[key] != new[key]:
                said.append(f"{key} {json.dumps(old[key])} -> {json.dumps(new[key])}")
    old, new = before.get("files", {}), now.get("files", {})
    for path in sorted(old.keys() | new.keys()):
        if old.get(path) != new.get(path):
            said.append(f"{path} is missing" if new.get(path) == "missing" else f"{path} changed")
    return said


# --------------------------------------------------------------------------- stamps


@dataclass
class Stamps:
    """The records of one demo run folder (``RUN/.demo``)."""

    folder: Path

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def read(self, stage: str) -> dict[str, Any] | None:
        try:
            stamp = json.loads(self.path(stage).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None             # none, or unreadable: the stage runs as if never recorded
        return stamp if isinstance(stamp, dict) and isinstance(stamp.get("inputs"), dict) else None

    def started(self, stage: str, inputs: dict[str, Any]) -> None:
        write_json(self.path(stage), {"stage": stage, "started": _now(), "finished": None,
                                      "inputs": inputs})

    def finished(self, stage: str, inputs: dict[str, Any], seconds: float) -> None:
        stamp = self.read(stage) or {"started": _now()}
        write_json(self.path(stage), {"stage": stage, "started": stamp["started"],
                                      "finished": _now(), "seconds": seconds, "inputs": inputs})

    def forget(self, stage: str) -> None:
        self.path(stage).unlink(missing_ok=True)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Decision:
    """What the demo does with a stage: ``keep`` it, or run it (after removing its outputs
    when ``redo``); ``line`` is the log line that says so."""

    keep: bool
    redo: bool
    line: str


def decide(stage: str, io: DemoIO, stamp: dict[str, Any] | None, inputs: dict[str, Any],
           ran_before: list[str]) -> Decision:
    """Keep a stage whose last run finished with the same inputs and left its outputs
    complete, unless an earlier stage of this demo ran (its outputs may differ now, so every
    later stage is redone). An unfinished run with the same inputs continues; anything else
    is redone from nothing."""
    unfinished = io.why_unfinished()
    if stamp is None and not any(Path(p).exists() for p in io.outputs):
        return Decision(False, False, f"demo: {stage}")                 # a first run
    reasons = [f"{ran_before[-1]} ran before it"] if ran_before else []
    if stamp is None:
        if not reasons:             # (an earlier stage that runs removes the later records)
            reasons.append("its outputs have no record of the inputs they were made from")
    else:
        reasons += changes(stamp["inputs"], inputs)
        if not reasons and stamp.get("finished") is None:
            return Decision(False, False, f"demo: {stage} resumed (started {stamp.get('started')}, "
                                          "not finished)")
        if not reasons and unfinished:
            reasons.append(unfinished)
    if not reasons:
        return Decision(True, False, f"demo: {stage} kept (inputs unchanged since "
                                     f"{stamp.get('finished')})")
    more = len(reasons) - MAX_REASONS
    said = "; ".join(reasons[:MAX_REASONS]) + (f"; and {more} more" if more > 0 else "")
    return Decision(False, True, f"demo: {stage} redone: {said}")


def remove_outputs(io: DemoIO) -> None:
    """The stage's own outputs, removed before it is redone (what ``--overwrite`` replaces)."""
    for path in map(Path, io.outputs):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
