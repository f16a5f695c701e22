"""``jmlr merge -c CONFIG``: the ``merge`` section's expert runs combined into one run folder.

Generator: each expert's LoRA adapter (and the parameters it trained in place) is folded into
its base model with peft first, so mergekit sees full models; the merged model is written as a
full transformers folder (``final/generator/model``, with the tokenizer), which ``jmlr
evaluate`` loads like a full fine-tune. Retriever: every expert's ColBERT checkpoint (BERT
encoder and the linear projection) is loaded and every tensor merged, the projection included,
by the same mergekit method. The base of both (for methods on task vectors) is the config's
``generator.model`` / ``retriever.checkpoint`` unless ``merge.<part>.base`` names another, and
each expert's own config must name the same generator, so that task vectors are taken
against what the experts started from.

The output folder is a run folder like a trained one (``config.yaml``, ``final/generator``,
``final/retriever``) plus ``merge_card.json``: the sources with the sha256 of their weight
files, the method and parameters per part, mergekit's version, time and peak memory. A part
left out of ``merge.parts`` is copied from the first expert (the card says so). All models are
held in memory at once (fine up to a few billion parameters on a large host).
"""

from __future__ import annotations

import hashlib
import logging
import resource
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jmlr.errors import ConfigError

if TYPE_CHECKING:
    from jmlr.config import Config

log = logging.getLogger(__name__)

CARD = "merge_card.json"
PART_DIRS = {"generator": Path("final") / "generator", "retriever": Path("final") / "retriever"}


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB. Linux's VmHWM belongs to the process image
    (a process started by a large parent reports its own peak); ``ru_maxrss`` would carry the
    parent's size across fork and exec, so it is only the fallback elsewhere.

    >>> 0 < peak_rss_mib() < 1024 * 1024
    True
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # KiB on Linux


def folder_digest(folder: Path) -> str:
    """sha256 over the relative names and bytes of a folder's weight files (safetensors, bin).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.safetensors").write_bytes(b"x")
    >>> folder_digest(d) == folder_digest(d) and len(folder_digest(d)) == 64
    True
    """
    from jmlr.io import file_sha256

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def _expert_configs(cfg: Config) -> list[tuple[str, Path, Config]]:
    """(id, run folder, its config) per expert, every input located and checked."""
    from jmlr.config import load_config
    from jmlr.evaluation.eval_files import check_run_folder

    merge = cfg.merge
    if not merge.experts:
        raise ConfigError("merge.experts is empty: list the expert runs to merge")
    found = []
    for i, expert in enumerate(merge.experts):
        run = Path(expert.run).expanduser()
        try:
            check_run_folder(run)
        except ConfigError as err:
            raise ConfigError(f"merge.experts.{i}.run: {err}".replace("--run ", "")) from None
        for part in merge.parts:
            if not (run / PART_DIRS[part]).is_dir():
                raise ConfigError(f"merge.experts.{i}.run: {run} has no {PART_DIRS[part]} "
                                  "(not a finished run)")
        own = load_config(run / "config.yaml")
        if "generator" in merge.parts and not merge.generator.base \
                and own.generator.model != cfg.generator.model:
            raise ConfigError(f"merge.experts.{i}: {run} was trained from generator "
                              f"{own.generator.model!r}, not {cfg.generator.model!r} (the base): "
                              "set merge.generator.base or generator.model")
        found.append((f"expert{i}", run, own))
    if len({str(run.resolve()) for _, run, _ in found}) != len(found):
        raise ConfigError("merge.experts lists the same run twice")
    return found


