"""The ColBERT retriever on colbert-ai: compatibility fix, checkpoints, trainable scorer,
PLAID index build and search. Tiny real models; one index shared by the session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from tiny_retrieval import REPO, make_passages, tiny_config, tiny_task

from jmlr.data.corpus import corpus_fingerprint, write_corpus
from jmlr.errors import ConfigError
from jmlr.retrieval import colbert as cb
from jmlr.retrieval import indexer, plaid
from jmlr.retrieval.colbert_backend import run_index, search_questions
from jmlr.retrieval.folders import folder_sha256
from jmlr.retrieval.kmeans import assign, kmeans
from jmlr.retrieval.scorer import TrainableScorer

pytestmark = pytest.mark.timeout(300)   # colbert-ai can hang when a worker dies


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return tiny_task(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def checkpoint(task) -> Path:
    return Path(task.manifest["checkpoint"]["path"])


@pytest.fixture
def scorer(checkpoint):
    return TrainableScorer.from_checkpoint(checkpoint, query_maxlen=32, doc_maxlen=48).eval()


QUERIES = ["fever and rash in a child", "joint pain at night"]
DOCS = [["Measles causes fever and rash.", "Gout: joint pain, swelling!"],
        ["Gout: joint pain, swelling!", " ".join(["long"] * 200)]]   # the last is truncated


# --- compatibility fix -------------------------------------------------------------------


def test_compat_fix_is_installed_in_every_colbert_module():
    assert cb.compat_installed()
    import sys

    holders = [m for n, m in sys.modules.items()
               if n.startswith("colbert") and hasattr(m, "class_factory")]
    assert holders and all(getattr(m.class_factory, "jmlr_compat", False) for m in holders)


@pytest.mark.skipif(int(transformers.__version__.split(".")[0]) < 5,
                    reason="transformers 4.x builds colbert-ai's model unpatched")
def test_colbert_model_class_needs_the_fix_on_transformers_5(checkpoint):
    """Without the fix, colbert-ai cannot build its model; with it, the same call works."""
    config = cb.ColBERTConfig.load_from_checkpoint(str(checkpoint))
    unpatched = cb._hf_colbert.class_factory.__wrapped__(str(checkpoint))
    with pytest.raises(AttributeError, match="all_tied_weights_keys"):
        unpatched.from_pretrained(str(checkpoint), colbert_config=config)
    patched = cb._hf_colbert.class_factory(str(checkpoint))
    model = patched.from_pretrained(str(checkpoint), colbert_config=config)
    assert model.linear.weight.shape == (32, 64)


def _build_in_child(checkpoint: str, queue) -> None:
    try:
        from jmlr.retrieval.scorer import TrainableScorer as ChildScorer

        scorer = ChildScorer.from_checkpoint(checkpoint, 32, 48)
        queue.put(("ok", scorer.dim))
    except Exception as err:  # reported to the parent
        queue.put(("error", repr(err)))


@pytest.mark.slow
def test_a_spawned_process_gets_the_fix_from_importing_our_module(checkpoint):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_build_in_child, args=(str(checkpoint), queue))
    child.start()
    result = queue.get(timeout=240)
    child.join(timeout=60)
    assert result == ("ok", 32)


def test_importing_colbert_leaves_process_settings_alone():
    import multiprocessing

    assert multiprocessing.get_start_method(allow_none=True) != "spawn"
    assert os.environ.get("TOKENIZERS_PARALLELISM") != "true"   # conftest sets "false"


# --- checkpoints ---------------------------------------------------------------------------


def test_an_encoder_is_converted_once_and_reused(task, tmp_path):
    first = cb.prepare_checkpoint(str(task.bert), 32, task.cfg.run.cache_dir)
    assert cb.is_colbert_checkpoint(first) and first.name.endswith("-dim32")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = cb.prepare_checkpoint(str(task.bert), 32, task.cfg.run.cache_dir)
    assert again == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    # The same source in another cache gets the same seeded projection.
    elsewhere = cb.prepare_checkpoint(str(task.bert), 32, tmp_path / "cache")
    a = cb.load_colbert_checkpoint(first).linear.weight
    b = cb.load_colbert_checkpoint(elsewhere).linear.weight
    assert torch.equal(a, b)
    # The encoder weights are the source's, under colbert's prefix.
    from safetensors.torch import load_file

    source = load_file(str(task.bert / "model.safetensors"))
    converted = load_file(str(first / "model.safetensors"))
    key = "embeddings.word_embeddings.weight"
    assert torch.equal(source[key], converted[f"bert.{key}"])
    # Another dim is another checkpoint; a ColBERT checkpoint is used as it is.
    other = cb.prepare_checkpoint(str(task.bert), 16, task.cfg.run.cache_dir)
    assert other != first and cb.checkpoint_dim(other) == 16
    assert cb.prepare_checkpoint(str(first), 32, tmp_path / "unused") == first
    assert not (tmp_path / "unused").exists()


def test_bad_checkpoint_locations_are_clear_config_errors(task, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        cb.prepare_checkpoint(str(tmp_path / "missing"), 32, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        cb.prepare_checkpoint(str(empty), 32, tmp_path)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(task.bert, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no weights"):
        cb.prepare_checkpoint(str(no_weights), 32, tmp_path)
    remote = tmp_path / "remote"
    shutil.copytree(task.bert, remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.M"}}))
    with pytest.raises(ConfigError, match="custom model code"):
        cb.prepare_checkpoint(str(remote), 32, tmp_path)
    broken = tmp_path / "broken_vocab"
    shutil.copytree(task.bert, broken)
    (broken / "tokenizer.json").unlink()
    (broken / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(ConfigError, match="has only 5 tokens"):
        cb.prepare_checkpoint(str(broken), 32, tmp_path)
    with pytest.raises(ConfigError, match="not a ColBERT checkpoint"):
        TrainableScorer.from_checkpoint(task.bert, 32, 48)


# --- trainable scorer ---------------------------------------------------------------------


def test_scorer_equals_colbert_ai_score_on_colbert_ai_encodings(scorer, checkpoint):
    flat = [d for row in DOCS for d in row]
    with cb.quiet_colbert():   # colbert-ai's own inference path, from text
        reference = cb.Checkpoint(str(checkpoint), colbert_config=cb.colbert_config_for(
            checkpoint, query_maxlen=32, doc_maxlen=48), verbose=0)
        Q = reference.queryFromText(QUERIES)
        D, D_mask = reference.doc(*reference.doc_tokenizer.tensorize(flat),
                                  keep_dims="return_mask")
    expected = cb.colbert_score(Q.repeat_interleave(2, dim=0), D, D_mask,
                                config=reference.colbert_config).view(2, 2)
    got = scorer.score(QUERIES, DOCS)
    assert got.shape == (2, 2) and got.requires_grad
    torch.testing.assert_close(got.detach(), expected, rtol=1e-5, atol=1e-5)
    assert scorer.encode_queries(QUERIES).shape == (2, 32, 32)
    D_ours, mask = scorer.encode_docs(flat)
    assert D_ours.shape[1] == 48 and mask.sum(-1).max() <= 48   # doc_maxlen respected


def test_length_buckets_give_the_scores_and_gradients_of_one_padded_batch(scorer):
    docs = [["Measles causes fever and rash.", " ".join(["long"] * 200), "Gout."],
            ["Gout: joint pain, swelling!", "Anemia and fatigue in a young adult.", "Rash."]]
    results = []
    for budget in (0, 48):     # 0: one padded forward; 48 tokens: one passage per forward
        scorer.doc_tokens_per_forward = budget
        scorer.zero_grad()
        scores = scorer.score(QUERIES, docs)
        scores.sum().backward()
        projection = scorer.colbert.linear.weight.grad.clone()
        results.append((scores.detach(), projection))
    scorer.doc_tokens_per_forward = TrainableScorer.doc_tokens_per_forward
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)


def test_a_rank_loss_trains_encoder_and_projection(scorer):
    scorer.train()
    before = {n: p.detach().clone() for n, p in scorer.named_parameters()}
    optimizer = torch.optim.SGD(scorer.parameters(), lr=1e-2)
    scores = scorer.score(QUERIES, DOCS)
    # The first candidate should beat the second: -log σ(s_1 - s_2).
    loss = -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1]).mean()
    loss.backward()
    projection = "colbert.model.linear.weight"
    encoder = "colbert.model.bert.encoder.layer.0.attention.self.query.weight"
    grads = dict(scorer.named_parameters())
    assert grads[projection].grad.abs().sum() > 0 and grads[encoder].grad.abs().sum() > 0
    optimizer.step()
    after = dict(scorer.named_parameters())
    assert not torch.equal(before[projection], after[projection].detach())
    assert not torch.equal(before[encoder], after[encoder].detach())


def test_save_and_load_give_identical_scores_in_colbert_format(scorer, tmp_path):
    with torch.no_grad():  # move away from the indexed weights first
        scorer.colbert.linear.weight.mul_(1.5).add_(0.01)
    expected = scorer.score(QUERIES, DOCS).detach()
    saved = scorer.save(tmp_path / "trained")
    assert cb.is_colbert_checkpoint(saved) and not list(tmp_path.glob(".trained*"))
    meta = json.loads((saved / "artifact.metadata").read_text())
    assert meta["model_name"] is None and meta["dim"] == 32
    loaded = TrainableScorer.from_checkpoint(saved, 32, 48).eval()
    torch.testing.assert_close(loaded.score(QUERIES, DOCS).detach(), expected, rtol=0, atol=0)
    # colbert-ai's own loader reads the folder directly.
    with cb.quiet_colbert():
        reference = cb.Checkpoint(str(saved), colbert_config=cb.colbert_config_for(
            saved, query_maxlen=32), verbose=0)
        Q = reference.queryFromText(QUERIES)
    torch.testing.assert_close(Q, loaded.query_embeddings(QUERIES))
    scorer.save(tmp_path / "trained")   # saving over an existing checkpoint replaces it
    assert cb.is_colbert_checkpoint(saved)


def test_a_checkpoint_saves_from_a_checkout_with_a_detached_head(scorer, tmp_path, monkeypatch):
    """colbert-ai records the working directory's git branch in every config it saves, and
    gitpython raises TypeError on a detached HEAD (a tag, a CI job): the save must not fail."""
    import subprocess

    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    subprocess.run([*git, "checkout", "-q", "--detach"], check=True)
    monkeypatch.chdir(repo)
    saved = scorer.save(tmp_path / "detached")
    meta = json.loads((saved / "artifact.metadata").read_text())
    assert "git_branch" not in meta["meta"] and meta["meta"]["hostname"]


# --- PLAID index ------------------------------------------------------------------------


def test_every_passage_retrieves_itself_first(task):
    searcher = plaid.PlaidSearcher(task.cfg.index_dir)
    results = searcher.search(searcher.encode([p.full_text for p in task.passages]), k=5)
    assert [r.passage_ids[0] for r in results] == [p.id for p in task.passages]
    assert all(r.scores == sorted(r.scores, reverse=True) for r in results)


def test_the_index_records_checkpoint_corpus_and_ids(task, checkpoint):
    index = task.cfg.index_dir
    manifest = json.loads((index / plaid.MANIFEST).read_text())
    assert manifest["corpus"]["fingerprint"] == corpus_fingerprint(task.passages)
    assert manifest["corpus"]["n_passages"] == 40
    assert manifest["checkpoint"]["sha256"] == folder_sha256(checkpoint)
    assert manifest["settings"]["doc_maxlen"] == 48 and manifest["settings"]["nbits"] == 2
    assert manifest["build_seconds"] > 0 and manifest["passages_per_second"] > 0
    assert json.loads((index / plaid.PASSAGE_IDS).read_text()) == [p.id for p in task.passages]
    assert not list(index.parent.glob(f".{index.name}.*"))   # no build leftovers
    lines = (index / plaid.COLLECTION).read_text().splitlines()
    assert lines == [f"{pid}\t{p.full_text}" for pid, p in enumerate(task.passages)]
    colbert_config = json.loads((index / "metadata.json").read_text())["config"]
    assert colbert_config["index_path"] == str(index.resolve())
    assert colbert_config["collection"] == str(index.resolve() / plaid.COLLECTION)
    assert colbert_config["checkpoint"] == str(checkpoint)
    assert plaid.COLLECTION in manifest["files"]


def documented_colbert_fix() -> str:
    """The transformers-5 fix for colbert-ai as the README gives it to users."""
    text = (REPO / "README.md").read_text()
    after = text.split("**colbert-ai 0.2.22 on transformers 5**", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


COLBERT_ALONE = """
import json, sys
from pathlib import Path
index = Path(sys.argv[1])
from colbert import Searcher
ids = json.loads((index / "passage_ids.json").read_text())
searcher = Searcher(index=str(index), verbose=0)
found = {}
for pid, text in enumerate(searcher.collection):
    pids, ranks, scores = searcher.search(text, k=3)
    found[ids[pid]] = [[ids[p] for p in pids], [float(s) for s in scores]]
