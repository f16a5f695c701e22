"""``jmlr utilities`` and ``jmlr.teacher_utilities`` (jmlr/training/teacher_file.py): the file
holds what a joint run's base teacher computes, resumes without recomputing, refuses what does
not fit, and a run given it replays from its first step."""

from __future__ import annotations

import json

import pytest
from test_loop import loop_config, loop_overrides, rows, task  # noqa: F401  (the tiny task)

from jmlr.errors import ConfigError, DataError
from jmlr.training import checkpoint as ckpt

pytestmark = pytest.mark.timeout(600)

BASE = ["jmlr.utility_model=base"]
REPLAY = [*BASE, "jmlr.replay_questions=3", "train.max_steps=2", "train.grad_accum=1",
          "train.save_every=2", "train.eval_every=-1"]


def write_file(run_cli, task, out, *options: str, overrides=()):  # noqa: F811
    return run_cli("utilities", "-c", task.config_path,
                   *loop_overrides(task, task.root / "unused", *BASE, *overrides),
                   "--out", out, *options)


@pytest.fixture(scope="module")
def utilities_file(task, tmp_path_factory):  # noqa: F811
    """The teacher's utilities of every training question's whole mined list."""
    from jmlr.training.teacher_file import run_teacher_utilities

    out = tmp_path_factory.mktemp("teacher") / "train.utilities.jsonl"
    cfg = loop_config(task, task.root / "unused", *BASE)
    run_teacher_utilities(cfg, top=cfg.candidates.top_n, out=out)
    return out


def test_the_file_holds_what_a_joint_runs_base_teacher_computes(task, utilities_file, tmp_path):  # noqa: F811
    from jmlr.training.loop import run_train

    run_dir = tmp_path / "run"
    run_train(loop_config(task, run_dir, *REPLAY))
    cached = json.loads((ckpt.step_dir(run_dir, 2) / "utility_cache.json").read_text())["0"]
    written = {json.loads(line)["question_id"]: json.loads(line)
               for line in utilities_file.read_text().splitlines()}
    compared = 0
    for qid, row in cached.items():
        mine = dict(zip(written[qid]["passage_ids"], written[qid]["utilities"], strict=True))
        for pid, value in row["utilities"].items():
            assert mine[pid] == pytest.approx(value, abs=2e-4), (qid, pid)
            compared += 1
        assert written[qid]["baseline"] == pytest.approx(row["baseline"], abs=2e-4)
    assert compared >= 8      # 2 steps x 2 questions x k = 4 drawn passages


def test_an_interrupted_file_continues_and_other_settings_are_refused(task, tmp_path, run_cli):  # noqa: F811
    from jmlr.training.teacher_file import meta_path

    out = tmp_path / "u.jsonl"
    code, stdout, err = write_file(run_cli, task, out, "--limit", "2", "--top", "3")
    assert code == 0, err
    first = out.read_text().splitlines()
    assert len(first) == 2 and all(len(json.loads(line)["utilities"]) == 3 for line in first)
    assert json.loads(stdout)["computed"] == 2

    code, stdout, err = write_file(run_cli, task, out, "--limit", "3", "--top", "3")
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert lines[:2] == first and len(lines) == 3          # the first two kept, not recomputed
    assert json.loads(stdout)["computed"] == 1 and json.loads(stdout)["kept"] == 2
    # asked for fewer than it holds: nothing computed, and the meta still says three
    code, stdout, err = write_file(run_cli, task, out, "--limit", "2", "--top", "3")
    assert code == 0 and json.loads(stdout)["computed"] == 0, err
    assert json.loads(meta_path(out).read_text())["questions"] == 3

    before = out.read_bytes()
    code, _, err = write_file(run_cli, task, out, "--limit", "3", "--top", "4")
    assert code == 2 and "--overwrite" in err and "top differs" in err
    code, _, err = write_file(run_cli, task, out, "--limit", "3", "--top", "3",
                              overrides=["jmlr.target=letter"])
    assert code == 2 and "jmlr.target is 'letter_text' in the file, 'letter' in the config" in err
    assert out.read_bytes() == before                       # nothing of the file changed
    code, _, err = write_file(run_cli, task, out, "--limit", "1", "--top", "4", "--overwrite")
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 1