def run_merge(cfg: Config, overwrite: bool = False) -> dict[str, Any]:
    """Merge the configured experts into ``run.out_dir`` (module docstring); the card."""
    from jmlr.io import building_folder, write_json
    from jmlr.merging.methods import check_parameters, mergekit_version

    merge, out = cfg.merge, Path(cfg.run.out_dir).expanduser()
    experts = _expert_configs(cfg)
    for part in merge.parts:
        spec = getattr(merge, part)
        check_parameters(spec.method, spec.parameters, spec.per_expert, f"merge.{part}")
    if any(out.resolve() == run.resolve() for _, run, _ in experts):
        raise ConfigError(f"run.out_dir {out} is one of the experts: merge into a new folder")
    if (out / "final").exists() and not overwrite:
        raise ConfigError(f"{out} already holds a run: pass --overwrite to replace it, or set "
                          "run.out_dir")
    started = time.perf_counter()
    card: dict[str, Any] = {"mergekit": mergekit_version(), "parts": {}}
    with building_folder(out / "final") as final:
        for part in ("generator", "retriever"):
            target = final / part
            if part not in merge.parts:
                shutil.copytree(experts[0][1] / PART_DIRS[part], target)
                card["parts"][part] = {"copied_from": str(experts[0][1] / PART_DIRS[part])}
                continue
            spec = getattr(merge, part)
            merge_part = _merge_generator if part == "generator" else _merge_retriever
            base, n_tensors = merge_part(cfg, experts, target)
            card["parts"][part] = {
                "method": spec.method, "parameters": spec.parameters,
                "per_expert": spec.per_expert, "tensors": n_tensors, "base": base,
                "experts": [{"id": eid, "run": str(run),
                             "sha256": folder_digest(run / PART_DIRS[part])}
                            for eid, run, _ in experts]}
    card["seconds"] = round(time.perf_counter() - started, 1)
    card["peak_rss_mib"] = peak_rss_mib()
    write_json(out / CARD, card)
    replace(cfg, run=replace(cfg.run, out_dir=str(out))).save(out / "config.yaml")
    log.info("merged %d experts into %s in %.0f s", len(experts), out, card["seconds"])
    return card


def _merge_generator(cfg: Config, experts: list[tuple[str, Path, Config]], target: Path
                     ) -> tuple[dict[str, Any], int]:
    from jmlr.generation import model as generation
    from jmlr.generation.sources import describe_source
    from jmlr.merging.methods import merge_weights

    spec = cfg.merge.generator
    base_cfg = replace(cfg.generator, model=spec.base) if spec.base else cfg.generator
    base_model, tokenizer = generation.load_generator(base_cfg, cfg.run.cache_dir,
                                                      for_training=False)
    weights = {}
    for eid, run, own in experts:
        # folded with peft: the expert's adapter merged into its own base
        model, _ = generation.load_trained_generator(replace(own.generator, model=base_cfg.model),
                                                     cfg.run.cache_dir, run / PART_DIRS["generator"])
        weights[eid] = {k: v.detach() for k, v in model.state_dict().items()}
    merged = merge_weights(weights, base_model.state_dict(), spec.method, spec.parameters,
                           spec.per_expert)
    base_model.load_state_dict(merged)
    generation.save_generator(base_model, tokenizer, target,
                              base=describe_source(base_cfg.model, cfg.run.cache_dir))
    return {"model": base_cfg.model}, len(merged)


def _merge_retriever(cfg: Config, experts: list[tuple[str, Path, Config]], target: Path
                     ) -> tuple[dict[str, Any], int]:
    from jmlr.merging.methods import merge_weights
    from jmlr.retrieval.backends import backend_for

    spec = cfg.merge.retriever
    backend = backend_for(cfg)
    base = backend.load_scorer(cfg, checkpoint=spec.base or None)
    weights = {eid: backend.load_scorer(cfg, checkpoint=run / PART_DIRS["retriever"]).state_dict()
               for eid, run, _ in experts}
    merged = merge_weights(weights, base.state_dict(), spec.method, spec.parameters,
                           spec.per_expert)
    base.load_state_dict(merged)
    base.save(target)
    return {"checkpoint": spec.base or cfg.retriever.checkpoint}, len(merged)


def merge_report(cfg: Config, run_dir: Path) -> list[Any]:
    """The run report's section for a merged run: where each part came from (none otherwise)."""
    import json

    from jmlr.evaluation.report_render import Section, esc

    path = Path(run_dir) / CARD
    if not path.is_file():
        return []
    card = json.loads(path.read_text())
    rows = []
    for part, info in card["parts"].items():
        if "copied_from" in info:
            rows.append((part, "copied", info["copied_from"], ""))
            continue
        sources = ", ".join(f"{e['run']} ({e['sha256'][:12]})" for e in info["experts"])
        how = f"{info['method']} {json.dumps(info['parameters'])} {json.dumps(info['per_expert'])}"
        rows.append((part, how, sources, json.dumps(info["base"])))
    head = ("part", "method and parameters", "experts (weights sha256)", "base")
    markdown = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                          *("| " + " | ".join(map(str, r)) + " |" for r in rows)])
    html = ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</table>")
    note = f"mergekit {card['mergekit']}, {card['seconds']} s, peak RSS {card['peak_rss_mib']} MiB"
    return [Section("Merged from", f"{html}<p>{esc(note)}</p>", f"{markdown}\n\n{note}", order=5)]
