"""Large synthetic inputs for the scaling benchmarks, recombined from the HPO vocabulary.

- :func:`synthetic_passages`: disease-like passages ("<name> is an autosomal recessive
  disorder with infantile onset. Its characteristic features are ...") whose names and
  features are HPO phenotype names and synonyms drawn at random: the demo corpus's shape and
  vocabulary at any size.
- :func:`synthetic_kb`: a scispaCy KnowledgeBase (jsonl rows) of ``n`` concepts: one per HPO
  term (name, synonyms, definition), then recombined names ("bilateral <term>") until ``n``.

Deterministic for a seed; cached as jsonl under the benchmark work directory.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any

INHERITANCE = ("autosomal dominant", "autosomal recessive", "X-linked recessive",
               "X-linked dominant", "mitochondrial", "sporadic")
ONSET = ("congenital", "neonatal", "infantile", "childhood", "juvenile", "adult")
MODIFIERS = ("bilateral", "unilateral", "progressive", "episodic", "severe", "mild", "recurrent",
             "congenital", "acquired", "transient", "generalized", "focal", "asymmetric")


@cache
def _hpo_terms() -> tuple[tuple[str, str, tuple[str, ...], str], ...]:
    """(id, name, synonyms, definition) of every non-obsolete HPO term."""
    from jmlr.data.hpo import hpo_data_dir, parse_obo

    onto = parse_obo(hpo_data_dir() / "hp.obo")
    return tuple((t.id, t.name, tuple(s.text for s in t.synonyms if s.kind != "obsolete_synonym"),
                  t.definition) for t in onto.terms.values()
                 if not t.obsolete and t.name and t.id != "HP:0000001")   # the root, "All"


def synthetic_passages(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` corpus rows ``{id, title, text}`` (ids ``SYN:0000001`` ...)."""
    terms = _hpo_terms()
    names = [t[1] for t in terms]
    wordings = [[t[1], *t[2]] for t in terms]
    words = sorted({w for name in names for w in name.split() if len(w) > 4 and w.isalpha()})
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        title = f"{rng.choice(words).capitalize()}-{rng.choice(words).lower()} syndrome type {rng.randint(1, 12)}"
        features = [rng.choice(wordings[rng.randrange(len(terms))]).lower()
                    for _ in range(rng.randint(5, 11))]
        main, other = features[:4], features[4:]
        inheritance = rng.choice(INHERITANCE)
        article = "an" if inheritance[0] in "aeiouAEIOUX" else "a"
        text = (f"{title} is {article} {inheritance} disorder with {rng.choice(ONSET)} onset. "
                f"Its characteristic features are {', '.join(main[:-1])} and {main[-1]}.")
        if other:
            text += f" Other reported features include {', '.join(other)}."
        rows.append({"id": f"SYN:{i + 1:07d}", "title": title, "text": text})
    return rows


def synthetic_kb(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` KB rows ``{concept_id, canonical_name, aliases, types, definition}``."""
    terms = _hpo_terms()
    rows = [{"concept_id": f"X{term_id.split(':')[1]}", "canonical_name": name,
             "aliases": sorted({s for s in synonyms if s.lower() != name.lower()}),
             "types": ["T184"], "definition": definition or None}
            for term_id, name, synonyms, definition in terms[:n]]
    rng = random.Random(seed)
    taken = {r["canonical_name"].lower() for r in rows}
    while len(rows) < n:
        _, name, synonyms, _ = terms[rng.randrange(len(terms))]
        modifier = rng.choice(MODIFIERS)
        new = f"{modifier} {name[0].lower()}{name[1:]}"
        if new.lower() in taken:
            continue
        taken.add(new.lower())
        rows.append({"concept_id": f"Y{len(rows):07d}", "canonical_name": new.capitalize(),
                     "aliases": [f"{modifier} {s}" for s in synonyms[:3]], "types": ["T033"],
                     "definition": None})
    return rows


def cached_jsonl(work_dir: str | Path, name: str, make: Any) -> Path:
    """``work_dir/name``, written once with ``make()``'s rows."""
    from jmlr.io import write_jsonl

    path = Path(work_dir).expanduser() / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(path, make())
    return path


def synthetic_kb_aliases(n_aliases: int, seed: int = 0) -> list[dict[str, Any]]:
    """KB rows with about ``n_aliases`` distinct names and aliases (UMLS scale: millions):
    every HPO term, then "<modifier> <term>" and "<modifier> <modifier> <term>" concepts in a
    seeded order, each with the term's first synonyms under the same modifiers."""
    terms = _hpo_terms()
    rows = synthetic_kb(len(terms), seed)
    count = sum(1 + len(r["aliases"]) for r in rows)
    prefixes = [*MODIFIERS, *(f"{a} {b}" for a in MODIFIERS for b in MODIFIERS if a != b)]
    combos = [(p, t) for p in prefixes for t in range(len(terms))]
    random.Random(seed).shuffle(combos)
    for prefix, t in combos:
        if count >= n_aliases:
            break
        _, name, synonyms, _ = terms[t]
        aliases = [f"{prefix} {s}" for s in synonyms[:3]]
        rows.append({"concept_id": f"Z{len(rows):08d}", "canonical_name": f"{prefix} {name}".capitalize(),
                     "aliases": aliases, "types": ["T033"], "definition": None})
        count += 1 + len(aliases)
    return rows
