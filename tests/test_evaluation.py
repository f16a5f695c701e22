"""jmlr evaluate: scoring by letter / option text / generation, modes, metrics, files.

Real tiny models throughout: the random-weight 2-layer Llama (tinycoder) as generator, a
random-weight tiny BERT turned into a ColBERT checkpoint as retriever.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from tiny_retrieval import make_passages, make_questions, make_tiny_bert

from jmlr.config import load_config
from jmlr.data.corpus import write_corpus
from jmlr.data.formats import write_questions
from jmlr.data.schema import Candidates, write_candidates
from jmlr.errors import DataError
from jmlr.evaluation.mcq import build_item, run_evaluate
from jmlr.evaluation.metrics import (
    Prediction,
    accuracy,
    bootstrap_interval,
    read_predictions,
    summarise,
)
from jmlr.evaluation.scoring import ScoringItem, score_options
from jmlr.generation import prompts
from jmlr.generation.model import load_generator
from jmlr.io import write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
N_QUESTIONS = 6
SUBJECTS = ("anatomy", "genetics")


@dataclasses.dataclass
class World:
    root: Path
    cache: Path
    passages: list
    questions: list
    corpus: Path
    test_file: Path
    bert: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("eval_world")
    passages = make_passages(12, seed=4)
    questions = [dataclasses.replace(q, rationale=f"The findings point to syndrome {i}.",
                                     metadata={"subject": SUBJECTS[i % 2]})
                 for i, q in enumerate(make_questions(passages, "e", range(N_QUESTIONS), seed=5))]
    write_corpus(root / "corpus.jsonl", passages)
    write_questions(root / "test.jsonl", questions)
    return World(root, root / "cache", passages, questions, root / "corpus.jsonl",
                 root / "test.jsonl", make_tiny_bert(root / "tiny-bert"))


def config(world: World, run_dir: Path, *extra: str):
    return load_config(REPO / "configs" / "tiny.yaml", [
        f"run.out_dir={run_dir}", f"run.cache_dir={world.cache}", f"data.corpus={world.corpus}",
        f"data.test={world.test_file}", f"retriever.checkpoint={world.bert}",
        "jmlr.r_read=2", *extra])


@pytest.fixture(scope="module")
def generator(world):
    cfg = config(world, world.root / "run")
    return load_generator(cfg.generator, world.cache, for_training=False)


def texts(world: World, k: int) -> list[str]:
    return [p.full_text for p in world.passages[:k]]


# --- token ids: the training template ----------------------------------------------------


def test_letters_and_option_texts_are_the_training_targets_tokens(world, generator):
    _, tokenizer = generator
    for max_length in (256, 90):          # 90 forces the passages to be cut
        for q in world.questions[:3]:
            item = build_item(tokenizer, q, texts(world, 3), max_length, "letter_text")
            encoded = prompts.encode_options(tokenizer, q, texts(world, 3), "letter_text",
                                             "option_text", max_length)
            for k, letter in enumerate(q.options):
                ex = encoded[letter]
                start = ex.target_mask.index(True)
                assert ex.input_ids[:start] == item.prompt_ids
                first = ex.input_ids[start:start + len(item.letter_prefix) + 1]
                assert first == [*item.letter_prefix, item.letter_ids[k]]
                option_text = [t for t, m in zip(ex.input_ids, ex.utility_mask, strict=True) if m]
                assert option_text == item.continuation_ids[k]
        assert len(set(item.letter_ids)) == len(q.options)


# --- scoring -----------------------------------------------------------------------------


def items_of_mixed_lengths(world, tokenizer) -> list[ScoringItem]:
    return [build_item(tokenizer, q, texts(world, i % 4), 256)
            for i, q in enumerate(world.questions)]


def test_batched_scores_equal_one_question_at_a_time(world, generator):
    model, tokenizer = generator
    items = items_of_mixed_lengths(world, tokenizer)
    assert len({len(it.prompt_ids) for it in items}) > 2          # padding really happens
    batched = score_options(model, items, tokenizer.pad_token_id)
    for row, item in enumerate(items):
        alone = score_options(model, [item], tokenizer.pad_token_id)
        assert len(batched.letter[row]) == len(item.letter_ids) == 4
        torch.testing.assert_close(torch.tensor(batched.letter[row]), torch.tensor(alone.letter[0]),
                                   atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(batched.option_text[row]),
                                   torch.tensor(alone.option_text[0]), atol=1e-4, rtol=0)


def full_sequence_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_scores_are_the_log_likelihoods_of_a_plain_forward(world, generator):
    model, tokenizer = generator
    item = build_item(tokenizer, world.questions[0], texts(world, 2), 256)
    scored = score_options(model, [item], tokenizer.pad_token_id)
    last = full_sequence_logprobs(model, item.prompt_ids)[-1]
    assert scored.letter[0] == pytest.approx([last[t].item() for t in item.letter_ids], abs=1e-4)
    expected = []
    for cont in item.continuation_ids:
        lp = full_sequence_logprobs(model, item.prompt_ids + cont)
        start = len(item.prompt_ids)
        expected.append(sum(lp[start - 1 + j, t].item() for j, t in enumerate(cont)) / len(cont))
    assert scored.option_text[0] == pytest.approx(expected, abs=1e-4)
    assert len(set(scored.option_text[0])) > 1


def test_a_shared_letter_prefix_is_read_before_the_letter(generator):
    model, tokenizer = generator
    prompt = tokenizer("Question: which one?\nAnswer:", add_special_tokens=True)["input_ids"]
    prefix = tokenizer(" option", add_special_tokens=False)["input_ids"]
    letters = [tokenizer(f" {c}", add_special_tokens=False)["input_ids"][-1] for c in "AB"]
    with_prefix = ScoringItem(prompt, letters, [[5], [6]], letter_prefix=prefix)
    plain = ScoringItem(prompt[:-1], letters, [[5], [6]])         # a row without a prefix
    scored = score_options(model, [with_prefix, plain], tokenizer.pad_token_id)
    after = full_sequence_logprobs(model, prompt + prefix)[-1]
    assert scored.letter[0] == pytest.approx([after[t].item() for t in letters], abs=1e-4)
    before = full_sequence_logprobs(model, prompt[:-1])[-1]
    assert scored.letter[1] == pytest.approx([before[t].item() for t in letters], abs=1e-4)


# --- metrics -----------------------------------------------------------------------------


def test_bootstrap_interval_is_seeded_and_contains_the_accuracy():
    rng = random.Random(0)
    for n in (5, 37, 200):
        correct = [rng.random() < 0.6 for _ in range(n)]
        low, high = bootstrap_interval(correct, samples=300, seed=7)
        assert low <= accuracy(correct) <= high
        assert (low, high) == bootstrap_interval(correct, samples=300, seed=7)
        assert 0.0 <= low < high <= 1.0
    wide = bootstrap_interval([True, False] * 10, samples=500, seed=1)
    narrow = bootstrap_interval([True, False] * 500, samples=500, seed=1)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]
    assert bootstrap_interval([], samples=100, seed=0) == (0.0, 0.0)


def test_unparseable_answers_are_wrong_and_listed():
    rows = [Prediction("a", "d", "none", "generate", "A", None, False),
            Prediction("b", "d", "none", "generate", "B", "B", True),
            Prediction("c", "d", "none", "generate", "C", "A", False)]
    summary = summarise(rows, samples=50, seed=0)
    assert summary["accuracy"] == pytest.approx(1 / 3)
    assert summary["unparseable"] == 1 and summary["unparseable_ids"] == ["a"]
    assert summary["n"] == 3 and summary["n_correct"] == 1


def test_a_malformed_predictions_file_names_file_line_and_field(tmp_path):
    good = Prediction("q1", "test", "none", "letter", "A", "A", True, {"A": -1.0, "B": -2.0}).to_json()
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"predictions.jsonl:2: malformed JSON"):
        read_predictions(path)
    bad = dict(good, correct="yes")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"predictions.jsonl:2: field 'correct'"):
        read_predictions(path)
    path.write_text(json.dumps(dict(good, mode="sideways")) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r":1: field 'mode'"):
        read_predictions(path)
    assert read_predictions(_write(tmp_path, [good]))[0].id == "q1"


def _write(folder: Path, rows: list[dict]) -> Path:
    path = folder / "ok.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- the command -------------------------------------------------------------------------


def test_evaluate_without_retrieval_answers_every_question_by_every_method(world, capsys):
    run_dir = world.root / "run_none"
    kb = world.root / "kb.jsonl"
    kb.write_text(json.dumps({"concept_id": "C0039082", "canonical_name": "Syndrome",
                              "aliases": ["syndromes"], "types": ["T047"], "definition": ""}) + "\n")
    cfg = config(world, run_dir, "eval.modes=[none]", "eval.scoring=[letter, option_text, generate]",
                 "eval.limit=5", "eval.batch_size=2", "eval.max_new_tokens=6", f"factuality.kb={kb}")
    make_run_folder(run_dir, cfg)
    metrics = run_evaluate(cfg, run_dir)
    out = capsys.readouterr().out
    assert "| mode | scoring | test | Average |" in out and "| no retrieval | letter |" in out

    rows = read_predictions(run_dir / "eval" / "test" / "predictions.jsonl")
    questions = {q.id: q for q in world.questions[:5]}
    assert len(rows) == 5 * 3
    for scoring in ("letter", "option_text", "generate"):
        assert {r.id for r in rows if r.scoring == scoring} == set(questions)
    for r in rows:
        q = questions[r.id]
        assert r.mode == "none" and r.retrieved == [] and r.gold == q.answer
        assert r.correct == (r.predicted == q.answer)
        assert r.reference_rationale == q.rationale
        if r.scoring == "generate":
            assert isinstance(r.generated, str) and r.option_scores == {}
            assert r.predicted is None or r.predicted in q.options
        else:
            assert set(r.option_scores) == set(q.options) and r.generated is None
            assert r.predicted == max(r.option_scores, key=r.option_scores.get)
    assert any(r.option_scores != s.option_scores for r in rows for s in rows
               if r.id == s.id and {r.scoring, s.scoring} == {"letter", "option_text"})

    written = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert written["results"] == metrics["results"]
    assert {"split", "datasets", "results", "retrieval", "table", "table_markdown", "bootstrap",
            "timing_s"} <= set(written)
    generate = written["results"]["test"]["none"]["generate"]
    unparseable = sorted(r.id for r in rows if r.scoring == "generate" and r.predicted is None)
    assert generate["unparseable"] == len(unparseable)
    assert sorted(generate["unparseable_ids"]) == unparseable
    for scoring in ("letter", "option_text", "generate"):
        s = written["results"]["test"]["none"][scoring]
        assert s["n"] == 5 and s["ci_low"] <= s["accuracy"] <= s["ci_high"]
        assert set(s["per_subject"]) == set(SUBJECTS)
        assert sum(v["n"] for v in s["per_subject"].values()) == 5
    assert written["retrieval"] == {"test": {}}
    assert [r["scoring"] for r in written["table"]["rows"]] == ["letter", "option_text", "generate"]
    # UMLS-F of the generated rationales follows, beside the predictions
    assert written["factuality"]["n"] == 5
    report = json.loads((run_dir / "eval" / "test" / "report.json").read_text())
    assert sorted(e["id"] for e in report["examples"]) == sorted(questions)
    assert all(e["reference_concepts"] for e in report["examples"])   # "syndrome ..." is linked


def make_run_folder(run_dir: Path, cfg) -> Path:
    """A run folder as `jmlr train` starts it (its config.yaml), without trained weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.yaml")
    return run_dir


