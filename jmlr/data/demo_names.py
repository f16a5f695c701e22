"""Readable names for the demo task: disease and phenotype names in reading order and case,
the keys that tell two spellings or two members of one disease family apart, and the
wordings a vignette may use for a phenotype (``jmlr.data.demo_text`` writes the texts).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from functools import cache

from jmlr.data.hpo import Disease, Ontology

# Trailing modifiers that OMIM puts after a comma ("Ectopia lentis, familial").
_LEADING_MODIFIERS = {
    "familial", "congenital", "hereditary", "isolated", "juvenile", "infantile", "neonatal",
    "adult", "adult-onset", "early-onset", "late-onset", "primary", "idiopathic", "benign",
    "progressive", "autosomal dominant", "autosomal recessive", "x-linked", "x-linked recessive",
    "x-linked dominant", "recessive", "dominant", "sporadic", "childhood",
}
# Words that name a subtype rather than a disease; dropped from a name's family key.
_SUBTYPE_WORDS = _LEADING_MODIFIERS | {"type", "form", "classic", "classical", "group", "complementation"}
_SKIPPED_SYNONYM_KINDS = {"abbreviation", "plural_form", "uk_spelling", "obsolete_synonym"}


def _is_trailing_modifier(tail: str) -> bool:
    """Whether a name's last comma part reads better in front ("familial", "elevated serum")."""
    if tail.lower() in _LEADING_MODIFIERS:
        return True
    return (re.fullmatch(r"[a-z][a-z-]*(?: [a-z][a-z-]*){0,2}", tail) is not None
            and re.match(r"(?:and|or|with|without|due|in|of|type|form)\b", tail) is None
            and re.search(r"\b(?:types?|forms?|variants?|group)$", tail) is None)


@cache
def spelling_key(text: str) -> str:
    """``norm`` blind to British/American spelling, so that a spelling variant does not count
    as a rewording.

    >>> spelling_key("Agammaglobulinaemia") == spelling_key("agammaglobulinemia")
    True
    """
    key = norm(text)
    for british, american in (("ae", "e"), ("oe", "e"), ("our", "or"), ("ise", "ize")):
        key = key.replace(british, american)
    return key


@cache
def norm(text: str) -> str:
    """Case- and punctuation-blind form, for comparing wordings.

    >>> norm("Long, slender  fingers") == norm("long slender fingers")
    True
    """
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def family_keys(name: str) -> tuple[str, str]:
    """Two keys for the disease a name belongs to, without its subtype: the part before the
    first comma, and the bag of all its words (word order differs between OMIM and Orphanet).
    Numbered types, inheritance variants and "due to ..." causes of one disease share a key.

    >>> family_keys("Spastic paraplegia 18, autosomal recessive")[0]
    'spastic paraplegia'
    >>> family_keys("Classical Ehlers-Danlos syndrome")[0], family_keys("Ehlers-Danlos syndrome, type I")[0]
    ('ehlers-danlos syndrome', 'ehlers-danlos syndrome')
    >>> family_keys("Angelman syndrome due to a point mutation")[0]
    'angelman syndrome'
    >>> a = family_keys("Infantile-onset ascending hereditary spastic paralysis")
    >>> b = family_keys("Spastic paralysis, infantile-onset ascending")
    >>> a[1] == b[1], a[0] == b[0]
    (True, False)
    """
    def content(text: str) -> list[str]:
        return [w for w in re.findall(r"[a-z0-9][a-z0-9'-]*", text)
                if w not in _SUBTYPE_WORDS and not re.fullmatch(r"\d+[a-z]?\d*|[ivx]+|[a-z]", w)]

    lower = name.lower()
    head = re.split(r",| due to | caused by | with | type ", lower)[0]
    return (" ".join(content(head)) or lower,
            "bag:" + " ".join(sorted(set(content(lower)))))


