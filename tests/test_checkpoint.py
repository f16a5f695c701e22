"""Checkpoint machinery: RNG round trips, trainable-only weights, atomic folders, exact resume
of optimizer + scheduler + RNG on a small real model, metrics truncation, signals, data order."""

from __future__ import annotations

import json
import logging
import os
import random
import signal

import numpy as np
import pytest
import torch
from torch import nn

from jmlr.errors import ConfigError, DataError
from jmlr.training import checkpoint as ckpt
from jmlr.training.optim import build_optimizer, build_scheduler, check_groups, model_groups
from jmlr.training.runtime import MetricsLog, epoch_batches, stop_on_signals


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 8), nn.Dropout(0.3),
                          nn.LayerNorm(8), nn.Linear(8, 1))
    model[0].weight.requires_grad_(False)   # a frozen part, as the generator's base weights
    return model


def draws(sampler: torch.Generator) -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(1)),
            float(torch.rand(1, generator=sampler)))


def test_rng_states_round_trip_through_a_file(tmp_path):
    sampler = torch.Generator().manual_seed(7)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draws(sampler)
    ckpt.save_rng(tmp_path / "rng.pt", sampler)
    expected = draws(sampler)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    other = torch.Generator().manual_seed(99)
    assert draws(other) != expected
    ckpt.load_rng(tmp_path / "rng.pt", other)
    assert draws(other) == expected


def test_trainable_tensors_save_and_load_only_the_trainable_set(tmp_path):
    model = small_model(0)
    names = ckpt.trainable_names(model)
    assert "0.weight" not in names and "1.weight" in names and "3.bias" in names
    assert ckpt.save_trainable(tmp_path / "t.safetensors", model.state_dict(), names) == len(names)
    other = small_model(1)
    frozen_before = other[0].weight.clone()
    ckpt.load_trainable(other, tmp_path / "t.safetensors")
    for name, param in other.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, dict(model.named_parameters())[name])
    assert torch.equal(other[0].weight, frozen_before)      # frozen weights untouched
    other[0].weight.requires_grad_(True)                     # a different trainable set
    with pytest.raises(ConfigError, match="does not match"):
        ckpt.load_trainable(other, tmp_path / "t.safetensors")


def test_find_latest_ignores_temporary_and_incomplete_folders(tmp_path):
    assert ckpt.find_latest(tmp_path) is None
    for name, complete in [("step-2", True), ("step-10", True), ("step-12", False),
                           (".step-14.tmp", True)]:
        folder = ckpt.checkpoints_dir(tmp_path) / name
        folder.mkdir(parents=True)
        if complete:
            (folder / ckpt.STATE_FILE).write_text("{}")
    assert ckpt.find_latest(tmp_path).name == "step-10"
    ckpt.remove_partial(tmp_path)
    assert not (ckpt.checkpoints_dir(tmp_path) / ".step-14.tmp").exists()


def train_steps(model, optimizer, scheduler, sampler, n: int) -> list[float]:
    """A few real optimizer steps; the data depend on the sampler RNG, dropout on torch's."""
    losses = []
    model.train()
    for _ in range(n):
        tokens = torch.randint(0, 11, (4,), generator=sampler)
        loss = model(tokens).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


def fresh(perturb: bool = False):
    model = small_model(0)      # frozen weights come from the same source in a resumed run
    if perturb:
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param))
    groups = model_groups("m", model, 1e-2, 0.1)
    check_groups(groups, {"m": model})
    optimizer = build_optimizer(groups)
    scheduler = build_scheduler(optimizer, warmup=2, total=8, kind="cosine")
    return model, optimizer, scheduler, torch.Generator().manual_seed(5)


def test_save_then_load_continues_exactly(tmp_path, accelerator):
    torch.manual_seed(0)
    model, optimizer, scheduler, sampler = fresh()
    train_steps(model, optimizer, scheduler, sampler, 3)
    state = ckpt.TrainState(step=3, epoch=1, batch_index=2, group_names=["m", "m_no_decay"])
    written = ckpt.save_checkpoint(accelerator, tmp_path, state, model=model, optimizer=optimizer,
                                   scheduler=scheduler, sampler=sampler,
                                   exporters={"extra": lambda p: p.mkdir()})
    assert written == ckpt.step_dir(tmp_path, 3) and (written / "extra").is_dir()
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng_rank0.pt",
            "state.json"} <= set(os.listdir(written))
    expected = train_steps(model, optimizer, scheduler, sampler, 4)

    model2, optimizer2, scheduler2, sampler2 = fresh(perturb=True)  # other weights, fresh RNG
    ckpt.load_weights(written, model2)
    restored = ckpt.load_training_state(accelerator, written, optimizer=optimizer2,
                                        scheduler=scheduler2, sampler=sampler2,
                                        group_names=["m", "m_no_decay"])
    assert (restored.step, restored.epoch, restored.batch_index) == (3, 1, 2)
    assert train_steps(model2, optimizer2, scheduler2, sampler2, 4) == expected
    with pytest.raises(ConfigError, match="optimizer groups"):
        ckpt.load_training_state(accelerator, written, optimizer=optimizer2, scheduler=scheduler2,
                                 sampler=sampler2, group_names=["m"])


