"""``jmlr utilities``: the base teacher's utilities of every question's mined candidates, once.

With ``jmlr.utility_model=base`` the teacher is the generator before training, so the utility
of a passage for a question is fixed before a run starts: it can be computed once, for many
more questions than a run's steps draw, and shared by every run (and seed) over the same
data and generator. A joint run given the file (``jmlr.teacher_utilities``) starts its replay
cache (:mod:`jmlr.training.replay`) from it, so the retriever learns from all those questions
while the generator trains on its own batches.

Why: 40 joint steps show the retriever 80 questions, with k = 4 utilities each; replaying
those 80 was not enough to lift the retriever on every seed of the efficacy benchmark, and with
gold labels the retriever needed about 100 distinct questions to move at all
(benchmarks/RESULTS.md, §5). On a GPU the file costs seconds; on a 2-core CPU about 0.5 s per
(question, passage) utility for a 135M generator.

The file is JSON lines, one question per line::

    {"question_id": "q1", "passage_ids": ["p3", "p9", ...], "utilities": [0.41, 2.3, ...],
     "baseline": 1.94}

(utilities lower is better; ``baseline`` is the utility with no passage), and beside it
``<file>.meta.json`` with the settings the utilities depend on, the corpus fingerprint, and
``finished``. An interrupted run continues where it stopped; the numbers do not depend on the
seed (no sampling, dropout off).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from jmlr.errors import ConfigError, DataError
from jmlr.io import earlier_meta, read_jsonl, write_json

if TYPE_CHECKING:
    from jmlr.config import Config

log = logging.getLogger(__name__)

FORMAT = "jmlr-teacher-utilities/1"
QUESTIONS_PER_BATCH = 4         # each question brings top + 1 sequences to the forward


def default_path(cfg: Config, split: str = "train") -> Path:
    """Where ``jmlr utilities`` writes a split's file: beside its mined candidates."""
    return cfg.candidates_dir / f"{split}.utilities.jsonl"


def teacher_path(cfg: Config) -> str:
    """The file a joint run starts its replay from: ``jmlr.teacher_utilities``, or with
    ``jmlr.teacher_questions`` > 0 the default beside the mined candidates; '' for none."""
    if cfg.jmlr.teacher_utilities:
        return cfg.jmlr.teacher_utilities
    return str(default_path(cfg)) if cfg.jmlr.teacher_questions > 0 else ""


def ensure_teacher_file(cfg: Config) -> dict[str, Any] | None:
    """Before a joint run with ``jmlr.teacher_questions`` = N > 0 and a retriever that trains:
    write (or complete) the teacher file for the first N training questions; the summary of
    ``run_teacher_utilities``, or None when there is nothing to write. The default file is
    jmlr's own and is replaced when it was computed otherwise; a file the config names is not
    (ConfigError instead). Under several processes it must exist already: computing it once
    per process would repeat the work N-fold."""
    n = cfg.jmlr.teacher_questions
    if n <= 0 or cfg.train.step != "joint" or not cfg.jmlr.train_retriever:
        return None
    return write_teacher_file(cfg, n)


def write_teacher_file(cfg: Config, n: int) -> dict[str, Any] | None:
    """Write (or complete) the teacher file (:func:`teacher_path`) for the first ``n`` training
    questions, as :func:`ensure_teacher_file` says; for any step that reads the file."""
    import os

    path = Path(teacher_path(cfg))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        meta = json.loads(meta_path(path).read_text()) if meta_path(path).is_file() else {}
        if meta.get("finished") and meta.get("questions", 0) >= n:
            return None
        raise ConfigError(f"jmlr.teacher_questions={n}: write {path} before a multi-process "
                          f"run, in one process: jmlr utilities -c CONFIG --limit {n} --out {path}")
    try:
        return run_teacher_utilities(cfg, "train", limit=n, out=path)
    except ConfigError:             # computed otherwise: a file named by the user is kept
        if cfg.jmlr.teacher_utilities or not meta_path(path).is_file():
            raise                   # not the default file, or no earlier file to differ from
        log.info("%s was computed otherwise: writing it again", path)
        return run_teacher_utilities(cfg, "train", limit=n, out=path, overwrite=True)


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".meta.json")


