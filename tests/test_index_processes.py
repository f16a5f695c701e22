"""``jmlr index`` in two CPU processes (``accelerate launch``, gloo): one index, built from
both processes' shares, that finds what the one-process index finds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_loop import free_port
from tiny_retrieval import tiny_task

from jmlr.config import load_config

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[1]


def search(cfg, questions):
    from jmlr.retrieval.colbert_backend import search_questions

    return {q: c.passage_ids for q, c in search_questions(cfg, questions).items()}


@pytest.mark.slow
def test_two_processes_build_one_index_that_searches_like_one_process(tmp_path_factory, tmp_path):
    task = tiny_task(tmp_path_factory.getbasetemp())
    index_dir = tmp_path / "index-2proc"
    command = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"),
               "--main_process_port", str(free_port()), "-m", "jmlr", "index",
               "-c", str(task.config_path), f"retriever.index_dir={index_dir}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("indexed 40 passages") == 1, done.stdout     # the main process says it
    assert "2 process(es)" in done.stdout

    manifest = json.loads((index_dir / "jmlr_index.json").read_text())
    assert manifest["processes"] == 2 and manifest["corpus"]["n_passages"] == 40
    # each process encoded its own half once (the k-means sample's vectors reused)
    assert manifest["passages_encoded"] == 40
    assert sorted(p.name for p in index_dir.iterdir() if p.name.endswith(".codes.pt")) == \
        ["0.codes.pt", "1.codes.pt"]                     # one chunk per process
    assert not [p for p in index_dir.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    one = load_config(task.config_path)
    two = load_config(task.config_path, [f"retriever.index_dir={index_dir}"])
    questions = task.train + task.dev
    found_one, found_two = search(one, questions), search(two, questions)
    top1 = sum(found_one[q.id][0] == found_two[q.id][0] for q in questions) / len(questions)
    overlap = sum(len(set(found_one[q.id][:5]) & set(found_two[q.id][:5]))
                  for q in questions) / (5 * len(questions))
    print(f"top-1 agreement {top1:.2f}, top-5 overlap {overlap:.2f}")
    assert top1 >= 0.9 and overlap >= 0.9
