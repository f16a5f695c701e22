"""``jmlr preferences``, ``jmlr sft`` and ``jmlr dpo`` (jmlr/alignment/) on the tiny task: rows
in trl's layouts, resumable sampling, trl training that continues exactly from a checkpoint,
an exported run that ``jmlr evaluate`` reads, and bad rows refused before anything loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from test_loop import loop_overrides, reference, task  # noqa: F401  (the tiny task, a trained run)

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
