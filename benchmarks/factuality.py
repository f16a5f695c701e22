"""Figure 4: UMLS-F speed: rationales/s with the demo KB, and KB index build time.

Rationales: the demo task's reference rationales, each paired with a "generated" one made
from it (its first sentences plus a sentence of another question's rationale), written as a
predictions file. Timed with :mod:`jmlr.evaluation.factuality`:

- KB index build, cold (a fresh cache folder): the char-3-gram TF-IDF + HNSW index over the
  KB's aliases, then the spaCy pipeline (EntityRuler over the aliases, abbreviations, linker);
- the same with the index already cached (what every later run pays);
- concept extraction, ``extract_many`` (batched ``nlp.pipe`` + one nmslib query per batch)
  against ``extract`` one text at a time;
- ``run_factuality`` end to end on the predictions file (extraction, UMLS-F, JSON + HTML).

For the demo KB and for a synthetic 20,000-concept KB (HPO terms with their synonyms, then
recombined names; ``--quick``: 5,000).

    python -m benchmarks.factuality --quick
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.synthetic import cached_jsonl, synthetic_kb


def made_up_generations(questions: list) -> list[dict[str, Any]]:
    """Prediction rows whose generated rationale half-overlaps the reference."""
    rows = []
    with_rationale = [q for q in questions if q.rationale]
    for i, q in enumerate(with_rationale):
        sentences = re.split(r"(?<=\.)\s+", q.rationale.strip())
        other = re.split(r"(?<=\.)\s+", with_rationale[(i + 1) % len(with_rationale)].rationale.strip())
        generated = " ".join(sentences[: max(1, len(sentences) // 2)] + other[:1])
        rows.append({"id": q.id, "dataset": "demo", "mode": "trained", "scoring": "generate",
                     "gold": q.answer, "predicted": q.answer, "correct": True,
                     "option_scores": {}, "retrieved": [], "generated": f" {q.answer}\n{generated}",
                     "rationale": generated, "reference_rationale": q.rationale})
    return rows


def extractor_times(kb_path: Path, fact_cfg: Any, cache_dir: Path) -> tuple[Any, dict[str, float]]:
    """(extractor, timings): built with an empty cache (``index_build_s``: TF-IDF + HNSW
    build and load; ``cold_init_s``: that plus the KB and the spaCy pipeline), then again
    with the index cached."""
    from jmlr.evaluation.factuality import ConceptExtractor

    started = time.perf_counter()
    cold = ConceptExtractor(kb_path, fact_cfg, cache_dir)
    cold_total = time.perf_counter() - started
    started = time.perf_counter()
    warm = ConceptExtractor(kb_path, fact_cfg, cache_dir)
    warm_total = time.perf_counter() - started
    if not cold.index_built:
        raise RuntimeError(f"{cache_dir} already held an index for {kb_path}")
    timings = {"kb_concepts": len(cold.kb.cui_to_entity), "kb_aliases": len(cold.kb.alias_to_cuis),
               "index_build_s": cold.index_seconds, "cold_init_s": cold_total,
               "warm_init_s": warm_total, "warm_index_load_s": warm.index_seconds}
    del cold
    return warm, timings


def extraction_times(make_extractor: Any, texts: list[str], single: int) -> dict[str, float]:
    """Texts/s of ``extract_many`` over all texts and of ``extract`` over the first ``single``,
    each with a fresh extractor (the linker memoises mention lookups)."""
    extractor = make_extractor()
    started = time.perf_counter()
    extractor.extract_many(texts, progress=False)
    batched = time.perf_counter() - started
    extractor = make_extractor()
    started = time.perf_counter()
    for text in texts[:single]:
        extractor.extract(text)
    one = time.perf_counter() - started
    return {"texts": len(texts), "batched_texts_per_s": len(texts) / batched,
            "single_texts": single, "one_at_a_time_texts_per_s": single / one if single else None}


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--rationales", type=int, default=None, help="default 600; quick 60")
    parser.add_argument("--kb-concepts", type=int, default=None, help="default 20000; quick 5000")
    args = parser.parse_args(argv)
    device = common.setup_torch(args)
    try:
        from jmlr.config import load_config
        from jmlr.data.formats import load_questions
        from jmlr.evaluation import factuality as fact
        from jmlr.io import write_jsonl
    except ImportError as err:
        print(common.missing_module_message(err, "the factuality benchmark"))
        return 0
    n_rationales = args.rationales or (60 if args.quick else 600)
    n_concepts = args.kb_concepts or (5000 if args.quick else 20_000)
    demo = common.demo_data(args.work_dir)
    questions = [q for split in ("train", "dev", "test")
                 for q in load_questions(demo / f"{split}.jsonl", fmt="jmlr")][:n_rationales]
    rows = made_up_generations(questions)
    cfg = load_config(common.REPO_ROOT / "configs" / "demo.yaml")
    big_kb = cached_jsonl(args.work_dir, f"synthetic-kb-{n_concepts}-seed0.jsonl",
                          lambda: synthetic_kb(n_concepts))
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        predictions = Path(tmp) / "predictions.jsonl"
        write_jsonl(predictions, rows)
        texts = list(dict.fromkeys([r["rationale"] for r in rows] +
                                   [r["reference_rationale"] for r in rows]))
        for name, kb in (("demo KB", demo / "kb.jsonl"), (f"synthetic {n_concepts} KB", big_kb)):
            cache = Path(tmp) / f"cache-{len(results)}"
            print(f"[{name}] building the KB index in an empty cache ...", flush=True)
            extractor, init = extractor_times(kb, cfg.factuality, cache)
            del extractor
            extraction = extraction_times(
                lambda kb=kb, cache=cache: fact.ConceptExtractor(kb, cfg.factuality, cache),
                texts, single=min(60, len(texts)))
            cfg.run.cache_dir = str(cache)
            started = time.perf_counter()
            summary = fact.run_factuality(cfg, predictions, kb, out_dir=Path(tmp) / f"out-{len(results)}")
            end_to_end = time.perf_counter() - started
            results[name] = {**init, **extraction, "pairs": len(rows),
                             "run_factuality_s": end_to_end,
                             "run_factuality_pairs_per_s": len(rows) / end_to_end,
                             "umls_f1": summary.get("f1")}
    rows_out = [[name, r["kb_concepts"], r["kb_aliases"], r["index_build_s"], r["cold_init_s"],
                 r["warm_init_s"], r["batched_texts_per_s"], r["one_at_a_time_texts_per_s"],
                 r["run_factuality_pairs_per_s"], r["umls_f1"]] for name, r in results.items()]
    print(common.markdown_table(["KB", "concepts", "aliases", "index build s", "cold init s",
                                 "cached init s", "texts/s (batched)", "texts/s (one by one)",
                                 "rationale pairs/s (run_factuality)", "UMLS-F1"], rows_out))
    common.write_results(common.results_path(args.results_dir, "factuality", device, args.quick), {
        "benchmark": "factuality", "quick": args.quick,
        "settings": {"rationale_pairs": len(rows), "unique_texts": len(texts),
                     "synthetic_kb_concepts": n_concepts, "threshold": cfg.factuality.threshold},
        "results": results, "environment": common.environment(device)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
