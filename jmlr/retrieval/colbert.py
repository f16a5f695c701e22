"""The project's one door to colbert-ai: compatibility fix, checkpoints, C++ extensions.

Every other module talks to the retriever through this package (``jmlr.retrieval``), so
colbert-ai can be upgraded or replaced here alone. Importing this module

- installs the transformers-5 fix for colbert-ai's model class (:func:`install_compat`),
  before any colbert model can be built; the index builder (``plaid.py``) imports this
  module first, so it holds there too, and indexing runs in this process (no spawned
  children that would start without the fix);
- keeps colbert-ai's import from switching the whole process to multiprocessing "spawn"
  and from turning on TOKENIZERS_PARALLELISM.

A ColBERT checkpoint is a folder in colbert-ai's own format (HF model + tokenizer +
``artifact.metadata``). A plain Hugging Face encoder is converted ONCE into such a folder
with a new, seeded ``dim``-d projection (:func:`prepare_checkpoint`), so that indexing and
search never see two different random projections.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from jmlr.errors import ConfigError
from jmlr.io import building_folder, exclusive
from jmlr.resources import resolve_location
from jmlr.retrieval import extensions
from jmlr.retrieval.folders import check_model_files, folder_sha256

log = logging.getLogger(__name__)

# At import time colbert-ai's launcher calls mp.set_start_method("spawn", force=True) and
# its Run class sets TOKENIZERS_PARALLELISM=true; both would change how every later
# DataLoader / accelerate / datasets worker starts. Both are put back after the import.
_START_METHOD = multiprocessing.get_start_method(allow_none=True)
_TOKENIZERS_PARALLELISM = os.environ.get("TOKENIZERS_PARALLELISM")
# colbert-ai imports faiss (unused here: k-means is ours), which logs its loading at INFO.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
# Names marked "as" are re-exported for plaid.py (index build and search) and for tests that
# compare against colbert-ai's own inference path: colbert-ai is imported here only.
import colbert.modeling.hf_colbert as _hf_colbert  # noqa: E402
from colbert.data import Collection as Collection  # noqa: E402
from colbert.indexing.codecs.residual import ResidualCodec as ResidualCodec  # noqa: E402
from colbert.indexing.collection_indexer import CollectionIndexer as CollectionIndexer  # noqa: E402
from colbert.indexing.index_saver import IndexSaver as IndexSaver  # noqa: E402
from colbert.infra.config import ColBERTConfig  # noqa: E402
from colbert.infra.run import Run as Run  # noqa: E402
from colbert.modeling.base_colbert import BaseColBERT  # noqa: E402
from colbert.modeling.checkpoint import Checkpoint as Checkpoint  # noqa: E402
from colbert.modeling.colbert import ColBERT  # noqa: E402
from colbert.modeling.colbert import colbert_score as colbert_score  # noqa: E402
from colbert.modeling.tokenization import DocTokenizer as DocTokenizer  # noqa: E402
from colbert.modeling.tokenization import QueryTokenizer as QueryTokenizer  # noqa: E402
from colbert.searcher import Searcher as Searcher  # noqa: E402

multiprocessing.set_start_method(_START_METHOD, force=True)
if _TOKENIZERS_PARALLELISM is None:
    os.environ.pop("TOKENIZERS_PARALLELISM", None)
else:
    os.environ["TOKENIZERS_PARALLELISM"] = _TOKENIZERS_PARALLELISM

CHECKPOINT_MARKER = "artifact.metadata"   # what makes a folder a colbert-ai checkpoint
SOURCE_RECORD = "jmlr_source.json"         # how a converted checkpoint was made
PROJECTION_SEED = 0                         # the new projection is the same on every machine


# ---------------------------------------------------------------------------------------
# transformers 5 compatibility (colbert-ai 0.2.22)


def _rebind_in_colbert(attribute: str, original: Any, replacement: Any) -> None:
    """Point every imported colbert-ai module that bound ``original`` by name (``from x import
    f``) at ``replacement``: patching the defining module alone would miss those copies."""
    for name, module in list(sys.modules.items()):
        if (name == "colbert" or name.startswith("colbert.")) and \
                getattr(module, attribute, None) is original:
            setattr(module, attribute, replacement)


def _compat_class_factory(original: Any) -> Any:
    """Wrap colbert's ``class_factory`` so each HF_ColBERT class it makes runs ``post_init``.

    HF_ColBERT.__init__ ends with ``self.init_weights()``; transformers 5 expects
    ``post_init()`` there (it sets ``all_tied_weights_keys`` and then calls init_weights).
    The first init_weights call of an instance is turned into post_init; the call that
    post_init itself makes goes to the original. On 4.x this is the same work as before.
    """

    @functools.wraps(original)
    def class_factory(name_or_path: str) -> type:
        cls = original(name_or_path)

        def init_weights(self: Any) -> None:
            if self.__dict__.get("_jmlr_post_init_started"):
                super(cls, self).init_weights()
                return
            self.__dict__["_jmlr_post_init_started"] = True
            self.post_init()

        cls.init_weights = init_weights
        return cls

    class_factory.jmlr_compat = True  # type: ignore[attr-defined]
    return class_factory


def install_compat() -> None:
    """Apply the transformers-5 fix to colbert-ai (idempotent; runs at import of this module).

    colbert-ai modules bind ``class_factory`` by name when imported, so every colbert
    module holding the original function gets the wrapped one.
    """
    original = _hf_colbert.class_factory
    if getattr(original, "jmlr_compat", False):
        return
    _rebind_in_colbert("class_factory", original, _compat_class_factory(original))


def compat_installed() -> bool:
    return bool(getattr(_hf_colbert.class_factory, "jmlr_compat", False))


install_compat()


def install_extension_guard() -> None:
    """Send colbert-ai's C++ extension loads through :func:`extensions.guarded_load` (stale
    build locks recovered, waits said, a cold cache announced); idempotent. colbert-ai's
    modules bind torch's ``load`` by name when imported, so each holding it gets the guard."""
    from torch.utils import cpp_extension

    _rebind_in_colbert("load", cpp_extension.load, extensions.guarded_load)


