"""Replay of cached teacher utilities (``jmlr.replay_questions``, jmlr/training/replay.py):
hand-computed losses on small cases, and a tiny real run that replays and resumes exactly."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from test_loop import loop_config, rows, task  # noqa: F401  (the module-scoped tiny task)

from jmlr.errors import ConfigError
from jmlr.registry import RANK_OBJECTIVES
from jmlr.training import checkpoint as ckpt
from jmlr.training.replay import UtilityCache, replay_loss, replay_weight

pytestmark = pytest.mark.timeout(600)

REPLAY = ["jmlr.utility_model=base", "jmlr.replay_questions=3", "train.max_steps=4",
          "train.grad_accum=1", "train.save_every=2", "train.eval_every=-1"]


def pairwise(scores, utilities, baseline):
    return RANK_OBJECTIVES.get("pairwise")(scores, utilities, None, baseline)


def test_replayed_rows_of_different_lengths_are_scored_in_groups_and_averaged_by_row():
    cache = UtilityCache()
    cache.add("a", ["p1", "p2"], [0.5, 1.0], 2.0)               # p1 better
    cache.add("b", ["p1", "p2", "p3"], [2.0, 0.5, 2.0], 2.0)    # p2 better than p1 and p3
    fixed = {"p1": 1.0, "p2": 0.0, "p3": 0.0}
    calls = []

    def score(qids, passage_ids):
        calls.append(len(passage_ids[0]))
        return torch.tensor([[fixed[p] for p in row] for row in passage_ids], requires_grad=True)

    loss, stats = replay_loss(cache, ["a", "b"], score, pairwise)
    # a: one pair, the scores order it right by 1: -log σ(1). b: p2 over p1, which the scores
    # order wrong by 1 (-log σ(-1)), and p2 over p3, which they tie (log 2); p1 and p3 tie in
    # utility and are left out. Rows weigh alike.
    a = -math.log(1 / (1 + math.exp(-1)))
    b = (-math.log(1 / (1 + math.exp(1))) + math.log(2)) / 2
    assert sorted(calls) == [2, 3]
    assert float(loss.detach()) == pytest.approx((a + b) / 2, abs=1e-6)
    assert int(stats["replay_rows"].total) == 2 and int(stats["replay_n_pairs"].total) == 3
    assert loss.requires_grad


def test_the_cache_never_replays_the_current_batch_or_a_row_without_a_pair():
    cache = UtilityCache()
    cache.add("seen", ["p1", "p2"], [0.1, 0.2], 1.0)
    cache.add("single", ["p1"], [0.1], 1.0)
    cache.add("now", ["p1", "p2"], [0.1, 0.2], 1.0)
    drawn = cache.draw(10, torch.Generator().manual_seed(0), exclude={"now"})
    assert drawn == ["seen"]
    assert replay_weight(2, 1) == (2 / 3, 1 / 3)
    state = cache.state_dict()
    again = UtilityCache()
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.state_dict() == state


def test_replay_needs_a_teacher_that_does_not_train(task):  # noqa: F811
    with pytest.raises(ConfigError, match="replay_questions"):
        loop_config(task, task.root / "unused", "jmlr.replay_questions=4",
                    "jmlr.utility_model=current")
    # a retriever-only run: the generator is its own fixed teacher
    cfg = loop_config(task, task.root / "unused", "jmlr.replay_questions=4",
                      "jmlr.train_generator=false")
    assert cfg.jmlr.replay_questions == 4


def test_a_run_replays_cached_utilities_and_resumes_with_them_exactly(task, tmp_path):  # noqa: F811
    from jmlr.training.loop import run_train

    ref_dir = tmp_path / "ref"
    run_train(loop_config(task, ref_dir, *REPLAY))
    logged = [r for r in rows(ref_dir) if "replay_rows" in r or r.get("step", 0) >= 1]
    assert "replay_rows" not in logged[0]           # step 1: nothing cached yet
    later = [r for r in logged if r["step"] >= 2]
    assert all(r.get("replay_rows", 0) >= 1 for r in later), later
    saved = json.loads((ckpt.step_dir(ref_dir, 2) / "utility_cache.json").read_text())
    assert set(saved) == {"0"} and len(saved["0"]) >= 2

    resumed = tmp_path / "resumed"
    shutil.copytree(ref_dir, resumed)               # as if the run had died after step 2
    shutil.rmtree(ckpt.step_dir(resumed, 4))
    shutil.rmtree(resumed / "final")
    run_train(loop_config(task, resumed, *REPLAY), resume=True)
    assert rows(resumed) == rows(ref_dir)
