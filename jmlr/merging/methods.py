"""The only importer of mergekit: state dicts merged by one of its methods, in memory.

Every floating tensor of the models goes through mergekit's own implementation of the method
(``mergekit.merge_methods.merge_state_dicts``); non-floating buffers (position ids) are copied
when every input agrees. So the ColBERT projection layer, which no mergekit architecture
definition names, is merged by exactly the same code as the BERT weights around it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from jmlr.errors import ConfigError
from jmlr.merging.config import BASELESS

BASE_ID = "base"
# Methods whose per-expert ``weight`` has no default in mergekit.
WEIGHTED = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
            "breadcrumbs_ties", "della", "della_linear", "nuslerp", "multislerp")


def mergekit_version() -> str:
    from importlib import metadata

    return metadata.version("mergekit")


def available(method: str) -> None:
    """ConfigError unless mergekit is installed and has ``method``."""
    try:
        from mergekit import merge_methods
    except ImportError:
        raise ConfigError("mergekit is not installed: pip install 'jmlr[merge]' "
                          "(scripts/setup.sh installs it)") from None
    names = {m.spec.name for m in merge_methods.registered_methods()}
    if method not in names:
        raise ConfigError(f"mergekit {mergekit_version()} has no merge method {method!r}")


def check_parameters(method: str, parameters: Mapping[str, Any],
                     per_expert: Mapping[str, Any], key: str) -> None:
    """ConfigError (naming ``key``) for a parameter ``method`` does not take, or one given in
    the wrong place: shared ones under ``parameters``, per-model ones under ``per_expert``.
    Checked against mergekit's own method spec, before any model loads."""
    from mergekit import merge_methods

    available(method)
    spec = next(m.spec for m in merge_methods.registered_methods() if m.spec.name == method)
    shared = {p.name for p in spec.parameters if p.scope.value == "shared"}
    per_model = {p.name for p in spec.parameters} - shared
    for where, given, allowed in (("parameters", parameters, shared),
                                  ("per_expert", per_expert, per_model)):
        for name in given:
            if name not in allowed:
                other = "per_expert" if where == "parameters" else "parameters"
                hint = (f"it is a {'per-model' if where == 'parameters' else 'shared'} parameter: "
                        f"put it under {key}.{other}") if name in shared | per_model else \
                    f"{method} takes {', '.join(sorted(allowed)) or 'none here'}"
                raise ConfigError(f"{key}.{where}.{name}: mergekit's {method} has no such "
                                  f"{'shared' if where == 'parameters' else 'per-model'} "
                                  f"parameter ({hint})")


def per_input(values: Mapping[str, Sequence[float]], expert_ids: Sequence[str]
              ) -> dict[str, dict[str, float]]:
    """Per-expert parameter lists as mergekit's mappings keyed by input id.

    >>> per_input({"weight": [0.3, 0.7]}, ["e0", "e1"])
    {'weight': {'e0': 0.3, 'e1': 0.7}}
    """
    return {name: {eid: float(v) for eid, v in zip(expert_ids, vals, strict=True)}
            for name, vals in values.items()}


def merge_weights(experts: Mapping[str, Mapping[str, torch.Tensor]],
                  base: Mapping[str, torch.Tensor] | None, method: str,
                  parameters: Mapping[str, Any], per_expert: Mapping[str, Sequence[float]]
                  ) -> dict[str, torch.Tensor]:
    """One state dict from the experts' (and the base's, for methods on task vectors) by
    mergekit's ``method``; float32 arithmetic, the inputs' dtype out."""
    from mergekit.merge_methods import merge_state_dicts

    available(method)
    inputs: dict[str, Mapping[str, torch.Tensor]] = dict(experts)
    uses_base = method not in BASELESS and base is not None
    if uses_base:
        inputs = {BASE_ID: base, **inputs}
    params: dict[str, Any] = dict(parameters)
    params.update(per_input(per_expert, list(experts)))
    if method in WEIGHTED and "weight" not in params:    # unset: every expert alike
        params["weight"] = {eid: 1.0 for eid in experts}
    if method == "slerp" and "t" not in params:
        raise ConfigError("merge method slerp needs parameters.t (0: the base, 1: the expert)")
    dtype = next(iter(next(iter(experts.values())).values())).dtype
    with torch.no_grad():
        try:
            return merge_state_dicts(inputs, method, parameters=params,
                                     base=BASE_ID if uses_base else None, strict=True,
                                     dtype=torch.float32, out_dtype=dtype)
        except (ValueError, RuntimeError, TypeError) as err:
            raise ConfigError(f"mergekit's {method} refused the inputs: {err}") from None
