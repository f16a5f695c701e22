"""An MTEB retrieval task by name, as a :class:`~jmlr.data.beir.BeirTask` (``jmlr eval-retriever
--mteb NAME``). The one module that imports ``mteb`` (``pip install 'jmlr[mteb]'``;
``scripts/setup.sh`` installs it).

mteb names the task's dataset (a Hugging Face repository at a pinned revision) and loads it
with its own loader, which reads the local Hugging Face cache when the machine is offline.
``--mteb-data DIR`` loads the same layout from a local copy of that repository instead (a
mirror, or a download made elsewhere). Offline with neither, the command stops at once with
one line saying the task's data is not on this machine: nothing is downloaded at run time
unless the user's environment allows it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jmlr.data.beir import BeirTask
from jmlr.errors import ConfigError

log = logging.getLogger(__name__)


def _mteb() -> Any:
    try:
        import mteb
    except ImportError:
        raise ConfigError("--mteb needs the mteb package: pip install 'jmlr[mteb]' "
                          "(scripts/setup.sh installs it)") from None
    return mteb


def get_retrieval_task(name: str) -> Any:
    """mteb's task object for ``name`` (ConfigError for an unknown name or a task that is
    not a retrieval task)."""
    mteb = _mteb()
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    try:
        task = mteb.get_task(name)
    except (KeyError, ValueError) as err:
        raise ConfigError(f"--mteb {name}: not an MTEB task ({str(err).splitlines()[0][:200]})"
                          ) from None
    if not isinstance(task, AbsTaskRetrieval):
        raise ConfigError(f"--mteb {name}: a {task.metadata.type} task, not a retrieval task")
    return task


def _passage_text(row: dict[str, Any]) -> str:
    """jmlr's passage text: ``title | text`` as in the BEIR reader (title left out when empty).

    >>> _passage_text({"id": "d1", "title": "Aspirin", "text": "An NSAID."})
    'Aspirin | An NSAID.'
    >>> _passage_text({"id": "d2", "text": "No title."})
    'No title.'
    """
    title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
    return f"{title} | {text}" if title else text


def task_split(split_data: dict[str, Any], where: str) -> BeirTask:
    """A loaded MTEB split (``corpus`` and ``queries`` datasets, ``relevant_docs``) as a
    BeirTask: only the judged queries, relevance as integers, judgements of passages outside
    the corpus dropped (with a warning)."""
    corpus = {str(r["id"]): _passage_text(r) for r in split_data["corpus"]}
    judged: dict[str, dict[str, int]] = {}
    missing = 0
    for qid, docs in split_data["relevant_docs"].items():
        for doc, score in docs.items():
            if str(doc) not in corpus:
                missing += 1
                continue
            judged.setdefault(str(qid), {})[str(doc)] = int(score)
    if missing:
        log.warning("%s: %d judgements name passages outside the corpus (dropped)", where, missing)
    queries = {str(r["id"]): str(r["text"]) for r in split_data["queries"]
               if str(r["id"]) in judged}
    qrels = {q: j for q, j in judged.items() if q in queries}
    if not queries:
        raise ConfigError(f"{where}: no query with a judgement of a corpus passage")
    return BeirTask(corpus, queries, qrels)


def load_mteb_task(name: str, split: str = "test", data: str | Path | None = None) -> BeirTask:
    """Load MTEB task ``name``'s ``split`` (from ``data``, a local copy of its dataset
    repository, when given). ConfigError in one line when the data cannot be had."""
    task = get_retrieval_task(name)
    if split not in task.metadata.eval_splits:
        raise ConfigError(f"--mteb {name}: no split {split!r} (its splits: "
                          f"{', '.join(task.metadata.eval_splits)})")
    if task.metadata.is_multilingual:
        raise ConfigError(f"--mteb {name}: a multilingual task (subsets "
                          f"{', '.join(task.hf_subsets[:5])}...): not supported here")
    # the metadata is shared by every instance of the task's class: change a copy
    task.metadata = task.metadata.model_copy(deep=True)
    source = str(task.metadata.dataset["path"])
    if data is not None:
        folder = Path(data).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"--mteb-data {folder}: not a folder (a local copy of the "
                              f"Hugging Face dataset {source})")
        task.metadata.dataset = {**task.metadata.dataset, "path": str(folder), "revision": None}
        source = str(folder)
    task.metadata.eval_splits = [split]            # load only what is measured
    try:
        task.load_data()
    except Exception as err:  # noqa: BLE001  (datasets raises many kinds when data is absent)
        if _offline_miss(err):
            raise ConfigError(
                f"--mteb {name}: its data ({source}) is not on this machine and cannot be "
                "downloaded here (offline); fetch it once where the network is reachable (the "
                "Hugging Face cache is read offline) or pass a local copy with --mteb-data DIR"
            ) from None
        raise ConfigError(f"--mteb {name}: loading {source} failed: "
                          f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
    return task_split(task.dataset["default"][split], f"MTEB {name} ({source}) split {split}")


def _offline_miss(err: BaseException) -> bool:
    """Whether a loading error means "not cached, and the hub cannot be reached"."""
    text = f"{type(err).__name__}: {err}".lower()
    return any(s in text for s in ("offline", "connection", "couldn't reach", "could not reach",
                                   "not found on the hub", "doesn't exist on the hub",
                                   "cannot find the requested files", "max retries",
                                   "name resolution", "localentrynotfound", "couldn't find"))
