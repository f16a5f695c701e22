"""The JMLR objective: sampling, rank losses and the joint step, on tiny tensors, a tiny
random-weight Llama (real model, fp32) and a small bag-of-words scorer."""

from __future__ import annotations

import math
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import VOCAB, tiny_llama
from torch import nn

from jmlr.config import JMLRConfig
from jmlr.config_fields import Component
from jmlr.data.schema import MCQ
from jmlr.registry import RANK_OBJECTIVES
from jmlr.training.objective import (
    joint_step,
    normalize_scores,
    prompt_encoder,
    sample_passages,
    select_reading_passages,
)
from jmlr.training.rank_objectives import (
    ListwiseParams,
    PairwiseParams,
    listwise_kl_loss,
    pairwise_rank_loss,
)
from jmlr.training.stats import finalize
from jmlr.training.token_losses import generator_loss, passage_utilities

REPO = Path(__file__).resolve().parents[1]



# --------------------------------------------------------------------------- normalisation, sampling


def test_minmax_rows_span_minus_one_to_one_and_equal_rows_are_zero():
    scores = torch.tensor([[3.0, 7.0, 5.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    out = normalize_scores(scores, "minmax")
    assert torch.equal(out[0], torch.tensor([-1.0, 1.0, 0.0, -0.5]))
    assert torch.equal(out[1], torch.zeros(4))
    assert torch.isfinite(out).all()
    assert normalize_scores(scores, "none") is scores
    with pytest.raises(ValueError):
        normalize_scores(scores, "zscore")


def test_sampling_is_without_replacement_and_takes_all_when_n_below_k():
    scores = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    drawn = sample_passages(scores, k=5, generator=torch.Generator().manual_seed(2))
    assert drawn.shape == (64, 5) and drawn.dtype == torch.long
    assert all(len(set(row.tolist())) == 5 for row in drawn)
    few = sample_passages(scores[:, :3], k=5, generator=torch.Generator().manual_seed(2))
    assert few.shape == (64, 3)
    assert torch.equal(few.sort(dim=1).values, torch.arange(3).expand(64, 3))


def test_sampling_is_deterministic_for_a_seed_and_has_no_gradient():
    scores = torch.randn(8, 20, requires_grad=True)
    a = sample_passages(scores, 6, generator=torch.Generator().manual_seed(7))
    b = sample_passages(scores, 6, generator=torch.Generator().manual_seed(7))
    c = sample_passages(scores, 6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not a.requires_grad


def test_a_sample_pool_draws_only_from_the_current_top_m():
    gen = torch.Generator().manual_seed(11)
    scores = torch.randn(300, 30, generator=gen)
    drawn = sample_passages(scores, 4, tau=50.0, pool=10, generator=torch.Generator().manual_seed(1))
    top10 = scores.topk(10, dim=1).indices
    assert drawn.shape == (300, 4)
    assert all(set(d.tolist()) <= set(t.tolist()) for d, t in zip(drawn, top10, strict=True))
    assert all(len(set(d.tolist())) == 4 for d in drawn)
    # nearly uniform over the pool at a high temperature: the 10th best is drawn in about
    # 4 rows of 10, the 11th never
    tenth = (drawn == top10[:, 9:10]).any(1).float().mean().item()
    assert 0.3 < tenth < 0.5
    with pytest.raises(Exception, match="sample_pool"):
        from jmlr.config import load_config
        load_config(REPO / "configs" / "tiny.yaml", ["jmlr.sample_pool=2"])


def test_small_tau_always_draws_the_best_first():
    gen = torch.Generator().manual_seed(3)
    scores = torch.stack([torch.randperm(10, generator=gen) * 0.1 for _ in range(200)])  # gaps >= 0.1
    for mode in ("minmax", "none"):
        drawn = sample_passages(scores, 3, tau=1e-3, mode=mode,
                                generator=torch.Generator().manual_seed(4))
        assert torch.equal(drawn[:, 0], scores.argmax(1))


def test_draw_frequencies_match_the_softmax():
    row = torch.tensor([1.0, 0.0, -0.5, 2.0])
    draws = 40000
    gen = torch.Generator().manual_seed(5)
    for mode, tau in (("none", 1.0), ("minmax", 0.5)):
        probs = torch.softmax(normalize_scores(row[None], mode)[0] / tau, 0)
        first = sample_passages(row.expand(draws, 4), 1, tau, mode, gen)[:, 0]
        freq = torch.bincount(first, minlength=4).float() / draws
        assert torch.allclose(freq, probs, atol=0.01), (mode, freq, probs)
    # k = 2 without replacement: P(i drawn) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    p = torch.softmax(row, 0)
    inclusion = torch.stack([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i)
                             for i in range(4)])
    pairs = sample_passages(row.expand(draws, 4), 2, 1.0, "none", gen)
    freq = torch.bincount(pairs.flatten(), minlength=4).float() / draws
    assert torch.allclose(freq, inclusion, atol=0.01), (freq, inclusion)


def test_reading_passages_are_the_top_r_best_first_ties_in_candidate_order():
    scores = torch.tensor([[0.3, 0.9, 0.3, 0.1], [1.0, 2.0, 3.0, 4.0]])
    assert select_reading_passages(scores, 3).tolist() == [[1, 0, 2], [3, 2, 1]]
    assert select_reading_passages(scores, 9).shape == (2, 4)
    assert select_reading_passages(scores, 0).shape == (2, 0)
    assert select_reading_passages([[0.3, 0.9, 0.3], [5.0]], 2) == [[1, 0], [0]]


# --------------------------------------------------------------------------- rank losses


def test_pairwise_rank_loss_hand_example():
    # s = (2, 1, 0), l = (0.5, 0.9, 0.5). Pairs: (0,1): l0 < l1 so y=1, s0-s1 = 1,
    # BCE = -log sigmoid(1) = log(1 + e^-1) = 0.31326169; (0,2): tie, skipped; (1,2): l1 > l2
    # so y=0, s1-s2 = 1, BCE = -log sigmoid(-1) = log(1 + e) = 1.31326169.
    # Mean over the 2 pairs used: 0.81326169 (the authors' counter from 1 would give /3 = 0.54217446).
    scores = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    losses = torch.tensor([[0.5, 0.9, 0.5]])
    out = pairwise_rank_loss(scores, losses)
    assert out.n_pairs == 2
    assert out.loss.item() == pytest.approx(0.81326169, abs=1e-7)
    assert out.loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.e)) / 2)
    assert out.accuracy == 0.5            # (0,1) ordered right, (1,2) wrong
    # d/ds0 = -sigmoid(-1)/2, d/ds1 = (sigmoid(-1) + sigmoid(1))/2 = 0.5, d/ds2 = -sigmoid(1)/2
    out.loss.backward()
    assert torch.allclose(scores.grad, torch.tensor([[-0.13447071, 0.5, -0.36552929]]), atol=1e-7)


