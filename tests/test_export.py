"""``jmlr export``: a run's generator (merged) and retriever as folders that load in a fresh
Python without jmlr, giving the trained models' outputs. The run folder is made from the
tiny real models (tinycoder GGUF Llama, tiny ColBERT), their trained parts moved by hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_retrieval import tiny_task

pytestmark = pytest.mark.timeout(600)

QUERIES = ["fever and rash in a child", "joint pain, at night"]
DOCS = ["Measles causes fever and rash.", "Gout: joint pain, swelling!"]
PROMPT = "Question: A child has fever and a rash. Which disease fits?\nA. Measles\nAnswer:"

CLEAN_LOAD = """
import json, sys
import torch
from sentence_transformers import MultiVectorEncoder
from transformers import AutoModelForCausalLM, AutoTokenizer
out, queries, docs, prompt, result = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
model = AutoModelForCausalLM.from_pretrained(out + "/generator").eval()
ids = AutoTokenizer.from_pretrained(out + "/generator")(prompt, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(input_ids=ids).logits
retriever = MultiVectorEncoder(out + "/retriever-pylate", device="cpu")
Q = retriever.encode_query(queries)
D = retriever.encode_document(docs)
assert "jmlr" not in sys.modules and "colbert" not in sys.modules
torch.save({"ids": ids, "logits": logits, "Q": list(Q), "D": list(D),
            "scores": retriever.similarity(Q, D)}, result)
"""


def clean_python(script: str, *args: str, cwd: Path) -> dict:
    """Run ``script`` in a fresh interpreter that cannot see this worktree; its result."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = cwd / "result.pt"
    done = subprocess.run([sys.executable, "-c", script, *args, str(result)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(result, weights_only=True)


def perturb(module: torch.nn.Module, seed: int, only_trainable: bool = True) -> None:
    """Stand-in for training: move every trainable weight so that a lost one shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.requires_grad or not only_trainable:
                param.add_(0.05 * torch.randn(param.shape, generator=gen))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as ``jmlr train`` leaves it, and the trained models in memory."""
    from jmlr.generation.model import load_generator, save_generator
    from jmlr.generation.sources import describe_source
    from jmlr.retrieval.scorer import TrainableScorer

    task = tiny_task(tmp_path_factory.getbasetemp())
    run_dir = tmp_path_factory.mktemp("export") / "run"
    cfg = task.cfg
    generator, tokenizer = load_generator(cfg.generator, cfg.run.cache_dir)
    perturb(generator, 0)
    generator.eval()
    scorer = TrainableScorer.from_checkpoint(task.manifest["checkpoint"]["path"],
                                             cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen)
    perturb(scorer, 1, only_trainable=False)
    final = run_dir / "final"
    save_generator(generator, tokenizer, final / "generator",
                   base=describe_source(cfg.generator.model, cfg.run.cache_dir))
    scorer.save(final / "retriever")
    cfg.save(run_dir / "config.yaml")
    return run_dir, generator, tokenizer, scorer


def test_export_writes_a_generator_and_retriever_that_load_without_jmlr(run, run_cli, tmp_path):
    run_dir, generator, tokenizer, scorer = run
    out = tmp_path / "served"
    code, stdout, err = run_cli("export", "--run", run_dir, "--merged", out)
    assert code == 0, err
    record = json.loads(stdout)
    assert record["generator"] == "merged at export"
    assert record["base_model"]["base_model_name_or_path"].endswith("tiny.gguf")
    assert {p.name for p in out.iterdir()} == {"generator", "retriever", "retriever-pylate",
                                                "README.md", "jmlr_export.json"}
    assert "vllm serve" in (out / "README.md").read_text()

    got = clean_python(CLEAN_LOAD, str(out), json.dumps(QUERIES), json.dumps(DOCS), PROMPT,
                       cwd=tmp_path)
    with torch.no_grad():
        expected = generator(input_ids=got["ids"]).logits
        Q = scorer.encode_queries(QUERIES)
        D, mask = scorer.encode_docs(DOCS)
    assert (got["logits"] - expected).abs().max() < 1e-4
    for row in range(len(QUERIES)):
        torch.testing.assert_close(got["Q"][row], Q[row], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got["D"][row], D[row][mask[row]], atol=1e-5, rtol=1e-5)
    from jmlr.retrieval.scorer import late_interaction

    with torch.no_grad():
        pairs = late_interaction(Q, D.unsqueeze(0).expand(len(QUERIES), -1, -1, -1),
                                 mask.unsqueeze(0).expand(len(QUERIES), -1, -1))
    torch.testing.assert_close(got["scores"], pairs, atol=1e-4, rtol=1e-4)


def test_merged_weights_written_at_training_are_copied(run, run_cli, tmp_path):
    from jmlr.generation.model import merge_and_save

    run_dir, generator, tokenizer, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    import copy as copying

    merge_and_save(copying.deepcopy(generator), tokenizer, copy / "final" / "generator" / "merged")
    code, stdout, err = run_cli("export", "--run", copy, "--merged", tmp_path / "out",
                                f"run.cache_dir={tmp_path / 'unused-cache'}")
    assert code == 0, err
    assert json.loads(stdout)["generator"] == "copied from the run (train.merge_on_export)"
    assert not (tmp_path / "unused-cache").exists()     # nothing loaded the base model
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 450, 4996, 17354]])
    with torch.no_grad():
        served = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "generator")(input_ids=ids)
        assert (served.logits - generator(input_ids=ids).logits).abs().max() < 1e-4


def test_export_refuses_what_it_should_not_replace(run, run_cli, tmp_path):
    run_dir = run[0]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    code, _, err = run_cli("export", "--run", run_dir, "--merged", other)
    assert code == 2 and "not an earlier export" in err and (other / "keep.txt").is_file()
    code, _, err = run_cli("export", "--run", tmp_path / "nowhere", "--merged", tmp_path / "o")
    assert code == 2 and "config.yaml is missing" in err and not (tmp_path / "o").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "config.yaml", bare / "config.yaml")
    code, _, err = run_cli("export", "--run", bare, "--merged", tmp_path / "o")
    assert code == 2 and "final/generator is missing" in err and not (tmp_path / "o").exists()
