"""What each evaluation mode reads and answers with: candidates, re-ranking, models.

The candidate pool of a question is searched once (or read from ``jmlr mine``'s cache) and
shared by the ``frozen`` and ``trained`` modes, so the two differ only in the retriever that
orders the pool and in the generator that reads the top passages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from jmlr.config import Config
from jmlr.data.schema import DEFAULT_QUERY_TEMPLATE, MCQ, Candidates
from jmlr.errors import ConfigError, UserError
from jmlr.io import saved_section

log = logging.getLogger(__name__)

FINAL_GENERATOR = Path("final") / "generator"
FINAL_RETRIEVER = Path("final") / "retriever"


def check_run_dir(run_dir: Path) -> None:
    """The run folder holds what ``jmlr train`` exports (ConfigError naming what is missing)."""
    for part in (FINAL_GENERATOR, FINAL_RETRIEVER):
        if not (run_dir / part).is_dir():
            raise ConfigError(f"{run_dir / part} does not exist: --run must be a folder written "
                              "by a finished `jmlr train` (or leave out mode 'trained')")


def trained_base_model(run_dir: Path) -> str | None:
    """``generator.model`` as the run's saved config names it (None when unknown)."""
    model = saved_section(run_dir, "generator").get("model")
    return str(model) if model else None


def trained_generator_config(cfg: Config, run_dir: Path) -> Any:
    """``cfg.generator`` with the run's own ``generator.train_from`` (what its adapter was
    trained on top of), whichever config the run is evaluated with."""
    import dataclasses

    from jmlr.generation.start import saved_train_from

    recorded = saved_train_from(run_dir)
    if recorded is None:
        return cfg.generator
    return dataclasses.replace(cfg.generator, train_from=recorded)


def check_trained_run(cfg: Config, run_dir: Path) -> None:
    """The run's exported models, and the chain of runs its generator started from."""
    from jmlr.generation.start import check_generator_start

    check_run_dir(run_dir)
    check_generator_start(trained_generator_config(cfg, run_dir), f"{run_dir}: generator.train_from")


def what_trained(run_dir: Path) -> dict[str, bool]:
    """Which models the run's saved config trained (both, when it cannot tell)."""
    section = saved_section(run_dir, "jmlr")
    return {"trained_generator": bool(section.get("train_generator", True)),
            "trained_retriever": bool(section.get("train_retriever", True))}


def corpus_texts(cfg: Config) -> dict[str, str]:
    """Passage id → the text the generator reads (``Passage.full_text``)."""
    from jmlr.data import load_corpus_from_config

    return {p.id: p.full_text for p in load_corpus_from_config(cfg.data)}


def _covers(cands: dict[str, Candidates], questions: Sequence[MCQ], corpus: dict[str, str],
            top_n: int) -> bool:
    """Cached candidates fit: every question has a list of the configured length (or the
    whole corpus when it is smaller) made only of passages still in the corpus."""
    want = min(top_n, len(corpus))
    for q in questions:
        c = cands.get(q.id)
        if c is None or len(c.passage_ids) < want or any(p not in corpus for p in c.passage_ids):
            return False
    return True


def candidate_pool(cfg: Config, split: str, questions: Sequence[MCQ], corpus: dict[str, str],
                   from_split: bool) -> dict[str, Candidates]:
    """Top-N candidates per question: the mined ones for a configured split when they cover
    every question, else a fresh search of the index with its own checkpoint."""
    from jmlr.retrieval import candidates as cand_mod
    from jmlr.retrieval.backends import backend_for

    top_n = cfg.candidates.top_n
    if from_split:
        try:
            cached = cand_mod.load_candidates(cfg, split, _fingerprint(corpus))
        except (FileNotFoundError, UserError) as err:
            log.info("no mined %s candidates to reuse (%s); searching the index", split, err)
        else:
            if not _same_index(cfg, split):
                log.info("the mined %s candidates come from another index build; searching", split)
            elif _covers(cached, questions, corpus, top_n):
                log.info("reusing the mined %s candidates from %s", split, cfg.candidates_dir)
                return {q.id: _top(cached[q.id], top_n) for q in questions}
            log.info("the mined %s candidates do not cover these questions; searching", split)
    found = backend_for(cfg).search(cfg, list(questions))
    missing = [q.id for q in questions if q.id not in found]
    if missing:
        raise RuntimeError(f"the index search returned nothing for {len(missing)} question(s)")
    return {q.id: _top(found[q.id], top_n) for q in questions}