def make_trained_run(world: World, run_dir: Path, cfg) -> None:
    """What `jmlr train` exports: LoRA adapters (moved away from zero so that they change the
    model) and a ColBERT checkpoint whose projection moved."""
    from jmlr.generation.model import save_generator
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.scorer import TrainableScorer

    torch.manual_seed(0)
    model, tokenizer = load_generator(cfg.generator, world.cache, for_training=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    save_generator(model, tokenizer, run_dir / "final" / "generator")
    start = prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim, cfg.run.cache_dir)
    scorer = TrainableScorer.from_checkpoint(start, cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen)
    with torch.no_grad():
        scorer.colbert.linear.weight.add_(torch.randn_like(scorer.colbert.linear.weight))
    scorer.save(run_dir / "final" / "retriever")
    cfg.save(run_dir / "config.yaml")


def expected_order(scorer, q, pool: list[str], corpus: dict[str, str]) -> list[str]:
    with torch.no_grad():
        scores = scorer.score([q.retrieval_query], [[corpus[p] for p in pool]])[0].tolist()
    return [pool[i] for i in sorted(range(len(pool)), key=lambda i: -scores[i])]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trained_and_frozen_modes_rerank_given_candidates_and_use_their_models(world):
    from jmlr.generation.model import load_trained_generator
    from jmlr.retrieval.colbert import prepare_checkpoint
    from jmlr.retrieval.scorer import TrainableScorer

    run_dir = world.root / "run_trained"
    cfg = config(world, run_dir, "eval.modes=[frozen, trained]", "eval.scoring=[letter, generate]",
                 "eval.generate_modes=[trained]", "eval.max_new_tokens=4", "candidates.top_n=5")
    make_trained_run(world, run_dir, cfg)
    rng = random.Random(1)
    pools = {}
    for q in world.questions:   # mined candidates: the gold passage among 5, in a random order
        others = [p.id for p in world.passages if p.id not in q.gold_passage_ids]
        pool = [*q.gold_passage_ids, *rng.sample(others, 4)]
        rng.shuffle(pool)
        pools[q.id] = pool
    write_candidates(cfg.candidates_dir / "test.jsonl",
                     [Candidates(qid, pool, [float(-i) for i in range(5)]) for qid, pool in pools.items()])

    metrics = run_evaluate(cfg, run_dir)
    rows = read_predictions(run_dir / "eval" / "test" / "predictions.jsonl")
    assert len(rows) == 3 * N_QUESTIONS      # generation only where eval.generate_modes says
    assert {(r.mode, r.scoring) for r in rows} == {("frozen", "letter"), ("trained", "letter"),
                                                   ("trained", "generate")}
    corpus = {p.id: p.full_text for p in world.passages}
    scorers = {
        "frozen": TrainableScorer.from_checkpoint(
            prepare_checkpoint(cfg.retriever.checkpoint, cfg.retriever.dim, cfg.run.cache_dir),
            cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen).eval(),
        "trained": TrainableScorer.from_checkpoint(
            run_dir / "final" / "retriever", cfg.retriever.query_maxlen, cfg.retriever.doc_maxlen).eval(),
    }
    questions = {q.id: q for q in world.questions}
    orders = {}
    for r in rows:
        ids = [x["id"] for x in r.retrieved]
        assert ids == expected_order(scorers[r.mode], questions[r.id], pools[r.id], corpus)[:2]
        scores = [x["score"] for x in r.retrieved]
        assert scores == sorted(scores, reverse=True)
        # the whole ranked list is kept, the passages read first
        assert [x["id"] for x in r.candidates][:2] == ids and len(r.candidates) == 5
        assert sorted(x["id"] for x in r.candidates) == sorted(pools[r.id])
        orders[r.mode, r.id] = ids
    assert any(orders["frozen", q] != orders["trained", q] for q in questions)

    # the trained mode answered with the run's generator (not the base one)
    trained_model, tokenizer = load_trained_generator(cfg.generator, world.cache,
                                                      run_dir / "final" / "generator")
    base_model, _ = load_generator(cfg.generator, world.cache, for_training=False)
    row = next(r for r in rows if r.mode == "trained" and r.scoring == "letter")
    item = build_item(tokenizer, questions[row.id], [corpus[i] for i in orders["trained", row.id]],
                      cfg.generator.max_length, cfg.jmlr.target)
    from_trained = score_options(trained_model, [item], tokenizer.pad_token_id, option_text=False)
    from_base = score_options(base_model, [item], tokenizer.pad_token_id, option_text=False)
    assert list(row.option_scores.values()) == pytest.approx(from_trained.letter[0], abs=1e-4)
    assert from_trained.letter[0] != pytest.approx(from_base.letter[0], abs=1e-3)

    for mode in ("frozen", "trained"):
        recall = metrics["retrieval"]["test"][mode]
        assert recall["recall@5"] == 1.0           # the gold passage is always in the pool
        assert 0.0 <= recall["recall@1"] <= recall["recall@2"] <= 1.0 and 0.2 <= recall["mrr"] <= 1.0


