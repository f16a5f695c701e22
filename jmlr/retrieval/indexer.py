"""colbert-ai's CollectionIndexer, adapted: what ``plaid.build_index`` runs.

- the centroids come from ``kmeans.kmeans`` (torch, any device) instead of faiss;
- the vectors of the k-means sample are kept and handed back when the indexing pass meets the
  same passages, so a passage is encoded once (``_ReusingEncoder``);
- on a CPU each vector's centroid is found by ``kmeans.nearest`` (``_Codec``);
- the wall time of each build step is recorded for the index manifest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import torch
from torch.nn import functional as F

from jmlr.retrieval import colbert as cb
from jmlr.retrieval.kmeans import kmeans, nearest

log = logging.getLogger(__name__)


class _ReusingEncoder:
    """colbert's CollectionEncoder, handing back the vectors of the k-means sample's passages
    when the indexing pass meets them again.

    colbert encodes a sample of the collection to train the centroids (every passage up to
    ~30k passages, 55% of 100k, 17% of 1M), then encodes every passage again to fill the
    index. The first call of ``encode_passages`` is the sample: its vectors are kept (in
    fp16, as the index stores them) and each later call encodes only the passages not in it.
    Kept vectors are the ones the sample pass computed, so a collection sampled whole gives
    an index identical to one built without reuse; at 100k passages this saves 35% of the
    encoding. Above ``max_kept_bytes`` of sample vectors nothing is kept.
    """

    def __init__(self, encoder: Any, max_kept_bytes: int = 4 << 30) -> None:
        self.encoder = encoder
        self.max_kept_bytes = max_kept_bytes
        self.calls = 0
        self.encoded = 0            # passages encoded, the sample included
        self.sample_seconds = 0.0   # spent in the wrapped encoder on the sample
        self.index_seconds = 0.0    # and on the indexing pass
        self.kept: torch.Tensor | None = None      # [sample tokens, dim], fp16
        self.spans: dict[str, tuple[int, int]] = {}  # passage text -> (start, length) in kept
        self.dtype = torch.float32  # what the wrapped encoder returns (fp16 on a GPU)

    def encode_passages(self, passages: list[str]) -> tuple[torch.Tensor | None, list[int] | None]:
        self.calls += 1
        if self.calls == 1:
            embs, doclens = self._encode(passages)
            if embs is not None:
                self.dtype = embs.dtype
                if embs.numel() * 2 <= self.max_kept_bytes:
                    self._keep(passages, embs, doclens)
            return embs, doclens
        missing = list(dict.fromkeys(p for p in passages if p not in self.spans))
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            embs, doclens = self._encode(missing)
            if len(missing) == len(passages):
                return embs, doclens
            fresh = dict(zip(missing, embs.split(doclens), strict=True))
        parts = [fresh[p] if p in fresh else self._kept_vectors(p) for p in passages]
        return torch.cat(parts), [part.size(0) for part in parts]

    def _encode(self, passages: list[str]) -> tuple[torch.Tensor | None, list[int] | None]:
        started = time.perf_counter()
        out = self.encoder.encode_passages(passages)
        if self.calls == 1:
            self.sample_seconds += time.perf_counter() - started
        else:
            self.index_seconds += time.perf_counter() - started
        self.encoded += len(passages)
        return out

    def _keep(self, passages: list[str], embs: torch.Tensor, doclens: list[int]) -> None:
        self.kept = embs.half()
        start = 0
        for text, length in zip(passages, doclens, strict=True):
            self.spans.setdefault(text, (start, length))
            start += length

    def _kept_vectors(self, text: str) -> torch.Tensor:
        assert self.kept is not None
        start, length = self.spans[text]
        return self.kept[start:start + length].to(self.dtype)


class _Codec(cb.ResidualCodec):
    """colbert's residual codec, finding each vector's centroid with ``kmeans.nearest`` on a
    CPU. colbert's own search materialises a [centroids, 16k vectors] score matrix per batch
    and reduces it along its columns; at 32k centroids that was most of the indexing pass.
    The codes are the same argmax of the same dot products (a tie within float rounding may
    fall the other way). On a GPU colbert's path is kept."""

    def compress_into_codes(self, embs: torch.Tensor, out_device: Any) -> torch.Tensor:
        if self.use_gpu:
            return super().compress_into_codes(embs, out_device)
        return nearest(embs.float(), self.centroids.float()).to(out_device)


