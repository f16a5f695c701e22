"""UMLS-F with scispaCy's real linker over a small hand-made knowledge base."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from jmlr.config import FactualityConfig, load_config
from jmlr.errors import DataError
from jmlr.evaluation.factuality import ConceptExtractor, load_kb, read_predictions, run_factuality
from jmlr.evaluation.umls_f import example_record, macro_average, set_scores

PKD, FEVER, COUGH, HEADACHE, HYPERTENSION, ALL, KIDNEY_FAILURE, ANEMIA = (
    "C0022680", "C0015967", "C0010200", "C0018681", "C0020538", "C0023449", "C0035078", "C0002871")

KB_ROWS = [
    {"concept_id": PKD, "canonical_name": "Polycystic kidney disease",
     "aliases": ["polycystic kidneys"], "types": ["T047"], "definition": "Cysts in both kidneys."},
    {"concept_id": FEVER, "canonical_name": "Fever", "aliases": ["pyrexia", "high temperature"],
     "types": ["T184"], "definition": "Raised body temperature."},
    {"concept_id": COUGH, "canonical_name": "Cough", "aliases": ["coughing"], "types": ["T184"],
     "definition": "Sudden expulsion of air."},
    {"concept_id": HEADACHE, "canonical_name": "Headache", "aliases": ["cephalalgia"],
     "types": ["T184"], "definition": "Pain in the head."},
    {"concept_id": HYPERTENSION, "canonical_name": "Hypertension",
     "aliases": ["high blood pressure"], "types": ["T047"], "definition": "Raised blood pressure."},
    {"concept_id": ALL, "canonical_name": "Acute lymphoblastic leukemia", "aliases": ["ALL"],
     "types": ["T191"], "definition": "A leukaemia of lymphoid precursors."},
    {"concept_id": KIDNEY_FAILURE, "canonical_name": "Kidney failure",
     "aliases": ["renal failure"], "types": ["T047"], "definition": "Loss of kidney function."},
    {"concept_id": ANEMIA, "canonical_name": "Anemia", "aliases": ["anaemia"], "types": ["T047"],
     "definition": "Too few red cells."},
]


def write_lines(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory) -> Path:
    return write_lines(tmp_path_factory.mktemp("kb") / "kb.jsonl", KB_ROWS)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def extractor(kb_path, cache_dir) -> ConceptExtractor:
    return ConceptExtractor(kb_path, FactualityConfig(), cache_dir)


def cuis(extractor: ConceptExtractor, text: str) -> set[str]:
    return {c.cui for c in extractor.extract(text)}


# ---------------------------------------------------------------------------------------
# UMLS-F values


@pytest.mark.parametrize(("generated", "reference", "expected"), [
    ({"A", "B"}, {"A", "B"}, (1.0, 1.0, 1.0)),                      # identical
    ({"A", "B"}, {"C"}, (0.0, 0.0, 0.0)),                           # disjoint
    ({"A", "B", "C"}, {"B", "C", "D", "E"}, (2 / 3, 2 / 4, 4 / 7)),  # 2PR/(P+R) = (2/3)/(7/6)
    (set(), {"A"}, (0.0, 0.0, 0.0)),                                # empty generated
    ({"A"}, set(), (0.0, 0.0, 0.0)),                                # empty reference
    (set(), set(), (0.0, 0.0, 0.0)),                                # both empty: 0 by convention
])
def test_set_scores_by_hand(generated, reference, expected):
    s = set_scores(generated, reference)
    assert (s.precision, s.recall, s.f1) == pytest.approx(expected)


def test_umls_f_of_extracted_texts(extractor):
    """Real extraction then scoring: a synonym counts as the same concept."""
    generated = "Pyrexia and coughing, then renal failure."          # fever, cough, kidney failure
    reference = "Fever with cough; high blood pressure and anaemia."  # fever, cough, HTN, anemia
    g, r = extractor.extract(generated), extractor.extract(reference)
    assert {c.cui for c in g} == {FEVER, COUGH, KIDNEY_FAILURE}
    assert {c.cui for c in r} == {FEVER, COUGH, HYPERTENSION, ANEMIA}
    rec = example_record({"id": "q"}, generated, reference, g, r)
    assert (rec["precision"], rec["recall"]) == pytest.approx((2 / 3, 1 / 2))
    assert rec["f1"] == pytest.approx(4 / 7, abs=1e-6)
    assert [m["cui"] for m in rec["extra"]] == [KIDNEY_FAILURE]
    assert {m["cui"] for m in rec["missed"]} == {HYPERTENSION, ANEMIA}
    pyrexia = next(c for c in g if c.cui == FEVER)
    assert generated[pyrexia.start:pyrexia.end] == "Pyrexia" == pyrexia.text
    assert pyrexia.name == "Fever"
    macro = macro_average([rec, example_record({"id": "e"}, "", reference, [], r)])
    assert macro["n"] == 2 and macro["n_empty_generated"] == 1
    assert macro["f1"] == pytest.approx(2 / 7, abs=1e-6)


def test_synonyms_link_to_one_concept(extractor):
    assert cuis(extractor, "Cephalalgia.") == cuis(extractor, "A bad headache.") == {HEADACHE}
    assert cuis(extractor, "HIGH TEMPERATURE") == {FEVER}


def test_remembered_candidates_equal_scispacys(extractor):
    from scispacy.candidate_generation import CandidateGenerator

    generator = extractor.linker.candidate_generator
    mentions = ["pyrexia", "renal failur", "Pyrexia", "pyrexia", "zzz"]
    assert generator(mentions, 30) == CandidateGenerator.__call__(generator, mentions, 30)
    texts = ["Fever and PKD.", "Coughing with polycystic kidney disease (PKD).", ""]
    assert extractor.extract_many(texts, batch_size=2) == [extractor.extract(t) for t in texts]


def test_acronym_matches_case_sensitively(extractor):
    assert cuis(extractor, "All patients had anemia.") == {ANEMIA}
    assert cuis(extractor, "A child with ALL.") == {ALL}


def test_defined_abbreviation_resolves(kb_path, cache_dir, extractor):
    text = "She has polycystic kidney disease (PKD). Later, PKD caused hypertension."
    found = extractor.extract(text)
    pkd = [c for c in found if c.text == "PKD"]
    assert len(pkd) == 2 and {c.cui for c in pkd} == {PKD}
    assert [text[c.start:c.end] for c in pkd] == ["PKD", "PKD"]
    plain = ConceptExtractor(kb_path, FactualityConfig(resolve_abbreviations=False), cache_dir)
    assert not [c for c in plain.extract(text) if c.text == "PKD"]   # "PKD" is no KB alias


def test_threshold_drops_weak_links(kb_path, cache_dir, extractor):
    text = "She had polycystic kidny disease (PKD)."   # misspelled definition of the abbreviation
    weak = extractor.extract(text)
    assert {c.cui for c in weak} == {PKD}
    assert all(0.7 < c.score < 0.99 for c in weak)
    strict = ConceptExtractor(kb_path, FactualityConfig(threshold=0.99), cache_dir)
    assert strict.extract(text) == []
    assert cuis(strict, "Polycystic kidney disease.") == {PKD}     # exact names still link


def test_semantic_type_filter(kb_path, cache_dir):
    disorders = ConceptExtractor(kb_path, FactualityConfig(semantic_types=["T047"]), cache_dir)
    assert cuis(disorders, "Fever, anaemia and renal failure.") == {ANEMIA, KIDNEY_FAILURE}


def test_index_cache_is_built_once(tmp_path):
    rng = random.Random(0)
    syllables = ["ka", "ro", "mi", "tal", "pen", "zu", "lor", "vex", "dri", "sho", "nep", "gra"]
    rows = []
    for i in range(600):
        words = [("".join(rng.choice(syllables) for _ in range(3))) for _ in range(2)]
        rows.append({"concept_id": f"C{i:07d}", "canonical_name": " ".join(words),
                     "aliases": [words[0] + "itis", words[1] + " syndrome"], "types": ["T047"],
                     "definition": "synthetic"})
    kb = write_lines(tmp_path / "kb.jsonl", rows)
    cfg, cache = FactualityConfig(), tmp_path / "cache"
    first = ConceptExtractor(kb, cfg, cache)
    assert first.index_built and first.index_dir.parent == cache / "kb"
    index_file = first.index_dir / "ann_index.bin"
    stamp = index_file.stat().st_mtime_ns
    start = time.perf_counter()
    second = ConceptExtractor(kb, cfg, cache)
    assert not second.index_built and second.index_dir == first.index_dir
    assert index_file.stat().st_mtime_ns == stamp
    assert second.index_seconds < first.index_seconds / 5, (first.index_seconds, second.index_seconds)
    assert [p.name for p in (cache / "kb").iterdir()] == [first.index_dir.name]  # no temp left
    name = rows[7]["canonical_name"]
    assert {c.cui for c in second.extract(f"Known {name}.")} == {rows[7]["concept_id"]}
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------------------------
# Input errors


def test_malformed_kb_line_names_file_and_line(tmp_path, cache_dir):
    bad = write_lines(tmp_path / "kb.jsonl", [KB_ROWS[0], "{not json", KB_ROWS[1]])
    with pytest.raises(DataError) as err:
        ConceptExtractor(bad, FactualityConfig(), cache_dir)
    assert err.value.path == str(bad) and err.value.line == 2
    missing = write_lines(tmp_path / "kb2.jsonl", [KB_ROWS[0], {"concept_id": "C1", "canonical_name": "x"}])
    with pytest.raises(DataError, match=r"kb2.jsonl:2: field 'aliases'"):
        load_kb(missing)
    with pytest.raises(DataError, match="file not found"):
        load_kb(tmp_path / "absent.jsonl")


def prediction(qid: str, rationale: str | None, reference: str | None, mode: str = "trained",
               **extra) -> dict:
    return {"id": qid, "dataset": "demo", "mode": mode, "scoring": "generate", "gold": "A",
            "predicted": "A", "correct": True, "option_scores": {}, "retrieved": [],
            "generated": rationale, "rationale": rationale, "reference_rationale": reference,
            **extra}


def test_malformed_predictions_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [prediction("q1", "fever", "fever"), "[1, 2"])
    with pytest.raises(DataError, match=r"p.jsonl:2:"):
        read_predictions(path)
    row = prediction("q1", "fever", "fever")
    del row["reference_rationale"]
    path = write_lines(tmp_path / "p2.jsonl", [prediction("q0", "a", "b"), row])
    with pytest.raises(DataError, match=r"p2.jsonl:2: field 'reference_rationale'"):
        read_predictions(path)


# ---------------------------------------------------------------------------------------
# The command


def test_run_factuality_and_cli(tmp_path, kb_path, cache_dir, run_cli):
    rows = [
        prediction("q1", "Pyrexia and coughing.", "Fever and cough."),                    # F1 1
        prediction("q2", "Renal failure.", "Fever and anaemia."),                         # F1 0
        prediction("q3", "Nothing medical here.", "A headache."),                         # empty G
        prediction("q1", "Fever.", "Fever and cough.", mode="frozen"),                     # P1 R.5
        prediction("q4", "Cough.", None),                                                 # no reference
        {**prediction("q5", None, "Fever."), "scoring": "letter"},                       # no text
    ]
    (tmp_path / "run").mkdir()
    preds = write_lines(tmp_path / "run" / "predictions.jsonl", rows)
    cfg = load_config(None, [f"run.cache_dir={cache_dir}"])
    summary = run_factuality(cfg, preds, kb_path, None)
    assert summary["n"] == 4 and summary["n_empty_generated"] == 1
    assert summary["skipped_no_reference"] == 1 and summary["skipped_no_generated"] == 1
    assert summary["precision"] == pytest.approx((1 + 0 + 0 + 1) / 4)
    assert summary["recall"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)
    assert summary["f1"] == pytest.approx((1 + 0 + 0 + 2 / 3) / 4, abs=1e-5)
    assert summary["by_group"]["demo/frozen"]["f1"] == pytest.approx(2 / 3, abs=1e-5)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [e["id"] for e in report["examples"]] == ["q1", "q2", "q3", "q1"]

    out = tmp_path / "out"
    code, _, err = run_cli("factuality", "--predictions", preds, "--kb", kb_path, "--out", out,
                           f"run.cache_dir={cache_dir}")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["f1"] == pytest.approx(summary["f1"])
    assert report["timing"]["index_built"] is False
    html = (out / "report.html").read_text()
    assert 'id="summary"' in html and f'{summary["f1"]:.3f}' in html and "<svg" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    for rec in report["examples"]:
        assert f'{rec["mode"]} / {rec["id"]}</h3>' in html
    assert '<mark class="extra"' in html and '<mark class="missed"' in html
    assert '<mark class="matched" title="C0015967 Fever (1.00)">Pyrexia</mark>' in html

    bad = write_lines(tmp_path / "bad.jsonl", [rows[0], '{"id": "q9", "rationale": 3}'])
    code, _, err = run_cli("factuality", "--predictions", bad, "--kb", kb_path, "--out", out,
                           f"run.cache_dir={cache_dir}")
    assert code == 2 and "bad.jsonl:2: field 'rationale'" in err
    code, _, err = run_cli("factuality", "--predictions", preds, "--kb", tmp_path / "nokb.jsonl",
                           f"run.cache_dir={cache_dir}")
    assert code == 2 and "nokb.jsonl" in err
    code, _, err = run_cli("factuality", "--predictions", preds, f"run.cache_dir={cache_dir}")
    assert code == 2 and "knowledge base" in err



def test_check_data_accepts_and_checks_a_kb(tmp_path, run_cli):
    kb = write_lines(tmp_path / "kb.jsonl", KB_ROWS)
    code, out, err = run_cli("check-data", kb)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["kind"], summary["concepts"], summary["types"]["T047"]) == ("kb", 8, 4)
    twice = write_lines(tmp_path / "twice.jsonl", [*KB_ROWS, dict(KB_ROWS[1], aliases=[])])
    code, _, err = run_cli("check-data", twice)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{twice}:9: field 'concept_id': duplicate id '{FEVER}' (first on line 2)" in err
    code, out, _ = run_cli("check-data", kb, "--format", "kb")
    assert code == 0 and json.loads(out)["aliases"] == 9
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps(KB_ROWS[0]).encode() + b"\n"
                       + json.dumps(KB_ROWS[1]).encode().replace(b"Fever", b"Fi\xe8vre") + b"\n")
    code, _, err = run_cli("check-data", latin1)
    assert code == 2 and f"{latin1}:2: field 'canonical_name': byte 0xe8" in err


def test_importing_the_linker_prints_no_nmslib_registrations(tmp_path):
    import subprocess
    import sys

    script = ("import logging; logging.basicConfig(level=logging.INFO); "
              "import jmlr.evaluation.factuality")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "Registering at the factory" not in done.stderr + done.stdout