def teacher_settings(cfg: Config) -> dict[str, Any]:
    """What a utility depends on besides the question and passage texts.

    >>> from jmlr.config import Config
    >>> sorted(teacher_settings(Config()))
    ['generator.max_length', 'generator.model', 'jmlr.target', 'jmlr.utility', 'jmlr.utility_span']
    """
    return {"generator.model": cfg.generator.model, "generator.max_length": cfg.generator.max_length,
            "jmlr.utility": cfg.jmlr.utility, "jmlr.utility_span": cfg.jmlr.utility_span,
            "jmlr.target": cfg.jmlr.target}


def settings_mismatch(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """The first setting on which a file's meta and the config differ, in words ('' if none).

    >>> settings_mismatch({"jmlr.utility": "answer_loss"}, {"jmlr.utility": "option_contrast"})
    "jmlr.utility is 'answer_loss' in the file, 'option_contrast' in the config"
    >>> settings_mismatch({"a": 1}, {"a": 1})
    ''
    """
    for key, value in wanted.items():
        if found.get(key) != value:
            return f"{key} is {found.get(key)!r} in the file, {value!r} in the config"
    return ""


# --------------------------------------------------------------------------- reading


def read_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(line, row)`` per question, each row's fields checked (DataError naming line and field)."""
    for lineno, row in read_jsonl(path):
        for key, kind in (("question_id", str), ("passage_ids", list), ("utilities", list)):
            if not isinstance(row.get(key), kind):
                raise DataError(path, lineno, key, f"expected a {kind.__name__}")
        if len(row["passage_ids"]) != len(row["utilities"]):
            raise DataError(path, lineno, "utilities", f"{len(row['utilities'])} values for "
                            f"{len(row['passage_ids'])} passage ids")
        numbers = [*row["utilities"], row.get("baseline")]
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
            raise DataError(path, lineno, "utilities", "expected finite numbers in "
                            "'utilities' and 'baseline'")
        yield lineno, row


def load_teacher_rows(path: str | Path, cfg: Config, question_ids: Iterable[str],
                      passages: Mapping[str, Any], corpus_fingerprint: str
                      ) -> list[dict[str, Any]]:
    """The rows of a finished file written for this config's teacher and corpus, for these
    questions and passages; ConfigError or DataError (one line) otherwise. With
    ``jmlr.teacher_questions`` = N > 0, only the rows of the first N of ``question_ids``: a file
    written earlier for more questions must not give a run more than its config says."""
    path = Path(path)
    meta_file = meta_path(path)
    if not path.is_file() or not meta_file.is_file():
        raise ConfigError(f"jmlr.teacher_utilities: no utilities file at {path} (or its "
                          f"{meta_file.name}): write it with `jmlr utilities` and this config")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{meta_file}: not a teacher utilities file ({FORMAT})")
    if not meta.get("finished"):
        raise ConfigError(f"{path} is unfinished: run `jmlr utilities` again to complete it")
    mismatch = settings_mismatch(meta.get("settings", {}), teacher_settings(cfg))
    if mismatch:
        raise ConfigError(f"{path} was computed for another teacher: {mismatch}")
    if meta.get("corpus_fingerprint") != corpus_fingerprint:
        raise ConfigError(f"{path} was computed over another corpus than data.corpus: "
                          "run `jmlr utilities` again")
    ordered, first = list(question_ids), cfg.jmlr.teacher_questions
    known, kept = set(ordered), set(ordered[:first] if first > 0 else ordered)
    rows = []
    for lineno, row in read_rows(path):
        if row["question_id"] not in known:
            raise DataError(path, lineno, "question_id", f"{row['question_id']!r} is not a "
                            "question of the training split")
        missing = [pid for pid in row["passage_ids"] if pid not in passages]
        if missing:
            raise DataError(path, lineno, "passage_ids", f"{missing[0]!r} is not in the corpus")
        if row["question_id"] in kept:
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- writing


def _resume(path: Path, meta: dict[str, Any], overwrite: bool) -> set[str]:
    """Question ids already in ``path`` when its settings match ``meta``; an empty start when
    there is no file; ConfigError when a file for other settings is there (unless overwrite)."""
    old = earlier_meta(path, meta_path(path), overwrite)
    if old is None:
        return set()
    same = {k: old.get(k) for k in ("format", "settings", "corpus_fingerprint", "top")}
    wanted = {k: meta[k] for k in same}
    if same != wanted:
        what = settings_mismatch(old.get("settings", {}), meta["settings"]) or next(
            f"{k} differs" for k in same if same[k] != wanted[k])
        raise ConfigError(f"{path} holds utilities computed otherwise ({what}): pass "
                          "--overwrite to replace it, or --out to write elsewhere")
    if not path.is_file():
        return set()
    return {row["question_id"] for _, row in read_rows(path)} if path.stat().st_size else set()


def run_teacher_utilities(cfg: Config, split: str = "train", top: int = 0, limit: int = 0,
                          out: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the base generator's utilities of the first ``top`` mined candidates (0:
    ``jmlr.teacher_top``, else the sampling pool ``jmlr.sample_pool``, else all
    ``candidates.top_n``) of the first ``limit`` questions of ``split`` (0: all), and the
    no-passage baseline of each. Returns a summary."""
    from tqdm.auto import tqdm

    from jmlr.data import load_corpus_from_config, load_split
    from jmlr.data.corpus import corpus_fingerprint
    from jmlr.device import resolve_device
    from jmlr.generation.model import load_generator
    from jmlr.training import components as parts
    from jmlr.training.utilities import utility_fn

    if cfg.candidates.source != "mined":
        raise ConfigError("jmlr utilities needs mined candidates (candidates.source=mined)")
    top = top or cfg.jmlr.teacher_top or cfg.jmlr.sample_pool or cfg.candidates.top_n
    path = Path(out) if out else default_path(cfg, split)
    parts.mined_file(cfg, split)
    questions = load_split(cfg.data, split)
    chosen = questions[:limit] if limit > 0 else questions
    corpus = load_corpus_from_config(cfg.data)
    fingerprint = corpus_fingerprint(corpus)
    candidates = parts.mined_candidates(cfg, split, fingerprint)
    parts.check_candidates(candidates, chosen, {p.id: p for p in corpus}, split)
    texts = {p.id: p.full_text for p in corpus}
    meta = {"format": FORMAT, "settings": teacher_settings(cfg), "corpus_fingerprint": fingerprint,
            "top": top, "split": split, "questions": len(chosen), "finished": False}
    done = _resume(path, meta, overwrite)
    todo = [q for q in chosen if q.id not in done]
    if not todo:
        log.info("%s already holds the utilities of these %d questions", path, len(chosen))
        # The file may hold more (written earlier with a larger limit): say how many it holds.
        write_json(meta_path(path), {**meta, "questions": max(len(chosen), len(done)),
                                     "finished": True})
        return {"path": str(path), "questions": len(chosen), "computed": 0, "kept": len(done)}

    device = resolve_device(cfg.run.device)
    model, tokenizer = load_generator(cfg.generator, cfg.run.cache_dir, device=device,
                                      for_training=False)
    utilities = utility_fn(cfg, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(meta_path(path), meta)
    started, computed = time.perf_counter(), 0
    with path.open("a", encoding="utf-8") as handle, torch.no_grad(), \
            tqdm(total=len(todo), desc=f"teacher utilities ({split})", unit="q") as bar:
        for start in range(0, len(todo), QUESTIONS_PER_BATCH):
            batch = todo[start:start + QUESTIONS_PER_BATCH]
            ids = [candidates[q.id].passage_ids[:top] for q in batch]
            qs = [q for q, row in zip(batch, ids, strict=True) for _ in row] + batch
            passages = [[texts[pid]] for row in ids for pid in row] + [[] for _ in batch]
            losses = utilities(model, qs, passages).losses.tolist()
            baselines, at = losses[len(losses) - len(batch):], 0
            for q, row, baseline in zip(batch, ids, baselines, strict=True):
                handle.write(json.dumps({"question_id": q.id, "passage_ids": row,
                                         "utilities": [round(v, 6) for v in losses[at:at + len(row)]],
                                         "baseline": round(baseline, 6)}) + "\n")
                at += len(row)
            handle.flush()      # a stopped run keeps every finished batch
            computed += len(passages)
            bar.update(len(batch))
    seconds = time.perf_counter() - started
    meta.update(finished=True, seconds=round(seconds, 1),
                utilities_per_s=round(computed / max(seconds, 1e-9), 3), device=device)
    write_json(meta_path(path), meta)
    log.info("%d utilities of %d questions in %.0f s (%.2f per s) -> %s", computed, len(todo),
             seconds, computed / max(seconds, 1e-9), path)
    return {"path": str(path), "questions": len(chosen), "computed": len(todo), "kept": len(done),
            "utilities": computed, "seconds": round(seconds, 1),
            "utilities_per_s": meta["utilities_per_s"]}