def test_cli_trained_mode_needs_a_trained_run(world, run_cli, tmp_path):
    cfg = config(world, tmp_path)
    cfg.save(tmp_path / "config.yaml")
    code, _, err = run_cli("evaluate", "-c", tmp_path / "config.yaml",
                           "--run", make_run_folder(tmp_path / "untrained", cfg), "--mode", "trained")
    assert code == 2
    assert "final/generator does not exist" in err


@pytest.mark.slow
@pytest.mark.colbert
@pytest.mark.timeout(300)
def test_frozen_mode_searches_a_real_plaid_index(tmp_path_factory, capsys):
    from tiny_retrieval import tiny_task

    task = tiny_task(tmp_path_factory.getbasetemp())
    run_dir = tmp_path_factory.mktemp("plaid_run")
    cfg = load_config(task.config_path, [f"data.test={task.root / 'dev.jsonl'}", "eval.modes=[frozen]",
                                         "eval.scoring=[letter]", "jmlr.r_read=3"])
    make_run_folder(run_dir, cfg)
    metrics = run_evaluate(cfg, run_dir)
    rows = read_predictions(run_dir / "eval" / "test" / "predictions.jsonl")
    assert len(rows) == len(task.dev)
    passage_ids = {p.id for p in task.passages}
    assert all(len(r.retrieved) == 3 and {x["id"] for x in r.retrieved} <= passage_ids for r in rows)
    recall = metrics["retrieval"]["test"]["frozen"]
    assert recall["n_questions"] == len(task.dev) and recall["recall@8"] >= recall["recall@1"]