assert "jmlr" not in sys.modules
Path(sys.argv[2]).write_text(json.dumps(found))
"""


@pytest.mark.slow
def test_colbert_ai_alone_opens_and_searches_the_index(task, tmp_path):
    """colbert-ai's own Searcher(index=...) with nothing but the index path, in a Python
    without jmlr that applies only the README's transformers-5 fix."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / "found.json"
    script = documented_colbert_fix() + COLBERT_ALONE
    done = subprocess.run([sys.executable, "-c", script, str(task.cfg.index_dir), str(out)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out.read_text())
    assert list(found) == [p.id for p in task.passages]
    assert all(ranked[0] == pid for pid, (ranked, _) in found.items())
    searcher = plaid.PlaidSearcher(task.cfg.index_dir)   # jmlr's path gives the same
    ours = searcher.search(searcher.encode([p.full_text for p in task.passages]), k=3)
    assert [r.passage_ids for r in ours] == [ranked for ranked, _ in found.values()]
    for result, (_, scores) in zip(ours, found.values(), strict=True):
        assert result.scores == pytest.approx(scores, abs=1e-4)


def test_an_existing_index_is_not_rebuilt_without_overwrite(task, run_cli):
    with pytest.raises(ConfigError, match="--overwrite"):
        run_index(task.cfg, overwrite=False)
    code, _, err = run_cli("index", "-c", task.config_path)
    assert code == 2 and "--overwrite" in err


def test_overwrite_replaces_the_index_and_an_interrupted_build_leaves_nothing(task, tmp_path,
                                                                            monkeypatch, run_cli):
    config = tmp_path / "config.yaml"
    cfg = tiny_config(tmp_path, task.bert, task.root / "corpus.jsonl")
    cfg.run.cache_dir = task.cfg.run.cache_dir
    cfg.save(config)
    assert run_cli("index", "-c", config)[0] == 0
    first = plaid.read_manifest(cfg.index_dir)["build_id"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(indexer, "kmeans", interrupted)
    code, _, _ = run_cli("index", "-c", config, "--overwrite")
    assert code == 130
    assert plaid.read_manifest(cfg.index_dir)["build_id"] == first   # the old index is intact
    assert not list(cfg.index_dir.parent.glob(".index.*"))
    fresh = tmp_path / "fresh"
    code, _, _ = run_cli("index", "-c", config, f"retriever.index_dir={fresh}")
    assert code == 130 and not fresh.exists()
    monkeypatch.undo()
    code, out, _ = run_cli("index", "-c", config, "--overwrite")
    assert code == 0 and "passages/s" in out
    assert plaid.read_manifest(cfg.index_dir)["build_id"] != first


def _count_encoded(monkeypatch) -> list[int]:
    """Record how many passages each call of colbert's document encoder gets."""
    encoded: list[int] = []
    doc_from_text = cb.Checkpoint.docFromText

    def counting(self, docs, *args, **kwargs):
        encoded.append(len(docs))
        return doc_from_text(self, docs, *args, **kwargs)

    monkeypatch.setattr(cb.Checkpoint, "docFromText", counting)
    return encoded


def _build(task, folder: Path) -> dict:
    settings = plaid.IndexSettings(**task.manifest["settings"])
    checkpoint = Path(task.manifest["checkpoint"]["path"])
    return plaid.build_index(checkpoint, task.passages, folder, settings, "c",
                             corpus_fingerprint(task.passages))


def _index_tensors(folder: Path) -> dict[str, torch.Tensor | tuple]:
    return {name: torch.load(folder / name, weights_only=True)
            for name in ("centroids.pt", "0.codes.pt", "0.residuals.pt", "ivf.pid.pt")}


def test_the_sample_vectors_are_reused_and_give_the_same_index(task, tmp_path, monkeypatch):
    encoded = _count_encoded(monkeypatch)
    manifest = _build(task, tmp_path / "reused")
    assert sum(encoded) == 40 == manifest["passages_encoded"]  # once, although colbert samples all
    phases = manifest["phase_seconds"]
    assert set(phases) == {"setup", "train", "index", "finalize", "sample_encoding",
                           "index_encoding"}
    steps = phases["setup"] + phases["train"] + phases["index"] + phases["finalize"]
    assert 0 < steps <= manifest["build_seconds"] and phases["sample_encoding"] <= phases["setup"]
    encoded.clear()
    monkeypatch.setattr(indexer.TorchKMeansIndexer, "_sample_embeddings",
                        cb.CollectionIndexer._sample_embeddings)
    _build(task, tmp_path / "plain")
    assert sum(encoded) == 80
    reused, plain = _index_tensors(tmp_path / "reused"), _index_tensors(tmp_path / "plain")
    for name, a in reused.items():
        b = plain[name]
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) \
            if isinstance(a, tuple) else torch.equal(a, b), name


def test_a_partial_sample_is_reused_and_only_the_rest_is_encoded(task, tmp_path, monkeypatch):
    # Above ~30k passages colbert samples a part of the collection; here: every other passage.
    monkeypatch.setattr(indexer.TorchKMeansIndexer, "_sample_pids",
                        lambda self: set(range(0, len(self.collection), 2)))
    encoded = _count_encoded(monkeypatch)
    manifest = _build(task, tmp_path / "reused")
    assert encoded == [20, 20] and manifest["passages_encoded"] == 40
    monkeypatch.setattr(indexer.TorchKMeansIndexer, "_sample_embeddings",
                        cb.CollectionIndexer._sample_embeddings)
    _build(task, tmp_path / "plain")
    assert encoded[2:] == [20, 40]
    reused, plain = _index_tensors(tmp_path / "reused"), _index_tensors(tmp_path / "plain")
    assert torch.equal(reused["centroids.pt"], plain["centroids.pt"])
    # The unsampled passages are encoded in other batches than in a plain build, which can
    # move a vector by float rounding; their centroid codes must still agree.
    same = (reused["0.codes.pt"] == plain["0.codes.pt"]).float().mean().item()
    assert reused["0.codes.pt"].shape == plain["0.codes.pt"].shape and same > 0.99
    searcher = plaid.PlaidSearcher(tmp_path / "reused")
    for passage, hit in zip(task.passages, searcher.search(searcher.encode(
            [p.full_text for p in task.passages]), k=1), strict=True):
        assert hit.passage_ids == [passage.id]


def test_a_changed_corpus_is_refused(task, tmp_path):
    changed = make_passages()
    changed[3].text += " Also rare."
    write_corpus(tmp_path / "corpus.jsonl", changed)
    cfg = tiny_config(tmp_path, task.bert, tmp_path / "corpus.jsonl")
    cfg.retriever.index_dir = str(task.cfg.index_dir)
    with pytest.raises(ConfigError, match="different corpus"):
        search_questions(cfg, task.dev)


def test_search_without_an_index_says_how_to_build_one(task, tmp_path):
    cfg = tiny_config(tmp_path, task.bert, task.root / "corpus.jsonl")
    with pytest.raises(ConfigError, match="jmlr index"):
        search_questions(cfg, task.dev)


def test_a_changed_checkpoint_is_refused(task, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(task.cfg.index_dir, index)
    manifest = json.loads((index / plaid.MANIFEST).read_text())
    manifest["checkpoint"]["sha256"] = "0" * 64
    (index / plaid.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="changed after the index"):
        plaid.PlaidSearcher(index)
    with pytest.raises(ConfigError, match="not a ColBERT checkpoint"):   # would get a random head
        plaid.PlaidSearcher(task.cfg.index_dir, checkpoint=task.bert)


def _damage(index: Path, how: str) -> str:
    """Damage a copied index one way; returns the file the error must name."""
    name, action = how.split(":")
    path = index / name
    if action == "delete":
        path.unlink()
    elif action == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif action == "empty":
        path.write_bytes(b"")
    elif action == "flip":          # same size, other bytes
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return name


@pytest.mark.parametrize("how", ["ivf.pid.pt:delete", "ivf.pid.pt:truncate", "centroids.pt:empty",
                                 "0.residuals.pt:truncate", "passage_ids.json:delete",
                                 "buckets.pt:flip"])
@pytest.mark.parametrize("manifest", ["with file record", "old, without"])
def test_a_damaged_index_names_the_file_and_the_fix(task, tmp_path, how, manifest):
    index = tmp_path / "index"
    shutil.copytree(task.cfg.index_dir, index)
    recorded = json.loads((index / plaid.MANIFEST).read_text())
    assert recorded["files"]["0.residuals.pt"]["size"] == (index / "0.residuals.pt").stat().st_size
    assert "sha256" in recorded["files"]["centroids.pt"]
    if manifest.startswith("old"):
        if how.endswith("flip"):
            pytest.skip("without a record, a change that keeps the size is not seen")
        del recorded["files"]
        (index / plaid.MANIFEST).write_text(json.dumps(recorded))
    name = _damage(index, how)
    with pytest.raises(ConfigError) as err:
        plaid.PlaidSearcher(index)
    message = str(err.value)
    assert f"the index at {index} is damaged ({name}" in message
    assert message.endswith("rebuild it with `jmlr index --overwrite`")


def test_mine_over_a_damaged_index_is_one_line(task, tmp_path, run_cli):
    index = tmp_path / "index"
    shutil.copytree(task.cfg.index_dir, index)
    _damage(index, "ivf.pid.pt:truncate")
    code, _, err = run_cli("mine", "-c", task.config_path, f"retriever.index_dir={index}",
                           f"candidates.path={tmp_path / 'candidates'}", "--splits", "dev")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"jmlr mine: error: the index at {index} is damaged (ivf.pid.pt has ")


# --- k-means ---------------------------------------------------------------------------


def test_kmeans_is_seeded_and_handles_few_points():
    points = torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(kmeans(points, 16, 3, seed=4), kmeans(points, 16, 3, seed=4))
    few = kmeans(points[:5], 8, 3)
    assert few.shape == (8, 8) and torch.equal(few[:5], points[:5])
    centroids = kmeans(points, 16, 5)
    # Lloyd never increases the within-cluster error over its starting centroids.
    start = kmeans(points, 16, 0)
    def sse(c):
        return ((points - c[assign(points, c)]) ** 2).sum()
    assert sse(centroids) <= sse(start)


def test_nearest_centroid_search_in_blocks_equals_the_full_score_matrix(monkeypatch):
    from jmlr.retrieval import kmeans as km

    gen = torch.Generator().manual_seed(2)
    points, centroids = torch.randn(1000, 16, generator=gen), torch.randn(300, 16, generator=gen)
    bias = torch.randn(300, generator=gen)
    monkeypatch.setattr(km, "_BLOCK_ELEMENTS", 300 * 64)      # 64 rows a block, a ragged last
    assert torch.equal(km.nearest(points, centroids, bias), (points @ centroids.T + bias).argmax(-1))
    assert torch.equal(km.nearest(points, centroids), (points @ centroids.T).argmax(-1))
    brute = torch.cdist(points, centroids).argmin(-1)
    assert (assign(points, centroids) == brute).float().mean() > 0.999


def test_the_cpu_codec_gives_colbert_ai_s_codes():
    gen = torch.Generator().manual_seed(3)
    centroids = torch.nn.functional.normalize(torch.randn(512, 32, generator=gen), dim=-1)
    vectors = torch.nn.functional.normalize(torch.randn(5000, 32, generator=gen), dim=-1).half()
    config = cb.ColBERTConfig(dim=32, nbits=2)
    ours = indexer._Codec(config=config, centroids=centroids, avg_residual=None)
    theirs = cb.ResidualCodec(config=config, centroids=centroids, avg_residual=None)
    assert not ours.use_gpu
    assert torch.equal(ours.compress_into_codes(vectors, "cpu"),
                       theirs.compress_into_codes(vectors, "cpu"))


def test_warmup_builds_colbert_extensions_and_caches_the_configs_models(run_cli, tmp_path):
    cache = tmp_path / "cache"
    argv = ["warmup", "-c", str(REPO / "configs" / "tiny.yaml"), f"run.cache_dir={cache}"]
    code, out, _ = run_cli(*argv)
    assert code == 0
    assert set(json.loads(out)) == {"colbert extensions", "retriever checkpoint", "generator"}
    assert cb.build_extensions(use_gpu=False) == ["ColBERT", "IndexScorer", "StridedTensor"]
    made = sorted(p.relative_to(cache) for p in cache.glob("*/*"))
    assert {p.parts[0] for p in made} == {"colbert", "generators"}
    code, _, _ = run_cli(*argv)                 # a second warm-up finds everything cached
    assert code == 0 and sorted(p.relative_to(cache) for p in cache.glob("*/*")) == made


# --- colbert-ai's extension builds: stale locks -----------------------------------------------


@pytest.fixture
def extension_dir(tmp_path, monkeypatch) -> Path:
    """A private TORCH_EXTENSIONS_DIR: the shared cache is never touched."""
    root = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(root))
    return root