def test_a_run_refuses_a_file_that_does_not_fit(task, utilities_file, tmp_path):  # noqa: F811
    from jmlr.data.corpus import corpus_fingerprint
    from jmlr.training.teacher_file import load_teacher_rows, meta_path

    cfg = loop_config(task, tmp_path / "run", *REPLAY)
    passages = {p.id: p for p in task.passages}
    fingerprint = corpus_fingerprint(task.passages)
    ids = [q.id for q in task.train]
    assert len(load_teacher_rows(utilities_file, cfg, ids, passages, fingerprint)) == len(ids)
    # jmlr.teacher_questions = 2 with a file written for more: the first two questions only
    two = loop_config(task, tmp_path / "run", *REPLAY, "jmlr.teacher_questions=2")
    firsts = load_teacher_rows(utilities_file, two, ids, passages, fingerprint)
    assert [r["question_id"] for r in firsts] == ids[:2] and len(ids) > 2

    other = loop_config(task, tmp_path / "run", *REPLAY, "jmlr.utility=option_contrast")
    with pytest.raises(ConfigError, match="another teacher: jmlr.utility is 'answer_loss'"):
        load_teacher_rows(utilities_file, other, ids, passages, fingerprint)
    with pytest.raises(ConfigError, match="another corpus"):
        load_teacher_rows(utilities_file, cfg, ids, passages, "0" * 64)
    with pytest.raises(DataError, match=r":1: field 'question_id': .* not a question of the training"):
        load_teacher_rows(utilities_file, cfg, ids[1:], passages, fingerprint)

    broken = tmp_path / "broken.jsonl"
    lines = utilities_file.read_text().splitlines()
    row = json.loads(lines[1])
    row["utilities"] = row["utilities"][:-1]
    broken.write_text("\n".join([lines[0], json.dumps(row)]) + "\n")
    meta = json.loads(meta_path(utilities_file).read_text())
    meta_path(broken).write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"broken.jsonl:2: field 'utilities': \d+ values for"):
        load_teacher_rows(broken, cfg, ids, passages, fingerprint)
    meta_path(broken).write_text(json.dumps({**meta, "finished": False}))
    with pytest.raises(ConfigError, match="unfinished: run `jmlr utilities` again"):
        load_teacher_rows(broken, cfg, ids, passages, fingerprint)
    with pytest.raises(ConfigError, match="no utilities file at"):
        load_teacher_rows(tmp_path / "absent.jsonl", cfg, ids, passages, fingerprint)
    with pytest.raises(ConfigError, match=r"feed the replay \(or, the file, distill.before_joint_steps\): set jmlr.replay_questions"):
        loop_config(task, tmp_path / "run", *BASE, f"jmlr.teacher_utilities={utilities_file}")


def test_a_run_given_the_file_replays_from_its_first_step(task, utilities_file, tmp_path):  # noqa: F811
    from jmlr.training.loop import run_train

    run_dir = tmp_path / "run"
    run_train(loop_config(task, run_dir, *REPLAY, f"jmlr.teacher_utilities={utilities_file}"))
    steps = [r for r in rows(run_dir) if r.get("step", 0) >= 1 and "loss" in r]
    assert steps[0]["replay_rows"] == 3            # step 1 replays from the file
    saved = json.loads((ckpt.step_dir(run_dir, 2) / "utility_cache.json").read_text())["0"]
    assert len(saved) == len(task.train)           # every question of the file, kept for resume


def test_teacher_questions_writes_the_file_before_training_and_keeps_it(task, tmp_path, run_cli,  # noqa: F811
                                                                       monkeypatch):
    import shutil

    candidates = tmp_path / "candidates"        # the default file goes beside them
    shutil.copytree(task.root / "loop_candidates", candidates)
    train = [*REPLAY, "jmlr.teacher_questions=2", f"candidates.path={candidates}"]
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "run", *train))
    assert code == 0, err
    written = candidates / "train.utilities.jsonl"
    ids = [json.loads(line)["question_id"] for line in written.read_text().splitlines()]
    assert ids == [q.id for q in task.train[:2]]
    steps = [r for r in rows(tmp_path / "run") if r.get("step", 0) >= 1 and "loss" in r]
    assert steps[0]["replay_rows"] >= 2         # the two questions replayed from step 1
    before = written.stat().st_mtime_ns
    code, _, err = run_cli("train", "-c", task.config_path,
                           *loop_overrides(task, tmp_path / "again", *train))
    assert code == 0, err
    assert written.stat().st_mtime_ns == before                     # kept, not recomputed
    # Several processes would each compute it: a longer file must be written first.
    monkeypatch.setenv("WORLD_SIZE", "2")
    from jmlr.training.teacher_file import ensure_teacher_file

    more = loop_config(task, tmp_path / "more", *train[:-2], "jmlr.teacher_questions=3",
                       f"candidates.path={candidates}")
    with pytest.raises(ConfigError, match="before a multi-process run, in one process: jmlr "
                                          "utilities -c CONFIG --limit 3"):
        ensure_teacher_file(more)


def test_teacher_top_writes_the_first_passages_with_the_values_of_the_whole_list(
        task, utilities_file, tmp_path):  # noqa: F811
    from jmlr.training.teacher_file import meta_path, run_teacher_utilities

    out = tmp_path / "top2.jsonl"
    cfg = loop_config(task, task.root / "unused", *BASE, "jmlr.teacher_top=2")
    run_teacher_utilities(cfg, limit=2, out=out)
    short = [json.loads(line) for line in out.read_text().splitlines()]
    whole = [json.loads(line) for line in utilities_file.read_text().splitlines()][:2]
    assert [r["passage_ids"] for r in short] == [r["passage_ids"][:2] for r in whole]
    # A passage's utility does not depend on which others share its batch.
    for a, b in zip(short, whole, strict=True):
        assert a["utilities"] == pytest.approx(b["utilities"][:2], abs=1e-4)
        assert a["baseline"] == pytest.approx(b["baseline"], abs=1e-4)
    assert json.loads(meta_path(out).read_text())["top"] == 2