# --- the run folder, checks before loading, re-evaluation ----------------------------------


def test_a_mistyped_run_folder_is_one_line_and_creates_nothing(world, run_cli, tmp_path):
    cfg = config(world, tmp_path / "run", "eval.modes=[none]", "eval.scoring=[letter]")
    cfg.save(tmp_path / "config.yaml")
    typo = tmp_path / "rnu"
    code, _, err = run_cli("evaluate", "-c", tmp_path / "config.yaml", "--run", typo, "--mode", "none")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"--run {typo} does not exist" in err
    assert not typo.exists()
    (tmp_path / "not_a_run").mkdir()
    code, _, err = run_cli("evaluate", "-c", tmp_path / "config.yaml", "--run", tmp_path / "not_a_run",
                           "--mode", "none")
    assert code == 2 and "is not a run folder" in err and "config.yaml" in err
    assert list((tmp_path / "not_a_run").iterdir()) == []


def test_a_truncated_adapter_is_found_before_any_model_loads(world, run_cli, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = config(world, run_dir, "eval.modes=[none, trained]", "eval.scoring=[letter]")
    make_trained_run(world, run_dir, cfg)
    cfg.save(tmp_path / "config.yaml")
    adapter = run_dir / "final" / "generator" / "adapter" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-100])
    capsys.readouterr()
    code, _, err = run_cli("evaluate", "-c", tmp_path / "config.yaml", "--run", run_dir)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{adapter}: damaged safetensors file" in err
    assert not (run_dir / "eval").exists()      # the none mode did not run first