def test_pairwise_ties_within_tolerance_are_skipped_and_no_pairs_keeps_the_graph():
    scores = torch.tensor([[0.0, 1.0, 3.0]], requires_grad=True)
    losses = torch.tensor([[1.0, 1.0 + 5e-7, 2.0]])      # gap 4.8e-7 (fp32) < default 1e-6
    assert pairwise_rank_loss(scores, losses, tie_tolerance=0.0).n_pairs == 3
    out = pairwise_rank_loss(scores, losses)
    assert out.n_pairs == 2
    # (0,2) and (1,2): the first is better (y=1) but scored lower by 3 and 2: softplus(3), softplus(2)
    expected = (F.softplus(torch.tensor(3.0)) + F.softplus(torch.tensor(2.0))) / 2
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert out.accuracy == 0.0            # both pairs: better utility, lower score
    tied = pairwise_rank_loss(scores, torch.full((1, 3), 0.7))
    assert tied.n_pairs == 0 and tied.loss.item() == 0.0 and tied.accuracy == 0.0
    tied.loss.backward()
    assert torch.equal(scores.grad, torch.zeros(1, 3))


def test_pairwise_mean_is_over_all_used_pairs_of_the_batch():
    scores = torch.tensor([[1.0, 0.0, 0.5], [0.0, 2.0, 1.0]])
    losses = torch.tensor([[0.1, 0.2, 0.2], [0.3, 0.1, 0.2]])   # row 0 has a tie (1,2)
    out = pairwise_rank_loss(scores, losses)
    used = [(1.0, 1), (0.5, 1),                      # row 0: (0,1), (0,2)
            (-2.0, 0), (-1.0, 0), (1.0, 1)]          # row 1: (0,1), (0,2), (1,2)
    bce = [F.softplus(torch.tensor(-m if y else m)).item() for m, y in used]
    assert out.n_pairs == 5
    assert out.loss.item() == pytest.approx(sum(bce) / 5, abs=1e-6)
    assert out.accuracy == 1.0
    scores_tied = torch.tensor([[1.0, 1.0, 0.0]])
    half = pairwise_rank_loss(scores_tied, torch.tensor([[0.1, 0.2, 0.3]]))
    assert half.accuracy == pytest.approx((0.5 + 1 + 1) / 3)


