"""One process of the two-process FSDP export check (tests/test_sharded_export.py).

Run by ``torchrun --nproc_per_node 2`` (gloo, CPU): the joint step's models, their trainable
weights moved by a seeded amount (the same on both processes), sharded with torch's FSDP2
(``fully_shard``) over both processes; the full state dict gathered the way accelerate gathers
it for FSDP2; the main process exports from unsharded copies (``training/sharded.py``) into
``OUT/final``. With ``--single`` the same models are exported without sharding, the reference.

accelerate 1.16 does not prepare FSDP on CPU processes (it runs them as DistributedType.NO),
so the accelerator here is the two calls the export path makes of it, over real torch
distributed state.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


class FsdpAccelerator:
    """What ``ExportCopies.models`` asks of an accelerator, answered by torch's FSDP2 API
    exactly as accelerate answers it for ``fsdp_version: 2``."""

    distributed_type = "DistributedType.FSDP"

    @property
    def is_main_process(self) -> bool:
        return torch.distributed.get_rank() == 0

    def get_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)


def main(config: str, out: str, single: bool) -> None:
    from jmlr.config import load_config
    from jmlr.io import building_folder
    from jmlr.training.sharded import ExportCopies
    from jmlr.training.steps.base import ModelSet
    from jmlr.training.steps.joint import JointStep

    cfg = load_config(config, [f"run.out_dir={out}"])
    step = JointStep(cfg)
    step.load_data()
    torch.manual_seed(cfg.run.seed)         # LoRA's initial weights, as the loop seeds them
    models = step.build_models()
    torch.manual_seed(0)
    with torch.no_grad():
        for model in models.values():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.05 * torch.randn_like(param))
    if single:
        with building_folder(Path(out) / "final") as tmp:
            step.export_final(models, tmp)
        return

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.distributed.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (2,))
    joint = ModelSet(models)
    fully_shard(joint, mesh=mesh)
    sharded = [n for n, p in joint.named_parameters() if type(p).__name__ == "DTensor"]
    assert sharded, "fully_shard left every parameter whole"
    exported = ExportCopies(step.export_copies).models(FsdpAccelerator(), joint, models)
    if torch.distributed.get_rank() == 0:
        assert exported is not models
        with building_folder(Path(out) / "final") as tmp:
            step.export_final(exported, tmp)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--single" in sys.argv)