def _fingerprint(corpus: dict[str, str]) -> str:
    """``corpus_fingerprint`` of the configured corpus from its texts by id: each text is
    already the passage's ``full_text``, which an untitled Passage reproduces exactly."""
    from jmlr.data.corpus import corpus_fingerprint
    from jmlr.data.schema import Passage

    return corpus_fingerprint(Passage(pid, text) for pid, text in corpus.items())


def _same_index(cfg: Config, split: str) -> bool:
    """The mined file's record names the current index build (True when either side has no
    record to compare: candidates given by hand, or no index built)."""
    import json

    meta_path = cfg.candidates_dir / f"{split}.meta.json"
    manifest_path = cfg.index_dir / "jmlr_index.json"  # plaid.MANIFEST, read without colbert
    if not meta_path.is_file() or not manifest_path.is_file():
        return True
    try:
        mined = json.loads(meta_path.read_text(encoding="utf-8")).get("index_build_id")
        built = json.loads(manifest_path.read_text(encoding="utf-8")).get("build_id")
    except (OSError, ValueError):
        return False
    return mined is None or built is None or mined == built


def _top(c: Candidates, n: int) -> Candidates:
    return Candidates(c.question_id, c.passage_ids[:n], c.scores[:n])


def load_scorer(cfg: Config, run_dir: Path, mode: str, device: str) -> Any:
    """The retriever that orders the pool: the run's (``trained``) or the initial one."""
    from jmlr.retrieval.backends import backend_for

    path = run_dir / FINAL_RETRIEVER if mode == "trained" else None
    scorer = backend_for(cfg).load_scorer(cfg, path, device=device)
    scorer.eval()
    scorer.requires_grad_(False)
    return scorer


def rerank(scorer: Any, questions: Sequence[MCQ], pool: dict[str, Candidates],
           corpus: dict[str, str], batch_size: int, desc: str = "rerank",
           template: str = DEFAULT_QUERY_TEMPLATE) -> dict[str, Candidates]:
    """Each question's pool re-scored by ``scorer`` and sorted best first (stable on ties).

    Questions are scored in batches of ``batch_size``; within a batch, pools of one length
    go through one ``score`` call ([b, N] scores).
    """
    import torch

    ranked: dict[str, Candidates] = {}
    batches = [list(questions[i:i + batch_size]) for i in range(0, len(questions), batch_size)]
    for batch in tqdm(batches, desc=desc, leave=False):
        by_length: dict[int, list[MCQ]] = {}
        for q in batch:
            by_length.setdefault(len(pool[q.id].passage_ids), []).append(q)
        for group in by_length.values():
            with torch.no_grad():
                scores = scorer.score([q.query(template) for q in group],
                                      [[corpus[p] for p in pool[q.id].passage_ids] for q in group])
            for q, row in zip(group, scores.float().cpu().tolist(), strict=True):
                ids = pool[q.id].passage_ids
                order = sorted(range(len(ids)), key=lambda i, r=row: -r[i])
                ranked[q.id] = Candidates(q.id, [ids[i] for i in order], [row[i] for i in order])
    return ranked


def retrieval_scores(cfg: Config, ranked: dict[str, Candidates], questions: Sequence[MCQ]
                     ) -> dict[str, Any]:
    """recall@k and MRR of gold passages, at k = 1, r_read and N ({} without gold ids)."""
    from jmlr.retrieval.candidates import retrieval_metrics

    ks = tuple(sorted({1, max(1, cfg.jmlr.r_read), cfg.candidates.top_n}))
    return retrieval_metrics(ranked, list(questions), ks=ks)


def load_eval_generator(cfg: Config, run_dir: Path, which: str, device: str) -> tuple[Any, Any]:
    """The generator that answers: the run's trained one or the base ``generator.model``,
    in eval mode on ``device``."""
    from jmlr.generation.model import load_generator, load_trained_generator

    if which == "trained":
        base = trained_base_model(run_dir)
        if base is not None and base != cfg.generator.model:
            log.warning("the run was trained on generator %s but the config names %s; the "
                        "adapters are applied to the configured one", base, cfg.generator.model)
        return load_trained_generator(trained_generator_config(cfg, run_dir), cfg.run.cache_dir,
                                      run_dir / FINAL_GENERATOR, device=device, for_training=False)
    return load_generator(cfg.generator, cfg.run.cache_dir, device=device, for_training=False)
