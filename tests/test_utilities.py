"""Passage utilities (jmlr.utility): each entry against a value computed by hand from plain
full-sequence forwards of the tiny real generator (tinycoder, random weights), and the joint
step and training run using the configured one."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from tiny_retrieval import make_passages, make_questions

from jmlr.config import load_config
from jmlr.errors import ConfigError
from jmlr.evaluation.mcq import build_item
from jmlr.generation.model import load_generator
from jmlr.registry import UTILITIES
from jmlr.training.objective import joint_step, prompt_encoder
from jmlr.training.teacher import BaseTeacher, teacher_context
from jmlr.training.utilities import gold_share_loss, utility_fn

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("utilities")
    passages = make_passages(6, seed=3)
    questions = make_questions(passages, "u", range(3), seed=4)
    return root, passages, questions


def config(root: Path, *extra: str):
    return load_config(REPO / "configs" / "tiny.yaml",
                       [f"run.out_dir={root / 'run'}", f"run.cache_dir={root / 'cache'}", *extra])


@pytest.fixture(scope="module")
def generator(world):
    root, _, _ = world
    cfg = config(root)
    return load_generator(cfg.generator, cfg.run.cache_dir, for_training=True)


def option_mean_logprobs(model, tokenizer, question, passages, max_length) -> list[float]:
    """Each option text's mean log-probability after the prompt, one plain forward per option."""
    item = build_item(tokenizer, question, passages, max_length)
    found = []
    with torch.no_grad():
        for cont in item.continuation_ids:
            ids = item.prompt_ids + cont
            lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            start = len(item.prompt_ids)
            found.append(sum(lp[start - 1 + j, t].item() for j, t in enumerate(cont)) / len(cont))
    return found


def test_gold_share_loss_by_hand():
    # Two options scored 1.0 and -1.0, gold the second: -log(e^-1 / (e^1 + e^-1)).
    out = gold_share_loss([[1.0, -1.0], [0.5, 0.5, 0.5]], [1, 2])
    assert out[0].item() == pytest.approx(-math.log(math.exp(-1) / (math.exp(1) + math.exp(-1))))
    assert out[1].item() == pytest.approx(math.log(3))


def test_option_contrast_is_the_gold_share_of_plain_forwards(world, generator):
    root, passages, questions = world
    model, tokenizer = generator
    cfg = config(root, "jmlr.utility=option_contrast")
    utilities = utility_fn(cfg, tokenizer)
    rows = [(questions[0], [passages[0].full_text]), (questions[1], []),
            (questions[2], [passages[2].full_text, passages[3].full_text])]
    got = utilities(model, [q for q, _ in rows], [p for _, p in rows]).losses
    for value, (q, read) in zip(got.tolist(), rows, strict=True):
        scores = option_mean_logprobs(model, tokenizer, q, read, cfg.generator.max_length)
        gold = list(q.options).index(q.answer)
        expected = -(scores[gold] - math.log(sum(math.exp(s) for s in scores)))
        assert value == pytest.approx(expected, abs=1e-4)
    assert got.shape == (3,) and not got.requires_grad


def test_option_contrast_ignores_what_every_option_gains(world, generator):
    """Only the options' differences count: when every option has the same text, the gold
    share is 1/n exactly, whatever the passage or the words the options share."""
    root, _, questions = world
    model, tokenizer = generator
    cfg = config(root, "jmlr.utility=option_contrast")
    utilities = utility_fn(cfg, tokenizer)
    same = dataclasses.replace(questions[0], options={k: "gout" for k in questions[0].options})
    out = utilities(model, [same], [[]]).losses
    assert out.item() == pytest.approx(math.log(len(same.options)), abs=1e-5)


def test_bucketed_utilities_equal_one_forward(world, generator):
    root, passages, questions = world
    model, tokenizer = generator
    qs = [questions[i % 3] for i in range(5)]
    read = [[passages[i].full_text] for i in range(4)] + [[]]
    for name in UTILITIES.names():
        one = utility_fn(config(root, f"jmlr.utility={name}"), tokenizer)(model, qs, read).losses
        many = utility_fn(config(root, f"jmlr.utility={name}", "jmlr.utility_tokens_per_forward=200"),
                          tokenizer)(model, qs, read).losses
        assert torch.allclose(one, many, atol=1e-4), name


def test_answer_loss_entry_is_the_step_s_own_utility(world, generator):
    """jmlr.utility=answer_loss through utility_fn gives exactly what the step computes from
    its utility encoder (the paper's utility, unchanged)."""
    root, passages, questions = world
    model, tokenizer = generator
    cfg = config(root)
    assert cfg.jmlr.utility == "answer_loss"
    texts = [[p.full_text for p in passages[:4]] for _ in questions[:2]]

    def score_fn(queries, docs):
        return torch.tensor([[float(len(d)) for d in row] for row in docs])

    common = dict(score_fn=score_fn, model=model, cfg=dataclasses.replace(cfg.jmlr, train_retriever=False),
                  encode_fn=prompt_encoder(tokenizer, cfg.jmlr, cfg.generator.max_length))
    plain = joint_step(questions[:2], texts, generator=torch.Generator().manual_seed(0),
                       utility_encode_fn=prompt_encoder(tokenizer, cfg.jmlr, cfg.generator.max_length,
                                                        for_utility=True), **common)
    through = joint_step(questions[:2], texts, generator=torch.Generator().manual_seed(0),
                         utility_fn=utility_fn(cfg, tokenizer), **common)
    assert torch.allclose(plain.utilities, through.utilities, atol=1e-6)
    assert torch.allclose(plain.baseline, through.baseline, atol=1e-6)
    assert through.n_tokens == plain.n_tokens        # the utility forwards count in tokens/s


def test_option_contrast_under_the_base_teacher_ignores_the_adapter(world, generator):
    root, passages, questions = world
    model, tokenizer = generator
    utilities = utility_fn(config(root, "jmlr.utility=option_contrast"), tokenizer)
    teacher = BaseTeacher(model)
    read = [[passages[0].full_text]]
    before = utilities(model, questions[:1], read).losses
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    try:
        with teacher_context(teacher):
            as_base = utilities(model, questions[:1], read).losses
        changed = utilities(model, questions[:1], read).losses
    finally:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.sub_(0.5)
    assert as_base.item() == pytest.approx(before.item(), abs=1e-5)
    assert changed.item() != pytest.approx(before.item(), abs=1e-3)


def test_an_unknown_utility_is_refused_at_load_naming_the_known_ones(world):
    root, _, _ = world
    with pytest.raises(ConfigError, match="answer_loss, option_contrast"):
        config(root, "jmlr.utility=letter_share")
