"""PLAID index build and search, on colbert-ai's own indexer and searcher.

An index folder is colbert-ai's PLAID index plus two files of ours:

- ``jmlr_index.json``: the manifest (checkpoint path and content hash, corpus path,
  fingerprint and size, settings, build time, every index file's size and, for the small
  ones, content hash: checked before each search). Written last: a folder without it is not
  a finished index.
- ``passage_ids.json``: our passage id for each of colbert's integer pids, in order;

and the collection in colbert-ai's own format (``collection.tsv``: ``pid<TAB>text``), with
colbert-ai's ``metadata.json`` naming the index's final location, its checkpoint and that
collection, so that colbert-ai's ``Searcher(index=...)`` opens the folder with no other
argument (on transformers 5, after the fix of ``colbert.py: install_compat``).

Builds run in this process (colbert-ai's launcher would spawn a child per rank) into a
hidden sibling folder that is renamed into place when complete, with colbert-ai's indexer as
``indexer.py`` adapts it (torch k-means instead of faiss, the sample's vectors reused).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jmlr.data.schema import Passage
from jmlr.errors import ConfigError
from jmlr.io import file_sha256, write_json
from jmlr.retrieval import colbert as cb
from jmlr.retrieval import index_ranks
from jmlr.retrieval.folders import folder_sha256
from jmlr.retrieval.indexer import TorchKMeansIndexer
from jmlr.training.distributed import ProcessRanks

log = logging.getLogger(__name__)

MANIFEST = "jmlr_index.json"
PASSAGE_IDS = "passage_ids.json"
COLLECTION = "collection.tsv"
MANIFEST_FORMAT = "jmlr-plaid-index/1"
HASHED_UP_TO = 16 << 20     # index files up to this size also get a content hash (cheap to check)
# What colbert-ai's searcher reads besides the per-chunk files (for manifests without a record).
SEARCHED_FILES = ("metadata.json", "plan.json", "centroids.pt", "avg_residual.pt", "buckets.pt",
                  "ivf.pid.pt", PASSAGE_IDS)


@dataclass
class IndexSettings:
    doc_maxlen: int
    query_maxlen: int
    nbits: int
    kmeans_niters: int
    batch_size: int
    seed: int


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for colbert's sampling; restore the caller's streams."""
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count()))
    try:
        with torch.random.fork_rng(devices=devices):
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _is_index(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or (folder / "metadata.json").is_file()


def check_can_build(index_dir: Path, overwrite: bool) -> None:
    """ConfigError unless ``index_dir`` is free, or an index that ``overwrite`` allows replacing."""
    if not index_dir.exists() or (index_dir.is_dir() and not any(index_dir.iterdir())):
        return
    if not index_dir.is_dir() or not _is_index(index_dir):
        raise ConfigError(f"{index_dir} exists and is not an index; refusing to replace it "
                          "(set retriever.index_dir to another folder)")
    if not overwrite:
        raise ConfigError(f"an index already exists at {index_dir}; pass --overwrite to rebuild it")


def build_index(checkpoint: Path, passages: Sequence[Passage], index_dir: Path,
                settings: IndexSettings, corpus_path: str, fingerprint: str,
                overwrite: bool = False, ranks: ProcessRanks | None = None) -> dict[str, Any]:
    """Build the PLAID index of ``passages`` (their ``full_text``) into ``index_dir``.

    Returns the manifest. The folder appears only when the build is complete. ``ranks``: the
    processes that build it together (``ProcessRanks()`` under ``accelerate launch
    --num_processes N -m jmlr index``), each encoding its share of the passages; every one of
    them calls this and gets the manifest. None: this process alone.
    """
    if not passages:
        raise ConfigError("the corpus is empty: nothing to index")
    index_dir = index_dir.expanduser().resolve()
    check_can_build(index_dir, overwrite)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint.resolve()
    dim = cb.checkpoint_dim(checkpoint)
    ranks = ranks or ProcessRanks.alone()
    rank, world = ranks.rank, ranks.world
    started = time.perf_counter()
    manifest: dict[str, Any] = {}
    with index_ranks.shared_building_folder(ranks, index_dir) as tmp:
        config = cb.ColBERTConfig.from_existing(
            cb.ColBERTConfig.load_from_checkpoint(str(checkpoint)),
            cb.colbert_config_for(
                checkpoint, doc_maxlen=settings.doc_maxlen, query_maxlen=settings.query_maxlen,
                nbits=settings.nbits, kmeans_niters=settings.kmeans_niters,
                index_bsize=settings.batch_size, index_path=str(tmp), index_name=index_dir.name,
                nranks=world, rank=rank, resume=False, avoid_fork_if_possible=True))
        texts = [p.full_text for p in passages]
        log.log(logging.INFO if rank == 0 else logging.DEBUG,
                "indexing %d passages with %s (dim %d, doc_maxlen %d, nbits %d) into %s in %d "
                "process(es)", len(texts), checkpoint, dim, settings.doc_maxlen, settings.nbits,
                index_dir, world)
        with _seeded(settings.seed), cb.quiet_colbert(), \
                cb.Run().context(config, inherit_config=False):
            indexer = TorchKMeansIndexer(config, cb.Collection(data=texts), verbose=1)
            indexer.seed = settings.seed
            indexer.run(shared_lists=[])
        seconds = time.perf_counter() - started
        encoded = int(ranks.total(getattr(indexer.encoder, "encoded", 0)))
        if rank == 0:
            manifest = _manifest(tmp, checkpoint, dim, corpus_path, fingerprint, settings, texts,
                                 seconds, encoded, indexer, config, world)
            write_json(tmp / PASSAGE_IDS, [p.id for p in passages])
            write_collection(tmp / COLLECTION, texts)
            point_metadata_at(tmp, index_dir, checkpoint)
            manifest["files"] = file_record(tmp)    # what check_files compares before a search
            write_json(tmp / MANIFEST, manifest)  # last: marks the build complete
    manifest = ranks.broadcast(manifest)
    if rank == 0:
        log.info("index built in %.1f s (%.1f passages/s): %s", manifest["build_seconds"],
                 manifest["passages_per_second"], index_dir)
    return manifest


def _manifest(tmp: Path, checkpoint: Path, dim: int, corpus_path: str, fingerprint: str,
              settings: IndexSettings, texts: Sequence[str], seconds: float, encoded: int,
              indexer: TorchKMeansIndexer, config: Any, world: int) -> dict[str, Any]:
    colbert_meta = json.loads((tmp / "metadata.json").read_text(encoding="utf-8"))
    return {
        "format": MANIFEST_FORMAT,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_id": f"{fingerprint[:12]}-{int(time.time() * 1000):x}",
        "checkpoint": {"path": str(checkpoint), "sha256": folder_sha256(checkpoint), "dim": dim},
        "corpus": {"path": corpus_path, "fingerprint": fingerprint, "n_passages": len(texts)},
        "settings": asdict(settings),
        "num_partitions": colbert_meta.get("num_partitions"),
        "num_embeddings": colbert_meta.get("num_embeddings"),
        "build_seconds": round(seconds, 3),
        # the k-means sample's vectors are reused, so most passages are encoded once
        "passages_encoded": encoded,
        # the main process's phases (the others wait for it at the barriers between them)
        "phase_seconds": {k: round(v, 3) for k, v in indexer.phase_seconds.items()},
        "passages_per_second": round(len(texts) / max(seconds, 1e-9), 2),
        "processes": world,
        "device": "cuda" if config.total_visible_gpus > 0 else "cpu",
        "colbert_ai": metadata.version("colbert-ai"),
    }



def tsv_text(text: str) -> str:
    r"""A passage on one tsv field: tabs and line breaks become spaces.

    >>> tsv_text("a\tb\r\nc")
    'a b  c'
    """
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_collection(path: Path, texts: Sequence[str]) -> None:
    """colbert-ai's collection file: ``pid<TAB>text`` per line, pids 0, 1, ... in order."""
    with path.open("w", encoding="utf-8") as handle:
        for pid, text in enumerate(texts):
            handle.write(f"{pid}\t{tsv_text(text)}\n")


def point_metadata_at(folder: Path, index_dir: Path, checkpoint: Path) -> None:
    """colbert-ai's ``metadata.json`` names where the index will live (it was built in a
    temporary folder), its checkpoint and its collection file: what ``Searcher(index=...)``
    reads when given nothing else."""
    path = folder / "metadata.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["config"].update(index_path=str(index_dir), index_name=index_dir.name,
                          checkpoint=str(checkpoint), collection=str(index_dir / COLLECTION))
    write_json(path, meta)


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """The manifest of a finished index, or ConfigError saying how to build one."""
    path = index_dir / MANIFEST
    if not path.is_file():
        if index_dir.is_dir() and _is_index(index_dir):
            raise ConfigError(f"{index_dir} is not an index built by jmlr (no {MANIFEST}); "
                              "rebuild it with `jmlr index --overwrite`")
        raise ConfigError(f"no index at {index_dir}; build it with `jmlr index -c CONFIG`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(f"{path}: unreadable index manifest ({err})") from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ConfigError(f"{path}: unknown index format {manifest.get('format')!r}")
    return manifest


def check_corpus(manifest: dict[str, Any], passages: Sequence[Passage], fingerprint: str,
                 index_dir: Path) -> None:
    """ConfigError when the configured corpus is not the one the index was built over."""
    built = manifest["corpus"]
    if built["fingerprint"] != fingerprint:
        raise ConfigError(
            f"the index at {index_dir} was built over a different corpus "
            f"({built['n_passages']} passages from {built['path']}; the configured corpus has "
            f"{len(passages)} and another fingerprint); rebuild it with `jmlr index --overwrite`")




def file_record(folder: Path) -> dict[str, dict[str, Any]]:
    """``{name: {"size": bytes, "sha256": hex}}`` of an index's files (the manifest aside);
    only files up to HASHED_UP_TO get a hash: the large residual chunks are checked by size."""
    record: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        size = path.stat().st_size
        record[path.name] = {"size": size, **({"sha256": file_sha256(path)} if size <= HASHED_UP_TO else {})}
    return record


def _expected_files(index_dir: Path) -> dict[str, dict[str, Any]]:
    """The files an index without a file record must have (existence and non-empty only)."""
    try:
        chunks = int(json.loads((index_dir / "metadata.json").read_text(encoding="utf-8"))["num_chunks"])
    except (OSError, ValueError, KeyError, TypeError):
        chunks = 0   # metadata.json itself is reported below
    names = [*SEARCHED_FILES, *(f"{i}.{part}" for i in range(chunks)
                                for part in ("codes.pt", "residuals.pt", "metadata.json")),
             *(f"doclens.{i}.json" for i in range(chunks))]
    return {name: {} for name in names}


def _file_being_read(err: BaseException, folder: Path) -> str | None:
    """The name of the file of ``folder`` that the innermost frame of ``err``'s traceback
    held a path to (torch.load's ``f``, open()'s argument), or None."""
    name = None
    tb = err.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, str | os.PathLike) and len(str(value)) < 4096 \
                    and Path(value).parent == folder:
                name = Path(value).name
        tb = tb.tb_next
    return name


