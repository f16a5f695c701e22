"""The training loop end to end on tiny real models: tiny Llama (tinycoder GGUF) as the
generator, a tiny random-weight ColBERT over a real PLAID index (tests/tiny_retrieval.py).

One uninterrupted reference run (4 optimizer steps of 2 accumulated micro-batches, crossing
an epoch, cosine schedule with warm-up, candidate refresh every step, checkpoints at 2 and 4)
is compared with runs interrupted and resumed, pinned, and its exports reloaded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_retrieval import tiny_task

from jmlr.config import load_config
from jmlr.training import checkpoint as ckpt
from jmlr.training.components import _digest

pytestmark = pytest.mark.timeout(600)   # colbert-ai can hang when a worker dies

REPO = Path(__file__).resolve().parents[1]
TIMING = {"tokens_per_s", "flops_per_s_est", "elapsed", "epoch"}
REFERENCE = ["train.max_steps=4", "train.grad_accum=2", "train.save_every=2",
             "train.eval_every=2", "train.lr_scheduler=cosine", "train.warmup_steps=1",
             "train.weight_decay=0.01", "candidates.refresh_every=1"]
# Losses of the reference run's first steps (recorded once; a change means the objective,
# the prompts, the models, the data order or the draws of the retriever's dropout changed:
# encoding passages in length buckets draws its dropout masks in another order; clipping
# each model's gradients on its own changes the steps after the first; the index's
# nearest-centroid search in reused blocks rounds differently, which changes the candidates
# refreshed after step 2, so step 3's rank loss).
PINNED = [
    {"step": 1, "loss": 11.096685, "gen_loss": 10.367889, "rank_loss": 0.728796},
    {"step": 2, "loss": 11.037902, "gen_loss": 10.351916, "rank_loss": 0.685986},
    {"step": 3, "loss": 10.999738, "gen_loss": 10.354351, "rank_loss": 0.645387},
]
# Step 3 as found on other machines (same code; first pinned so, seen again on an AMD EPYC
# with AVX2 only): its candidates, refreshed after step 2, come from the index's
# nearest-centroid search, whose float rounding differs between machines; every other pinned
# value agreed on both.
STEP3_OTHER_CPU = {"loss": 10.998871, "gen_loss": 10.354351, "rank_loss": 0.644520}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The tiny retrieval task (index built once per session) with mined candidates."""
    from jmlr.retrieval.candidates import run_mine

    found = tiny_task(tmp_path_factory.getbasetemp())
    if not (found.root / "loop_candidates" / "dev.jsonl").is_file():
        run_mine(loop_config(found, found.root / "mine-run"), splits=["train", "dev"])
    return found


def loop_overrides(task, out_dir: Path, *extra: str) -> list[str]:
    return [f"candidates.path={task.root / 'loop_candidates'}",
            f"retriever.index_dir={task.cfg.index_dir}", f"run.out_dir={out_dir}", *extra]


def loop_config(task, out_dir: Path, *extra: str):
    return load_config(task.config_path, loop_overrides(task, out_dir, *extra))


def train(task, out_dir: Path, *extra: str, resume: bool = False) -> dict:
    from jmlr.training.loop import run_train

    return run_train(loop_config(task, out_dir, *extra), resume=resume)


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines if line]