def _hold_lock(path: Path):
    """A process that holds ``path`` open, as torch's builder holds its lock while compiling."""
    import subprocess
    import sys

    script = ("import os, sys, time; os.open(sys.argv[1], os.O_CREAT | os.O_EXCL); "
              "print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_stale_build_lock_is_removed_with_its_partial_build(extension_dir, caplog):
    from jmlr.retrieval import extensions

    build = extensions.build_directory("segmented_lookup_cpp")
    assert build.parent == extension_dir
    (build / "lock").touch()                      # left by a build killed with -9
    (build / "strided_tensor.o").write_bytes(b"half")
    assert extensions.lock_state(build).stale
    with caplog.at_level("WARNING", logger="jmlr.retrieval.extensions"):
        assert extensions.clear_stale_lock(build, timeout_s=5, poll_s=0.1)
    assert build.is_dir() and list(build.iterdir()) == []
    assert "was interrupted" in caplog.text and "compiling again" in caplog.text
    assert not extensions.clear_stale_lock(build)  # nothing left to do


def test_a_live_build_lock_is_waited_for_then_named_and_recovered_when_its_holder_dies(
        extension_dir, caplog):
    import subprocess
    import sys

    from jmlr.errors import UserError
    from jmlr.retrieval import extensions

    build = extensions.build_directory("filter_pids_cpp")
    holder = _hold_lock(build / "lock")
    try:
        state = extensions.lock_state(build)
        assert state.holders == [holder.pid] and not state.stale
        with caplog.at_level("INFO", logger="jmlr.retrieval.extensions"), \
                pytest.raises(UserError) as err:
            extensions.clear_stale_lock(build, timeout_s=0.5, poll_s=0.1)
        assert "waiting for another build" in caplog.text          # not silent
        assert f"held by process {holder.pid}" in str(err.value)
        assert f"`rm {build / 'lock'}`" in str(err.value)
    finally:
        holder.kill()                               # the builder dies mid-build: lock stays
        holder.wait()
    assert (build / "lock").exists()
    # the killed builder's compiler may still run in the build folder: not stale yet
    compiler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], cwd=build)
    try:
        assert extensions.lock_state(build).holders == [compiler.pid]
    finally:
        compiler.kill()
        compiler.wait()
    assert extensions.clear_stale_lock(build, timeout_s=5, poll_s=0.1)
    assert not (build / "lock").exists()


