"""The demo's knowledge base: HPO terms as scispaCy KnowledgeBase rows, one per UMLS CUI
that they cross-reference (``jmlr.evaluation.factuality`` links rationales against it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jmlr.data.hpo import MODE_OF_INHERITANCE, ONSET, PHENOTYPIC_ABNORMALITY, Ontology

# HPO carries no UMLS semantic types; these roots give each term the most plausible one.
SEMANTIC_TYPES = (
    (PHENOTYPIC_ABNORMALITY, "T184"),   # Sign or Symptom
    (MODE_OF_INHERITANCE, "T045"),      # Genetic Function
    (ONSET, "T079"),                    # Temporal Concept
    ("HP:0040279", "T081"),             # Frequency: Quantitative Concept
)
OTHER_TYPE = "T033"                     # Finding


def semantic_type(onto: Ontology, term_id: str) -> str:
    for root, tui in SEMANTIC_TYPES:
        if onto.is_a(term_id, root):
            return tui
    return OTHER_TYPE


def with_neighbours(onto: Ontology, term_ids: Iterable[str]) -> set[str]:
    """The terms plus their direct parents and children."""
    found: set[str] = set()
    for term_id in term_ids:
        found.add(term_id)
        found.update(p for p in onto.terms[term_id].parents if p in onto.terms)
        found.update(onto.children(term_id))
    return found


def umls_concepts(onto: Ontology, term_ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """scispaCy KnowledgeBase rows, one per UMLS CUI that the given terms (None: all terms)
    cross-reference; terms sharing a CUI merge (canonical name from the lowest HP id).
    Sorted by CUI."""
    chosen = sorted(onto.terms if term_ids is None else set(term_ids))
    concepts: dict[str, dict[str, Any]] = {}
    for term_id in chosen:
        term = onto.terms[term_id]
        if term.obsolete or not term.umls:
            continue
        names = [term.name] + [s.text for s in term.synonyms if s.kind != "obsolete_synonym"]
        for cui in term.umls:
            row = concepts.setdefault(cui, {"concept_id": cui, "canonical_name": term.name,
                                            "aliases": [], "types": [], "definition": None})
            known = {row["canonical_name"].lower(), *(a.lower() for a in row["aliases"])}
            for name in names:
                if name.lower() not in known:
                    known.add(name.lower())
                    row["aliases"].append(name)
            tui = semantic_type(onto, term_id)
            if tui not in row["types"]:
                row["types"].append(tui)
            if row["definition"] is None and term.definition:
                row["definition"] = term.definition
    return [concepts[cui] for cui in sorted(concepts)]