@pytest.fixture(scope="module")
def reference(task, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    summary = train(task, run_dir, *REFERENCE)
    return run_dir, summary


# --------------------------------------------------------------------------- optimizer groups


def test_optimizer_groups_hold_exactly_the_intended_parameters(task, tmp_path):
    from jmlr.training.loop import TrainRecipe

    recipe = TrainRecipe(loop_config(task, tmp_path / "run", "train.weight_decay=0.1",
                                     "train.generator_lr=3e-4", "train.retriever_lr=2e-5"))
    recipe.setup()
    try:
        groups = {g.name: g for g in recipe.groups}
        assert list(groups) == ["generator", "generator_no_decay", "retriever", "retriever_no_decay"]
        assert [(g.lr, g.weight_decay) for g in groups.values()] == [
            (3e-4, 0.1), (3e-4, 0.0), (2e-5, 0.1), (2e-5, 0.0)]
        torch_groups = {g["name"]: g for g in recipe.optimizer.param_groups}
        assert {n: (g["lr"], g["weight_decay"]) for n, g in torch_groups.items()} == {
            n: (g.lr, g.weight_decay) for n, g in groups.items()}
        assert recipe.optimizer.optimizer.defaults["fused"] is True   # CPU float parameters
        gen_decay, gen_plain = groups["generator"].names, groups["generator_no_decay"].names
        assert gen_decay and all("lora_A" in n or "lora_B" in n for n in gen_decay)
        assert any("embed_tokens" in n for n in gen_plain) and any("norm" in n for n in gen_plain)
        assert not any("lora_" in n for n in gen_plain)
        ret_decay, ret_plain = groups["retriever"].names, groups["retriever_no_decay"].names
        assert any(n.endswith("linear.weight") for n in ret_decay)      # the ColBERT projection
        assert all(n.endswith("weight") and "LayerNorm" not in n and "embeddings" not in n
                   for n in ret_decay)
        assert any("LayerNorm" in n for n in ret_plain) and any(n.endswith("bias") for n in ret_plain)
        models = recipe.unwrapped_models()
        trainable = {id(p) for m in models.values() for p in m.parameters() if p.requires_grad}
        grouped = [id(p) for g in recipe.groups for p in g.params]
        assert len(grouped) == len(set(grouped)) and set(grouped) == trainable
        frozen = [n for n, p in models["generator"].named_parameters() if not p.requires_grad]
        assert any("q_proj.base_layer.weight" in n for n in frozen)     # base weights stay frozen
    finally:
        recipe.accelerator.end_training()


def test_frozen_retriever_has_no_group_and_keeps_its_weights(task, tmp_path):
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.scorer import TrainableScorer

    run_dir = tmp_path / "run"
    summary = train(task, run_dir, "jmlr.train_retriever=false", "train.max_steps=2",
                    "train.merge_on_export=true", "train.eval_every=-1")
    assert [g["name"] for g in summary["optimizer_groups"]] == ["generator", "generator_no_decay"]
    merged = run_dir / "final" / "generator" / "merged"
    assert (merged / "config.json").is_file() and any(merged.glob("*.safetensors"))
    cfg = loop_config(task, run_dir)
    source = prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim, cfg.run.cache_dir)
    before = TrainableScorer.from_checkpoint(source, cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen)
    after = TrainableScorer.from_checkpoint(run_dir / "final" / "retriever",
                                            cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen)
    assert _digest(list(after.named_parameters())) == _digest(list(before.named_parameters()))
    assert summary["rank_checksums"][0]["retriever"] == _digest(list(before.named_parameters()))
    train_rows = [r for r in rows(run_dir) if "split" not in r]
    assert [r["step"] for r in train_rows] == [1, 2] == [r["step"] for r in rows(run_dir)]
    assert summary["final_dev"] == {}                   # eval_every -1: no dev pass at all
    assert all(r["n_pairs"] > 0 and "lr_retriever" not in r for r in train_rows)
    assert train_rows[0]["loss"] == pytest.approx(train_rows[0]["gen_loss"])  # no rank term


# --------------------------------------------------------------------------- reference run


