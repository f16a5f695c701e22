"""``jmlr preferences``, ``jmlr sft`` and ``jmlr dpo`` (jmlr/alignment/) on the tiny task: rows
in trl's layouts, resumable sampling, trl training that continues exactly from a checkpoint,
an exported run that ``jmlr evaluate`` reads, and bad rows refused before anything loads."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_loop import loop_config, loop_overrides, reference, task  # noqa: F401  (the tiny task, a trained run)

from jmlr.alignment.sampling import pairs_from_samples
from jmlr.data.formats import write_questions

pytestmark = pytest.mark.timeout(900)

PREFS = ["preferences.samples=3", "preferences.batch_size=2", "preferences.max_new_tokens=10",
         "preferences.limit=4"]
TRAIN = ["save_every=2", "batch_size=2", "logging_steps=1"]


@pytest.fixture(scope="module")
def with_rationales(task, tmp_path_factory):  # noqa: F811
    """The tiny task's training questions with reference rationales, and a KB whose names
    occur in them (so that the question's and reference's concepts are found)."""
    root = tmp_path_factory.mktemp("align")
    questions = [dataclasses.replace(q, rationale=f"{q.options[q.answer]} explains the patient.")
                 for q in task.train]
    write_questions(root / "train.jsonl", questions)
    kb = root / "kb.jsonl"
    kb.write_text("".join(json.dumps({"concept_id": f"C{i:07d}", "canonical_name": name,
                                      "aliases": [], "types": ["T047"], "definition": ""}) + "\n"
                          for i, name in enumerate(["patient", "syndrome", "Syndrome 3"])))
    return root, questions, kb


def overrides(task, run_dir, data_root, kb, *extra):  # noqa: F811
    return loop_overrides(task, run_dir, f"data.train={data_root / 'train.jsonl'}",
                          f"factuality.kb={kb}", *extra)


def test_preferences_score_every_sample_resume_to_the_same_rows_and_refuse_other_settings(
        task, with_rationales, tmp_path, run_cli):  # noqa: F811
    root, questions, kb = with_rationales
    whole = tmp_path / "whole"
    code, out, err = run_cli("preferences", "-c", task.config_path,
                             *overrides(task, whole, root, kb, *PREFS))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["questions"] == 4 and summary["answers"] == 12 and summary["samples_per_s"] > 0
    samples = [json.loads(line) for line in (whole / "preferences" / "samples.jsonl").read_text().splitlines()]
    by_id = {q.id: q for q in questions}
    assert [r["question_id"] for r in samples] == [q.id for q in questions[:4]]
    for row in samples:
        q = by_id[row["question_id"]]
        assert len(row["samples"]) == 3 and len(row["read"]) == 2 and row["answer"] == q.answer
        assert row["prompt"].rstrip().endswith("Answer:") and q.question in row["prompt"]
        for s in row["samples"]:
            assert s["correct"] == (s["letter"] == q.answer)
            assert s["umls_f1"] is not None and 0 <= s["umls_f1"] <= 1   # every question has a reference
            assert s["unsupported"] == len(s["unsupported_concepts"]) <= s["concepts"]
    pairs = [json.loads(line) for line in (whole / "preferences" / "pairs.jsonl").read_text().splitlines()]
    assert pairs == pairs_from_samples(samples, "factuality", 2)

    # stopped after the first batch, then continued: the same samples
    parts = tmp_path / "parts"
    code, _, err = run_cli("preferences", "-c", task.config_path,
                           *overrides(task, parts, root, kb, *PREFS, "preferences.limit=2"))
    assert code == 0, err
    code, out, err = run_cli("preferences", "-c", task.config_path,
                             *overrides(task, parts, root, kb, *PREFS))
    assert code == 0, err and json.loads(out)["kept"] == 2
    assert (parts / "preferences" / "samples.jsonl").read_text() == \
        (whole / "preferences" / "samples.jsonl").read_text()

    # another signal re-pairs the same samples; other sampling settings are refused
    code, out, err = run_cli("preferences", "-c", task.config_path,
                             *overrides(task, parts, root, kb, *PREFS, "preferences.signal=correctness"))
    assert code == 0 and json.loads(out)["sampled_now"] == 0, err
    before = (parts / "preferences" / "samples.jsonl").read_text()
    code, _, err = run_cli("preferences", "-c", task.config_path,
                           *overrides(task, parts, root, kb, *PREFS, "preferences.temperature=0.5"))
    assert code == 2 and "other settings (temperature)" in err and "--overwrite" in err
    assert (parts / "preferences" / "samples.jsonl").read_text() == before


def test_factuality_preferences_need_a_kb(task, tmp_path, run_cli):  # noqa: F811
    code, _, err = run_cli("preferences", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", *PREFS))
    assert code == 2 and "factuality.kb" in err and not (tmp_path / "run").exists()


def _adapter(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "generator" / "adapter" / "adapter_model.safetensors"))


def test_sft_on_questions_continues_exactly_from_its_checkpoint(
        task, with_rationales, tmp_path, run_cli):  # noqa: F811
    root, _, kb = with_rationales
    args = [*(f"sft.{o}" for o in TRAIN)]
    straight = tmp_path / "straight"
    code, out, err = run_cli("sft", "-c", task.config_path,
                             *overrides(task, straight, root, kb, *args, "sft.max_steps=4"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 4 and summary["rows"] == len(task.train) and summary["s_per_step"] > 0
    history = json.loads((straight / "sft_summary.json").read_text())["history"]
    assert len(history) == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)

    resumed = tmp_path / "resumed"
    code, _, err = run_cli("sft", "-c", task.config_path,
                           *overrides(task, resumed, root, kb, *args, "sft.max_steps=2"))
    assert code == 0, err
    code, out, err = run_cli("sft", "-c", task.config_path,
                             *overrides(task, resumed, root, kb, *args, "sft.max_steps=4"))
    assert code == 0, err
    assert json.loads(out)["resumed_from"].endswith("checkpoint-2")
    a, b = _adapter(straight), _adapter(resumed)
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)   # it did train

    # other settings in the same folder are refused
    code, _, err = run_cli("sft", "-c", task.config_path,
                           *overrides(task, resumed, root, kb, *args, "sft.learning_rate=1e-3"))
    assert code == 2 and "learning_rate" in err and "--overwrite" in err


def test_dpo_trains_on_preference_rows_and_the_run_evaluates(
        task, with_rationales, tmp_path, run_cli):  # noqa: F811
    from jmlr.generation.prompts import build_prompt, target_text

    root, questions, kb = with_rationales
    pairs = tmp_path / "pairs.jsonl"
    rows = []
    for q in questions:
        wrong = next(k for k in q.options if k != q.answer)
        rows.append({"prompt": build_prompt(q, []), "chosen": target_text(q, "letter_text"),
                     "rejected": target_text(dataclasses.replace(q, answer=wrong), "letter_text")})
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_dir = tmp_path / "dpo"
    code, out, err = run_cli("dpo", "-c", task.config_path,
                             *overrides(task, run_dir, root, kb, f"dpo.data={pairs}", "dpo.max_steps=3",
                                        *(f"dpo.{o}" for o in TRAIN), "dpo.learning_rate=1e-3"))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 3 and summary["rows"] == len(rows)
    history = json.loads((run_dir / "dpo_summary.json").read_text())["history"]
    # the first step's policy is the reference: DPO's sigmoid loss starts at log 2
    assert history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert (run_dir / "final" / "retriever").is_dir() and (run_dir / "config.yaml").is_file()

    code, _, err = run_cli("evaluate", "-c", task.config_path, "--run", run_dir, "--split", "dev",
                           *overrides(task, run_dir, root, kb, "eval.modes=[trained]",
                                      "eval.scoring=[letter]", "eval.limit=3"))
    assert code == 0, err
    metrics = json.loads((run_dir / "eval" / "dev" / "metrics.json").read_text())
    assert metrics["modes"] == ["trained"]


def test_bad_preference_rows_are_refused_before_anything_loads(task, tmp_path, run_cli):  # noqa: F811
    pairs = tmp_path / "pairs.jsonl"
    good = {"prompt": "Q?\nAnswer:", "chosen": " A", "rejected": " B"}
    pairs.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rejected": ""}) + "\n")
    run_dir = tmp_path / "dpo"
    code, _, err = run_cli("dpo", "-c", task.config_path,
                           *loop_overrides(task, run_dir, f"dpo.data={pairs}"))
    assert code == 2 and f"{pairs}:2" in err and "rejected" in err
    assert not run_dir.exists()
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    code, _, err = run_cli("sft", "-c", task.config_path,
                           *loop_overrides(task, run_dir, f"sft.data={chat}"))
    assert code == 2 and f"{chat}:1" in err and "assistant" in err and not run_dir.exists()


def test_a_run_started_from_another_reads_that_runs_index_and_candidates(
        task, reference, with_rationales, tmp_path, run_cli):  # noqa: F811
    """As the README chains them: `jmlr sft ... run.out_dir=NEW sft.start_from=RUN` with no
    index or candidates of its own; NEW/config.yaml then names RUN's, for the next step."""
    import yaml

    root, _, kb = with_rationales
    start, _ = reference
    fresh = tmp_path / "sft"
    own = [f"run.out_dir={fresh}", f"data.train={root / 'train.jsonl'}", f"factuality.kb={kb}",
           f"sft.start_from={start}", "sft.max_steps=1", *(f"sft.{o}" for o in TRAIN)]
    code, _, err = run_cli("sft", "-c", task.config_path, *own)
    assert code == 0, err
    saved = yaml.safe_load((fresh / "config.yaml").read_text())
    assert saved["retriever"]["index_dir"] == str(task.cfg.index_dir)
    assert saved["candidates"]["path"] == str(task.root / "loop_candidates")

    # A start run with neither, and none in its folder: one line before any model loads.
    bare = tmp_path / "bare"
    for part in ("final/generator", "final/retriever"):
        (bare / part).mkdir(parents=True)
    (bare / "config.yaml").write_text("run: {out_dir: elsewhere}\n")
    code, _, err = run_cli("sft", "-c", task.config_path, *own[:-len(TRAIN) - 2],
                           f"sft.start_from={bare}", f"run.out_dir={tmp_path / 'sft2'}")
    assert code == 2 and "no passages to read" in err and str(bare / "index") in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "sft2" / "sft-checkpoints").exists()


