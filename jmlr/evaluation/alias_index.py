"""The alias index behind factuality's linker: char-3-gram TF-IDF vectors of a knowledge
base's aliases in an nmslib HNSW index, built once per KB and cached.

scispaCy's own builder needs scipy<1.11 and prunes a small KB empty, so the index is built
here, saved as plain arrays and JSON (nothing pickled) under
``run.cache_dir/kb/<sha256 of KB content and index recipe>/``, and handed to scispaCy's
candidate generator by :mod:`jmlr.evaluation.factuality`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import nmslib
import numpy as np
import scipy.sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from jmlr.io import building_folder

log = logging.getLogger(__name__)

# The TF-IDF / HNSW recipe. scispaCy's released UMLS index uses M=100, efConstruction=2000
# (hours on 60 threads for ~3M aliases); M=32 / 200 builds a 40k-alias KB in about a minute on
# two cores and still returns an exact-alias query as its own nearest neighbour. Part of the
# cache key, so changing it rebuilds.
INDEX_RECIPE: dict[str, Any] = {
    "version": 1, "analyzer": "char_wb", "ngram": 3, "M": 32, "efConstruction": 200,
    "efSearch": 200, "space": "cosinesimil_sparse", "nmslib": getattr(nmslib, "__version__", "?"),
    # scispaCy's min_df=10 is meant for millions of aliases; below that it empties the index.
    "min_df": {"aliases_at_least_1000000": 10, "otherwise": 1},
}


def index_key(kb_path: Path) -> str:
    """sha256 over the KB file's bytes and the index recipe: one cache folder per both."""
    digest = hashlib.sha256()
    with kb_path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps(INDEX_RECIPE, sort_keys=True).encode())
    return digest.hexdigest()


def _empty_index() -> Any:
    return nmslib.init(method="hnsw", space=INDEX_RECIPE["space"],
                       data_type=nmslib.DataType.SPARSE_VECTOR)


def build_index(aliases: list[str], folder: Path) -> dict[str, float]:
    """Fit the char-3-gram TF-IDF on the aliases, build the HNSW index, save both in folder
    as plain arrays and JSON (nothing pickled). Aliases with an all-zero vector are left out.
    Returns the seconds of each phase (``tfidf_s``, ``hnsw_s``, ``save_s``)."""
    started = time.perf_counter()
    min_df = 10 if len(aliases) >= 1_000_000 else 1
    n = INDEX_RECIPE["ngram"]
    vectorizer = TfidfVectorizer(analyzer=INDEX_RECIPE["analyzer"], ngram_range=(n, n),
                                 min_df=min_df, dtype=np.float32)
    vectors = vectorizer.fit_transform(aliases)
    nonzero = np.asarray(vectors.getnnz(axis=1)).ravel() > 0
    aliases = [a for a, keep in zip(aliases, nonzero, strict=True) if keep]
    vectors = vectors[nonzero]
    tfidf_done = time.perf_counter()
    index = _empty_index()
    index.addDataPointBatch(vectors)
    index.createIndex({"M": INDEX_RECIPE["M"], "efConstruction": INDEX_RECIPE["efConstruction"],
                       "indexThreadQty": os.cpu_count() or 1, "post": 0}, print_progress=False)
    hnsw_done = time.perf_counter()
    index.saveIndex(str(folder / "ann_index.bin"))
    scipy.sparse.save_npz(folder / "alias_vectors.npz", vectors.tocsr())
    np.save(folder / "idf.npy", vectorizer.idf_.astype(np.float64), allow_pickle=False)
    vocabulary = {term: int(col) for term, col in vectorizer.vocabulary_.items()}
    (folder / "vocabulary.json").write_text(json.dumps(vocabulary, ensure_ascii=False), "utf-8")
    (folder / "aliases.json").write_text(json.dumps(aliases, ensure_ascii=False), "utf-8")
    # Written last: its presence marks a complete folder.
    (folder / "recipe.json").write_text(json.dumps({**INDEX_RECIPE, "min_df_used": min_df,
                                                    "aliases": len(aliases)}), "utf-8")
    return {"tfidf_s": tfidf_done - started, "hnsw_s": hnsw_done - tfidf_done,
            "save_s": time.perf_counter() - hnsw_done}


def load_index(folder: Path) -> tuple[list[str], TfidfVectorizer, Any]:
    """(aliases in index order, the fitted vectorizer, the HNSW index) from build_index's files."""
    n = INDEX_RECIPE["ngram"]
    vocabulary = json.loads((folder / "vocabulary.json").read_text("utf-8"))
    vectorizer = TfidfVectorizer(analyzer=INDEX_RECIPE["analyzer"], ngram_range=(n, n),
                                 dtype=np.float32, vocabulary=vocabulary)
    vectorizer.idf_ = np.load(folder / "idf.npy", allow_pickle=False)
    index = _empty_index()
    index.addDataPointBatch(scipy.sparse.load_npz(folder / "alias_vectors.npz").astype(np.float32))
    index.loadIndex(str(folder / "ann_index.bin"))
    index.setQueryTimeParams({"efSearch": INDEX_RECIPE["efSearch"]})
    aliases = json.loads((folder / "aliases.json").read_text("utf-8"))
    return aliases, vectorizer, index


def cached_index_dir(kb_path: Path, aliases: Collection[str],
                     cache_dir: str | Path) -> tuple[Path, bool]:
    """The index folder for this KB under ``cache_dir/kb/``, built first if absent (in a
    temporary folder renamed into place, so a half-built index is never used).
    Returns (folder, whether it was built now)."""
    folder = Path(cache_dir).expanduser() / "kb" / index_key(kb_path)
    if (folder / "recipe.json").is_file():
        return folder, False
    log.info("building the KB index for %s (%d aliases) in %s", kb_path, len(aliases), folder)
    with building_folder(folder, keep=lambda found: (found / "recipe.json").is_file()) as tmp:
        build_index(sorted(aliases), tmp)
    return folder, True
