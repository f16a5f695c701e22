"""Exports when the parameters are sharded (training/sharded.py): two CPU processes shard the
joint step's tiny models with FSDP2 over gloo, gather, and the main process's export is the
one an unsharded process writes, tensor for tensor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_loop import free_port, loop_config, task  # noqa: F401  (the module-scoped tiny task)

from jmlr.training.sharded import ExportCopies

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("fsdp_export_worker.py")


def run_worker(config: Path, out: Path, *extra: str, processes: int = 1) -> None:
    if processes == 1:
        command = [sys.executable, str(WORKER), str(config), str(out), *extra]
    else:
        command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node",
                   str(processes), "--master_port", str(free_port()), str(WORKER), str(config),
                   str(out), *extra]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    done = subprocess.run(command, capture_output=True, text=True, timeout=500, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for key, value in load_file(str(path)).items():
            found[f"{path.relative_to(folder)}:{key}"] = value
    return found


@pytest.mark.slow
def test_an_fsdp_sharded_run_exports_what_an_unsharded_one_does(task, tmp_path):  # noqa: F811
    config = tmp_path / "config.yaml"
    loop_config(task, tmp_path / "unused").save(config)
    run_worker(config, tmp_path / "single", "--single")
    run_worker(config, tmp_path / "sharded", processes=2)
    single, sharded = tensors(tmp_path / "single" / "final"), tensors(tmp_path / "sharded" / "final")
    assert any("lora_B" in key for key in single) and any(key.startswith("retriever") for key in single)
    assert set(sharded) == set(single)
    for key, value in single.items():
        assert torch.equal(sharded[key], value), key


def test_gathered_weights_that_do_not_fit_the_copy_are_refused():
    copies = ExportCopies(lambda: {"retriever": torch.nn.Linear(2, 2)})
    ok = copies.load({"retriever.weight": torch.ones(2, 2), "retriever.bias": torch.zeros(2)})
    assert torch.equal(ok["retriever"].weight, torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="missing \\['bias'\\]"):
        copies.load({"retriever.weight": torch.ones(2, 2)})