def _synthetic_rows(task, path):  # noqa: F811
    """``jmlr synthesize``'s layout, by hand: a question about each of four passages."""
    rows = [{"query_id": f"syn-{p.id}", "query": f"Which condition is described here, number {i}?",
             "positive_id": p.id, "positive": p.text, "negative_ids": [], "negatives": []}
            for i, p in enumerate(task.passages[:4])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _logits(model, tokenizer):
    ids = tokenizer("Syndrome 3 explains the patient.", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits[0].float()


def test_pretuning_on_synthetic_rows_hands_its_generator_to_the_joint_run(
        task, tmp_path, run_cli):  # noqa: F811
    """synthesize rows -> `jmlr sft` (pre-instruction tuning) -> `jmlr train` with
    generator.train_from: the joint run trains on top of the pre-tuned weights, and
    evaluation loads them under its adapter even from a config that does not name them."""
    from jmlr.alignment.trl_train import read_sft_rows
    from jmlr.evaluation.passages import load_eval_generator
    from jmlr.generation.model import load_generator, load_trained_generator

    rows_file = tmp_path / "synthetic.jsonl"
    rows = _synthetic_rows(task, rows_file)
    read = read_sft_rows(rows_file, "Q: {query}\nA:")
    assert read[1] == {"prompt": f"Q: {rows[1]['query']}\nA:", "completion": " " + rows[1]["positive"]}

    pretuned = tmp_path / "pretune"
    code, out, err = run_cli("sft", "-c", task.config_path, *loop_overrides(
        task, pretuned, f"sft.data={rows_file}", "sft.max_steps=2", "sft.learning_rate=5e-2",
        *(f"sft.{o}" for o in TRAIN)))
    assert code == 0, err
    assert json.loads(out)["rows"] == 4
    # a start run without a trained generator: one line, before any model loads
    code, _, err = run_cli("train", "-c", task.config_path, *loop_overrides(
        task, tmp_path / "bad", f"generator.train_from={tmp_path / 'nowhere'}"))
    assert code == 2 and "generator.train_from" in err and "nowhere" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "bad" / "checkpoints").exists()

    joint = tmp_path / "joint"
    # a generator learning rate too small to move it: the joint run's generator is then the
    # pre-tuned one, which is what evaluation must load
    code, _, err = run_cli("train", "-c", task.config_path, *loop_overrides(
        task, joint, f"generator.train_from={pretuned}", "train.max_steps=1",
        "train.generator_lr=1e-12", "train.eval_every=-1"))
    assert code == 0, err
    record = json.loads((joint / "final/generator/adapter/jmlr_base_model.json").read_text())
    assert record["started_from_run"] == str(pretuned.resolve())
    plain = tmp_path / "plain"                          # the same step from the base generator
    code, _, err = run_cli("train", "-c", task.config_path, *loop_overrides(
        task, plain, "train.max_steps=1", "train.generator_lr=1e-12", "train.eval_every=-1"))
    assert code == 0, err
    first = [json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["gen_loss"]
             for run in (joint, plain)]
    assert abs(first[0] - first[1]) > 1e-3, first       # it trained on the pre-tuned weights

    cfg = loop_config(task, joint)                   # names no train_from: the run's own counts
    assert cfg.generator.train_from == ""
    base, tokenizer = load_generator(cfg.generator, cfg.run.cache_dir, for_training=False)
    want, _ = load_trained_generator(cfg.generator, cfg.run.cache_dir,
                                     pretuned / "final" / "generator")
    got, _ = load_eval_generator(cfg, joint, "trained", "cpu")
    moved = (_logits(want, tokenizer) - _logits(base, tokenizer)).abs().max()
    assert moved > 1e-2                                  # pre-tuning changed the generator
    torch.testing.assert_close(_logits(got, tokenizer), _logits(want, tokenizer),
                               rtol=0, atol=float(moved) / 100)
    # `jmlr export` merges it all into a folder that plain transformers loads
    from transformers import AutoModelForCausalLM

    code, _, err = run_cli("export", "-c", task.config_path, "--run", joint,
                           "--merged", tmp_path / "export", *loop_overrides(task, joint))
    assert code == 0, err
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "generator").eval()
    torch.testing.assert_close(_logits(exported, tokenizer), _logits(want, tokenizer),
                               rtol=0, atol=float(moved) / 100)



