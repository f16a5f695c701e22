"""`jmlr demo` run again: finished stages whose inputs are unchanged are kept, a stage whose
inputs changed is redone with every stage after it, an interrupted stage continues.

Toy stages registered in place of the built-in ones run the logic of ``jmlr/pipeline.py`` in
milliseconds; one slow test runs the real demo twice on tiny models."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from jmlr.config import Config, load_config
from jmlr.demo_stamps import DemoIO, changes, fingerprint, missing
from jmlr.errors import Busy, Stopped
from jmlr.pipeline import run_demo
from jmlr.registry import STAGES
from jmlr.stage import Stage

REPO = Path(__file__).resolve().parents[1]
TOYS = ("toy-prepare", "toy-index", "toy-mine", "toy-train", "toy-evaluate", "toy-report")
CALLS: list[tuple[str, object]] = []
STOP_AT: dict[str, int] = {}            # toy-train stops (as by a signal) after this step


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _run(cfg: Config) -> Path:
    return Path(cfg.run.out_dir)


# Each toy reads what the one before wrote (a file named in its DemoIO) and writes one file.
def toy_prepare(cfg: Config, quick: bool) -> None:
    CALLS.append(("toy-prepare", None))
    _write(_run(cfg) / "data" / "task.txt", f"task seed {cfg.run.seed}")


def toy_index(cfg: Config, quick: bool) -> None:
    CALLS.append(("toy-index", None))
    _write(_run(cfg) / "index" / "index.txt", (_run(cfg) / "data" / "task.txt").read_text())


def toy_mine(cfg: Config, quick: bool) -> None:
    CALLS.append(("toy-mine", None))
    _write(_run(cfg) / "candidates" / "train.txt", f"top {cfg.candidates.top_n}")


def toy_train(cfg: Config, quick: bool) -> None:
    """Steps up to train.max_steps with a checkpoint after each; continues from the last."""
    run = _run(cfg)
    done = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    start = done[-1] if done else 0
    CALLS.append(("toy-train", start))
    for step in range(start + 1, cfg.train.max_steps + 1):
        _write(run / "checkpoints" / f"step-{step}", f"lr {cfg.train.generator_lr}")
        if STOP_AT.get("toy-train") == step:
            raise Stopped("SIGTERM", f"stopped at step {step}")
    _write(run / "final" / "weights.txt", f"trained {cfg.train.max_steps} steps")


def toy_evaluate(cfg: Config, quick: bool) -> dict:
    CALLS.append(("toy-evaluate", None))
    _write(_run(cfg) / "eval" / "metrics.txt", f"limit {cfg.eval.limit}")
    return {"accuracy": 1.0}


def toy_report(cfg: Config, quick: bool) -> None:
    CALLS.append(("toy-report", None))
    _write(_run(cfg) / "report.md", "report")


def toy_io(cfg: Config, quick: bool, name: str) -> DemoIO:
    run = _run(cfg)
    return {
        "toy-prepare": DemoIO(config=("run.seed",), values={"quick": quick},
                              outputs=(run / "data",)),
        "toy-index": DemoIO(config=("retriever",), files=(run / "data" / "task.txt",),
                            outputs=(run / "index",)),
        "toy-mine": DemoIO(config=("candidates",), files=(run / "index",),
                           outputs=(run / "candidates",)),
        "toy-train": DemoIO(config=("train", "jmlr"), files=(run / "candidates" / "train.txt",),
                            outputs=(run / "checkpoints", run / "final")),
        "toy-evaluate": DemoIO(config=("eval",), files=(run / "final",),
                               outputs=(run / "eval",),
                               unfinished=missing(run / "eval" / "metrics.txt")),
        "toy-report": DemoIO(config=tuple(cfg.to_dict()), files=(run / "eval",),
                             outputs=(run / "report.md",)),
    }[name]


@pytest.fixture
def toy_demo(tmp_path):
    """The toys as the demo's only stages (the built-in ones lose their demo function
    meanwhile), and a config whose run folder is under tmp_path."""
    functions = dict(zip(TOYS, (toy_prepare, toy_index, toy_mine, toy_train, toy_evaluate,
                                toy_report), strict=True))
    builtin = {name: stage for name, stage in STAGES.items() if stage.demo is not None}
    for name, stage in builtin.items():
        STAGES.register(name, dataclasses.replace(stage, demo=None, demo_io=None), replace=True)
    for name in TOYS:
        STAGES.register(name, Stage(help=name, run=lambda cfg, args: None, demo=functions[name],
                                    demo_io=lambda cfg, quick, name=name: toy_io(cfg, quick, name)))
    CALLS.clear()
    STOP_AT.clear()
    yield lambda *overrides: load_config(REPO / "configs" / "tiny.yaml",
                                         [f"run.out_dir={tmp_path / 'run'}", *overrides])
    for name in TOYS:
        STAGES.unregister(name)
    for name, stage in builtin.items():
        STAGES.register(name, stage, replace=True)


def _mtimes(run: Path) -> dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*")
            if p.is_file() and ".demo" not in p.parts}


def _lines(caplog) -> dict[str, str]:
    """The demo's line for each stage: ``{"toy-index": "kept (inputs unchanged since ...)"}``."""
    said = {}
    for record in caplog.records:
        message = record.getMessage()
        for name in TOYS:
            if message == f"demo: {name}" or message.startswith(f"demo: {name} "):
                said[name] = message[len(f"demo: {name}"):].strip()
    return said


