"""Extension by registration: a rank loss, a stage and a training step added from test code
alone (no edit to any module), each run through the real loop and the real command line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_retrieval import tiny_task

from jmlr.config_fields import Component
from jmlr.errors import ConfigError
from jmlr.registry import CONFIG_SECTIONS, RANK_OBJECTIVES, STAGES, TRAINING_STEPS, Registry
from jmlr.stage import Stage
from jmlr.training.rank_objectives import RankLoss, RankObjective
from jmlr.training.stats import mean, total
from jmlr.training.steps.base import StepOutput, TrainingStep

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from jmlr.retrieval.candidates import run_mine

    found = tiny_task(tmp_path_factory.getbasetemp())
    if not (found.root / "reg_candidates" / "dev.jsonl").is_file():
        from jmlr.config import load_config

        cfg = load_config(found.config_path, [f"candidates.path={found.root / 'reg_candidates'}",
                                              f"retriever.index_dir={found.cfg.index_dir}",
                                              f"run.out_dir={found.root / 'reg-mine'}"])
        run_mine(cfg, splits=["train", "dev"])
    return found


def cli_args(task, out_dir: Path, *extra: str) -> list[str]:
    return ["-c", str(task.config_path), f"candidates.path={task.root / 'reg_candidates'}",
            f"retriever.index_dir={task.cfg.index_dir}", f"run.out_dir={out_dir}",
            "train.eval_every=-1", *extra]


def train_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line and "split" not in json.loads(line)]


# --------------------------------------------------------------------------- the registry itself


def test_registry_rejects_taken_names_and_lists_what_it_knows():
    shapes = Registry("shape")
    shapes.register("square", 4)
    with pytest.raises(ValueError, match="already registered"):
        shapes.register("square", 5)
    shapes.register("square", 5, replace=True)
    assert shapes.get("square") == 5 and "square" in shapes and shapes.names() == ("square",)
    with pytest.raises(ConfigError, match=r"unknown shape 'circle' \(known: square\)"):
        shapes.get("circle")
    with pytest.raises(ValueError, match="must be letters"):
        shapes.register("no spaces", 1)


# --------------------------------------------------------------------------- a toy rank loss


@dataclass
class MarginParams:
    margin: float = 1.0

    def validate(self, key: str) -> None:
        if self.margin <= 0:
            raise ConfigError(f"{key}.margin must be > 0")


def margin_loss(scores: torch.Tensor, utilities: torch.Tensor, params: MarginParams,
                baseline: torch.Tensor | None = None) -> RankLoss:
    """Hinge on the best-utility passage against every other drawn one."""
    best = utilities.argmin(-1, keepdim=True)
    gap = scores.gather(1, best) - scores                                   # [B, k]
    others = torch.ones_like(scores, dtype=torch.bool).scatter(1, best, False)
    hinge = F.relu(params.margin - gap)[others]
    return RankLoss(hinge.mean(), {"violations": total(int((hinge > 0).sum())),
                                   "margin_ok": mean(int((hinge == 0).sum()), hinge.numel())})


@pytest.fixture
def toy_rank_loss():
    RANK_OBJECTIVES.register("toy_margin", RankObjective(margin_loss, MarginParams))
    yield
    RANK_OBJECTIVES.unregister("toy_margin")


def test_a_rank_loss_from_test_code_trains_through_the_real_loop_and_cli(task, tmp_path, run_cli,
                                                                         toy_rank_loss):
    run_dir = tmp_path / "run"
    code, _, err = run_cli("train", *cli_args(task, run_dir, "train.max_steps=2",
                                              "jmlr.objective={name: toy_margin, margin: 0.5}"))
    assert code == 0, err
    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    # its own diagnostics are logged by name; the pairwise loss's are not
    assert all("violations" in r and 0 <= r["margin_ok"] <= 1 for r in rows)
    assert not any("n_pairs" in r or "rank_accuracy" in r for r in rows)
    assert all(r["rank_loss"] >= 0 and r["grad_norm_retriever"] > 0 for r in rows)
    saved = (run_dir / "config.yaml").read_text()
    assert "name: toy_margin" in saved and "margin: 0.5" in saved
    # its parameters are checked when the config loads, before any model is read
    code, _, err = run_cli("train", *cli_args(task, tmp_path / "bad2",
                                              "jmlr.objective={name: toy_margin, margin: -1}"))
    assert code == 2 and "jmlr.objective.margin must be > 0" in err
    assert not (tmp_path / "bad2").exists()


# --------------------------------------------------------------------------- a toy stage


@dataclass
class ToySection:
    level: int = 1
    words: list[str] | None = None

    def validate(self, key: str) -> None:
        if self.level < 0:
            raise ConfigError(f"{key}.level must be >= 0")


SEEN: list = []


def run_toy(cfg, args) -> int:
    SEEN.append((cfg.toy.level, cfg.toy.words, args.shout, cfg.run.out_dir))
    print(f"toy at level {cfg.toy.level}")
    return 0


@pytest.fixture
def toy_stage():
    from jmlr.evaluation.report_render import Section

    def toy_arguments(parser):
        parser.add_argument("--shout", action="store_true")

    def toy_report(cfg, run_dir):
        return [Section("Toy", f"<p>toy level {cfg.toy.level}</p>", f"toy level {cfg.toy.level}")]

    CONFIG_SECTIONS.register("toy", ToySection)
    STAGES.register("toy", Stage(help="a toy stage", run=run_toy, arguments=toy_arguments,
                                 section="toy", report=toy_report))
    yield
    STAGES.unregister("toy")
    CONFIG_SECTIONS.unregister("toy")


def test_a_stage_from_test_code_is_a_subcommand_with_its_own_config_section(task, tmp_path,
                                                                          run_cli, toy_stage):
    SEEN.clear()
    code, out, err = run_cli("toy", "-c", task.config_path, "toy.level=3", "toy.words=[a, b]",
                             "--shout")
    assert code == 0, err
    assert "toy at level 3" in out
    assert [(level, words, shout) for level, words, shout, _ in SEEN] == [(3, ["a", "b"], True)]
    code, _, err = run_cli("toy", "-c", task.config_path, "toy.level=-1")
    assert code == 2 and "toy.level must be >= 0" in err
    code, _, err = run_cli("toy", "-c", task.config_path, "toy.lvl=2")
    assert code == 2 and "unknown config key 'toy.lvl'" in err
    with pytest.raises(SystemExit):
        run_cli("--help")
    # the run report takes the stage's section
    from jmlr.config import load_config
    from jmlr.evaluation.report import run_report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    paths = run_report(load_config(task.config_path, ["toy.level=7"]), run_dir)
    assert "toy level 7" in Path(paths["markdown"]).read_text()


def test_the_help_lists_registered_stages(run_cli, toy_stage, capsys):
    from jmlr.cli import build_parser

    text = build_parser().format_help()
    for name in ("index", "mine", "train", "evaluate", "demo", "toy"):
        assert name in text


# --------------------------------------------------------------------------- a toy training step


class GoldRetrieverStep(TrainingStep):
    """Trains the retriever alone on gold labels (cross-entropy over the mined candidates):
    a retriever-only step, which must not load a generator."""

    def load_data(self):
        from jmlr.training import components as parts

        self.data = parts.load_training_data(self.cfg)
        return [q for q in self.data.train if q.gold_passage_ids]

    def build_models(self):
        from jmlr.retrieval.backends import backend_for

        retriever = backend_for(self.cfg).load_scorer(self.cfg)
        retriever.requires_grad_(True)
        return {"retriever": retriever}

    def learning_rates(self):
        return {"retriever": self.cfg.train.retriever_lr}

    def compute(self, models, questions, sampler):
        ids = [self.data.train_candidates[q.id].passage_ids for q in questions]
        width = min(len(row) for row in ids)
        texts = [[self.data.passages[p].full_text for p in row[:width]] for row in ids]
        scores = models["retriever"].score([q.retrieval_query for q in questions], texts)
        gold = torch.tensor([[p in q.gold_passage_ids for p in row[:width]]
                             for q, row in zip(questions, ids, strict=True)])
        log_p = scores.log_softmax(-1)
        loss = -(log_p.masked_fill(~gold, 0).sum(-1) / gold.sum(-1).clamp_min(1)).mean()
        hits = int((scores.argmax(-1) == gold.float().argmax(-1)).sum())
        return StepOutput(loss, {"loss": mean(float(loss.detach())),
                                 "gold_top1": mean(hits, len(questions))})

    def save_model(self, name, model, path):
        model.save(path)


@pytest.fixture
def toy_step():
    TRAINING_STEPS.register("toy_gold_retriever", GoldRetrieverStep)
    yield
    TRAINING_STEPS.unregister("toy_gold_retriever")


def test_a_retriever_only_step_loads_no_generator(task, tmp_path, run_cli, toy_step, monkeypatch):
    from jmlr.generation import model as generation

    def no_generator(*args, **kwargs):
        raise AssertionError("a retriever-only step loaded the generator")

    monkeypatch.setattr(generation, "load_generator", no_generator)
    run_dir = tmp_path / "run"
    code, _, err = run_cli("train", *cli_args(task, run_dir, "train.step=toy_gold_retriever",
                                              "train.max_steps=3", "train.save_every=2"))
    assert code == 0, err
    rows = train_rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and all("gold_top1" in r for r in rows)
    assert "grad_norm_retriever" in rows[0] and "lr_retriever" in rows[0]
    assert not any(k.endswith("generator") for r in rows for k in r)
    assert sorted(p.name for p in (run_dir / "final").iterdir()) == ["retriever"]
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["step_kind"] == "toy_gold_retriever"
    assert [g["name"] for g in summary["optimizer_groups"]] == ["retriever", "retriever_no_decay"]
    # resume continues the same run exactly where it stopped
    code, _, err = run_cli("train", *cli_args(task, run_dir, "train.step=toy_gold_retriever",
                                              "train.max_steps=4", "train.save_every=2"),
                           "--resume")
    assert code == 0, err
    assert [r["step"] for r in train_rows(run_dir)] == [1, 2, 3, 4]


def test_components_default_to_their_entry_parameters():
    from jmlr.config import JMLRConfig, load_config

    assert load_config(None).jmlr.objective.params.tie_tolerance == 1e-6
    raw = JMLRConfig()                       # built in code, not loaded: parameters filled on use
    assert raw.objective == Component("pairwise")
    out = RANK_OBJECTIVES.get("pairwise")(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.1, 0.5]]))
    assert out.stats["n_pairs"].total == 1