def test_colbert_loads_its_extensions_through_the_lock_check(extension_dir, monkeypatch, caplog):
    import sys

    from torch.utils import cpp_extension

    from jmlr.retrieval import extensions

    for name in ("colbert.modeling.colbert", "colbert.search.index_storage",
                 "colbert.search.strided_tensor", "colbert.indexing.codecs.residual"):
        assert sys.modules[name].load is extensions.guarded_load, name
    build = extensions.build_directory("segmented_lookup_cpp")
    (build / "lock").touch()
    seen = {}

    def compile_stub(**kwargs):    # stands for torch's compiler: minutes, not what is tested
        seen["lock left"] = (build / "lock").exists()
        return kwargs["name"]

    monkeypatch.setattr(cpp_extension, "load", compile_stub)
    monkeypatch.setattr(extensions, "_announced", False)
    with caplog.at_level("INFO", logger="jmlr.retrieval.extensions"):
        loaded = sys.modules["colbert.search.strided_tensor"].load(
            name="segmented_lookup_cpp", sources=["segmented_lookup.cpp"])
    assert loaded == "segmented_lookup_cpp" and seen == {"lock left": False}
    assert "compiling colbert-ai's extensions (about 3 minutes, once" in caplog.text


def test_queries_longer_than_query_maxlen_are_reported_once(scorer, caplog):
    long_query = "fever " * 60 + "A: measles B: gout"
    with caplog.at_level("WARNING", logger="jmlr.retrieval.colbert"):
        scorer.encode_queries([long_query, "short"])
        scorer.encode_queries([long_query])
    warnings = [r for r in caplog.records if "longer than retriever.query_maxlen" in r.message]
    assert len(warnings) == 1 and "1 of 2 queries" in warnings[0].message
    from jmlr.retrieval.colbert import query_overflow

    cut, longest = query_overflow(scorer.query_tokenizer.tok, ["short", long_query], 32)
    assert cut == 1 and longest > 60


def test_the_query_template_shapes_every_query():
    from jmlr.config import load_config
    from jmlr.data.schema import MCQ
    from jmlr.errors import ConfigError

    q = MCQ("q", "Fever?", {"A": "Measles", "B": "Gout"}, "A")
    assert q.query("{question}") == "Fever?" and q.query("Options: {options}. {question}") == \
        "Options: A: Measles B: Gout. Fever?"
    with pytest.raises(ConfigError, match="must contain {question}"):
        load_config(None, ["retriever.query_template='{options}'"])
    with pytest.raises(ConfigError, match="quote text that starts with"):
        load_config(None, ["retriever.query_template={options}"])
    with pytest.raises(ConfigError, match="unknown placeholder.*answer"):
        load_config(None, ["retriever.query_template={question} {answer}"])