class _Saver(cb.IndexSaver):
    def load_codec(self) -> _Codec:
        return _Codec.load(index_path=self.config.index_path_)


class TorchKMeansIndexer(cb.CollectionIndexer):
    """colbert-ai's CollectionIndexer with its faiss k-means replaced by ``kmeans.kmeans``,
    the sample's vectors reused by the indexing pass (``_ReusingEncoder``) and the codec's
    nearest-centroid search done by ``kmeans.nearest`` on a CPU (``_Codec``)."""

    seed = 0

    # Wall seconds of colbert's build steps, for the manifest: setup (sampling and encoding
    # the sample), train (k-means and the residual codec), index (encoding and compressing
    # every passage), finalize (the inverted file).
    phase_seconds: dict[str, float]

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] = time.perf_counter() - started

    def run(self, shared_lists: Any) -> None:
        """colbert's four phases with the build's own barrier between them (colbert's names a
        CUDA device; this one works for CPU processes and for none)."""
        self.phase_seconds = {}
        self.saver = _Saver(self.config)
        with torch.inference_mode():
            for phase in (self.setup, lambda: self.train(shared_lists), self.index, self.finalize):
                phase()
                if self.nranks > 1:
                    torch.distributed.barrier()
        if isinstance(self.encoder, _ReusingEncoder):
            self.phase_seconds.update(sample_encoding=self.encoder.sample_seconds,
                                      index_encoding=self.encoder.index_seconds)

    def setup(self) -> None:
        with self._phase("setup"):
            super().setup()

    def train(self, shared_lists: Any) -> None:
        with self._phase("train"):
            super().train(shared_lists)

    def index(self) -> None:
        with self._phase("index"):
            super().index()

    def finalize(self) -> None:
        with self._phase("finalize"):
            super().finalize()

    def _sample_embeddings(self, sampled_pids: set[int]) -> float:
        """colbert's step, with its collectives among the build's own processes only: colbert
        all-reduces whenever a process group exists, which hangs a build that runs on one
        process of a larger job (the trainer re-indexing on its main process). Each process
        keeps the vectors of its own sampled passages for its indexing pass
        (``_ReusingEncoder``): colbert gives a process the same chunks in both passes."""
        self.encoder = _ReusingEncoder(self.encoder)
        local = [passage for pid, passage in self.collection.enumerate(rank=self.rank)
                 if pid in sampled_pids]
        embs, doclens = self.encoder.encode_passages(local)
        counts = torch.tensor([float(embs.size(0) if embs is not None else 0),
                               sum(doclens) / len(doclens) if doclens else 0.0,
                               float(bool(local))], dtype=torch.float64)
        if self.nranks > 1:
            torch.distributed.all_reduce(counts)
        self.num_sample_embs = torch.tensor([int(counts[0])])
        self.avg_doclen_est = float(counts[1] / counts[2])
        sample = embs.half() if embs is not None else torch.empty(0, self.config.dim).half()
        torch.save(sample, os.path.join(self.config.index_path_, f"sample.{self.rank}.pt"))
        return self.avg_doclen_est

    def _train_kmeans(self, sample: torch.Tensor, shared_lists: Any) -> torch.Tensor:
        device = "cuda" if self.use_gpu else "cpu"
        log.info("k-means: %d centroids over %d token vectors, %d iterations",
                 self.num_partitions, sample.size(0), self.config.kmeans_niters)
        centroids = kmeans(sample.to(device).float(), self.num_partitions,
                           self.config.kmeans_niters, seed=self.seed)
        centroids = F.normalize(centroids, dim=-1)
        return centroids.half() if self.use_gpu else centroids.float()