install_extension_guard()


def _metadata_despite_git(original: Any) -> Any:
    """Wrap colbert-ai's ``get_metadata_only`` (written into every config it saves: each
    checkpoint and index) so that the git details it reads from the working directory are
    left out when gitpython cannot give them. It only expects "not a repository"; in a
    checkout with a detached HEAD (a tag, a CI job, a worktree) ``active_branch`` raises
    TypeError, and every save would fail after training had run."""

    @functools.wraps(original)
    def get_metadata_only() -> Any:
        try:
            return original()
        except Exception as err:        # noqa: BLE001  (gitpython's errors vary by state)
            import socket
            import time

            from colbert.utils.utils import dotdict

            log.debug("colbert-ai metadata without git details: %s", err)
            return dotdict(hostname=socket.gethostname(), cmd=" ".join(sys.argv),
                           current_datetime=time.strftime("%b %d, %Y ; %l:%M%p %Z (%z)"))

    get_metadata_only.jmlr_compat = True  # type: ignore[attr-defined]
    return get_metadata_only


def install_metadata_guard() -> None:
    """Apply :func:`_metadata_despite_git` to every colbert-ai module that bound the original
    by name (idempotent)."""
    from utility.utils import save_metadata

    original = save_metadata.get_metadata_only
    if getattr(original, "jmlr_compat", False):
        return
    patched = _metadata_despite_git(original)
    save_metadata.get_metadata_only = patched
    _rebind_in_colbert("get_metadata_only", original, patched)


install_metadata_guard()


class _LogLines(io.TextIOBase):
    """A text stream that sends each complete line to ``log.debug``."""

    def __init__(self) -> None:
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                log.debug("colbert: %s", line.rstrip())
        return len(text)