def test_a_faulty_kb_stops_evaluate_before_it_answers(world, run_cli, tmp_path):
    kb = tmp_path / "kb.jsonl"
    row = {"concept_id": "C1", "canonical_name": "Syndrome", "aliases": [], "types": []}
    kb.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    cfg = config(world, run_dir, "eval.modes=[none]", "eval.scoring=[letter, generate]",
                 f"factuality.kb={kb}")
    make_run_folder(run_dir, cfg)
    cfg.save(tmp_path / "config.yaml")
    code, _, err = run_cli("evaluate", "-c", tmp_path / "config.yaml", "--run", run_dir)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{kb}:2: field 'concept_id': duplicate id 'C1'" in err
    assert not (run_dir / "eval").exists()       # no predictions or metrics were written


def earlier_evaluation(world: World, run_dir: Path, cfg) -> Path:
    """What `jmlr evaluate` left after all three modes: predictions, metrics and a UMLS-F
    report of the generated rationales (frozen and trained generated)."""
    from jmlr.evaluation.mcq import build_metrics

    questions = world.questions[:3]
    rows = []
    for mode in ("none", "frozen", "trained"):
        for scoring in ("letter", "generate") if mode != "none" else ("letter",):
            for q in questions:
                generated = f" {q.answer}: text\nExplanation: old {mode}" if scoring == "generate" else None
                rows.append(Prediction(q.id, "test", mode, scoring, q.answer, q.answer, True,
                                       {} if generated else {"A": -1.0, "B": -2.0},
                                       [] if mode == "none" else [{"id": "p0", "score": 1.0}],
                                       generated, generated and f"old {mode}", q.rationale))
    folder = run_dir / "eval" / "test"
    retrieval = {"test": {m: {"n_questions": 3, "recall@1": 0.5, "mrr": 0.5} for m in ("frozen", "trained")}}
    metrics = build_metrics(cfg, rows, {"test": questions}, retrieval, "test", run_dir)
    metrics["factuality"] = {"n": 6, "f1": 0.5}
    metrics["timing_s"] = {"none": 1.0, "frozen": 2.0, "trained": 3.0, "total": 6.0}
    write_jsonl(folder / "predictions.jsonl", (p.to_json() for p in rows))
    write_json(folder / "metrics.json", metrics)
    write_json(folder / "report.json", {"predictions": str(folder / "predictions.jsonl"), "examples": []})
    (folder / "report.html").write_text("<html></html>", encoding="utf-8")
    return folder


