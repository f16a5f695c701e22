"""The benchmarks' own correctness: the reference loop (the authors' structure) computes what
our joint step computes, the phase instrumentation sees the calls it times, and the shared
helpers measure what they say. Real tiny models: tinycoder's 2-layer Llama with LoRA and a
ColBERT head on MiniLM."""

from __future__ import annotations

import doctest
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks import common, efficacy_measures, reading_gain, reference_loop, step_setup
from benchmarks.joint_step import timed_objective
from benchmarks.reference_loop import reference_rank_loss, reference_step
from benchmarks.step_setup import fixed_length_passages, set_dropout
from jmlr.data.schema import MCQ
from jmlr.training.objective import joint_step, prompt_encoder
from jmlr.training.rank_objectives import pairwise_rank_loss

REPO = Path(__file__).resolve().parents[1]

QUESTION = MCQ("q1", "A child has fever, a rash and joint pain. Which disease fits?",
               {"A": "Measles", "B": "Gout", "C": "Lupus", "D": "Asthma"}, "A",
               rationale="Fever with a rash points to measles.")
PASSAGES = [
    "Measles causes fever, cough and a spreading rash in children.",
    "Gout affects the big toe with sudden pain and swelling at night.",
    "Lupus is an autoimmune disease with rash, joint pain and kidney involvement.",
    "Asthma narrows the airways and causes wheezing after exercise.",
    "Anemia lowers hemoglobin and causes fatigue and pale skin.",
    "Rickets softens the bones of children who lack vitamin D.",
]


def test_doctests_of_the_benchmark_helpers():
    for module in (common, efficacy_measures, reading_gain, reference_loop, step_setup):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


def test_reference_pair_loop_equals_the_vectorised_rank_loss():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(8, generator=gen)
    losses = torch.rand(8, generator=gen)
    losses[3] = losses[5]                                   # a tie is skipped by both
    ours = pairwise_rank_loss(scores[None], losses[None])
    ref, n_pairs = reference_rank_loss(scores, losses)
    assert n_pairs == ours.n_pairs == 27
    assert ref.item() == pytest.approx(ours.loss.item(), abs=1e-6)
    assert reference_rank_loss(scores[:3], torch.full((3,), 0.4))[1] == 0


@pytest.fixture(scope="module")
def tiny_parts(tmp_path_factory):
    from jmlr.config import load_config
    from jmlr.generation.model import load_generator
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.scorer import TrainableScorer

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    cfg.jmlr = replace(cfg.jmlr, k_sample=5, r_read=3)
    cache = tmp_path_factory.mktemp("cache")
    model, tokenizer = load_generator(cfg.generator, cache, device="cpu", for_training=True)
    checkpoint = prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim, cache)
    scorer = TrainableScorer.from_checkpoint(checkpoint, cfg.retriever.query_maxlen,
                                             cfg.retriever.doc_maxlen).train()
    set_dropout([model, scorer], 0.0)           # values must match: no dropout anywhere
    return cfg, model, tokenizer, scorer