def test_a_second_demo_keeps_every_stage_and_touches_no_output(toy_demo, caplog, capsys):
    cfg = toy_demo()
    first = run_demo(cfg)
    assert first["ran"] == list(TOYS) and first["kept"] == []
    run = Path(cfg.run.out_dir)
    before = _mtimes(run)
    assert sorted(p.name for p in (run / ".demo").glob("*.json")) == sorted(f"{n}.json" for n in TOYS)
    CALLS.clear()
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        second = run_demo(cfg)
    assert CALLS == []
    assert second["kept"] == list(TOYS) and second["ran"] == []
    lines = _lines(caplog)
    assert all(lines[name].startswith("kept (inputs unchanged since 20") for name in TOYS), lines
    assert _mtimes(run) == before
    printed = capsys.readouterr().out
    assert f"Kept (inputs unchanged): {', '.join(TOYS)}." in printed and "Ran: none." in printed


def test_a_changed_training_key_redoes_train_and_what_follows_only(toy_demo, caplog, capsys):
    run_demo(toy_demo())
    CALLS.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        result = run_demo(toy_demo("train.generator_lr=0.002"))
    assert result["kept"] == ["toy-prepare", "toy-index", "toy-mine"]
    assert result["ran"] == ["toy-train", "toy-evaluate", "toy-report"]
    lines = _lines(caplog)
    assert lines["toy-train"] == "redone: train.generator_lr 0.001 -> 0.002"
    assert lines["toy-evaluate"] == "redone: toy-train ran before it"
    assert lines["toy-report"] == "redone: toy-evaluate ran before it"
    # redone from nothing: its old checkpoints were removed, so it started at step 0
    assert ("toy-train", 0) in CALLS
    run = Path(toy_demo().run.out_dir)
    assert (run / "checkpoints" / "step-3").read_text() == "lr 0.002"
    assert "Ran: toy-train" in capsys.readouterr().out


