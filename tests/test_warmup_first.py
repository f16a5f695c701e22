"""``contrastive.before_joint_steps`` (jmlr/training/warmup_first.py, before_joint.py): a joint
run first synthesises rows, warms its retriever up on them in RUN/warmup, chains the distil run
after it when that is on too, starts from the last export, and keeps both when resumed."""

from __future__ import annotations

import pytest
import yaml
from test_distill import SHARP
from test_loop import loop_config, rows, task  # noqa: F401  (the tiny task)
from test_synthesis import SMALL
from test_teacher_file import BASE

from jmlr.errors import ConfigError

pytestmark = pytest.mark.timeout(600)

WARMUP = ["contrastive.before_joint_steps=2", "contrastive.batch_size=2", "contrastive.hard_negatives=1",
          *SMALL]


def test_a_joint_run_warms_up_then_distils_then_starts_from_it(task, tmp_path):  # noqa: F811
    from jmlr.training.contrastive_data import read_contrastive_rows
    from jmlr.training.loop import run_train

    run_dir = tmp_path / "joint"
    settings = [*BASE, "train.max_steps=1", *WARMUP, "distill.before_joint_steps=1",
                "distill.questions=2", "distill.batch_size=2", *SHARP,
                f"jmlr.teacher_utilities={tmp_path / 'teacher.jsonl'}"]
    cfg = loop_config(task, run_dir, *settings)
    run_train(cfg)
    assert cfg.retriever.train_from == ""                       # the caller's config unchanged
    synthetic = read_contrastive_rows(run_dir / "synthetic.jsonl")
    assert 3 <= len(synthetic) <= 4                             # 4 passages, one question each
    assert [r["step"] for r in rows(run_dir / "warmup")] == [1, 2]
    warmed = run_dir / "warmup" / "final" / "retriever"
    distilled = run_dir / "distill" / "final" / "retriever"
    # warm-up → distil → joint, each starting from the one before
    assert yaml.safe_load((run_dir / "distill" / "config.yaml").read_text())["retriever"][
        "train_from"] == str(warmed)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["retriever"][
        "train_from"] == str(distilled)
    # Resumed for one more step: both kept, not redone.
    stamps = [(p / "config.json").stat().st_mtime_ns for p in (warmed, distilled)]
    run_train(loop_config(task, run_dir, *settings[:1], "train.max_steps=2", *settings[2:]),
              resume=True)
    assert [(p / "config.json").stat().st_mtime_ns for p in (warmed, distilled)] == stamps
    # Other warm-up settings than the kept run's: refused, nothing replaced.
    with pytest.raises(ConfigError, match="warm-up run made with other settings"):
        run_train(loop_config(task, run_dir, *settings, "contrastive.lr=5e-4"), resume=True)
    assert (warmed / "config.json").stat().st_mtime_ns == stamps[0]


def test_named_rows_are_used_and_a_missing_file_is_refused(task, tmp_path):  # noqa: F811
    from jmlr.training.loop import run_train

    cfg = loop_config(task, tmp_path / "joint", *BASE, *WARMUP,
                      f"contrastive.data={tmp_path / 'none.jsonl'}")
    with pytest.raises(ConfigError, match="contrastive.data: no file"):
        run_train(cfg)
    assert not (tmp_path / "joint" / "synthetic.jsonl").exists()   # nothing synthesised
    assert not (tmp_path / "joint" / "final").exists()
