"""``train.step=retriever_distill`` (jmlr/training/steps/retriever_distill.py): the retriever
alone learns the base teacher's ordering from a utilities file, exports a checkpoint a joint run
starts from, and refuses what it cannot use before any model loads."""

from __future__ import annotations

import json

import pytest
import torch
from test_loop import loop_config, rows, task  # noqa: F401  (the tiny task)
from test_teacher_file import BASE, utilities_file  # noqa: F401

from jmlr.errors import ConfigError

pytestmark = pytest.mark.timeout(600)

# The tiny generator's utilities of one question differ by ~1e-3 nats: a target that sharp.
SHARP = ["distill.objective.beta=0.001", "distill.objective.min_gain=0"]

DISTILL = [*BASE, "train.step=retriever_distill", "train.batch_size=4", "train.grad_accum=1",
           "train.retriever_lr=1e-3", "train.warmup_steps=0", "train.eval_every=-1",
           "train.save_every=100"]


def teacher_kl(task, checkpoint, path) -> float:  # noqa: F811
    """Mean KL(teacher target ‖ retriever) over the file's rows: what the listwise objective
    at tau 4 and ``SHARP``'s beta drives down."""
    from jmlr.data import load_corpus_from_config, load_split
    from jmlr.retrieval.backends import backend_for
    from jmlr.training.rank_objectives import listwise_kl_loss

    cfg = loop_config(task, task.root / "unused", *BASE)
    questions = {q.id: q for q in load_split(cfg.data, "train")}
    texts = {p.id: p.full_text for p in load_corpus_from_config(cfg.data)}
    scorer = backend_for(cfg).load_scorer(cfg, checkpoint).eval()
    file_rows = [json.loads(line) for line in path.read_text().splitlines()]
    with torch.no_grad():
        scores = scorer.score([questions[r["question_id"]].query(cfg.retriever.query_template)
                               for r in file_rows],
                              [[texts[p] for p in r["passage_ids"]] for r in file_rows])
    utilities = torch.tensor([r["utilities"] for r in file_rows])
    return float(listwise_kl_loss(scores, utilities, tau=4.0, beta=0.001))


def test_distilling_moves_the_retriever_towards_the_teachers_order(task, utilities_file,  # noqa: F811
                                                                   tmp_path):
    from jmlr.training.loop import run_train

    run_dir = tmp_path / "distill"
    cfg = loop_config(task, run_dir, *DISTILL, f"jmlr.teacher_utilities={utilities_file}",
                      "train.max_steps=8", *SHARP)
    run_train(cfg)
    logged = rows(run_dir)
    assert [r["step"] for r in logged] == list(range(1, 9))
    assert [r["rows"] for r in logged] == [4, 4, 4, 1] * 2      # the file's 13 rows, twice
    assert "top1_agreement" in logged[0] and logged[0]["loss"] > 0
    before = teacher_kl(task, None, utilities_file)
    after = teacher_kl(task, run_dir / "final" / "retriever", utilities_file)
    assert after < 0.9 * before, (before, after)
    # The export is a retriever a joint run starts from.
    joint = loop_config(task, tmp_path / "joint", *BASE, "train.max_steps=1",
                        f"retriever.checkpoint={run_dir / 'final' / 'retriever'}")
    run_train(joint)
    assert (tmp_path / "joint" / "final" / "retriever").is_dir()


def test_teacher_questions_writes_the_file_then_distils(task, tmp_path):  # noqa: F811
    from jmlr.training.loop import run_train

    run_dir = tmp_path / "run"
    cfg = loop_config(task, run_dir, *DISTILL, "jmlr.teacher_questions=3", "train.max_steps=1",
                      f"jmlr.teacher_utilities={tmp_path / 'teacher.jsonl'}")
    run_train(cfg)
    written = (tmp_path / "teacher.jsonl").read_text().splitlines()
    assert len(written) == 3
    assert rows(run_dir)[0]["rows"] == 3        # the batch of 4 holds the file's 3 rows


@pytest.mark.parametrize(("extra", "message"), [
    ([], "needs the teacher's utilities"),
    (["jmlr.teacher_utilities=/nonexistent/t.jsonl"], "no utilities file"),
    (["jmlr.teacher_questions=2", "jmlr.utility_model=current"], "set jmlr.utility_model=base"),
])
def test_what_it_cannot_use_is_refused_before_models_load(task, tmp_path, extra, message):  # noqa: F811
    from jmlr.training.loop import run_train

    cfg = loop_config(task, tmp_path / "run", *DISTILL, *extra)
    with pytest.raises(ConfigError, match=message):
        run_train(cfg)
    assert not (tmp_path / "run" / "final").exists()


def test_a_joint_run_distils_first_and_starts_from_it(task, tmp_path):  # noqa: F811
    import yaml

    from jmlr.training.loop import run_train

    run_dir = tmp_path / "joint"
    settings = [*BASE, "train.max_steps=1", "distill.before_joint_steps=2", "distill.questions=3",
                "distill.batch_size=2", *SHARP,
                f"jmlr.teacher_utilities={tmp_path / 'teacher.jsonl'}"]
    cfg = loop_config(task, run_dir, *settings)
    run_train(cfg)
    assert cfg.retriever.train_from == ""                       # the caller's config unchanged
    distilled = run_dir / "distill" / "final" / "retriever"
    assert [r["rows"] for r in rows(run_dir / "distill")] == [2, 1]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["retriever"]["train_from"] == str(distilled)
    assert saved["train"]["step"] == "joint"
    assert len((tmp_path / "teacher.jsonl").read_text().splitlines()) == 3
    # Run again (resumed, one more step): the finished distil run is kept, not redone.
    stamp = (distilled / "config.json").stat().st_mtime_ns
    run_train(loop_config(task, run_dir, *settings[:1], "train.max_steps=2", *settings[2:]),
              resume=True)
    assert (distilled / "config.json").stat().st_mtime_ns == stamp
    # Other distil settings than the kept run's: refused, nothing replaced.
    with pytest.raises(ConfigError, match="distil run made with other settings"):
        run_train(loop_config(task, run_dir, *settings, "distill.lr=5e-4"), resume=True)
    assert (distilled / "config.json").stat().st_mtime_ns == stamp


def test_train_from_must_be_a_retriever_folder(task, tmp_path):  # noqa: F811
    from jmlr.training.loop import run_train

    cfg = loop_config(task, tmp_path / "run", *BASE, f"retriever.train_from={tmp_path / 'none'}")
    with pytest.raises(ConfigError, match="retriever.train_from"):
        run_train(cfg)


def test_the_quick_demo_distils_a_few_questions_for_two_steps():
    from jmlr.config import load_config
    from jmlr.pipeline import demo_config

    cfg = load_config("configs/demo.yaml", ["distill.before_joint_steps=40", "distill.questions=160"])
    quick = demo_config(cfg, quick=True).distill
    assert (quick.before_joint_steps, quick.questions) == (2, 4)
    assert demo_config(cfg, quick=False).distill.before_joint_steps == 40
    off = demo_config(load_config("configs/demo.yaml"), quick=True).distill
    assert off.before_joint_steps == 0