def test_reference_step_gives_our_rank_loss_utilities_and_generator_loss(tiny_parts):
    cfg, model, tokenizer, scorer = tiny_parts
    encode = prompt_encoder(tokenizer, cfg.jmlr, cfg.generator.max_length)
    ours = joint_step([QUESTION], [PASSAGES], score_fn=scorer.score, model=model, encode_fn=encode,
                      cfg=cfg.jmlr, generator=torch.Generator().manual_seed(3))
    ref = reference_step(QUESTION, PASSAGES, score_fn=scorer.score, model=model, encode_fn=encode,
                         cfg=cfg.jmlr, sampled=ours.sampled[0])
    assert model.training                       # the reference forwards ran in train mode
    assert ours.rank_stats["n_pairs"].total == ref.n_pairs > 0
    assert ref.rank_loss.item() == pytest.approx(ours.rank_loss.item(), abs=1e-5)
    assert torch.allclose(ref.utilities, ours.utilities[0], atol=1e-5)
    assert ref.gen_loss.item() == pytest.approx(ours.gen_loss.item(), abs=1e-5)
    assert torch.equal(ref.read, ours.read[0]) and ref.n_tokens == ours.n_tokens
    # its own draw, with the same sampler state, is the same draw
    again = reference_step(QUESTION, PASSAGES, score_fn=scorer.score, model=model,
                           encode_fn=encode, cfg=cfg.jmlr, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.sampled, ours.sampled[0])
    (ours.loss + ref.loss).backward()           # both losses reach both models
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.parameters())
    assert any(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    scorer.zero_grad(set_to_none=True)


def test_phase_timer_sees_the_calls_inside_joint_step(tiny_parts):
    cfg, model, tokenizer, scorer = tiny_parts
    encode = prompt_encoder(tokenizer, cfg.jmlr, cfg.generator.max_length)
    timer = common.PhaseTimer(memory=True)
    with torch.no_grad(), timed_objective(timer):
        joint_step([QUESTION], [PASSAGES], score_fn=scorer.score, model=model, encode_fn=encode,
                   cfg=cfg.jmlr, generator=torch.Generator().manual_seed(0))
    seconds, peaks, cpu = timer.take()
    assert set(seconds) == {"per_passage_losses", "generator_forward"}
    assert all(s > 0 for s in seconds.values()) and all(p > 0 for p in peaks.values())
    assert set(cpu) == set(seconds)
    from jmlr.training import objective
    assert objective.passage_utilities.__module__ == "jmlr.training.token_losses"  # restored


def test_fixed_length_passages_fit_their_token_budget(tiny_parts):
    from jmlr.generation.prompts import tokenize_piece

    _, _, tokenizer, _ = tiny_parts
    texts = fixed_length_passages(tokenizer, PASSAGES, 3, 20)
    lengths = [len(tokenize_piece(tokenizer, t)) for t in texts]
    assert len(texts) == 3 and all(15 <= n <= 20 for n in lengths), lengths


def test_peak_memory_sees_a_large_allocation():
    with common.PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2**20 // 4)          # 64 MiB, touched
        del block
    result = peak.result()
    assert result["peak_bytes"] >= result["start_bytes"]
    if "clear_refs" in result["method"]:
        assert result["peak_above_start"] >= 48 * 2**20


def test_a_gpu_pack_unpacks_its_data_and_a_full_precision_retriever(tmp_path):
    import json
    import tarfile

    from safetensors.torch import load_file, save_file

    from benchmarks import gpu_pack

    pack = tmp_path / "pack"
    (pack / "retriever").mkdir(parents=True)
    weights = {"w": torch.randn(4, 3), "ids": torch.arange(5)}
    save_file({"w": weights["w"].half(), "ids": weights["ids"]}, pack / "retriever" / "model.safetensors")
    (pack / "retriever" / "config.json").write_text("{}")
    source = tmp_path / "work" / "demo-seed0"
    source.mkdir(parents=True)
    (source / "corpus.jsonl").write_text('{"id": "p1", "text": "t"}\n')
    with tarfile.open(pack / "work.tar.gz", "w:gz") as tar:
        tar.add(source / "corpus.jsonl", arcname="demo-seed0/corpus.jsonl")
    with pytest.raises(SystemExit, match="not a pack"):
        gpu_pack.unpack(pack, tmp_path / "out", tmp_path / "retriever")
    (pack / "pack.json").write_text(json.dumps({"wheels": []}))
    gpu_pack.unpack(pack, tmp_path / "out", tmp_path / "retriever")
    assert (tmp_path / "out" / "demo-seed0" / "corpus.jsonl").read_text() == \
        (source / "corpus.jsonl").read_text()
    restored = load_file(tmp_path / "retriever" / "model.safetensors")
    assert restored["w"].dtype == torch.float32 and restored["ids"].dtype == torch.int64
    assert torch.equal(restored["w"], weights["w"].half().float())
    assert torch.equal(restored["ids"], weights["ids"])
    assert (tmp_path / "retriever" / "config.json").is_file()


def test_the_gpu_runner_refuses_bad_arguments_and_a_machine_without_cuda(repo_root, tmp_path):
    import os
    import subprocess
    import sys

    script = repo_root / "benchmarks" / "run_gpu.sh"
    env = {**os.environ, "RESULTS_DIR": str(tmp_path), "PYTHON": sys.executable,
           "CUDA_VISIBLE_DEVICES": ""}
    bad = subprocess.run(["bash", str(script), "--fast"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr
    no_gpu = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert no_gpu.returncode == 2 and "no CUDA device" in no_gpu.stdout + no_gpu.stderr
    assert not list(tmp_path.glob("*.json"))


def test_the_step_benchmark_runs_the_papers_step_on_every_config():
    """The demo config teaches with its own settings (base-model option contrast, min_gain, a
    sample pool); the reference loop implements the paper's step, so the benchmark must run
    that step in both loops, or the equality check compares different work."""
    from benchmarks.reference_loop import pairwise_tie_tolerance
    from benchmarks.step_setup import SPECS, load_settings
    from jmlr.config import JMLRConfig, load_config

    demo = load_config(common.REPO_ROOT / "configs" / "demo.yaml").jmlr
    assert (demo.utility, demo.utility_model, demo.sample_pool) != ("answer_loss", "current", 0)
    paper = JMLRConfig()
    for name in ("tiny", "smollm2"):
        spec = SPECS[name]
        cfg = load_settings(spec, {})
        got = cfg.jmlr
        assert (got.k_sample, got.r_read) == (spec.k_sample, spec.r_read)
        assert (got.utility, got.utility_model, got.utility_span, got.sample_pool, got.tau) == (
            paper.utility, paper.utility_model, paper.utility_span, paper.sample_pool, paper.tau)
        assert pairwise_tie_tolerance(got) == 1e-6