def test_reference_run_writes_metrics_checkpoints_and_exports(reference):
    run_dir, summary = reference
    found = rows(run_dir)
    train_rows = [r for r in found if "split" not in r]
    dev_rows = [r for r in found if r.get("split") == "dev"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert [r["step"] for r in dev_rows] == [0, 2, 4]
    assert {"recall@1", "recall@7", "mrr", "reading_gain", "reading_gain_base"} <= set(dev_rows[-1])
    assert dev_rows[0]["reading_gain"] == pytest.approx(dev_rows[0]["reading_gain_base"])  # untrained
    lrs = [r["lr_generator"] for r in train_rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] > lrs[2] > lrs[3] > 0     # warm-up, cosine
    assert all(r["lr_retriever"] == pytest.approx(r["lr_generator"] / 10) for r in train_rows)
    assert all(0 <= r["rank_accuracy"] <= 1 and r["n_pairs"] > 0 for r in train_rows)
    for r in train_rows:   # each model clipped on its own; the total is over both
        assert r["grad_norm_generator"] > 0 and r["grad_norm_retriever"] > 0
        assert r["grad_norm"] == pytest.approx(math.hypot(r["grad_norm_generator"],
                                                          r["grad_norm_retriever"]))
    # the training questions name gold passages: the gold-pair diagnostics are logged
    assert sum(r["gold_pairs"] for r in train_rows) > 0
    assert all(r["llm_gold_accuracy"] is None or 0 <= r["llm_gold_accuracy"] <= 1 for r in train_rows)
    assert [p.name for p in sorted(ckpt.checkpoints_dir(run_dir).iterdir())] == ["step-2", "step-4"]
    step2 = ckpt.read_state(ckpt.step_dir(run_dir, 2))
    assert (step2.step, step2.epoch, step2.batch_index) == (2, 0, 4)        # 7 batches an epoch
    assert (ckpt.step_dir(run_dir, 2) / "train_candidates.jsonl").is_file()  # refreshed at 2
    assert (run_dir / "config.yaml").is_file() and summary["steps"] == 4
    assert summary["tokens_per_s"] > 0 and summary["final_dev"]["step"] == 4
    assert summary["ranks_in_sync"] is True


def test_first_losses_of_the_tiny_config_are_pinned(reference):
    run_dir, _ = reference
    found = {r["step"]: r for r in rows(run_dir) if "split" not in r}
    step3 = {k: found[3][k] for k in STEP3_OTHER_CPU}
    other_cpu = all(step3[k] == pytest.approx(v, abs=1e-4) for k, v in STEP3_OTHER_CPU.items())
    for pin in PINNED:
        if pin["step"] == 3 and other_cpu:
            continue
        for key in ("loss", "gen_loss", "rank_loss"):
            assert found[pin["step"]][key] == pytest.approx(pin[key], abs=1e-4), (
                pin["step"], key, {s: {k: found[s][k] for k in ("loss", "gen_loss", "rank_loss")}
                                   for s in (1, 2, 3)})


def test_final_exports_load_with_peft_and_the_trainable_scorer(task, reference):
    from peft import PeftModel

    from jmlr.generation.model import load_generator
    from jmlr.retrieval.scorer import TrainableScorer

    run_dir, summary = reference
    cfg = loop_config(task, run_dir)
    saved = load_file(str(ckpt.step_dir(run_dir, 4) / ckpt.TRAINABLE_FILE))
    base, _ = load_generator(cfg.generator, cfg.run.cache_dir, for_training=False)
    peft_model = PeftModel.from_pretrained(base, run_dir / "final" / "generator" / "adapter")
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_B" in n}
    assert lora
    for name, param in lora.items():
        assert torch.equal(param, saved[f"generator.{name}"]), name
    scorer = TrainableScorer.from_checkpoint(run_dir / "final" / "retriever",
                                             cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen)
    assert _digest(list(scorer.named_parameters())) == summary["rank_checksums"][0]["retriever"]


# --------------------------------------------------------------------------- resume


def test_resume_from_a_mid_run_checkpoint_repeats_the_same_losses(task, reference, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    shutil.copytree(ref_dir, run_dir)        # as if the run had died after step 3
    shutil.rmtree(ckpt.step_dir(run_dir, 4))
    shutil.rmtree(run_dir / "final")
    summary = train(task, run_dir, *REFERENCE, resume=True)
    assert summary["steps"] == 4 and not summary["interrupted"]
    assert rows(run_dir) == rows(ref_dir)
    again = train(task, run_dir, *REFERENCE, resume=True)    # a finished run: nothing to do
    assert again["steps"] == 4 and rows(run_dir) == rows(ref_dir)


@pytest.mark.slow
def test_sigterm_checkpoints_at_a_step_boundary_and_resume_continues_exactly(task, reference, tmp_path):
    ref_dir, _ = reference
    run_dir = tmp_path / "run"
    metrics = run_dir / "metrics.jsonl"

    def send_sigterm_after_first_step() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            if metrics.is_file() and '"loss"' in metrics.read_text():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)   # a late signal must not kill pytest
    try:
        watcher = threading.Thread(target=send_sigterm_after_first_step, daemon=True)
        watcher.start()
        interrupted = train(task, run_dir, *REFERENCE)
        watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert interrupted["interrupted"] and 1 <= interrupted["steps"] < 4
    assert ckpt.find_latest(run_dir) == ckpt.step_dir(run_dir, interrupted["steps"])
    assert not (run_dir / "final").exists()
    resumed = train(task, run_dir, *REFERENCE, resume=True)
    assert resumed["steps"] == 4 and not resumed["interrupted"]
    assert rows(run_dir) == rows(ref_dir)


def test_only_the_newest_checkpoints_are_kept_beside_the_final_export(task, tmp_path):
    run_dir = tmp_path / "run"
    summary = train(task, run_dir, "train.max_steps=3", "train.save_every=1",
                    "train.keep_checkpoints=2", "train.eval_every=-1")
    assert summary["steps"] == 3
    assert sorted(p.name for p in ckpt.checkpoints_dir(run_dir).iterdir()) == ["step-2", "step-3"]
    assert (run_dir / "final" / "generator").is_dir() and (run_dir / "final" / "retriever").is_dir()


def test_sigterm_exits_143_saying_how_to_resume_and_resume_drops_a_torn_metrics_line(
        task, tmp_path, caplog):
    """The command stopped by SIGTERM exits 128 + 15 (so `jmlr train && jmlr evaluate` stops)
    with one line giving the resume command; that resume goes through a torn last line of
    metrics.jsonl (as a kill during its write leaves)."""
    import logging

    run_dir = tmp_path / "run"
    overrides = loop_overrides(task, run_dir, "train.max_steps=40", "train.eval_every=-1")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "jmlr", "train", "-c", str(task.config_path),
                                *overrides], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if metrics.is_file() and '"loss"' in metrics.read_text():
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("jmlr train: ")]
    assert len(said) == 1 and "stopped by SIGTERM" in said[0], err[-3000:]
    assert f"jmlr train -c {task.config_path} " in said[0] and said[0].endswith("--resume`")
    stopped_at = json.loads((run_dir / "train_summary.json").read_text())["steps"]
    assert ckpt.find_latest(run_dir) == ckpt.step_dir(run_dir, stopped_at)
    assert not (run_dir / "final").exists()

    with metrics.open("a", encoding="utf-8") as handle:
        handle.write('{"step": 99, "loss": 1')                # a torn last line
    with caplog.at_level(logging.INFO, logger="jmlr.training.runtime"):
        summary = train(task, run_dir, f"train.max_steps={stopped_at + 1}",
                        "train.eval_every=-1", resume=True)
    assert summary["steps"] == stopped_at + 1 and summary["stopped_by"] is None
    assert [r["step"] for r in rows(run_dir)] == list(range(1, stopped_at + 2))
    assert "torn last line" in caplog.text and (run_dir / "final").is_dir()