def test_re_evaluating_one_mode_keeps_the_other_modes_results(world, run_cli, tmp_path):
    run_dir = tmp_path / "run"
    cfg = config(world, run_dir, "eval.limit=3", "eval.max_new_tokens=4")
    make_run_folder(run_dir, cfg)
    folder = earlier_evaluation(world, run_dir, cfg)
    earlier = {(r.mode, r.scoring, r.id): r for r in read_predictions(folder / "predictions.jsonl")}
    cfg.save(tmp_path / "config.yaml")

    code, out, err = run_cli("evaluate", "-c", tmp_path / "config.yaml", "--run", run_dir,
                             "--mode", "none", "eval.scoring=[letter]")
    assert code == 0, err
    rows = read_predictions(folder / "predictions.jsonl")
    assert len(rows) == 3 * 5                       # none/letter anew; frozen and trained kept
    for r in rows:
        if r.mode == "none":
            assert r.option_scores != earlier["none", "letter", r.id].option_scores
        else:
            assert r == earlier[r.mode, r.scoring, r.id]
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["modes"] == ["none", "frozen", "trained"]
    assert set(metrics["results"]["test"]["trained"]) == {"letter", "generate"}
    assert metrics["retrieval"]["test"]["trained"]["mrr"] == 0.5
    assert [(r["mode"], r["scoring"]) for r in metrics["table"]["rows"]] == [
        ("none", "letter"), ("frozen", "letter"), ("frozen", "generate"), ("trained", "letter"),
        ("trained", "generate")]
    assert "| trained retriever (JMLR) | generate |" in out
    # the UMLS-F report scored rationales that are all still there: it stays
    assert (folder / "report.json").is_file() and metrics["factuality"] == {"n": 6, "f1": 0.5}
    assert metrics["timing_s"]["trained"] == 3.0

    code, _, err = run_cli("evaluate", "-c", tmp_path / "config.yaml", "--run", run_dir,
                           "--mode", "frozen", "eval.scoring=[generate]", "candidates.top_n=3")
    assert code == 2    # the frozen mode needs an index: nothing was written or removed
    assert (folder / "report.json").is_file()

    code, _, err = run_cli("evaluate", "-c", tmp_path / "config.yaml", "--run", run_dir,
                           "--mode", "none", "eval.scoring=[generate]")
    assert code == 0, err
    rows = read_predictions(folder / "predictions.jsonl")
    assert {(r.mode, r.scoring) for r in rows} == {("none", "letter"), ("none", "generate"),
                                                   ("frozen", "letter"), ("frozen", "generate"),
                                                   ("trained", "letter"), ("trained", "generate")}
    # new generated rationales: the old UMLS-F report no longer matches, so it is gone
    assert not (folder / "report.json").exists() and not (folder / "report.html").exists()
    assert "factuality" not in json.loads((folder / "metrics.json").read_text())