@contextlib.contextmanager
def quiet_colbert() -> Iterator[None]:
    """colbert-ai prints its configs and steps to stdout: keep them in the debug log
    (``jmlr -v``) and stdout for our results. Progress bars (stderr) stay visible."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    # Loading reports ("linear.weight MISSING": the new projection) and per-file bars.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(_LogLines()):
            # It builds CUDA AMP helpers even on CPU, which only warns.
            warnings.filterwarnings("ignore", message=".*CUDA is not available.*")
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------
# Checkpoint folders


def check_model_folder(path: Path, what: str) -> dict[str, Any]:
    """Check that ``path`` is a local BERT-family model folder colbert-ai can load.

    Returns its config.json. colbert-ai silently swaps in a download of bert-base-uncased
    when a folder fails to load, and loads configs with remote code allowed, so every way
    it could fail is caught here first with a ConfigError naming ``what``.
    """
    config = check_model_files(path, what)
    try:
        with quiet_colbert():
            _hf_colbert.class_factory(str(path))
            tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # colbert raises ValueError/AssertionError/OSError here
        raise ConfigError(f"{what}: colbert-ai cannot use the {config['model_type']!r} model "
                          f"at {path} ({err})") from None
    if len(tokenizer) < 100:   # e.g. a vocab.txt read as a file name by transformers 5
        raise ConfigError(f"{what}: the tokenizer in {path} has only {len(tokenizer)} tokens")
    for marker in ("[unused0]", "[unused1]"):   # colbert-ai's [Q] and [D] markers
        if tokenizer.convert_tokens_to_ids(marker) in (None, tokenizer.unk_token_id):
            log.warning("%s: the vocabulary of %s has no %s token; ColBERT's query/document "
                        "marker becomes [UNK]", what, path, marker)
    return config


def is_colbert_checkpoint(path: Path) -> bool:
    return (path / CHECKPOINT_MARKER).is_file()


def checkpoint_dim(path: Path) -> int:
    """The token-vector dimension of a ColBERT checkpoint folder."""
    try:
        meta = json.loads((path / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
        return int(meta.get("dim", 128))
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{path / CHECKPOINT_MARKER}: not a readable checkpoint config "
                          f"({err})") from None


def colbert_config_for(path: Path, **settings: Any) -> ColBERTConfig:
    # model_name and checkpoint point at the folder itself, so a stale name recorded in its
    # artifact.metadata (e.g. "bert-base-uncased") is never looked up on the hub.
    return ColBERTConfig(checkpoint=str(path), model_name=str(path), **settings)


def _source_tensors(source: Path) -> dict[str, torch.Tensor]:
    if (source / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(source / "model.safetensors"))
    if (source / "pytorch_model.bin").is_file():
        return torch.load(source / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {}  # sharded: trust the loader


def _check_encoder_loaded(model: BaseColBERT, source: Path) -> None:
    """Every encoder tensor of ``source`` must be in the converted model, unchanged."""
    loaded = model.model.state_dict()
    prefix = model.model.base_model_prefix
    checked = 0
    for key, tensor in _source_tensors(source).items():
        name = key if key in loaded else f"{prefix}.{key}"
        if name not in loaded:
            continue  # heads of the source model (cls.*, lm_head...) are dropped
        if not torch.equal(loaded[name].cpu(), tensor.to(loaded[name].dtype)):
            raise ConfigError(f"retriever.checkpoint: weight {key} of {source} did not load")
        checked += 1
    if checked == 0 and (source / "model.safetensors").is_file():
        raise ConfigError(f"retriever.checkpoint: no weight of {source} matches a "
                          f"{type(model.model.LM).__name__}")


def prepare_checkpoint(location: str, dim: int, cache_dir: str | Path) -> Path:
    """A ColBERT checkpoint folder for ``location`` (config ``retriever.checkpoint``).

    A colbert-ai checkpoint is returned as is. A plain HF encoder is converted once, with a
    new seeded ``dim``-d projection, into ``<cache_dir>/colbert/<sha16>-dim<dim>`` (keyed by
    the source folder's content hash) and that folder is returned from then on.
    """
    path = resolve_location(location, "retriever.checkpoint").resolve()
    check_model_folder(path, "retriever.checkpoint")
    if is_colbert_checkpoint(path):
        found = checkpoint_dim(path)
        if found != dim:
            log.warning("retriever.dim=%d ignored: the checkpoint %s has dim %d", dim, path, found)
        return path
    if dim < 1:
        raise ConfigError(f"retriever.dim must be >= 1, got {dim}")
    digest = folder_sha256(path)
    target = Path(cache_dir).expanduser().resolve() / "colbert" / f"{digest[:16]}-dim{dim}"
    if is_colbert_checkpoint(target):
        return target
    with exclusive(target.with_name(f".{target.name}.lock"), f"converting {path.name}"):
        if not is_colbert_checkpoint(target):      # not done by another process meanwhile
            _convert(path, target, dim, digest)
    return target


def _convert(path: Path, target: Path, dim: int, digest: str) -> None:
    log.info("converting %s into a ColBERT checkpoint (dim %d) at %s", path, dim, target)
    with building_folder(target, keep=is_colbert_checkpoint) as tmp:
        with torch.random.fork_rng(devices=[]), quiet_colbert():
            torch.manual_seed(PROJECTION_SEED)
            model = BaseColBERT(str(path), colbert_config=colbert_config_for(path, dim=dim))
            _check_encoder_loaded(model, path)
            model.colbert_config.configure(model_name=None, checkpoint=None)
            model.save(str(tmp))
        (tmp / SOURCE_RECORD).write_text(json.dumps(
            {"source": str(path), "source_sha256": digest, "dim": dim,
             "projection_seed": PROJECTION_SEED}, indent=2) + "\n", encoding="utf-8")


def query_overflow(tokenizer: Any, queries: Sequence[str], query_maxlen: int) -> tuple[int, int]:
    """(queries longer than ``query_maxlen`` tokens with ColBERT's markers, the longest
    length): colbert-ai cuts such queries silently, so what follows (the options, at the end
    of the default query) never reaches the retriever."""
    lengths = [len(ids) + 1 for ids in tokenizer(list(queries), add_special_tokens=True,
                                                  truncation=False)["input_ids"]]   # + [Q] marker
    return sum(n > query_maxlen for n in lengths), max(lengths, default=0)


def warn_query_overflow(tokenizer: Any, queries: Sequence[str], query_maxlen: int,
                        warned: set[int]) -> None:
    """Log once per ``query_maxlen`` (tracked in ``warned``) when queries get cut."""
    if query_maxlen in warned:
        return
    cut, longest = query_overflow(tokenizer, queries, query_maxlen)
    if cut:
        warned.add(query_maxlen)
        log.warning("%d of %d queries are longer than retriever.query_maxlen=%d tokens (the longest "
                    "has %d) and are cut at the end: the later options never reach the retriever; "
                    "raise retriever.query_maxlen or shorten retriever.query_template",
                    cut, len(queries), query_maxlen, longest)


def build_extensions(use_gpu: bool | None = None) -> list[str]:
    """Compile (or load from torch's extension cache) colbert-ai's C++ extensions now.

    colbert-ai builds them with a C++ compiler the first time a model is loaded or an index
    is searched on a machine, which makes that first command take minutes longer than the
    next ones. Returns the classes whose extensions are loaded. Loads go through
    :func:`install_extension_guard`'s checks (a stale lock of a killed build is recovered).
    """
    from colbert.search.index_storage import IndexScorer
    from colbert.search.strided_tensor import StridedTensor

    install_extension_guard()   # for a colbert-ai module imported since this module was
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    owners = (ColBERT, IndexScorer, StridedTensor, ResidualCodec)
    with quiet_colbert():
        for owner in owners:
            owner.try_load_torch_extensions(use_gpu)
    return [owner.__name__ for owner in owners if hasattr(owner, "loaded_extensions")]


def load_colbert_checkpoint(path: str | Path, **settings: Any) -> ColBERT:
    """colbert-ai's ColBERT model from a checked checkpoint folder (eval mode, CPU or CUDA)."""
    path = Path(path).expanduser().resolve()
    check_model_folder(path, "ColBERT checkpoint")
    if not is_colbert_checkpoint(path):
        raise ConfigError(f"{path} is not a ColBERT checkpoint (no {CHECKPOINT_MARKER}); "
                          "convert an encoder with prepare_checkpoint first")
    with quiet_colbert():
        return ColBERT(str(path), colbert_config=colbert_config_for(path, **settings))
