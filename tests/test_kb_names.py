"""factuality.kb by scispaCy linker name (umls, mesh, rxnorm, go, hpo), read from scispaCy's
own download cache, offline."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import pytest

from jmlr.config import load_config
from jmlr.data.kb import SCISPACY_KBS, resolve_kb, scispacy_cache
from jmlr.errors import ConfigError
from tests.test_factuality import KB_ROWS, prediction, write_lines


def test_names_match_the_installed_scispacy():
    from scispacy.candidate_generation import DEFAULT_KNOWLEDGE_BASES

    theirs = {name: inspect.signature(kb.__init__).parameters["file_path"].default
              for name, kb in DEFAULT_KNOWLEDGE_BASES.items()}
    assert theirs["umls"].endswith("umls_2022_ab_cat0129.jsonl")
    assert theirs == SCISPACY_KBS


def put_in_scispacy_cache(cache_root: Path, name: str, rows: list[dict]) -> Path:
    """Write a KB where scispaCy's cached_path would have saved the download of ``name``:
    ``sha256(url).sha256(etag).<file name>``, with its ``.json`` metadata beside it."""
    url = SCISPACY_KBS[name]
    stem = hashlib.sha256(url.encode()).hexdigest()
    etag = hashlib.sha256(b'"abc123"').hexdigest()
    folder = cache_root / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    path = write_lines(folder / f"{stem}.{etag}.{url.rsplit('/', 1)[-1]}", rows)
    (folder / f"{path.name}.json").write_text(json.dumps({"url": url, "etag": '"abc123"'}))
    return path


def test_a_name_resolves_to_scispacys_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISPACY_CACHE", str(tmp_path / "sci"))
    assert scispacy_cache() == tmp_path / "sci" / "datasets"
    cached = put_in_scispacy_cache(tmp_path / "sci", "mesh", KB_ROWS)
    assert resolve_kb("mesh") == cached
    assert resolve_kb("MeSH") == cached
    # a path is still a path, and a missing one names itself
    assert resolve_kb(str(cached)) == cached
    with pytest.raises(ConfigError, match="factuality.kb: .*nokb.jsonl does not exist"):
        resolve_kb(str(tmp_path / "nokb.jsonl"))


def test_a_name_not_in_the_cache_fails_at_once_saying_how_to_get_it(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SCISPACY_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError) as err:
        resolve_kb("umls")
    message = str(err.value)
    assert "\n" not in message and SCISPACY_KBS["umls"] in message
    assert str(tmp_path / "empty" / "datasets") in message
    preds = write_lines(tmp_path / "predictions.jsonl", [prediction("q1", "Fever.", "Fever.")])
    code, _, stderr = run_cli("factuality", "--predictions", preds, "--kb", "umls",
                              f"run.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and "not in its cache" in stderr
    assert not (tmp_path / "report.json").exists() and not (tmp_path / "cache").exists()


def test_umls_f_with_a_named_kb_links_through_it(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("SCISPACY_CACHE", str(tmp_path / "sci"))
    put_in_scispacy_cache(tmp_path / "sci", "rxnorm", KB_ROWS)
    (tmp_path / "run").mkdir()
    preds = write_lines(tmp_path / "run" / "predictions.jsonl",
                        [prediction("q1", "Pyrexia and coughing.", "Fever and cough."),
                         prediction("q2", "Renal failure.", "Fever and anaemia.")])
    cfg = load_config(None, [f"run.cache_dir={tmp_path / 'cache'}", "factuality.kb=rxnorm"])
    from jmlr.evaluation.factuality import run_factuality

    summary = run_factuality(cfg, preds)
    assert summary["n"] == 2 and summary["f1"] == pytest.approx(0.5)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["kb"].endswith(".umls_rxnorm_2022.jsonl") and report["kb_concepts"] == len(KB_ROWS)
    code, _, err = run_cli("factuality", "--predictions", preds, "--kb", "rxnorm",
                           "--out", tmp_path / "out", f"run.cache_dir={tmp_path / 'cache'}")
    assert code == 0, err
    again = json.loads((tmp_path / "out" / "report.json").read_text())
    assert again["timing"]["index_built"] is False and again["summary"]["f1"] == pytest.approx(0.5)
