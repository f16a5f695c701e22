"""The ``merge`` config section: which expert runs, and per part (generator, retriever) which
mergekit method with which parameters. No torch here: the section registers when configs load.

    merge:
      experts: [{run: runs/cardio}, {run: runs/neuro}]
      generator: {method: ties, parameters: {lambda: 1.0}, per_expert: {weight: [1, 1], density: [0.5, 0.5]}}
      retriever: {method: linear, per_expert: {weight: [0.5, 0.5]}}

``parameters`` are the method's shared parameters (one value), ``per_expert`` its per-model
ones (a list, one value per expert, in the order of ``experts``). ``base`` is the model the
experts were trained from (task vectors are taken against it): empty means the config's own
``generator.model`` / ``retriever.checkpoint``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jmlr.errors import ConfigError
from jmlr.registry import CONFIG_SECTIONS

# mergekit 0.1.5's methods that `jmlr merge` offers (checked against mergekit when it runs).
METHODS = ("linear", "slerp", "nuslerp", "multislerp", "karcher", "task_arithmetic", "ties",
           "dare_ties", "dare_linear", "breadcrumbs", "breadcrumbs_ties", "della",
           "della_linear", "model_stock")
BASELESS = ("linear", "karcher", "multislerp", "nuslerp")   # no task vectors: base unused
PARTS = ("generator", "retriever")


@dataclass
class Expert:
    run: str = ""                       # a run folder with final/generator and final/retriever

    def validate(self, key: str) -> None:
        if not self.run:
            raise ConfigError(f"{key}.run is empty: name an expert's run folder")


@dataclass
class PartMerge:
    method: str = "linear"
    parameters: dict[str, Any] = field(default_factory=dict)
    per_expert: dict[str, list[float]] = field(default_factory=dict)
    base: str = ""

    def validate(self, key: str) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"{key}.method: {self.method!r} is not one of {', '.join(METHODS)}")


@dataclass
class MergeConfig:
    experts: list[Expert] = field(default_factory=list)
    generator: PartMerge = field(default_factory=PartMerge)
    retriever: PartMerge = field(default_factory=PartMerge)
    parts: list[str] = field(default_factory=lambda: list(PARTS))

    def validate(self, key: str) -> None:
        unknown = [p for p in self.parts if p not in PARTS]
        if unknown:
            raise ConfigError(f"{key}.parts: {unknown[0]!r} is not one of {', '.join(PARTS)}")
        for part in self.parts:
            spec: PartMerge = getattr(self, part)
            if not self.experts:        # a template (experts named later): checked when they are
                continue
            for name, values in spec.per_expert.items():
                if not isinstance(values, list) or len(values) != len(self.experts):
                    raise ConfigError(f"{key}.{part}.per_expert.{name}: give one value per "
                                      f"expert ({len(self.experts)})")
            if spec.method == "slerp" and len(self.experts) != 1:
                raise ConfigError(f"{key}.{part}.method=slerp interpolates the base and one "
                                  f"expert; {len(self.experts)} experts are listed")


CONFIG_SECTIONS.register("merge", MergeConfig)
