"""``jmlr export --run RUN --merged OUT``: a trained run as folders that serve without jmlr.

OUT holds

- ``generator/``: the generator with its adapters and trained embeddings/norms merged in, a
  plain transformers folder (``AutoModelForCausalLM.from_pretrained``, vLLM, TGI, llama.cpp's
  converter). Copied from ``RUN/final/generator/merged`` when training wrote it
  (``train.merge_on_export``), merged here otherwise (or copied after a full fine-tune);
- ``retriever/``: the trained ColBERT in colbert-ai's checkpoint format;
- ``retriever-pylate/``: the same weights in PyLate's layout (``retrieval/pylate_export.py``),
  which loads with plain transformers;
- ``README.md`` (how to serve them) and ``jmlr_export.json`` (what was exported from where).

The folder is built aside and moved into place; an existing OUT is replaced only when it is
an earlier export and ``--overwrite`` is given.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jmlr.config import Config
from jmlr.errors import ConfigError
from jmlr.io import building_folder, write_json

RECORD = "jmlr_export.json"
GENERATOR, RETRIEVER, PYLATE = "generator", "retriever", "retriever-pylate"


def check_out(out: Path, overwrite: bool) -> None:
    """ConfigError unless ``out`` is free, or an earlier export that ``overwrite`` replaces."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or not (out / RECORD).is_file():
        raise ConfigError(f"--merged: {out} exists and is not an earlier export; refusing to "
                          "replace it (choose another folder)")
    if not overwrite:
        raise ConfigError(f"--merged: an export already exists at {out}; pass --overwrite "
                          "to replace it")


def _final(run_dir: Path) -> Path:
    final = run_dir / "final"
    for part in (GENERATOR, RETRIEVER):
        if not (final / part).is_dir():
            raise ConfigError(f"--run: {final / part} is missing (is {run_dir} a finished run "
                              "of jmlr train?)")
    return final


def _write_generator(cfg: Config, saved: Path, target: Path) -> str:
    """The merged generator into ``target``; says how it was obtained."""
    if (saved / "merged" / "config.json").is_file():
        shutil.copytree(saved / "merged", target)
        return "copied from the run (train.merge_on_export)"
    if (saved / "model" / "config.json").is_file():
        shutil.copytree(saved / "model", target)
        return "copied from the run (full fine-tune)"
    from jmlr.evaluation.passages import trained_generator_config
    from jmlr.generation.model import load_trained_generator

    run_dir = saved.parent.parent                       # RUN/final/generator
    model, tokenizer = load_trained_generator(trained_generator_config(cfg, run_dir),
                                              cfg.run.cache_dir, saved, device="cpu",
                                              for_training=False)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return "merged at export"


def _base_record(saved: Path) -> dict[str, Any] | None:
    from jmlr.generation.peft_export import BASE_RECORD

    for path in (saved / "adapter" / BASE_RECORD, saved / "model" / BASE_RECORD):
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def run_export(cfg: Config, run_dir: str | Path, out: str | Path,
               overwrite: bool = False) -> dict[str, Any]:
    """Write the export of ``run_dir`` into ``out``; returns its record."""
    from jmlr.retrieval.pylate_export import export_pylate

    run_dir, out = Path(run_dir), Path(out).expanduser().resolve()
    final = _final(run_dir)
    from jmlr.evaluation.passages import check_trained_run

    check_trained_run(cfg, run_dir)                     # and the runs its generator started from
    check_out(out, overwrite)
    record: dict[str, Any] = {
        "run": str(run_dir.resolve()), "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "base_model": _base_record(final / GENERATOR),
        "retriever": {"query_maxlen": cfg.retriever.query_maxlen,
                      "doc_maxlen": cfg.retriever.doc_maxlen, "index": str(cfg.index_dir)},
        "folders": {GENERATOR: "merged transformers model", RETRIEVER: "colbert-ai checkpoint",
                    PYLATE: "PyLate / sentence-transformers MultiVectorEncoder"},
    }
    with building_folder(out) as tmp:
        record["generator"] = _write_generator(cfg, final / GENERATOR, tmp / GENERATOR)
        shutil.copytree(final / RETRIEVER, tmp / RETRIEVER)
        export_pylate(final / RETRIEVER, tmp / PYLATE, cfg.retriever.query_maxlen,
                      cfg.retriever.doc_maxlen)
        (tmp / "README.md").write_text(readme(record), encoding="utf-8")
        write_json(tmp / RECORD, record)
    return {"out": str(out), **record}


def readme(record: dict[str, Any]) -> str:
    index = record["retriever"]["index"]
    return f"""# Exported from {record['run']}

- `generator/`: the trained generator, adapters merged ({record['generator']}). A plain
  transformers model: `AutoModelForCausalLM.from_pretrained("generator")`, or serve it with
  `vllm serve ./generator` or text-generation-inference.
- `retriever-pylate/`: the trained ColBERT in PyLate's layout; loads with plain transformers:
  `pylate.models.ColBERT("retriever-pylate")` or, with sentence-transformers >= 6,
  `MultiVectorEncoder("retriever-pylate")` (`encode_query` / `encode_document`, MaxSim).
- `retriever/`: the same weights as a colbert-ai checkpoint. colbert-ai 0.2.22 cannot build
  its model class on transformers 5 without a one-line fix (see jmlr's README).

The PLAID index the run searched is at `{index}`: it holds its collection
(`collection.tsv`, `passage_ids.json`), so colbert-ai's `Searcher(index=...)` opens it on
its own. Its document vectors are those of the retriever it was built with; as
`jmlr evaluate`'s trained mode does, search it for the top N and re-score those with the
trained retriever, or rebuild it with `jmlr index -c CONFIG retriever.checkpoint=retriever`.
Prompt the generator as it was trained (jmlr's `generation/prompts.py`): `Context:` and
the passages one per line, best last; a blank line; `Question: ...`; one line per option
(`A. ...`); `Answer:`. It continues with ` B: <option text>`.
"""