def _launch_two(task, kind: str, run_dir: Path, *extra: str) -> tuple[dict, str]:  # noqa: F811
    """``accelerate launch`` of ``jmlr <kind>`` with two real CPU ranks (gloo DDP)."""
    from test_loop import REPO, free_port

    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
               "--main_process_port", str(free_port()), "-m", "jmlr", kind,
               "-c", str(task.config_path), *loop_overrides(task, run_dir, *extra)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((run_dir / f"{kind}_summary.json").read_text()), done.stdout


@pytest.mark.slow
def test_sft_and_dpo_under_accelerate_launch_train_on_two_processes_and_resume(
        task, with_rationales, tmp_path):  # noqa: F811
    rows_file = tmp_path / "synthetic.jsonl"
    _synthetic_rows(task, rows_file)
    sft = tmp_path / "sft"
    settings = (f"sft.data={rows_file}", "sft.save_every=1", "sft.batch_size=1")
    summary, stdout = _launch_two(task, "sft", sft, *settings, "sft.max_steps=2")
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert stdout.count('"kind": "sft"') == 1                  # one summary, from the main rank
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in (sft / "sft-checkpoints" / "checkpoint-2").iterdir()}
    assert (sft / "final" / "generator" / "adapter").is_dir()
    resumed, _ = _launch_two(task, "sft", sft, *settings, "sft.max_steps=3")
    assert resumed["steps"] == 3 and resumed["resumed_from"].endswith("checkpoint-2")

    _, questions, _ = with_rationales
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": q.question + "\nAnswer:", "chosen": f" {q.answer}",
                                         "rejected": f" {next(k for k in q.options if k != q.answer)}"})
                             + "\n" for q in questions[:4]))
    dpo = tmp_path / "dpo"
    summary, _ = _launch_two(task, "dpo", dpo, f"dpo.data={pairs}", f"dpo.start_from={sft}",
                             "dpo.max_steps=2", "dpo.batch_size=1", "dpo.save_every=1")
    assert summary["processes"] == 2 and summary["steps"] == 2
    assert summary["first_loss"] == pytest.approx(0.6931, abs=1e-3)   # policy = reference at first
    assert (dpo / "final" / "generator" / "model").is_dir()          # on the sft run's weights