# --------------------------------------------------------------------------- user errors


def test_missing_candidates_say_to_run_jmlr_mine(task, tmp_path, run_cli):
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", f"candidates.path={tmp_path / 'none'}"))
    assert code == 2 and "jmlr mine" in err


@pytest.mark.parametrize("key, fragment", [
    ("retriever.checkpoint", "retriever.checkpoint: {missing} does not exist"),
    ("generator.model", "generator.model: {missing} does not exist"),
    ("data.train", "data.train: {missing} does not exist"),
    ("data.dev", "data.dev: {missing} does not exist"),
    ("data.corpus", "data.corpus: {missing} does not exist"),
])
def test_a_missing_input_is_reported_before_the_corpus_or_any_model_loads(
        task, tmp_path, run_cli, monkeypatch, key, fragment):
    from jmlr.retrieval.colbert_backend import ColbertBackend

    def never(*args, **kwargs):
        raise AssertionError("loaded before every input was checked")

    monkeypatch.setattr("jmlr.generation.model.load_generator", never)
    monkeypatch.setattr("jmlr.retrieval.colbert.prepare_checkpoint", never)
    monkeypatch.setattr(ColbertBackend, "load_scorer", never)
    monkeypatch.setattr("jmlr.data.load_corpus_from_config", never)
    missing = tmp_path / "missing"
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", f"{key}={missing}"))
    assert code == 2 and fragment.format(missing=missing) in err
    assert not (tmp_path / "run").exists()        # nothing written before the checks