def test_debiased_letters_average_every_option_order_and_the_letter_prior_is_reported(world, generator):
    from jmlr.evaluation.letters import rotated
    from jmlr.evaluation.mcq import answer_questions

    model, tokenizer = generator
    cfg = config(world, world.root / "run", "eval.batch_size=3")
    questions = world.questions[:3]
    readings = [texts(world, 2) for _ in questions]
    answers = answer_questions(model, tokenizer, questions, readings,
                               ["letter", "letter_debiased"], cfg)
    for q, reading, debiased in zip(questions, readings, answers["letter_debiased"], strict=True):
        n = len(q.options)
        expected = [0.0] * n
        for shift in range(n):          # by hand: each rotation scored alone, mapped back
            shown, order = rotated(q, shift)
            item = build_item(tokenizer, shown, reading, cfg.generator.max_length, cfg.jmlr.target)
            letters = torch.tensor(score_options(model, [item], tokenizer.pad_token_id,
                                                 option_text=False).letter[0])
            for position, value in enumerate(letters.log_softmax(-1).tolist()):
                expected[order[position]] += value / n
        assert list(debiased["option_scores"].values()) == pytest.approx(expected, abs=1e-4)
        assert debiased["predicted"] == "ABCD"[max(range(n), key=lambda i: expected[i])]
    rows = [Prediction(q.id, "d", "none", "letter", q.answer, a["predicted"],
                       a["predicted"] == q.answer) for q, a in zip(questions, answers["letter"], strict=True)]
    letters = summarise(rows, samples=10, seed=0)["letters"]
    assert sum(letters["predicted"].values()) == 3 and letters["top_letter"] in "ABCD"