class TextStyle:
    """Readable names for HPO terms and diseases, and the synonyms a vignette may use.

    ``eponyms``: words that HPO names, synonyms, definitions and disease names capitalise
    inside a sentence more often than not ("Marfan", "Wormian", "Babinski"); they keep their
    capital at the start of a name, where any other word is lowercased in running text.
    """

    def __init__(self, onto: Ontology, eponyms: Iterable[str] = ()) -> None:
        self.onto = onto
        self.eponyms = frozenset(eponyms)
        self._synonyms: dict[str, list[str]] = {}

    @classmethod
    def from_ontology(cls, onto: Ontology, diseases: Iterable[Disease]) -> TextStyle:
        lower: Counter[str] = Counter()
        capital: Counter[str] = Counter()
        texts = [d.name for d in diseases]
        for term in onto.terms.values():
            if not term.obsolete:
                texts += [term.name, term.definition, *(s.text for s in term.synonyms)]
        for text in texts:
            tokens = text.split()
            for before, token in zip(tokens, tokens[1:], strict=False):
                word = token.strip("()[],;:'\"")
                if before.endswith((".", ":", "?", "!")) or not re.fullmatch(r"[A-Za-z][a-z-]+", word):
                    continue                      # sentence starts and acronyms say nothing
                (lower if word[0].islower() else capital)[word.lower()] += 1
        return cls(onto, {w for w, n in capital.items() if n > lower[w]})

    def lower_first(self, text: str) -> str:
        """Lowercase the first word for use inside a sentence, unless it is an acronym or a
        word that is mostly capitalised (an eponym).

        >>> style = TextStyle(Ontology("", {}), eponyms={"marfan"})
        >>> style.lower_first("Ectopia lentis"), style.lower_first("Marfan habitus")
        ('ectopia lentis', 'Marfan habitus')
        >>> style.lower_first("Chills"), style.lower_first("EEG abnormality")
        ('chills', 'EEG abnormality')
        """
        first, sep, rest = text.partition(" ")
        if first[1:] == first[1:].lower() and first.lower() not in self.eponyms:
            return first[:1].lower() + first[1:] + sep + rest
        return text

    @staticmethod
    def upper_first(text: str) -> str:
        return text[:1].upper() + text[1:]

    def disease_name(self, raw: str) -> str:
        """A published disease name in readable order and case ("" if unusable).

        >>> style = TextStyle(Ontology("", {}))
        >>> style.disease_name("Ectopia lentis, familial")
        'Familial ectopia lentis'
        >>> style.disease_name("Cranial nerves, congenital paresis of")
        'Congenital paresis of cranial nerves'
        >>> style.disease_name("MARFAN SYNDROME; MFS")
        'Marfan syndrome'
        >>> style.disease_name("Creatine phosphokinase, elevated serum")
        'Elevated serum creatine phosphokinase'
        >>> style.disease_name("Cataract, multiple types")
        'Cataract, multiple types'
        """
        name = " ".join(raw.split(";")[0].split())
        if not re.search(r"[a-z]", name):       # OMIM's all-capitals style
            name = self.upper_first(name.lower())
            name = re.sub(r"\b(?:i{1,3}|iv|vi{0,3}|ix)\b", lambda m: m.group(0).upper(), name)
        head, sep, tail = name.rpartition(", ")
        if sep and tail.endswith(" of"):        # "Cranial nerves, congenital paresis of"
            name = f"{tail} {self.lower_first(head)}"
        else:
            for _ in range(2):                  # "Creatine phosphokinase, elevated serum"
                head, sep, tail = name.rpartition(", ")
                if not sep or not _is_trailing_modifier(tail):
                    break
                name = f"{tail} {self.lower_first(head)}"
        return self.upper_first(name.strip()) if re.search(r"[A-Za-z]{3}", name) else ""

    def canonical(self, term_id: str) -> str:
        """The HPO name as it reads inside a sentence."""
        return self.lower_first(self.onto.terms[term_id].name)

    def synonyms(self, term_id: str) -> list[str]:
        """Rewordings a vignette may use: layperson synonyms if any, else exact ones."""
        if term_id not in self._synonyms:
            term = self.onto.terms[term_id]
            lay, exact, seen = [], [], {spelling_key(term.name)}
            for syn in term.synonyms:
                key = spelling_key(syn.text)
                if key in seen or syn.kind in _SKIPPED_SYNONYM_KINDS or len(key) < 4:
                    continue
                seen.add(key)
                if syn.kind == "layperson" and syn.scope in ("EXACT", "RELATED"):
                    lay.append(self.lower_first(syn.text))
                elif syn.scope == "EXACT" and not syn.kind:
                    exact.append(self.lower_first(syn.text))
            self._synonyms[term_id] = lay or exact
        return self._synonyms[term_id]

    def wordings(self, term_id: str) -> list[str]:
        return [self.canonical(term_id), *self.synonyms(term_id)]

    def pick_wording(self, term_id: str, rng: random.Random) -> str:
        """A synonym sharing as few words with the HPO name as any (ties: random), so that
        the vignette and the passage rarely match word for word; the name if none."""
        options = self.synonyms(term_id)
        if not options:
            return self.canonical(term_id)
        name_words = set(spelling_key(self.onto.terms[term_id].name).split())
        overlap = [len(name_words & set(spelling_key(o).split())) / max(len(o.split()), 1)
                   for o in options]
        return rng.choice([o for o, v in zip(options, overlap, strict=True) if v == min(overlap)])