def test_a_changed_input_file_redoes_the_stage_that_reads_it(toy_demo, caplog):
    cfg = toy_demo()
    run_demo(cfg)
    task = Path(cfg.run.out_dir) / "data" / "task.txt"
    task.write_text("edited by hand", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        result = run_demo(cfg)
    assert result["kept"] == ["toy-prepare"]
    assert _lines(caplog)["toy-index"] == f"redone: {task} changed"
    assert (Path(cfg.run.out_dir) / "index" / "index.txt").read_text() == "edited by hand"


def test_a_missing_output_is_made_again(toy_demo, caplog):
    cfg = toy_demo()
    run_demo(cfg)
    metrics = Path(cfg.run.out_dir) / "eval" / "metrics.txt"
    metrics.unlink()
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        result = run_demo(cfg)
    assert result["ran"] == ["toy-evaluate", "toy-report"]
    assert _lines(caplog)["toy-evaluate"] == f"redone: {metrics} is missing"
    assert metrics.is_file()


def test_an_interrupted_training_resumes_and_a_changed_one_starts_over(toy_demo, caplog):
    cfg = toy_demo()
    STOP_AT["toy-train"] = 2
    with pytest.raises(Stopped):
        run_demo(cfg)
    STOP_AT.clear()
    CALLS.clear()
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        result = run_demo(cfg)
    assert ("toy-train", 2) in CALLS                       # continued from its checkpoint
    assert _lines(caplog)["toy-train"].startswith("resumed (started 20")
    assert result["kept"] == ["toy-prepare", "toy-index", "toy-mine"]
    # interrupted again, then run with another config: the checkpoints are not reused
    run = Path(cfg.run.out_dir)
    STOP_AT["toy-train"] = 2
    with pytest.raises(Stopped):
        run_demo(toy_demo("train.max_steps=4"))
    STOP_AT.clear()
    CALLS.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        run_demo(toy_demo("train.max_steps=5"))
    assert ("toy-train", 0) in CALLS
    assert _lines(caplog)["toy-train"] == "redone: train.max_steps 4 -> 5"
    assert (run / "final" / "weights.txt").read_text() == "trained 5 steps"


def test_outputs_without_a_record_are_made_again(toy_demo, caplog):
    cfg = toy_demo()
    run_demo(cfg)
    for stamp in (Path(cfg.run.out_dir) / ".demo").glob("*.json"):
        stamp.unlink()               # a run folder from before the records existed
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        result = run_demo(cfg)
    assert result["ran"] == list(TOYS)
    assert _lines(caplog)["toy-prepare"] == ("redone: its outputs have no record of the inputs "
                                             "they were made from")


def test_one_demo_per_run_folder(toy_demo):
    from jmlr.io import exclusive

    cfg = toy_demo()
    with exclusive(Path(cfg.run.out_dir) / ".demo" / "demo.lock", "jmlr demo"), \
            pytest.raises(Busy, match="in use by another jmlr demo"):
        run_demo(cfg)
    assert CALLS == []


def test_fingerprints_name_what_changed(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"id": "p1", "text": "x"}\n', encoding="utf-8")
    io = DemoIO(config=("train.max_steps", "jmlr.objective"), files=(data, tmp_path / "absent"))
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    before = fingerprint(cfg, io)
    # a section or a key selects everything under it, by dotted name
    assert "train.max_steps" in before["config"] and "train.generator_lr" not in before["config"]
    assert {"jmlr.objective.name", "jmlr.objective.tie_tolerance"} <= set(before["config"])
    assert before["files"][str(tmp_path / "absent")] == "missing"
    assert fingerprint(cfg, io) == before
    data.write_text('{"id": "p1", "text": "y"}\n', encoding="utf-8")
    other = load_config(REPO / "configs" / "tiny.yaml",
                        ["train.max_steps=9", "jmlr.objective={name: listwise}"])
    said = changes(before, fingerprint(other, io))
    assert "train.max_steps 3 -> 9" in said and 'jmlr.objective.name "pairwise" -> "listwise"' in said
    assert f"{data} changed" in said


@pytest.mark.slow
@pytest.mark.colbert
@pytest.mark.timeout(600)
def test_the_real_demo_run_twice_keeps_every_stage(tmp_path, monkeypatch, caplog):
    """The built-in stages on tiny models (a random 2-layer BERT as the retriever's encoder,
    the tiny GGUF generator) and the smallest demo task."""
    from tiny_retrieval import make_tiny_bert

    from jmlr import stages

    monkeypatch.setitem(stages.QUICK, "diseases", 20)
    monkeypatch.setitem(stages.QUICK, "questions", 20)
    bert = make_tiny_bert(tmp_path / "tiny-bert")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"run.out_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}",
        f"retriever.checkpoint={bert}", "jmlr.utility_model=base", "jmlr.replay_questions=2",
        "jmlr.teacher_questions=10"])      # as configs/demo.yaml: the teacher file written first
    names = ["prepare-demo", "index", "mine", "train", "evaluate", "report"]
    first = run_demo(cfg, quick=True)
    assert first["ran"] == names and first["kept"] == []
    run = tmp_path / "run-quick"
    teacher = (run / "candidates" / "train.utilities.jsonl").read_text().splitlines()
    assert len(teacher) == stages.QUICK["teacher_questions"]     # capped when quick
    assert {"none", "frozen", "trained"} <= set(first["metrics"]["modes"])
    before = _mtimes(run)
    with caplog.at_level(logging.INFO, logger="jmlr.pipeline"):
        second = run_demo(cfg, quick=True)
    assert second["kept"] == names and second["ran"] == []
    assert _mtimes(run) == before
    kept = [r.getMessage() for r in caplog.records if "kept (inputs unchanged since" in r.getMessage()]
    assert len(kept) == len(names)
    # a training key: train, evaluate and report run again; the task, index and candidates stay
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, generator_lr=2e-3))
    third = run_demo(changed, quick=True)
    assert third["kept"] == ["prepare-demo", "index", "mine"]
    assert third["ran"] == ["train", "evaluate", "report"]
    assert _mtimes(run)["index/jmlr_index.json"] == before["index/jmlr_index.json"]