def test_qrels_give_retrieval_metrics_to_questions_without_gold_ids(world, tmp_path):
    run_dir = tmp_path / "run"
    plain = [dataclasses.replace(q, gold_passage_ids=[]) for q in world.questions]
    write_questions(tmp_path / "test.jsonl", plain)
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q.id}\t{q.gold_passage_ids[0]}\t1\n" for q in world.questions))
    cfg = config(world, run_dir, f"data.test={tmp_path / 'test.jsonl'}", "eval.modes=[frozen]",
                 "eval.scoring=[letter]", "candidates.top_n=5")
    pools = {q.id: [*q.gold_passage_ids, *[p.id for p in world.passages
                                           if p.id not in q.gold_passage_ids][:4]]
             for q in world.questions}
    write_candidates(cfg.candidates_dir / "test.jsonl",
                     [Candidates(qid, pool, [float(-i) for i in range(5)]) for qid, pool in pools.items()])
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert run_evaluate(cfg, run_dir)["retrieval"]["test"]["frozen"] == {}
    judged = run_evaluate(config(world, run_dir, f"data.test={tmp_path / 'test.jsonl'}",
                                 "eval.modes=[frozen]", "eval.scoring=[letter]",
                                 "candidates.top_n=5", f"eval.qrels={qrels}"), run_dir)
    recall = judged["retrieval"]["test"]["frozen"]
    assert recall["n_questions"] == N_QUESTIONS and recall["recall@5"] == 1.0
    bad = tmp_path / "bad.tsv"
    bad.write_text("q1 p1\n")
    with pytest.raises(DataError, match="bad.tsv:1: .*expected 3 .* or 4"):
        run_evaluate(config(world, run_dir, f"eval.qrels={bad}", "eval.modes=[frozen]"), run_dir)


# --- the evaluate metric modules shipped in the package -----------------------------------

METRICS_ALONE = """
import json, shutil, sys, tempfile
from pathlib import Path
import evaluate
work = Path(tempfile.mkdtemp())
for name in ("mcq_accuracy", "umls_f"):            # copied: they need nothing of jmlr
    shutil.copytree(Path(sys.argv[1]) / name, work / name)
acc = evaluate.load(str(work / "mcq_accuracy")).compute(
    predictions=["A", "", "C", "D"], references=["A", "B", "C", "A"], bootstrap_samples=200, seed=3)
f = evaluate.load(str(work / "umls_f")).compute(
    predictions=[["C1", "C2"], []], references=[["C2", "C3", "C4"], ["C1"]])
try:
    evaluate.load("accuracy")
    hub = "loaded"
except Exception as err:
    hub = type(err).__name__
assert "jmlr" not in sys.modules
Path(sys.argv[2]).write_text(json.dumps({"accuracy": acc, "umls_f": f, "hub": hub}))
"""


def test_metric_modules_load_offline_by_path_without_jmlr_and_give_the_command_s_numbers(tmp_path):
    import os
    import subprocess
    import sys

    from jmlr.evaluation.metric_modules import metric_path
    from jmlr.evaluation.umls_f import macro_average

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_EVALUATE_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, "-c", METRICS_ALONE, str(metric_path("umls_f").parent),
                           str(out)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out.read_text())
    rows = [Prediction(f"q{i}", "d", "none", "letter", gold, pred or None, pred == gold)
            for i, (pred, gold) in enumerate(zip(["A", "", "C", "D"], ["A", "B", "C", "A"],
                                                 strict=True))]
    ours = summarise(rows, samples=200, seed=3)
    assert {k: ours[k] for k in found["accuracy"]} == found["accuracy"]
    assert found["accuracy"]["accuracy"] == 0.5 and found["accuracy"]["ci_low"] < 0.5
    records = [{"generated_concepts": ["C1", "C2"], "reference_concepts": ["C2", "C3", "C4"]},
               {"generated_concepts": [], "reference_concepts": ["C1"]}]
    assert macro_average(records) == found["umls_f"]
    assert found["umls_f"]["f1"] == 0.2
    assert found["hub"] == "FileNotFoundError"       # evaluate's hub metrics need the network