def test_missing_dev_candidates_are_reported_before_the_corpus_loads(task, tmp_path, run_cli,
                                                                   monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the corpus was read before the candidates were located")

    candidates = tmp_path / "candidates"
    candidates.mkdir()
    shutil.copy(task.root / "loop_candidates" / "train.jsonl", candidates)
    monkeypatch.setattr("jmlr.data.load_corpus_from_config", never)
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", f"candidates.path={candidates}"))
    assert code == 2 and "dev" in err and "jmlr mine" in err


def test_a_run_folder_with_checkpoints_needs_resume(task, tmp_path, run_cli):
    (ckpt.step_dir(tmp_path / "run", 1)).mkdir(parents=True)
    (ckpt.step_dir(tmp_path / "run", 1) / ckpt.STATE_FILE).write_text("{}")
    code, _, err = run_cli("train", "-c", task.config_path, *loop_overrides(task, tmp_path / "run"))
    assert code == 2 and "--resume" in err


# --------------------------------------------------------------------------- trackers, launch settings


def test_the_tracker_names_are_accelerates():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    from jmlr.training.trackers import TRACKER_MODULES

    assert set(TRACKER_MODULES) == set(LOGGER_TYPE_TO_CLASS)


def test_report_to_tensorboard_writes_event_files_in_the_run_folder(task, tmp_path):
    run_dir = tmp_path / "run"
    train(task, run_dir, "train.max_steps=2", "train.eval_every=-1",
          "train.report_to=[tensorboard]")
    events = list(run_dir.rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = EventAccumulator(str(events[0].parent)).Reload()
    assert [e.step for e in logged.Scalars("train/loss")] == [1, 2]
    assert len(rows(run_dir)) == 2
    none_dir = tmp_path / "none"
    train(task, none_dir, "train.max_steps=1", "train.eval_every=-1", "train.report_to=[none]")
    assert not list(none_dir.rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("setting, env, fragment", [
    ("train.report_to=[aim]", {}, "train.report_to: aim not installed (pip install aim)"),
    ("train.grad_accum=1", {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "8"},
     "the accelerate launch config sets gradient_accumulation_steps 8 but train.grad_accum is 1"),
    ("train.max_grad_norm=0.5", {"ACCELERATE_GRADIENT_CLIPPING": "1.0"},
     "the accelerate launch config sets gradient_clipping 1.0 but train.max_grad_norm is 0.5"),
])
def test_a_missing_tracker_or_a_launch_accumulation_that_disagrees_stops_before_anything_loads(
        task, tmp_path, run_cli, monkeypatch, setting, env, fragment):
    def never(*args, **kwargs):
        raise AssertionError("loaded before the settings were checked")

    monkeypatch.setattr("jmlr.generation.model.load_generator", never)
    monkeypatch.setattr("jmlr.data.load_corpus_from_config", never)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", setting))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_an_unknown_tracker_fails_when_the_config_loads(task, tmp_path, run_cli):
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", "train.report_to=[tensorbord]"))
    assert code == 2 and "train.report_to: unknown tracker 'tensorbord'" in err


# --------------------------------------------------------------------------- one writer per run folder


def test_a_run_folder_that_another_live_train_holds_is_refused_before_anything_loads(
        task, tmp_path, run_cli, monkeypatch):
    from test_locks import hold_in_another_process

    from jmlr.training.runtime import LOCK_FILE

    def never(*args, **kwargs):
        raise AssertionError("loaded although the run folder is in use")

    monkeypatch.setattr("jmlr.generation.model.load_generator", never)
    monkeypatch.setattr("jmlr.data.load_corpus_from_config", never)
    run_dir = tmp_path / "run"
    holder = hold_in_another_process(run_dir / LOCK_FILE)
    try:
        code, _, err = run_cli("train", "-c", task.config_path, *loop_overrides(task, run_dir))
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{run_dir} is in use by another jmlr train (pid {holder.pid} on this host since " in err
    assert "choose another run.out_dir" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]   # nothing else written


def test_a_lock_left_by_a_killed_train_is_taken_over_and_released_at_the_end(task, tmp_path,
                                                                            caplog):
    import logging

    from jmlr.training.runtime import LOCK_FILE

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                  # its pid names no live process now
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_text(json.dumps({
        "pid": dead.pid, "host": socket.gethostname(), "what": "jmlr train",
        "since": "2024-01-01 00:00:00"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="jmlr.io"):
        summary = train(task, run_dir, "train.max_steps=1", "train.eval_every=-1")
    assert summary["steps"] == 1 and (run_dir / "final").is_dir()
    assert f"took over the lock that pid {dead.pid} on this host left" in caplog.text
    assert (run_dir / LOCK_FILE).read_text() == ""      # released: the next run finds it free


@pytest.mark.slow
def test_under_accelerate_launch_a_held_run_folder_stops_every_rank(task, tmp_path):
    from test_locks import hold_in_another_process

    from jmlr.training.runtime import LOCK_FILE

    run_dir = tmp_path / "run"
    holder = hold_in_another_process(run_dir / LOCK_FILE, seconds=300)
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
               "--main_process_port", str(free_port()),
               "-m", "jmlr", "train", "-c", str(task.config_path), *loop_overrides(task, run_dir)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=200, env=env,
                              cwd=REPO)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    assert f"is in use by another jmlr train (pid {holder.pid} on this host since " in done.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


# --------------------------------------------------------------------------- re-index, 2 ranks


@pytest.mark.slow
def test_reindex_rebuilds_an_index_of_the_run_and_training_goes_on(task, tmp_path):
    from jmlr.retrieval.plaid import read_manifest

    run_dir = tmp_path / "run"
    summary = train(task, run_dir, "train.max_steps=2", "candidates.reindex_every=1")
    assert summary["steps"] == 2
    manifest = read_manifest(run_dir / "reindexed")
    assert ckpt.read_state(ckpt.step_dir(run_dir, 2)).index_dir == str((run_dir / "reindexed").resolve())
    assert read_manifest(task.cfg.index_dir)["build_id"] != manifest["build_id"]   # mined index untouched


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(task, run_dir: Path, *extra: str, resume: bool = False) -> dict:
    """``accelerate launch`` with two real CPU ranks (gloo DDP); returns train_summary.json."""
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
               "--main_process_port", str(free_port()),
               "-m", "jmlr", "train", "-c", str(task.config_path),
               *loop_overrides(task, run_dir, *extra), *(["--resume"] if resume else [])]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((run_dir / "train_summary.json").read_text())


@pytest.mark.slow
def test_two_cpu_processes_train_in_sync_and_resume_exactly(task, tmp_path):
    settings = ("train.max_steps=2", "train.save_every=1", "train.eval_every=1",
                "candidates.refresh_every=1")
    first = tmp_path / "first"
    summary = launch_two_processes(task, first, *settings)
    checksums = summary["rank_checksums"]
    print("rank checksums:", checksums)
    assert summary["world_size"] == 2 and [c["rank"] for c in checksums] == [0, 1]
    assert checksums[0]["generator"] == checksums[1]["generator"]
    assert checksums[0]["retriever"] == checksums[1]["retriever"]
    assert summary["ranks_in_sync"] is True
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= set(os.listdir(ckpt.step_dir(first, 1)))
    assert [r["step"] for r in rows(first) if "split" not in r] == [1, 2]

    again = tmp_path / "again"                  # as if both ranks had died after step 1
    shutil.copytree(first, again)
    shutil.rmtree(ckpt.step_dir(again, 2))
    shutil.rmtree(again / "final")
    resumed = launch_two_processes(task, again, *settings, resume=True)
    assert rows(again) == rows(first)
    assert resumed["rank_checksums"] == checksums
