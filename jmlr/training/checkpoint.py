"""Checkpoints that resume a run exactly, written atomically.

A checkpoint is ``RUN/checkpoints/step-N/``:

* ``state.json``: the training position (optimizer step, epoch, next batch, sampler seed,
  world size, optimizer group names, ...); written last, so a folder without it is incomplete;
* ``trainable.safetensors``: every trainable tensor of the joint model, by name (the frozen
  base weights are reloaded from their source);
* ``optimizer.pt`` (or ``optimizer_rank{r}.pt`` when the backend shards optimizer state),
  ``scheduler.pt``, ``scaler.pt`` with fp16;
* ``rng_rank{r}.pt``: python, numpy, torch (CPU and CUDA) and sampler RNG states, per rank;
* whatever the caller exports beside them (generator adapters, the ColBERT checkpoint).

Everything is built in ``.step-N.tmp`` and renamed into place, so an interrupted save never
leaves a folder that looks complete. Files with tensors load with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from jmlr.errors import ConfigError
from jmlr.io import apply_umask, publish_folder, write_json
from jmlr.training.distributed import is_sharded

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
TRAINABLE_FILE = "trainable.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


@dataclass
class TrainState:
    """Where training stands after ``step`` optimizer steps; enough to continue exactly."""

    step: int = 0                   # optimizer steps done
    epoch: int = 0                  # epoch of the next micro-batch
    batch_index: int = 0            # index (in this rank's order for that epoch) of the next micro-batch
    sampler_seed: int = 0           # data order = permutation(sampler_seed, epoch)
    world_size: int = 1
    total_steps: int = 0
    tokens_seen: int = 0            # generator tokens over all ranks
    elapsed_s: float = 0.0          # training wall time before this process started
    group_names: list[str] = field(default_factory=list)
    candidates_refreshed_at: int = -1   # step of the last candidate refresh (-1: mined ones)
    index_dir: str = ""             # index in use, when re-indexing changed it
    last_dev_step: int = -1         # step of the last dev evaluation
    interrupted: bool = False

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> TrainState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in known})


# --------------------------------------------------------------------------- locating


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir(run_dir: str | Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f"step-{step}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints under ``RUN/checkpoints``, oldest step first.

    Temporary and incomplete folders (no ``state.json``) are left out.
    """
    folder = checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def find_latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under ``RUN/checkpoints``, or None."""
    complete = complete_checkpoints(run_dir)
    return complete[-1] if complete else None


def prune(run_dir: str | Path, keep: int) -> list[Path]:
    """Remove all but the ``keep`` newest complete checkpoints (``keep`` 0: none removed);
    returns the removed folders. Called only once a new checkpoint is in place, so the run
    always keeps a resumable one. Each is first renamed to a temporary ``.step-N.old-*``
    name, so a removal cut short never leaves a folder that looks complete
    (:func:`remove_partial` clears it on the next start)."""
    if keep <= 0:
        return []
    removed = []
    for path in complete_checkpoints(run_dir)[:-keep]:
        doomed = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(path)
    return removed


def remove_partial(run_dir: str | Path) -> None:
    """Delete temporary folders that an interrupted save or removal left behind."""
    folder = checkpoints_dir(run_dir)
    if folder.is_dir():
        for child in folder.glob(".step-*"):
            shutil.rmtree(child, ignore_errors=True)


def clean_name(name: str) -> str:
    """A parameter name without the segments that distributed/compile wrappers insert.

    >>> clean_name("generator._fsdp_wrapped_module.lm.weight")
    'generator.lm.weight'
    """
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name


def trainable_names(model: nn.Module) -> list[str]:
    """Names (wrapper segments removed) of the parameters that require grad."""
    return [clean_name(n) for n, p in model.named_parameters() if p.requires_grad]


# --------------------------------------------------------------------------- RNG


def capture_rng(sampler: torch.Generator | None = None) -> dict[str, Any]:
    """All RNG states of this process as tensors and plain containers (safe to load)."""
    version, internal, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if sampler is not None:
        state["sampler"] = sampler.get_state()
    return state


def restore_rng(state: dict[str, Any], sampler: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if sampler is not None and "sampler" in state:
        sampler.set_state(state["sampler"])


def save_rng(path: Path, sampler: torch.Generator | None = None) -> None:
    torch.save(capture_rng(sampler), path)


def load_rng(path: Path, sampler: torch.Generator | None = None) -> None:
    restore_rng(torch.load(path, map_location="cpu", weights_only=True), sampler)


# --------------------------------------------------------------------------- tensors


def save_trainable(path: Path, state_dict: dict[str, torch.Tensor], names: Iterable[str]) -> int:
    """Write the named tensors of a (full, gathered) state dict to safetensors; returns count."""
    clean = {clean_name(k): v for k, v in state_dict.items()}
    missing = [n for n in names if n not in clean]
    if missing:
        raise RuntimeError(f"trainable tensors not in the model's state dict: {missing[:5]}")
    tensors = {n: clean[n].detach().to("cpu").contiguous().clone() for n in names}
    save_file(tensors, str(path))
    apply_umask(path)   # safetensors writes 0600 whatever the umask
    return len(tensors)


def load_trainable(model: nn.Module, path: Path) -> int:
    """Load saved trainable tensors into ``model``; they must be exactly its trainable set."""
    tensors = load_file(str(path))
    expected = set(trainable_names(model))
    saved = set(tensors)
    if saved != expected:
        raise ConfigError(
            f"checkpoint {path.parent} does not match this config's trainable parameters "
            f"({len(saved - expected)} saved but not trainable now, e.g. {sorted(saved - expected)[:2]}; "
            f"{len(expected - saved)} trainable but not saved, e.g. {sorted(expected - saved)[:2]})")
    by_name = {clean_name(n): p for n, p in model.named_parameters()}
    with torch.no_grad():
        for name, tensor in tensors.items():
            target = by_name[name]
            if target.shape != tensor.shape:
                raise ConfigError(f"checkpoint tensor {name} has shape {tuple(tensor.shape)}, "
                                  f"the model {tuple(target.shape)}")
            target.copy_(tensor.to(target.dtype))
    return len(tensors)


# --------------------------------------------------------------------------- save / load


def _optimizer_is_sharded(accelerator: Any) -> bool:
    return is_sharded(accelerator)


def save_checkpoint(accelerator: Any, run_dir: Path, state: TrainState, *, model: nn.Module,
                    optimizer: Any, scheduler: Any, sampler: torch.Generator | None,
                    exporters: dict[str, Callable[[Path], None]] | None = None,
                    keep: int = 0) -> Path:
    """Write ``RUN/checkpoints/step-<state.step>`` atomically; every rank must call this.

    ``model`` is the prepared joint model. ``exporters`` (name → function writing into a
    folder) run on the main process only, each into its own sub-folder. Once the new
    checkpoint is in place, all but the ``keep`` newest are removed (0: none).
    """
    final = step_dir(run_dir, state.step)
    tmp = final.parent / f".step-{state.step}.tmp"
    full_state = accelerator.get_state_dict(model)      # collective: gathers sharded weights
    names = trainable_names(accelerator.unwrap_model(model))
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    save_rng(tmp / f"rng_rank{rank}.pt", sampler)
    if _optimizer_is_sharded(accelerator):
        torch.save(optimizer.state_dict(), tmp / f"optimizer_rank{rank}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_trainable(tmp / TRAINABLE_FILE, full_state, names)
        if not _optimizer_is_sharded(accelerator):
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if getattr(accelerator, "scaler", None) is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        for name, export in (exporters or {}).items():
            export(tmp / name)
        write_json(tmp / STATE_FILE, dataclasses.asdict(state))
        publish_folder(tmp, final)
        removed = prune(run_dir, keep)
        if removed:
            log.info("removed %s (train.keep_checkpoints=%d)",
                     ", ".join(p.name for p in removed), keep)
    accelerator.wait_for_everyone()
    return final


def read_state(ckpt: Path) -> TrainState:
    return TrainState.from_json(json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")))


def load_weights(ckpt: Path, model: nn.Module) -> int:
    """Restore trainable tensors into the (not yet prepared) joint model."""
    return load_trainable(model, ckpt / TRAINABLE_FILE)


def load_training_state(accelerator: Any, ckpt: Path, *, optimizer: Any, scheduler: Any,
                        sampler: torch.Generator | None, group_names: list[str]) -> TrainState:
    """Restore optimizer, scheduler, scaler and this rank's RNG after ``accelerator.prepare``."""
    state = read_state(ckpt)
    if state.group_names and state.group_names != group_names:
        raise ConfigError(f"checkpoint {ckpt} has optimizer groups {state.group_names}, this "
                          f"config builds {group_names}: resume with the config it was saved with")
    rank = accelerator.process_index
    if _optimizer_is_sharded(accelerator):
        if state.world_size != accelerator.num_processes:
            raise ConfigError(f"checkpoint {ckpt} was written by {state.world_size} processes; "
                              f"a sharded optimizer resumes only with the same number")
        opt_file = ckpt / f"optimizer_rank{rank}.pt"
    else:
        opt_file = ckpt / "optimizer.pt"
    optimizer.load_state_dict(torch.load(opt_file, map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", map_location="cpu",
                                         weights_only=True))
    if getattr(accelerator, "scaler", None) is not None and (ckpt / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(torch.load(ckpt / "scaler.pt", weights_only=True))
    rng_file = ckpt / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        load_rng(rng_file, sampler)
    else:
        log.warning("no RNG state for rank %d in %s: this rank continues with fresh RNG", rank, ckpt)
    return state