def test_a_failed_save_leaves_no_checkpoint_that_looks_complete(tmp_path, accelerator):
    model, optimizer, scheduler, sampler = fresh()

    def broken_export(path):
        path.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(accelerator, tmp_path, ckpt.TrainState(step=4), model=model,
                             optimizer=optimizer, scheduler=scheduler, sampler=sampler,
                             exporters={"generator": broken_export})
    assert not ckpt.step_dir(tmp_path, 4).exists()
    assert ckpt.find_latest(tmp_path) is None


def kept(run_dir) -> list[str]:
    return [path.name for path in ckpt.complete_checkpoints(run_dir)]


def test_a_new_checkpoint_prunes_all_but_the_newest_kept_ones(tmp_path, accelerator):
    model, optimizer, scheduler, sampler = fresh()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(accelerator, tmp_path, ckpt.TrainState(step=step), model=model,
                             optimizer=optimizer, scheduler=scheduler, sampler=sampler, keep=2)
    assert kept(tmp_path) == ["step-2", "step-3"]

    def broken_export(path):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):   # a failed save removes nothing
        ckpt.save_checkpoint(accelerator, tmp_path, ckpt.TrainState(step=4), model=model,
                             optimizer=optimizer, scheduler=scheduler, sampler=sampler,
                             exporters={"generator": broken_export}, keep=1)
    assert kept(tmp_path) == ["step-2", "step-3"]
    ckpt.save_checkpoint(accelerator, tmp_path, ckpt.TrainState(step=4), model=model,
                         optimizer=optimizer, scheduler=scheduler, sampler=sampler, keep=0)
    assert kept(tmp_path) == ["step-2", "step-3", "step-4"]
    ckpt.save_checkpoint(accelerator, tmp_path, ckpt.TrainState(step=5), model=model,
                         optimizer=optimizer, scheduler=scheduler, sampler=sampler, keep=1)
    assert kept(tmp_path) == ["step-5"]
    assert os.listdir(ckpt.checkpoints_dir(tmp_path)) == ["step-5"]    # nothing half-removed
    assert ckpt.find_latest(tmp_path) == ckpt.step_dir(tmp_path, 5)


def test_metrics_rows_after_the_checkpoint_are_dropped_on_resume(tmp_path, accelerator):
    metrics = MetricsLog(accelerator, tmp_path)
    metrics.reset()
    for step in (1, 2, 3):
        metrics.write({"step": step, "loss": 1.0 / step})
    metrics.write({"step": 2, "split": "dev", "recall@1": 0.5})
    metrics.truncate_after(2)
    rows = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    assert len(rows) == 3 and '"step": 3' not in "".join(rows)


def test_a_torn_last_metrics_line_is_dropped_on_resume_and_said(tmp_path, accelerator, caplog):
    metrics = MetricsLog(accelerator, tmp_path)
    metrics.reset()
    for step in (1, 2, 3):
        metrics.write({"step": step, "loss": 1.0 / step})
    with (tmp_path / "metrics.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"step": 4, "loss": 0.2')           # killed in the middle of a write
    with caplog.at_level(logging.INFO, logger="jmlr.training.runtime"):
        metrics.truncate_after(2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    said = [r.getMessage() for r in caplog.records if "metrics.jsonl" in r.getMessage()]
    assert len(said) == 1 and "1 row(s) after step 2" in said[0] and "torn last line" in said[0]

    # A malformed line before the last is not a torn write: it stays a located error.
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 2}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: malformed JSON"):
        metrics.truncate_after(2)


def test_sigterm_sets_the_stop_request_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_epoch_order_is_a_seeded_partition_that_changes_with_epoch():
    n, world = 11, 2
    epoch0 = [epoch_batches(n, 2, seed=3, epoch=0, rank=r, world=world) for r in range(world)]
    seen = [i for rank in epoch0 for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 10                 # 11 // 2 per rank, no overlap
    assert [len(b) for b in epoch0[0]] == [2, 2, 1]
    assert epoch_batches(n, 2, 3, 1, 0, world) != epoch0[0]
    assert epoch_batches(n, 2, 4, 0, 0, world) != epoch0[0]
    assert epoch_batches(n, 2, 3, 0, 0, world) == epoch0[0]