def test_listwise_kl_is_zero_when_distributions_match_and_its_gradient_is_q_minus_p():
    losses = torch.tensor([[0.2, 1.0, 0.5], [2.0, 0.1, 0.3]])
    tau, beta = 0.5, 2.0
    matching = (-losses / beta * tau + 3.0).requires_grad_()
    assert listwise_kl_loss(matching, losses, tau, beta).item() == pytest.approx(0.0, abs=1e-6)
    scores = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]], requires_grad=True)
    loss = listwise_kl_loss(scores, losses, tau, beta)
    p = torch.softmax(-losses / beta, -1)
    q = torch.softmax(scores.detach() / tau, -1)
    assert loss.item() == pytest.approx(((p * (p.log() - q.log())).sum(-1).mean()).item(), abs=1e-6)
    loss.backward()
    assert torch.allclose(scores.grad, (q - p) / tau / 2, atol=1e-6)


# --------------------------------------------------------------------------- the joint step


def word_ids(text: str) -> list[int]:
    return [3 + zlib.crc32(w.lower().encode()) % (VOCAB - 3) for w in text.split()]


def encode_words(questions: list[MCQ], passages: list[list[str]]) -> dict[str, torch.Tensor]:
    """A whitespace-word encoder with the prompt layout: passages (best nearest the question),
    question, then the target "letter option-text"; the utility span is the option text."""
    rows = []
    for mcq, read in zip(questions, passages, strict=True):
        context = [1] + [t for p in reversed(read) for t in word_ids(p)] + word_ids(mcq.question)
        letter, text = word_ids(mcq.answer), word_ids(mcq.answer_text)
        rows.append((context + letter + text,
                     [False] * len(context) + [True] * (len(letter) + len(text)),
                     [False] * (len(context) + len(letter)) + [True] * len(text)))
    width = max(len(r[0]) for r in rows)
    pad = [width - len(r[0]) for r in rows]
    return {
        "input_ids": torch.tensor([r[0] + [0] * p for r, p in zip(rows, pad, strict=True)]),
        "attention_mask": torch.tensor([[1] * len(r[0]) + [0] * p for r, p in zip(rows, pad, strict=True)]),
        "target_mask": torch.tensor([r[1] + [False] * p for r, p in zip(rows, pad, strict=True)]),
        "utility_mask": torch.tensor([r[2] + [False] * p for r, p in zip(rows, pad, strict=True)]),
    }


