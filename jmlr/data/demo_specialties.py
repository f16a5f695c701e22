"""The demo task split by specialty: one sub-task per organ system of the answer disease, for
training experts and merging them (``jmlr prepare-demo --specialties K``, then ``jmlr merge``).

A disease's specialty is the HPO top-level category (a child of "Phenotypic abnormality",
HP:0000118: "Abnormality of the nervous system", "... of the skeletal system", ...) that most of
its annotated phenotypes fall under; ties go to the category more diseases of the task have.
The K specialties most common among the task's answer diseases each get a folder
``DIR/specialties/<name>/`` with the questions whose answer is theirs (train, dev and test
keep the task's own split), and the task's whole corpus and knowledge base, so that every
expert retrieves from the same passages. ``DIR/specialties/specialties.json`` lists them with
their HPO ids and question counts.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from jmlr.errors import ConfigError

PHENOTYPIC_ABNORMALITY = "HP:0000118"
SPLITS = ("train", "dev", "test")


def specialty_of(phenotypes: Iterable[str], top_levels: Callable[[str], set[str]],
                 prevalence: Mapping[str, int]) -> str | None:
    """The top-level category most of the phenotypes fall under; ties to the more prevalent
    category, then the smaller id. None when no phenotype has one.

    >>> tops = {"a": {"NERV"}, "b": {"NERV", "SKEL"}, "c": {"SKEL"}}.__getitem__
    >>> specialty_of(["a", "b", "c"], tops, {"NERV": 5, "SKEL": 9})
    'SKEL'
    >>> specialty_of(["a", "b"], tops, {"NERV": 5, "SKEL": 9})
    'NERV'
    """
    counts = Counter(top for term in phenotypes for top in top_levels(term))
    if not counts:
        return None
    return min(counts, key=lambda c: (-counts[c], -prevalence.get(c, 0), c))


def folder_name(category_name: str) -> str:
    """A folder name from an HPO category name.

    >>> folder_name("Abnormality of the nervous system")
    'nervous-system'
    >>> folder_name("Growth abnormality")
    'growth-abnormality'
    """
    name = category_name.lower().removeprefix("abnormality of the ").removeprefix("abnormality of ")
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def split_by_specialty(task_dir: str | Path, k: int) -> dict[str, Any]:
    """Write the K sub-tasks under ``task_dir/specialties`` (module docstring); their summary."""
    from jmlr.data.demo import load_source
    from jmlr.io import read_jsonl, write_json, write_jsonl

    if k < 2:
        raise ConfigError(f"--specialties {k}: give at least 2 (one expert per specialty)")
    task = Path(task_dir)
    source = load_source()
    onto = source.onto
    tops = set(onto.children(PHENOTYPIC_ABNORMALITY))

    def top_levels(term: str) -> set[str]:
        return set(onto.ancestors(term)) & tops

    diseases = {d.id: d for d in source.pool}
    rows = {split: [row for _, row in read_jsonl(task / f"{split}.jsonl")] for split in SPLITS}
    answer_ids = {row["id"]: row["gold_passage_ids"][0] for split in SPLITS for row in rows[split]}
    task_diseases = sorted(set(answer_ids.values()))
    prevalence = Counter(top for d in task_diseases for top in
                         {t for term in diseases[d].phenotypes for t in top_levels(term)})
    specialty = {d: specialty_of(diseases[d].phenotypes, top_levels, prevalence) for d in task_diseases}
    questions_per = Counter(specialty[answer_ids[q]] for q in answer_ids)
    chosen = [c for c, _ in questions_per.most_common() if c is not None][:k]
    if len(chosen) < k:
        raise ConfigError(f"--specialties {k}: the task's diseases fall under only {len(chosen)}")
    root = task / "specialties"
    if root.exists():
        shutil.rmtree(root)
    summary: dict[str, Any] = {"source": str(task), "specialties": []}
    for category in chosen:
        name = folder_name(onto.terms[category].name)
        out = root / name
        out.mkdir(parents=True)
        counts = {}
        for split in SPLITS:
            mine = [row for row in rows[split] if specialty[answer_ids[row["id"]]] == category]
            counts[split] = write_jsonl(out / f"{split}.jsonl", mine)
        for shared in ("corpus.jsonl", "kb.jsonl"):
            shutil.copyfile(task / shared, out / shared)
        summary["specialties"].append({"name": name, "hpo_id": category,
                                       "hpo_name": onto.terms[category].name, "questions": counts})
    summary["left_out_questions"] = sum(n for c, n in questions_per.items() if c not in chosen)
    write_json(root / "specialties.json", summary)
    (root / "README.md").write_text(
        "One sub-task per specialty of the demo task (jmlr/data/demo_specialties.py):\n\n"
        + "".join(f"- `{s['name']}/`: {s['hpo_name']} ({s['hpo_id']}), questions "
                  f"{json.dumps(s['questions'])}\n" for s in summary["specialties"]),
        encoding="utf-8")
    return summary
