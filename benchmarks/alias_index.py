"""The UMLS-F alias index at UMLS scale: build, load and query for a KB of 1M aliases.

``factuality.kb: umls`` (scispaCy's UMLS KB, about 3M aliases) or ``mesh`` / ``rxnorm`` builds
the linker's alias index from the KB itself (:mod:`jmlr.evaluation.alias_index`: char-3-gram
TF-IDF, then an nmslib HNSW index; scispaCy's released index is not loaded, its vectorizer is
a pickle). This measures what that costs on a synthetic KB of HPO terms recombined with
modifiers up to ``--aliases`` names and aliases:

- reading and checking the KB jsonl (``jmlr.data.kb.read_kb``), building scispaCy's
  ``KnowledgeBase`` from it;
- the index build by phase (TF-IDF fit, HNSW build, save) and its size on disk;
- loading the cached index (what every later ``jmlr factuality`` pays);
- candidate lookups through scispaCy's CandidateGenerator (k=30): mentions/s, and how often
  an exact alias comes back as its own nearest neighbour;
- the process's peak resident memory.

    python -m benchmarks.alias_index             # 1,000,000 aliases (~10 min, 2 cores)
    python -m benchmarks.alias_index --quick     # 50,000 aliases
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.synthetic import cached_jsonl, synthetic_kb_aliases


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.split("\n")[0])
    parser.add_argument("--aliases", type=int, default=None, help="default 1000000; quick 50000")
    parser.add_argument("--queries", type=int, default=2000, help="alias lookups timed")
    args = parser.parse_args(argv)
    device = common.setup_torch(args)
    from jmlr.data.kb import read_kb
    from jmlr.evaluation import alias_index
    from jmlr.evaluation.factuality import CANDIDATES_K, MemoCandidateGenerator, load_kb

    n_aliases = args.aliases or (50_000 if args.quick else 1_000_000)
    kb_path = cached_jsonl(args.work_dir, f"synthetic-kb-{n_aliases}-aliases-seed0.jsonl",
                           lambda: synthetic_kb_aliases(n_aliases))
    out: dict[str, Any] = {"kb_mib": kb_path.stat().st_size / 2**20}
    memory = common.PeakMemory(device)
    with memory:
        started = time.perf_counter()
        rows = read_kb(kb_path)
        out["read_and_check_s"] = time.perf_counter() - started
        out["concepts"] = len(rows)
        del rows
        started = time.perf_counter()
        kb = load_kb(kb_path)                       # checks again, then scispaCy's KnowledgeBase
        out["knowledge_base_s"] = time.perf_counter() - started
        aliases = sorted(kb.alias_to_cuis)
        out["aliases"] = len(aliases)
        folder = Path(args.work_dir).expanduser() / f"alias-index-{n_aliases}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"building the alias index of {len(aliases):,} aliases ({out['concepts']:,} "
              f"concepts) in {folder} ...", flush=True)
        started = time.perf_counter()
        out.update(alias_index.build_index(aliases, folder))
        out["build_s"] = time.perf_counter() - started
        out["index_mib"] = folder_mib(folder)
        started = time.perf_counter()
        index_aliases, vectorizer, ann = alias_index.load_index(folder)
        out["load_s"] = time.perf_counter() - started
        out["indexed_aliases"] = len(index_aliases)
        generator = MemoCandidateGenerator(ann_index=ann, tfidf_vectorizer=vectorizer,
                                           ann_concept_aliases_list=index_aliases, kb=kb,
                                           ef_search=alias_index.INDEX_RECIPE["efSearch"])
        sample = random.Random(0).sample(index_aliases, min(args.queries, len(index_aliases)))
        started = time.perf_counter()
        found = generator(sample, CANDIDATES_K)
        out["lookup_mentions_per_s"] = len(sample) / (time.perf_counter() - started)
        # An exact alias should come back with similarity 1 among its own candidates.
        out["exact_alias_found"] = sum(
            any(alias in c.aliases and max(c.similarities) > 0.999 for c in cands)
            for alias, cands in zip(sample, found, strict=True)) / len(sample)
    out["peak_rss_mib"] = common.mib(memory.peak)
    shutil.rmtree(folder, ignore_errors=True)
    print(common.markdown_table(
        ["aliases", "concepts", "read+check s", "KnowledgeBase s", "TF-IDF s", "HNSW s",
         "build s", "index MiB", "load s", "lookups/s", "exact alias found", "peak RSS MiB"],
        [[out["aliases"], out["concepts"], out["read_and_check_s"], out["knowledge_base_s"],
          out["tfidf_s"], out["hnsw_s"], out["build_s"], out["index_mib"], out["load_s"],
          out["lookup_mentions_per_s"], out["exact_alias_found"], out["peak_rss_mib"]]]))
    common.write_results(common.results_path(args.results_dir, "alias_index", device, args.quick), {
        "benchmark": "alias_index", "quick": args.quick, "recipe": alias_index.INDEX_RECIPE,
        "results": out, "environment": common.environment(device)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