class BagOfWordsScorer(nn.Module):
    """A small real scorer: mean word embeddings, scaled cosine of query and passage."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.EmbeddingBag(VOCAB, 16, mode="mean")

    def encode(self, texts: list[str]) -> torch.Tensor:
        ids = [word_ids(t) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        flat = torch.tensor([t for i in ids for t in i])
        return F.normalize(self.embed(flat, offsets), dim=-1)

    def score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        q = self.encode(queries)                                          # [B, d]
        d = self.encode([t for row in docs for t in row]).view(len(docs), len(docs[0]), -1)
        return 10 * torch.einsum("bnd,bd->bn", d, q)


QUESTIONS = [
    MCQ("q1", "fever rash and joint pain in a child", {"A": "measles", "B": "gout", "C": "lupus"}, "A"),
    MCQ("q2", "tremor rigidity and slow movement", {"A": "stroke", "B": "parkinson disease"}, "B"),
]
PASSAGES = [
    ["measles causes fever and a rash", "gout affects the big toe", "lupus is autoimmune",
     "asthma narrows airways", "anemia lowers hemoglobin", "rickets softens bones"],
    ["parkinson disease shows tremor and rigidity", "stroke causes sudden weakness",
     "migraine brings headache", "epilepsy causes seizures", "neuropathy numbs feet",
     "vertigo spins the room"],
]


def run_step(scorer, model, seed: int = 0, tie_tolerance: float | None = None,
             listwise_beta: float | None = None, teacher=None, **cfg):
    if tie_tolerance is not None:
        cfg["objective"] = Component("pairwise", PairwiseParams(tie_tolerance=tie_tolerance))
    if listwise_beta is not None:
        cfg["objective"] = Component("listwise", ListwiseParams(beta=listwise_beta))
    config = JMLRConfig(k_sample=4, r_read=2, **cfg)
    return joint_step(QUESTIONS, PASSAGES, score_fn=scorer.score, model=model,
                      encode_fn=encode_words, cfg=config, teacher=teacher,
                      generator=torch.Generator().manual_seed(seed))


def grads(module: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}


def test_joint_step_shapes_values_and_consistency_for_batch_two():
    scorer, model = BagOfWordsScorer(), tiny_llama(4)
    out = run_step(scorer, model)
    assert out.scores.shape == (2, 6) and out.sampled.shape == (2, 4) and out.read.shape == (2, 2)
    assert out.utilities.shape == (2, 4) and not out.utilities.requires_grad
    stats = finalize(out.rank_stats)
    assert stats["n_pairs"] == 12 and 0.0 <= stats["rank_accuracy"] <= 1.0
    assert torch.equal(out.read, select_reading_passages(out.scores, 2))
    # the utilities are the losses of each sampled passage alone with its question
    texts = [[PASSAGES[b][j]] for b in range(2) for j in out.sampled[b].tolist()]
    direct = passage_utilities(model, encode_words([q for q in QUESTIONS for _ in range(4)], texts))
    assert torch.allclose(out.utilities.flatten(), direct, atol=1e-6)
    # the baseline is each question's loss with no passage at all
    alone = passage_utilities(model, encode_words(QUESTIONS, [[], []]))
    assert torch.allclose(out.baseline, alone, atol=1e-6)
    best = (alone.view(-1, 1) - out.utilities).max(-1).values.mean().item()
    assert finalize(out.rank_stats)["best_gain"] == pytest.approx(best, abs=1e-6)
    ranked = pairwise_rank_loss(out.scores.gather(1, out.sampled), out.utilities)
    assert out.rank_loss.item() == pytest.approx(ranked.loss.item(), abs=1e-6)
    gen_batch = encode_words(QUESTIONS, [[PASSAGES[b][j] for j in out.read[b].tolist()] for b in range(2)])
    assert out.gen_loss.item() == pytest.approx(generator_loss(model, gen_batch).item(), abs=1e-6)
    assert out.loss.item() == pytest.approx(out.gen_loss.item() + out.rank_loss.item(), abs=1e-6)
    utility_batch = encode_words([q for q in QUESTIONS for _ in range(4)] + QUESTIONS,
                                 texts + [[], []])
    assert out.n_tokens == int(utility_batch["attention_mask"].sum() + gen_batch["attention_mask"].sum())
    again = run_step(scorer, model)
    assert torch.equal(again.sampled, out.sampled) and again.loss.item() == out.loss.item()


def test_each_loss_reaches_only_its_own_model():
    scorer, model = BagOfWordsScorer(), tiny_llama(5)
    run_step(scorer, model, train_generator=False).loss.backward()   # L = λ·L_rank
    rank_scorer, rank_model = grads(scorer), grads(model)
    assert all(g is None for g in rank_model.values())
    assert rank_scorer["embed.weight"].abs().sum() > 0
    scorer.zero_grad(set_to_none=True)

    out = run_step(scorer, model, train_retriever=False)               # L = L_gen
    assert out.loss.item() == out.gen_loss.item() and out.rank_loss.item() > 0
    out.loss.backward()
    gen_scorer, gen_model = grads(scorer), grads(model)
    assert gen_scorer["embed.weight"] is None
    assert all(g is not None for g in gen_model.values())
    model.zero_grad(set_to_none=True)

    run_step(scorer, model, lambda_rank=0.5).loss.backward()          # both: the sum of the above
    assert torch.allclose(scorer.embed.weight.grad, 0.5 * rank_scorer["embed.weight"], atol=1e-7)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, gen_model[name], atol=1e-6), name


def test_the_configured_tie_tolerance_leaves_out_pairs_the_llm_cannot_tell_apart():
    scorer, model = BagOfWordsScorer(), tiny_llama(4)
    out = run_step(scorer, model)
    gaps = (out.utilities.unsqueeze(2) - out.utilities.unsqueeze(1)).abs()
    first, second = torch.triu_indices(4, 4, offset=1)
    tolerance = float(gaps[:, first, second].flatten().median())
    wide = run_step(scorer, model, tie_tolerance=tolerance)
    assert torch.equal(wide.sampled, out.sampled)
    n_pairs = finalize(out.rank_stats)["n_pairs"]
    assert finalize(wide.rank_stats)["n_pairs"] == int((gaps[:, first, second] > tolerance).sum()) < n_pairs
    expected = pairwise_rank_loss(out.scores.gather(1, out.sampled), out.utilities, tolerance)
    assert wide.rank_loss.item() == pytest.approx(expected.loss.item(), abs=1e-6)


def test_frozen_retriever_baseline_and_listwise_objective():
    scorer, model = BagOfWordsScorer(), tiny_llama(6)
    trained = run_step(scorer, model)
    frozen = run_step(scorer, model, train_retriever=False)
    assert torch.equal(frozen.sampled, trained.sampled) and torch.equal(frozen.read, trained.read)
    assert frozen.gen_loss.item() == trained.gen_loss.item()
    listwise = run_step(scorer, model, listwise_beta=0.5)
    assert set(listwise.rank_stats) == {"top1_agreement", "best_gain"}   # its own, and the gain
    expected = listwise_kl_loss(listwise.scores.gather(1, listwise.sampled), listwise.utilities, 1.0, 0.5)
    assert listwise.rank_loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert listwise.rank_loss.item() != pytest.approx(trained.rank_loss.item(), abs=1e-4)
    neither = run_step(scorer, model, train_retriever=False, train_generator=False)
    assert not neither.loss.requires_grad


def test_joint_step_with_fewer_candidates_than_k_and_ragged_lists():
    scorer, model = BagOfWordsScorer(), tiny_llama(7)
    config = JMLRConfig(k_sample=4, r_read=5)
    out = joint_step(QUESTIONS, [PASSAGES[0][:3], PASSAGES[1][:5]], score_fn=scorer.score,
                     model=model, encode_fn=encode_words, cfg=config)
    assert out.sampled.shape == (2, 3) and out.read.shape == (2, 3)
    assert finalize(out.rank_stats)["n_pairs"] <= 6
    assert torch.isfinite(out.loss)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def real_parts(tmp_path_factory):
    """The project's own generator (tinycoder GGUF Llama + LoRA), prompt template and ColBERT
    scorer (MiniLM with a new projection), as the training loop wires them."""
    from jmlr.config import load_config
    from jmlr.generation.model import load_generator
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.scorer import TrainableScorer

    cfg = load_config(REPO / "configs" / "tiny.yaml")
    cache = tmp_path_factory.mktemp("cache")
    model, tokenizer = load_generator(cfg.generator, cache, device="cpu", for_training=True)
    checkpoint = prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim, cache)
    scorer = TrainableScorer.from_checkpoint(checkpoint, cfg.retriever.query_maxlen,
                                             cfg.retriever.doc_maxlen).train()
    return cfg, model, tokenizer, scorer


@pytest.mark.slow
def test_joint_step_end_to_end_with_the_prompt_template_and_colbert(real_parts):
    from jmlr.generation.prompts import collate, encode_example

    cfg, model, tokenizer, scorer = real_parts
    encode = prompt_encoder(tokenizer, cfg.jmlr, cfg.generator.max_length)
    out = joint_step(QUESTIONS, PASSAGES, score_fn=scorer, model=model, encode_fn=encode,
                     cfg=cfg.jmlr, generator=torch.Generator().manual_seed(0))
    k, r = cfg.jmlr.k_sample, cfg.jmlr.r_read
    assert out.sampled.shape == (2, k) and out.read.shape == (2, r)
    assert torch.isfinite(out.loss) and finalize(out.rank_stats)["n_pairs"] > 0
    assert model.training and scorer.training          # modes left as the loop set them
    # utility of the first drawn passage of question 2, encoded and scored on its own
    alone = collate([encode_example(tokenizer, QUESTIONS[1], [PASSAGES[1][int(out.sampled[1, 0])]],
                                    cfg.jmlr.target, cfg.jmlr.utility_span, cfg.generator.max_length)],
                    tokenizer.pad_token_id)
    assert out.utilities[1, 0].item() == pytest.approx(passage_utilities(model, alone).item(), abs=1e-5)
    out.loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]   # lora_A: 0 while B = 0
    assert trainable and all(p.grad is not None for p in trainable)
    assert lora_b and all(p.grad.abs().sum() > 0 for p in lora_b)
    assert frozen and all(p.grad is None for p in frozen)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.parameters())
    model.zero_grad(set_to_none=True)
    scorer.zero_grad(set_to_none=True)

    rank_only = replace(cfg.jmlr, train_generator=False)
    joint_step(QUESTIONS, PASSAGES, score_fn=scorer, model=model, encode_fn=encode,
               cfg=rank_only, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in scorer.parameters())
    scorer.zero_grad(set_to_none=True)


def test_utility_sequences_come_from_the_utility_encoder():
    scorer, model = BagOfWordsScorer(), tiny_llama(4)
    calls: list[int] = []

    def utility_encoder(questions, passages):
        calls.append(len(questions))
        return encode_words(questions, passages)

    config = JMLRConfig(k_sample=4, r_read=2)
    out = joint_step(QUESTIONS, PASSAGES, score_fn=scorer.score, model=model,
                     encode_fn=encode_words, cfg=config, utility_encode_fn=utility_encoder,
                     generator=torch.Generator().manual_seed(0))
    assert calls == [2 * 4 + 2]          # the B·k utility sequences and B with no passage, only those
    same = run_step(BagOfWordsScorer(), model)
    assert torch.allclose(out.utilities, same.utilities)  # same encoder → same values


# --------------------------------------------------------------------------- the teacher


def test_base_teacher_gives_the_untrained_generators_utilities_while_the_generator_trains():
    from peft import LoraConfig, get_peft_model

    from jmlr.training.teacher import BaseTeacher

    model = get_peft_model(tiny_llama(11), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    norm = model.get_base_model().model.norm.weight
    norm.requires_grad_(True)                                   # trained in place (LongLoRA)
    scorer = BagOfWordsScorer()
    teacher = BaseTeacher(model)
    before = run_step(scorer, model).utilities
    with torch.no_grad():                                       # "training" moves the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
        norm.mul_(3.0)
    current = run_step(scorer, model).utilities
    base = run_step(scorer, model, teacher=teacher).utilities
    assert not torch.allclose(current, before, atol=1e-3)        # the trained model judges differently
    assert torch.allclose(base, before, atol=1e-5)               # the teacher is the untrained one
    assert float(norm.detach().mean()) == pytest.approx(3.0 * float(teacher.in_place[0][1].mean()))
    again = run_step(scorer, model).utilities                    # and the swap was undone
    assert torch.allclose(again, current, atol=1e-6)


def test_base_teacher_needs_lora_adapters_and_the_config_says_so_at_load():
    from jmlr.config import load_config
    from jmlr.errors import ConfigError
    from jmlr.training.teacher import BaseTeacher

    with pytest.raises(ValueError, match="need a generator with LoRA adapters"):
        BaseTeacher(tiny_llama(1))
    with pytest.raises(ConfigError, match="jmlr.utility_model=base .* needs generator.lora_r > 0"):
        load_config(None, ["jmlr.utility_model=base", "generator.lora_r=0"])


def test_a_frozen_baseline_can_skip_the_utilities_nobody_trains_on():
    scorer, model = BagOfWordsScorer(), tiny_llama(6)
    full = run_step(scorer, model, train_retriever=False)
    lean = run_step(scorer, model, train_retriever=False, utilities_when_frozen=False)
    assert torch.equal(lean.read, full.read) and torch.equal(lean.sampled, full.sampled)
    assert lean.loss.item() == full.loss.item() == lean.gen_loss.item()   # the same L_gen
    assert bool(lean.utilities.isnan().all()) and lean.rank_stats == {}
    assert lean.n_tokens < full.n_tokens
    # the option applies to a frozen retriever only: a retriever that trains needs them
    assert not run_step(scorer, model, utilities_when_frozen=False).utilities.isnan().any()


def test_min_gain_keeps_only_what_some_passage_helps_with():
    """Hand-computed: baseline 3.0; gains 2.0, 1.0, 0.1, -1.0 for the four passages."""
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    utilities = torch.tensor([[1.0, 2.0, 2.9, 4.0]])
    baseline = torch.tensor([3.0])
    pairwise = RANK_OBJECTIVES.get("pairwise")
    every = pairwise(scores, utilities, PairwiseParams(), baseline)
    helped = pairwise(scores, utilities, PairwiseParams(min_gain=0.5), baseline)
    # every pair: 6; the better passage must help by >= 0.5: pairs led by passages 0 or 1 (3 + 2)
    assert every.stats["n_pairs"].total == 6 and helped.stats["n_pairs"].total == 5
    expected = pairwise_rank_loss(scores, utilities, eligible=torch.tensor([[True, True, False, False]]))
    assert helped.loss.item() == pytest.approx(expected.loss.item())
    margins = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0])     # s_b - s_a for the 5 pairs, a better
    assert helped.loss.item() == pytest.approx(F.softplus(margins).mean().item(), abs=1e-6)
    listwise = RANK_OBJECTIVES.get("listwise")
    none_help = listwise(scores, utilities, ListwiseParams(min_gain=2.5), baseline)
    assert none_help.loss.item() == 0.0 and none_help.stats["rows_used"].total == 0
    some_help = listwise(scores, utilities, ListwiseParams(min_gain=1.5), baseline)
    assert some_help.loss.item() == pytest.approx(listwise_kl_loss(scores, utilities).item())
