"""lm-evaluation-harness with the `jmlr` model: a task defined in a local YAML over a local data
file, offline, with the tiny models and the tiny task's index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from jmlr.evaluation.harness import JmlrLM, passage_block, write_mcq_task  # noqa: E402
from jmlr.generation import prompts  # noqa: E402
from tests.test_loop import task, train  # noqa: E402,F401  (the tiny task with mined candidates)

TASK = "jmlr_tiny_mcq"


def write_task(folder: Path, questions) -> Path:
    return write_mcq_task(folder, questions, TASK)


@pytest.fixture(scope="module")
def trained_run(task, tmp_path_factory):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("harness") / "run"
    train(task, run_dir, "train.max_steps=1", "train.eval_every=-1")
    return run_dir


def evaluate(task_dir: Path, model_args: str, limit: int = 4) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model="jmlr", model_args=model_args, tasks=[TASK],
                                  task_manager=TaskManager(include_path=str(task_dir)),
                                  limit=limit, log_samples=True)
    return out


def test_none_mode_scores_the_letter_exactly_as_jmlrs_prompt_does(task):  # noqa: F811
    lm = JmlrLM(config=str(task.config_path), mode="none")
    q = task.dev[0]
    text = prompts.build_prompt(q, [])
    jmlr_ids = prompts.encode_prompt(lm.tokenizer, q, [], lm.max_length)
    assert lm.tok_encode(text) == jmlr_ids            # same prompt, BOS handled the same way
    letter = prompts.tokenize_piece(lm.tokenizer, " B")
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([jmlr_ids + letter])).logits[0].float()
    expected = sum(torch.log_softmax(logits[len(jmlr_ids) - 1 + i], -1)[t].item()
                   for i, t in enumerate(letter))

    class Request:
        args = (text, " B")

    (got, _), = lm.loglikelihood([Request()])
    assert got == pytest.approx(expected, abs=1e-4)


def test_a_local_task_in_every_mode_reads_the_modes_passages(task, trained_run, tmp_path):  # noqa: F811
    task_dir = write_task(tmp_path / "tasks", task.dev)
    none = evaluate(task_dir, f"config={task.config_path},mode=none")
    assert 0 <= none["results"][TASK]["acc,none"] <= 1
    first = none["samples"][TASK][0]
    assert first["arguments"][0][0].startswith("Question:")    # the task's own prompt
    frozen = evaluate(task_dir, f"run={trained_run},mode=frozen,passages=2")
    trained = evaluate(task_dir, f"run={trained_run},mode=trained,passages=2")
    for out in (frozen, trained):
        assert 0 <= out["results"][TASK]["acc,none"] <= 1
    # what the generator read: the passages the mode's retriever ranks first
    lm = JmlrLM(run=str(trained_run), mode="trained", passages=2)
    context = prompts.build_prompt(task.dev[0], [])

    class Request:
        args = (context, " A")

    lm.loglikelihood([Request()])
    read = lm._passages[context]
    assert len(read) == 2 and all(p in set(lm.corpus.values()) for p in read)
    assert lm.with_passages(context, 0) == passage_block(read) + context
    # a budget too small for the passages cuts them, never the context
    tight = lm.with_passages(context, lm.max_length - 20)
    assert tight.endswith(context) and len(lm.tok_encode(tight)) < len(lm.tok_encode(
        passage_block(read) + context))
    # with few-shot examples before it, the question alone is searched for, and the
    # passages go between the examples and the question
    shots = prompts.build_prompt(task.dev[1], []) + " B\n\n" + prompts.build_prompt(task.dev[2], []) + " A\n\n"
    lm.retrieve([shots + context])
    assert lm._passages[shots + context] == read
    assert lm.with_passages(shots + context, 0) == shots + passage_block(read) + context


def test_few_shot_and_chat_template_through_the_harness(task, tmp_path):  # noqa: F811
    import lm_eval
    from lm_eval.tasks import TaskManager

    from jmlr.errors import ConfigError

    task_dir = write_task(tmp_path / "tasks", task.dev)
    text = (task_dir / f"{TASK}.yaml").read_text()
    data = (task_dir / f"{TASK}.jsonl").resolve()
    (task_dir / f"{TASK}.yaml").write_text(text.replace(
        f"    test: {data}\n", f"    test: {data}\n    train: {data}\n") + "training_split: train\n")
    lm = JmlrLM(config=str(task.config_path), mode="frozen", passages=1)
    manager = TaskManager(include_path=str(task_dir))
    with pytest.raises(ConfigError, match="no chat template"):
        lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, limit=1,
                                apply_chat_template=True)
    lm.tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n"
                                  "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, limit=2,
                                  num_fewshot=2, apply_chat_template=True, log_samples=True)
    context = out["samples"][TASK][0]["arguments"][0][0]
    assert context.count("Answer:") == 3 and "<|user|>" in context and context.endswith("<|assistant|>")
    read = lm._passages[context]
    question = prompts.build_prompt(task.dev[0], [])
    assert len(read) == 1 and lm.split(context)[1] == question     # the last user turn alone
    with_read = lm.with_passages(context, 0)
    before, _, after = context.rpartition(question)
    assert with_read == before + passage_block(read) + question + after
    assert with_read.index("Context:") > with_read.rindex("<|user|>")


def test_the_command_runs_lm_evals_cli_with_the_model_registered(task, tmp_path, run_cli):  # noqa: F811
    task_dir = write_task(tmp_path / "tasks", task.dev[:3])
    out = tmp_path / "out"
    code, _, err = run_cli("lm-eval", "--model", "jmlr", "--model_args",
                           f"config={task.config_path},mode=none", "--tasks", TASK,
                           "--include_path", task_dir, "--output_path", out, "--limit", "2")
    assert code == 0, err
    results = list(out.rglob("results_*.json"))
    assert results and TASK in json.loads(results[0].read_text())["results"]
    code, _, err = run_cli("lm-eval", "--model", "jmlr", "--model_args",
                           f"config={task.config_path},mode=bogus", "--tasks", TASK,
                           "--include_path", task_dir, "--limit", "1")
    assert code == 2 and "mode must be one of none, frozen, trained" in err
    code, _, err = run_cli("lm-eval", "--model", "jmlr", "--model_args",
                           f"run={tmp_path / 'norun'},mode=trained", "--tasks", TASK,
                           "--include_path", task_dir, "--limit", "1")
    assert code == 2 and "norun" in err
