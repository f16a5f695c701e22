"""`jmlr warmup`: the one-time work a fresh machine does before its first real command.

colbert-ai compiles its C++ extensions on first use, a GGUF generator is converted once to
a safetensors folder, and a plain encoder becomes a ColBERT checkpoint once; each result is
cached (torch's extension cache, ``run.cache_dir``). Doing all three at set-up time keeps
that cost out of the first index, training or evaluation run. Safe to run again: cached
work is found and skipped in seconds.
"""

from __future__ import annotations

import logging
import time

from jmlr.config import Config

log = logging.getLogger(__name__)


def run_warmup(cfg: Config) -> dict[str, float]:
    """Build colbert-ai's extensions and the config's cached models; seconds per part."""
    from jmlr.generation.sources import local_model_dir
    from jmlr.retrieval.colbert import build_extensions, prepare_checkpoint

    timings: dict[str, float] = {}

    def timed(name: str, fn, *args) -> None:
        started = time.perf_counter()
        fn(*args)
        timings[name] = round(time.perf_counter() - started, 1)
        log.info("warmup: %s ready in %.1f s", name, timings[name])

    timed("colbert extensions", build_extensions)
    if cfg.retriever.checkpoint:
        timed("retriever checkpoint", prepare_checkpoint, cfg.retriever.checkpoint,
              cfg.retriever.dim, cfg.run.cache_dir)
    if cfg.generator.model:
        timed("generator", local_model_dir, cfg.generator.model, cfg.run.cache_dir)
    return timings
