"""What ``jmlr evaluate`` checks before its expensive part, and how it keeps earlier results.

Before any model is loaded: ``--run`` must be a run folder, the trained mode's exported
weights must be readable, and the knowledge base that UMLS-F will read must be valid, so a
mistake found at the end (after minutes of generation) is found at the start instead.

After answering: ``RUN/eval/<split>/`` may already hold the results of other modes or
scorings. Those are kept: predictions and metrics are merged by (dataset, mode, scoring),
this evaluation's groups replacing the earlier ones. A UMLS-F report scored the earlier
generated rationales; when this evaluation generated anew, that report no longer matches
``predictions.jsonl`` and is removed (``jmlr evaluate`` with ``factuality.kb`` recomputes it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jmlr.config import Config
from jmlr.errors import ConfigError, DataError
from jmlr.evaluation.factuality_view import REPORT_NAMES
from jmlr.evaluation.metrics import (
    MODES,
    SCORINGS,
    Prediction,
    accuracy_table,
    markdown_table,
    read_predictions,
)
from jmlr.io import check_safetensors

log = logging.getLogger(__name__)

RUN_MARKER = "config.yaml"   # the first file `jmlr train` writes into a run folder
Group = tuple[str, str, str]  # (dataset, mode, scoring)


# ---------------------------------------------------------------------------------------
# Before the expensive part


def check_run_folder(run_dir: Path) -> None:
    """ConfigError unless ``run_dir`` is a folder that ``jmlr train`` wrote (a mistyped
    ``--run`` must not become a new folder of results)."""
    if not run_dir.is_dir():
        what = "is not a folder" if run_dir.exists() else "does not exist"
        raise ConfigError(f"--run {run_dir} {what}: give the run folder that `jmlr train` "
                          "wrote (run.out_dir)")
    if not (run_dir / RUN_MARKER).is_file():
        raise ConfigError(f"--run {run_dir} is not a run folder (it has no {RUN_MARKER}, "
                          "which `jmlr train` writes first)")


def check_before_loading(cfg: Config, run_dir: Path, modes: Sequence[str],
                         scorings: Sequence[str]) -> None:
    """Every check that needs no model: the run folder, the trained mode's exported weights
    (safetensors headers), the qrels file, and the knowledge base when UMLS-F will follow."""
    from jmlr.evaluation import passages
    from jmlr.generation.start import check_generator_start

    check_run_folder(run_dir)
    check_generator_start(cfg.generator)
    if "trained" in modes:
        passages.check_trained_run(cfg, run_dir)
        for part in (passages.FINAL_GENERATOR, passages.FINAL_RETRIEVER):
            for path in sorted((run_dir / part).rglob("*.safetensors")):
                check_safetensors(path)
    if cfg.eval.qrels:
        from jmlr.evaluation.qrels import read_qrels

        read_qrels(cfg.eval.qrels)
    if cfg.factuality.kb and "generate" in scorings:
        from jmlr.data.kb import read_kb, resolve_kb

        read_kb(resolve_kb(cfg.factuality.kb))


# ---------------------------------------------------------------------------------------
# Keeping the results of earlier evaluations


def group_of(p: Prediction) -> Group:
    return p.dataset, p.mode, p.scoring


def merge_predictions(earlier: list[Prediction], new: list[Prediction]) -> list[Prediction]:
    """The earlier predictions of every group that ``new`` does not hold, and ``new``;
    ordered by mode (none, frozen, trained) and scoring (letter, option_text, generate).

    >>> old = [Prediction("q1", "d", m, "letter", "A", "A", True) for m in ("none", "trained")]
    >>> new = [Prediction("q1", "d", "none", "letter", "A", "B", False)]
    >>> [(p.mode, p.predicted) for p in merge_predictions(old, new)]
    [('none', 'B'), ('trained', 'A')]
    """
    replaced = {group_of(p) for p in new}
    kept = [p for p in earlier if group_of(p) not in replaced]
    return sorted([*kept, *new], key=lambda p: (MODES.index(p.mode), SCORINGS.index(p.scoring)))


def merge_metrics(earlier: dict[str, Any], new: dict[str, Any],
                  kept: set[Group]) -> dict[str, Any]:
    """``new`` metrics with the earlier results of the ``kept`` groups added back: accuracy
    per (dataset, mode, scoring), retrieval and timing per mode, and the table rebuilt.

    >>> old = {"results": {"d": {"trained": {"letter": {"accuracy": 0.5}}}},
    ...        "retrieval": {"d": {"trained": {"mrr": 1.0}}}, "timing_s": {"trained": 9.0}}
    >>> new = {"results": {"d": {"none": {"letter": {"accuracy": 0.25}}}},
    ...        "retrieval": {"d": {}}, "timing_s": {"none": 1.0, "total": 1.0}}
    >>> merged = merge_metrics(old, new, {("d", "trained", "letter")})
    >>> merged["modes"], merged["table"]["rows"][1]["values"], merged["retrieval"]["d"]
    (['none', 'trained'], [50.0, 50.0], {'trained': {'mrr': 1.0}})
    """
    merged = dict(new)
    results = {d: {m: dict(s) for m, s in by_mode.items()}
               for d, by_mode in (new.get("results") or {}).items()}
    retrieval = {d: dict(v) for d, v in (new.get("retrieval") or {}).items()}
    datasets = dict(new.get("datasets") or {})
    timing = dict(new.get("timing_s") or {})
    old_results = earlier.get("results") or {}
    for dataset, mode, scoring in kept:
        summary = old_results.get(dataset, {}).get(mode, {}).get(scoring)
        if summary is None:
            continue
        results.setdefault(dataset, {}).setdefault(mode, {})[scoring] = summary
        old_retrieval = (earlier.get("retrieval") or {}).get(dataset, {})
        if mode in old_retrieval and mode not in retrieval.get(dataset, {}):
            retrieval.setdefault(dataset, {})[mode] = old_retrieval[mode]
        if dataset in (earlier.get("datasets") or {}):
            datasets.setdefault(dataset, earlier["datasets"][dataset])
        if mode in (earlier.get("timing_s") or {}):
            timing.setdefault(mode, earlier["timing_s"][mode])
    # modes and scorings in the table's order within each dataset
    results = {d: {m: {s: by_mode[m][s] for s in SCORINGS if s in by_mode[m]}
                   for m in MODES if m in by_mode} for d, by_mode in results.items()}
    table = accuracy_table(results, new.get("mode_labels"))
    merged.update(
        results=results, retrieval=retrieval, datasets=datasets, timing_s=timing,
        modes=[m for m in MODES if any(m in by_mode for by_mode in results.values())],
        scoring=[s for s in SCORINGS if s in {*(new.get("scoring") or []), *(g[2] for g in kept)}],
        table=table, table_markdown=markdown_table(table),
        kept_from_earlier=sorted("/".join(g) for g in kept))
    return merged


def _read_earlier(out_dir: Path) -> tuple[list[Prediction], dict[str, Any]]:
    """The predictions and metrics an earlier evaluation left ([] / {} when none, or when
    they cannot be read: then they are replaced, with a warning)."""
    preds_path, metrics_path = out_dir / "predictions.jsonl", out_dir / "metrics.json"
    if not preds_path.is_file():
        return [], {}
    try:
        earlier = read_predictions(preds_path)
        metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    except (DataError, ValueError, OSError) as err:
        log.warning("the earlier results in %s cannot be read (%s): they are replaced", out_dir, err)
        return [], {}
    return earlier, metrics if isinstance(metrics, dict) else {}


def factuality_reports(out_dir: Path) -> list[Path]:
    """The UMLS-F report files (JSON and HTML) beside the predictions or under factuality/."""
    found = []
    for folder in (out_dir, out_dir / "factuality"):
        for name in REPORT_NAMES:
            for path in (folder / name, (folder / name).with_suffix(".html")):
                if path.is_file():
                    found.append(path)
    return found


def remove_stale_factuality(out_dir: Path) -> None:
    """Remove a UMLS-F report that scored rationales no longer in ``predictions.jsonl``."""
    stale = factuality_reports(out_dir)
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed the UMLS-F report of the earlier generated rationales (%s): it no "
                 "longer matches the predictions; recompute it with `jmlr factuality "
                 "--predictions %s`", ", ".join(p.name for p in stale), out_dir / "predictions.jsonl")


def merge_with_earlier(out_dir: Path, predictions: list[Prediction], metrics: dict[str, Any]
                       ) -> tuple[list[Prediction], dict[str, Any]]:
    """This evaluation's predictions and metrics merged with what ``out_dir`` already holds
    for other groups; removes a UMLS-F report that the new predictions make stale."""
    earlier, earlier_metrics = _read_earlier(out_dir)
    replaced = {group_of(p) for p in predictions}
    kept = {group_of(p) for p in earlier} - replaced
    generated_anew = any(p.generated is not None for p in predictions) or any(
        p.generated is not None for p in earlier if group_of(p) in replaced)
    if generated_anew or (factuality_reports(out_dir) and not earlier):
        remove_stale_factuality(out_dir)
    elif "factuality" in earlier_metrics:
        metrics = {**metrics, "factuality": earlier_metrics["factuality"]}
    if not kept:
        return predictions, metrics
    log.info("keeping the earlier results of %s in %s", ", ".join(sorted("/".join(g) for g in kept)),
             out_dir)
    return merge_predictions(earlier, predictions), merge_metrics(earlier_metrics, metrics, kept)