def _damaged(index_dir: Path, what: str) -> ConfigError:
    return ConfigError(f"the index at {index_dir} is damaged ({what}); rebuild it with "
                       "`jmlr index --overwrite`")


def check_files(index_dir: Path, manifest: dict[str, Any]) -> None:
    """ConfigError naming the first index file that is missing, empty, of another size than
    the build wrote, or (small files) of other content; before colbert-ai reads any of them."""
    for name, want in (manifest.get("files") or _expected_files(index_dir)).items():
        path = index_dir / name
        if not path.is_file():
            raise _damaged(index_dir, f"{name} is missing")
        size = path.stat().st_size
        if size == 0 or ("size" in want and size != want["size"]):
            expected = f", the build wrote {want['size']}" if "size" in want else ""
            raise _damaged(index_dir, f"{name} has {size} bytes{expected}")
        if "sha256" in want and file_sha256(path) != want["sha256"]:
            raise _damaged(index_dir, f"{name} changed since the build")


@dataclass
class SearchResult:
    passage_ids: list[str]
    scores: list[float]
    seconds: float          # PLAID search time of this query (encoding excluded)


class PlaidSearcher:
    """An opened index: colbert-ai's Searcher, our passage ids, the manifest.

    ``checkpoint`` overrides the query encoder (default: the one the index was built with,
    checked against its recorded hash); document vectors are always the indexed ones.
    """

    def __init__(self, index_dir: Path, checkpoint: Path | None = None,
                 query_maxlen: int | None = None) -> None:
        self.index_dir = index_dir.expanduser().resolve()
        self.manifest = read_manifest(self.index_dir)
        check_files(self.index_dir, self.manifest)
        try:
            self.passage_ids: list[str] = json.loads(
                (self.index_dir / PASSAGE_IDS).read_text(encoding="utf-8"))
        except ValueError as err:
            raise _damaged(self.index_dir, f"{PASSAGE_IDS} is not readable JSON: {err}") from None
        if len(self.passage_ids) != self.manifest["corpus"]["n_passages"]:
            raise ConfigError(f"{self.index_dir / PASSAGE_IDS} does not match the manifest")
        recorded = self.manifest["checkpoint"]
        if checkpoint is None:
            checkpoint = Path(recorded["path"])
            if not checkpoint.is_dir():
                raise ConfigError(f"the index at {self.index_dir} was built with the checkpoint "
                                  f"{checkpoint}, which no longer exists; rebuild the index")
            if folder_sha256(checkpoint) != recorded["sha256"]:
                raise ConfigError(f"the checkpoint {checkpoint} changed after the index at "
                                  f"{self.index_dir} was built; rebuild the index")
        checkpoint = checkpoint.expanduser().resolve()
        cb.check_model_folder(checkpoint, "query encoder checkpoint")
        if not cb.is_colbert_checkpoint(checkpoint):
            raise ConfigError(f"query encoder checkpoint: {checkpoint} is not a ColBERT "
                              f"checkpoint (no {cb.CHECKPOINT_MARKER})")
        if cb.checkpoint_dim(checkpoint) != recorded["dim"]:
            raise ConfigError(f"checkpoint {checkpoint} has dim {cb.checkpoint_dim(checkpoint)}, "
                              f"the index at {self.index_dir} has dim {recorded['dim']}")
        self.checkpoint = checkpoint
        query_maxlen = query_maxlen or self.manifest["settings"]["query_maxlen"]
        self.query_maxlen, self._warned_lengths = query_maxlen, set()
        config = cb.colbert_config_for(checkpoint, query_maxlen=query_maxlen)
        try:
            with cb.quiet_colbert():
                self.searcher = cb.Searcher(index=str(self.index_dir), checkpoint=str(checkpoint),
                                            collection=list(self.passage_ids), config=config,
                                            verbose=0)
        except (EOFError, pickle.UnpicklingError, AssertionError, OSError, RuntimeError) as err:
            # what check_files cannot see (an index without a file record): an error raised
            # while an index file was being read; any other error (a build, a model) passes on
            name = _file_being_read(err, self.index_dir)
            if name is None:
                raise
            first = str(err).split(". ")[0]   # torch's messages run on for sentences
            raise _damaged(self.index_dir, f"{name} cannot be read: {type(err).__name__}: "
                           f"{first}") from None

    def encode(self, queries: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[B, query_maxlen, dim] query vectors from the searcher's checkpoint (colbert's path)."""
        cb.warn_query_overflow(self.searcher.checkpoint.query_tokenizer.tok, queries,
                               self.query_maxlen, self._warned_lengths)
        with cb.quiet_colbert():
            parts = [self.searcher.encode(list(queries[i:i + batch_size]))
                     for i in range(0, len(queries), batch_size)]
        return torch.cat(parts)

    def search(self, Q: torch.Tensor, k: int) -> list[SearchResult]:
        """Top-``k`` passages for each query vector set in Q [B, Lq, dim], best first."""
        results = []
        with cb.quiet_colbert():
            for row in range(Q.size(0)):
                started = time.perf_counter()
                pids, _, scores = self.searcher.dense_search(Q[row:row + 1], k=k)
                results.append(SearchResult([self.passage_ids[p] for p in pids],
                                            [float(s) for s in scores],
                                            time.perf_counter() - started))
        return results