@pytest.mark.slow
@pytest.mark.colbert
@pytest.mark.timeout(600)
def test_the_demo_with_the_warmup_and_distil_switches_runs_both_first_and_keeps_them(
        tmp_path, monkeypatch):
    """``contrastive.before_joint_steps`` and ``distill.before_joint_steps`` in ``jmlr demo``:
    synthetic rows, the warm-up in RUN/warmup, then the distil run in RUN/distill from it (both
    capped when quick), the joint run starting from the distil run, all kept by a second demo."""
    import yaml
    from tiny_retrieval import make_tiny_bert

    from jmlr import stages

    monkeypatch.setitem(stages.QUICK, "diseases", 20)
    monkeypatch.setitem(stages.QUICK, "questions", 20)
    bert = make_tiny_bert(tmp_path / "tiny-bert")
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"run.out_dir={tmp_path / 'run'}", f"run.cache_dir={tmp_path / 'cache'}",
        f"retriever.checkpoint={bert}", "jmlr.utility_model=base",
        "distill.before_joint_steps=40", "distill.questions=160",
        "contrastive.before_joint_steps=30", "synthesize.passages=100",
        "synthesize.min_words=1", "synthesize.max_new_tokens=12"])
    first = run_demo(cfg, quick=True)
    run = tmp_path / "run-quick"

    def steps(folder):
        return [json.loads(line)["step"]
                for line in (run / folder / "metrics.jsonl").read_text().splitlines()]

    assert steps("warmup") == [1, 2] and steps("distill") == [1, 2]      # capped when quick
    synthetic = (run / "synthetic.jsonl").read_text().splitlines()
    assert 1 <= len(synthetic) <= stages.QUICK["teacher_questions"]     # passages capped too
    teacher = (run / "candidates" / "train.utilities.jsonl").read_text().splitlines()
    assert len(teacher) == stages.QUICK["teacher_questions"]
    distil = yaml.safe_load((run / "distill" / "config.yaml").read_text())
    assert distil["retriever"]["train_from"] == str(run / "warmup" / "final" / "retriever")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["retriever"]["train_from"] == str(run / "distill" / "final" / "retriever")
    assert "trained" in first["metrics"]["modes"]
    before = _mtimes(run)
    second = run_demo(cfg, quick=True)
    assert second["ran"] == [] and _mtimes(run) == before
