"""Where the generator's weights come from: an HF folder as is, or a GGUF file converted once.

GGUF files (the demo's SmolLM2, the tests' tiny Llama) are dequantised by transformers and
saved as a plain safetensors model under ``<cache_dir>/generators/<sha256>/``; the key is the
file's content hash, so a changed file converts again and a moved one does not. The folder
is built aside and renamed into place, so a crash leaves no half-written model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from jmlr.errors import ConfigError
from jmlr.io import building_folder, exclusive, file_sha256, write_json
from jmlr.resources import find_one, resolve_location

logger = logging.getLogger(__name__)

# Model types whose modules carry the names in GeneratorConfig.lora_targets and whose
# attention goes through transformers' AttentionInterface (needed for S2-Attn).
LLAMA_FAMILY = ("llama", "mistral", "qwen2")


def content_hash(path: Path, cache_root: Path) -> str:
    """sha256 of a file, remembered in ``cache_root/sources.json`` by (path, size, mtime)."""
    stat = path.stat()
    memo_path = cache_root / "sources.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    key = str(path.resolve())
    entry = memo.get(key)
    if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    digest = file_sha256(path)
    memo[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    write_json(memo_path, memo)
    return digest


def resolve_source(location: str) -> tuple[str, Path]:
    """("hf", folder) or ("gguf", file) for a config location (path or ``pkg:``)."""
    path = resolve_location(location, "generator.model")
    if path.is_dir():
        if (path / "config.json").is_file():
            return "hf", path
        return "gguf", find_one(path, "*.gguf", "generator.model")
    if path.suffix.lower() == ".gguf":
        return "gguf", path
    raise ConfigError(f"generator.model: {location} is neither an HF model folder "
                      "(with config.json) nor a .gguf file")


def check_architecture(model_type: str, trust_remote_code: bool, where: str) -> None:
    if model_type in LLAMA_FAMILY:
        return
    if trust_remote_code:
        logger.warning("generator %s has model type %r, outside the Llama family this "
                       "project is tested with", where, model_type)
        return
    raise ConfigError(f"generator.model: {where} is a {model_type!r} model; supported: "
                      f"{', '.join(LLAMA_FAMILY)} (Llama-family causal LMs)")


@contextlib.contextmanager
def _one_gguf_parse() -> Iterator[None]:
    """transformers opens a GGUF file three times (config, weights, tokenizer) and parsing
    the metadata of a 32k-token vocabulary takes seconds each time: share one reader."""
    import gguf as gguf_lib

    original = gguf_lib.GGUFReader
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf_lib.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf_lib.GGUFReader = original


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise a GGUF file into a plain HF folder at ``target`` (built aside, renamed in)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    with building_folder(target, keep=lambda found: (found / "config.json").is_file()) as tmp:
        logger.info("converting %s once into %s", gguf, target)
        with _one_gguf_parse():
            try:
                loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              dtype=torch.float32)
            except (ValueError, KeyError) as err:
                raise ConfigError(f"generator.model: cannot load {gguf} ({err})") from None
            check_architecture(loaded.config.model_type, False, str(gguf))
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The loaded model carries a GGUF quantization_config and cannot save itself: rebuild
        # a plain model of the same config (on meta, no init cost) around its tensors.
        config = copy.deepcopy(loaded.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "source.json", {"gguf": str(gguf), "cache_key": target.name,
                                          "seconds": round(time.perf_counter() - started, 2)})
    logger.info("converted in %.1f s", time.perf_counter() - started)
    return target


def local_model_dir(location: str, cache_dir: str | Path) -> Path:
    """An HF folder to load from: the location itself, or the GGUF's cached conversion."""
    kind, path = resolve_source(location)
    if kind == "hf":
        return path
    root = Path(cache_dir).expanduser() / "generators"
    root.mkdir(parents=True, exist_ok=True)
    target = root / content_hash(path, root)[:32]
    if not (target / "config.json").is_file():
        with exclusive(root / f".{target.name}.lock", f"converting {path.name}"):
            if not (target / "config.json").is_file():     # not done while we waited
                convert_gguf(path, target)
    return target


def describe_source(location: str, cache_dir: str | Path) -> dict[str, Any]:
    """Where a generator's base weights came from, for exports that must load without jmlr.

    ``base_model_name_or_path`` is the user's own location (a ``pkg:`` one resolved to the
    file it names; paths made absolute), never jmlr's cache; for a GGUF file the cached
    conversion that was loaded is named beside it (``cache_key``: its content hash).
    """
    kind, path = resolve_source(location)
    user = path if location.startswith("pkg:") else Path(location).expanduser()
    record: dict[str, Any] = {"generator_model": location, "kind": kind,
                              "base_model_name_or_path": str(user.resolve())}
    if kind == "gguf":
        converted = local_model_dir(location, cache_dir)
        record.update(gguf_file=str(path.resolve()), cache_key=converted.name,
                      converted=str(converted))
    return record
