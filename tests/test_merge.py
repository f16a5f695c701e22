"""``jmlr merge`` (jmlr/merging/): two tiny expert runs merged with mergekit's methods; linear and
task arithmetic against hand-computed tensors, the other methods against mergekit's own
function on the same tensors, the ColBERT projection included; the output is a run folder that
evaluate and report read unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from test_loop import loop_overrides, task, train  # noqa: F401  (the tiny task)

pytestmark = pytest.mark.timeout(900)

PROJECTION = "colbert.model.linear.weight"        # the ColBERT projection: no mergekit architecture has it


@pytest.fixture(scope="module")
def experts(task, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("experts")
    runs = []
    for seed in (1, 2):
        run = root / f"expert{seed}"
        train(task, run, f"run.seed={seed}", "train.max_steps=2", "train.eval_every=-1",
              "train.retriever_lr=1e-2", "train.generator_lr=1e-2")
        runs.append(run)
    return runs


def merge_cli(run_cli, task, out, experts, *extra: str, overwrite=False):  # noqa: F811
    listed = "[" + ", ".join(f"{{run: {r}}}" for r in experts) + "]"
    return run_cli("merge", "-c", task.config_path, *loop_overrides(
        task, out, f"merge.experts={listed}", *extra), *(["--overwrite"] if overwrite else []))


def retriever_weights(cfg, path=None):
    from jmlr.retrieval.backends import backend_for

    return backend_for(cfg).load_scorer(cfg, checkpoint=path).state_dict()


def generator_weights(cfg, run):
    from jmlr.generation import model as generation

    if run is None:
        model, _ = generation.load_generator(cfg.generator, cfg.run.cache_dir, for_training=False)
    else:
        model, _ = generation.load_trained_generator(cfg.generator, cfg.run.cache_dir,
                                                     run / "final" / "generator")
    return model.state_dict()


def test_linear_and_task_arithmetic_equal_the_hand_computed_tensors(task, experts, tmp_path, run_cli):  # noqa: F811
    from jmlr.config import load_config

    cfg = load_config(task.config_path, loop_overrides(task, tmp_path / "x"))
    base_r = retriever_weights(cfg)
    expert_r = [retriever_weights(cfg, run / "final" / "retriever") for run in experts]
    base_g = generator_weights(cfg, None)
    expert_g = [generator_weights(cfg, run) for run in experts]
    assert not torch.equal(expert_r[0][PROJECTION], expert_r[1][PROJECTION])   # they differ

    out = tmp_path / "linear"
    code, stdout, err = merge_cli(run_cli, task, out, experts,
                                  "merge.generator={method: linear, per_expert: {weight: [1, 3]}}",
                                  "merge.retriever={method: linear, per_expert: {weight: [1, 3]}}")
    assert code == 0, err
    merged_r = retriever_weights(cfg, out / "final" / "retriever")
    for name in (PROJECTION, "colbert.model.bert.embeddings.word_embeddings.weight"):
        expected = (expert_r[0][name] + 3 * expert_r[1][name]) / 4        # weights normalised
        assert torch.allclose(merged_r[name], expected, atol=1e-6), name
    merged_g = generator_weights(cfg, out)
    changed = [n for n in base_g if not torch.equal(expert_g[0][n], base_g[n])]
    assert changed                                                   # the LoRA folded in
    for name in changed[:3]:
        expected = (expert_g[0][name] + 3 * expert_g[1][name]) / 4
        assert torch.allclose(merged_g[name], expected, atol=1e-5), name
    card = json.loads((out / "merge_card.json").read_text())
    assert card["parts"]["retriever"]["method"] == "linear" and card["mergekit"] == "0.1.5"
    assert len(card["parts"]["generator"]["experts"][0]["sha256"]) == 64

    out = tmp_path / "task_arithmetic"
    code, _, err = merge_cli(run_cli, task, out, experts, "merge.parts=[retriever]",
                             "merge.retriever={method: task_arithmetic, per_expert: {weight: [0.5, 1.0]}}")
    assert code == 0, err
    merged_r = retriever_weights(cfg, out / "final" / "retriever")
    expected = base_r[PROJECTION] + 0.5 * (expert_r[0][PROJECTION] - base_r[PROJECTION]) \
        + 1.0 * (expert_r[1][PROJECTION] - base_r[PROJECTION])
    assert torch.allclose(merged_r[PROJECTION], expected, atol=1e-6)
    card = json.loads((out / "merge_card.json").read_text())
    assert "copied_from" in card["parts"]["generator"]          # not merged: the first expert's


@pytest.mark.parametrize("method, parameters, per_expert", [
    ("ties", {}, {"density": [0.5, 0.5], "weight": [1.0, 1.0]}),
    ("breadcrumbs", {}, {"density": [0.8, 0.8], "gamma": [0.05, 0.05]}),
    ("breadcrumbs_ties", {}, {"density": [0.8, 0.8], "gamma": [0.05, 0.05]}),
    # DARE drops task-vector entries at random: at density 1 nothing is dropped, so the path
    # (rescaling, sign election for dare_ties) is compared without depending on the RNG.
    ("dare_linear", {}, {"density": [1.0, 1.0], "weight": [0.7, 0.3]}),
    ("dare_ties", {}, {"density": [1.0, 1.0], "weight": [1.0, 1.0]}),
])
def test_other_methods_equal_mergekits_own_function_on_the_projection(
        task, experts, tmp_path, run_cli, method, parameters, per_expert):  # noqa: F811
    from mergekit.merge_methods import merge_tensors

    from jmlr.config import load_config

    cfg = load_config(task.config_path, loop_overrides(task, tmp_path / "x"))
    tensors = [retriever_weights(cfg)[PROJECTION],
               *(retriever_weights(cfg, run / "final" / "retriever")[PROJECTION] for run in experts)]
    out = tmp_path / method
    spec = json.dumps({"method": method, "parameters": parameters, "per_expert": per_expert})
    code, _, err = merge_cli(run_cli, task, out, experts, "merge.parts=[retriever]",
                             f"merge.retriever={spec}")
    assert code == 0, err
    ids = ["base", "expert0", "expert1"]
    params = {**parameters, **{k: dict(zip(ids[1:], v, strict=True)) for k, v in per_expert.items()}}
    params.setdefault("weight", {"expert0": 1.0, "expert1": 1.0})     # jmlr's default: alike
    expected = merge_tensors(tensors, method, parameters=params, ids=ids, base_index=0,
                             dtype=torch.float32)
    merged = retriever_weights(cfg, out / "final" / "retriever")[PROJECTION]
    assert torch.allclose(merged, expected.to(merged.dtype), atol=1e-6)
    assert not torch.allclose(merged, tensors[0])


def test_slerp_of_the_base_and_one_expert_equals_mergekits_own_function(task, experts, tmp_path,  # noqa: F811
                                                                        run_cli):
    from mergekit.merge_methods import merge_tensors

    from jmlr.config import load_config

    cfg = load_config(task.config_path, loop_overrides(task, tmp_path / "x"))
    base = retriever_weights(cfg)[PROJECTION]
    expert = retriever_weights(cfg, experts[0] / "final" / "retriever")[PROJECTION]
    out = tmp_path / "slerp"
    code, _, err = merge_cli(run_cli, task, out, experts[:1], "merge.parts=[retriever]",
                             "merge.retriever={method: slerp, parameters: {t: 0.3}}")
    assert code == 0, err
    expected = merge_tensors([base, expert], "slerp", parameters={"t": 0.3},
                             ids=["base", "expert0"], base_index=0, dtype=torch.float32)
    merged = retriever_weights(cfg, out / "final" / "retriever")[PROJECTION]
    assert torch.allclose(merged, expected.to(merged.dtype), atol=1e-6)
    assert not torch.allclose(merged, base) and not torch.allclose(merged, expert)


def test_a_merged_run_evaluates_and_reports_like_a_trained_one(task, experts, tmp_path, run_cli):  # noqa: F811
    out = tmp_path / "slerped"
    code, _, err = merge_cli(run_cli, task, out, experts[:1],
                             "merge.generator={method: slerp, parameters: {t: 0.5}}",
                             "merge.retriever={method: slerp, parameters: {t: 0.5}}")
    assert code == 0, err
    over = loop_overrides(task, out, "eval.limit=4", "eval.scoring=[letter]")
    code, _, err = run_cli("evaluate", "-c", task.config_path, *over, "--run", out,
                           "--split", "dev", "--mode", "trained")
    assert code == 0, err
    code, _, err = run_cli("report", "-c", task.config_path, *over, "--run", out)
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "Merged from" in report and "slerp" in report


def test_bad_merges_stop_with_one_line(task, experts, tmp_path, run_cli):  # noqa: F811
    code, _, err = merge_cli(run_cli, task, tmp_path / "a", experts,
                             "merge.retriever={method: slerp, parameters: {t: 0.5}}")
    assert code == 2 and "slerp interpolates the base and one expert; 2 experts" in err
    code, _, err = merge_cli(run_cli, task, tmp_path / "b", [*experts, tmp_path / "nope"])
    assert code == 2 and "merge.experts.2.run" in err and "does not exist" in err
    code, _, err = merge_cli(run_cli, task, tmp_path / "c", [experts[0], experts[0]])
    assert code == 2 and "the same run twice" in err
    code, _, err = merge_cli(run_cli, task, experts[0], experts)
    assert code == 2 and "is one of the experts" in err
    code, _, err = merge_cli(run_cli, task, tmp_path / "d", experts,
                             "merge.generator.per_expert={weight: [1]}")
    assert code == 2 and "give one value per expert (2)" in err
    code, _, err = merge_cli(run_cli, task, tmp_path / "e", experts, "merge.generator.method=magic")
    assert code == 2 and "'magic' is not one of" in err
    code, _, err = merge_cli(run_cli, task, tmp_path / "g", experts,
                             "merge.generator={method: linear, parameters: {lambda: 1.0}}")
    assert code == 2 and "merge.generator.parameters.lambda: mergekit's linear has no such" in err
    code, _, err = merge_cli(run_cli, task, tmp_path / "h", experts,
                             "merge.retriever={method: ties, parameters: {density: 0.5}}")
    assert code == 2 and "put it under merge.retriever.per_expert" in err
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()
    ok = tmp_path / "f"
    assert merge_cli(run_cli, task, ok, experts, "merge.parts=[retriever]")[0] == 0
    before = (ok / "merge_card.json").read_text()
    code, _, err = merge_cli(run_cli, task, ok, experts, "merge.parts=[retriever]")
    assert code == 2 and "--overwrite" in err
    assert (ok / "merge_card.json").read_text() == before


def test_a_merge_section_without_experts_is_a_template_checked_once_they_are_named(repo_root):
    from jmlr.config import load_config
    from jmlr.errors import ConfigError

    cfg = load_config(repo_root / "configs" / "demo.yaml")          # ships per-expert lists
    assert cfg.merge.experts == [] and cfg.merge.generator.per_expert["weight"] == [1.0, 1.0]
    load_config(repo_root / "configs" / "demo.yaml", ["merge.experts=[{run: a}, {run: b}]"])
    with pytest.raises(ConfigError, match=r"merge.generator.per_expert.weight: give one value per expert \(3\)"):
        load_config(repo_root / "configs" / "demo.yaml", ["merge.experts=[{run: a}, {run: b}, {run: c}]"])


def test_peak_memory_is_the_merges_own_not_its_parents():
    """A merge started from a large process (a benchmark, a notebook) reports its own peak:
    ru_maxrss would report the parent's size, inherited across fork and exec."""
    import subprocess
    import sys

    from jmlr.merging.run import peak_rss_mib

    ballast = bytearray(600 * 1024 * 1024)          # touched: resident in this process
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert peak_rss_mib() > 600
    child = subprocess.run([sys.executable, "-c", "from jmlr.merging.run import peak_rss_mib; "
                            "print(peak_rss_mib())"], capture_output=True, text=True, check=True)
    assert float(child.stdout) < 400
