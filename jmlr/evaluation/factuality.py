"""Factuality of generated rationales: UMLS concepts found by scispaCy's linker, then UMLS-F.

The only module that imports spaCy / scispaCy. A text goes through:

1. a spaCy pipeline that marks mentions: a scispaCy model's NER (``factuality.spacy_model``,
   or ``en_core_sci_sm`` when installed), otherwise ``spacy.blank("en")`` with an
   EntityRuler built from the knowledge base's names and aliases (case-insensitive; acronyms
   such as "ALL" match case-sensitively so that the word "all" is not a leukaemia);
2. scispaCy's AbbreviationDetector (Schwartz & Hearst), plus a small component that makes a
   defined abbreviation and its definition mentions when nothing covers them yet;
3. scispaCy's EntityLinker over the knowledge base (scispaCy KnowledgeBase jsonl), with its
   candidate generator fed the KB's char-3-gram TF-IDF + nmslib HNSW alias index, which
   :mod:`jmlr.evaluation.alias_index` builds once per KB and caches.

UMLS-F itself (pure functions, the report and its HTML) lives in :mod:`jmlr.evaluation.umls_f`.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import spacy
from scispacy.abbreviation import AbbreviationDetector  # noqa: F401  (registers the factory)
from scispacy.candidate_generation import CandidateGenerator
from scispacy.linking import EntityLinker
from scispacy.linking_utils import Entity, KnowledgeBase
from spacy.language import Language
from spacy.tokens import Doc, Span
from tqdm import tqdm

from jmlr.config import Config, FactualityConfig
from jmlr.data.kb import read_kb, resolve_kb
from jmlr.errors import ConfigError
from jmlr.evaluation.alias_index import INDEX_RECIPE, cached_index_dir, load_index
from jmlr.evaluation.umls_f import Concept, example_record, read_predictions, render_html, summarize
from jmlr.io import atomic_write, write_json

log = logging.getLogger(__name__)

__all__ = ["Concept", "ConceptExtractor", "load_kb", "read_predictions", "run_factuality"]

DEFAULT_MODEL = "en_core_sci_sm"
MENTION_LABEL = "ENTITY"            # the label scispaCy models give their mentions
CANDIDATES_K = 30                   # nearest aliases looked up per mention (scispaCy's default)

# ---------------------------------------------------------------------------------------
# Knowledge base


def load_kb(path: str | Path) -> KnowledgeBase:
    """A scispaCy KnowledgeBase from a jsonl file, each line validated (DataError names the
    file, line and field; duplicate concept ids are an error): see :mod:`jmlr.data.kb`."""
    return KnowledgeBase([Entity(**row) for row in read_kb(path)])


class MemoCandidateGenerator(CandidateGenerator):
    """scispaCy's candidate generator that remembers each mention string's candidates.

    Rationales repeat the same terms, and the nmslib query is most of the linking time, so each
    distinct string is looked up once (and :meth:`ConceptExtractor.extract_many` looks up a whole
    batch of documents' new strings in one query). Results are those of the parent class.
    """

    def __init__(self, *args: Any, max_entries: int = 200_000, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_entries = max_entries
        self._memo: dict[tuple[str, int], list[Any]] = {}

    def __call__(self, mention_texts: list[str], k: int) -> list[list[Any]]:
        missing = list(dict.fromkeys(t for t in mention_texts if (t, k) not in self._memo))
        if missing:
            if len(self._memo) + len(missing) > self.max_entries:
                self._memo.clear()
            found = super().__call__(missing, k)
            self._memo.update(((t, k), c) for t, c in zip(missing, found, strict=True))
        return [self._memo[(t, k)] for t in mention_texts]


# ---------------------------------------------------------------------------------------
# spaCy pipeline


@Language.component("jmlr_abbreviation_mentions")
def abbreviation_mentions(doc: Doc) -> Doc:
    """Make each detected abbreviation ("PKD") and its definition mentions where no mention
    covers them yet, so the linker sees a short form that no KB alias lists and links it
    through its long form (the linker reads ``span._.long_form``, keyed by character span)."""
    ents = list(doc.ents)
    taken = {i for ent in ents for i in range(ent.start, ent.end)}
    for short in doc._.abbreviations:
        for span in (short._.long_form, short):
            if isinstance(span, Span) and taken.isdisjoint(range(span.start, span.end)):
                ents.append(Span(doc, span.start, span.end, label=MENTION_LABEL))
                taken.update(range(span.start, span.end))
    doc.ents = sorted(ents, key=lambda s: s.start)
    return doc


def _is_acronym(alias: str) -> bool:
    """Short single-token names without lower-case letters match case-sensitively.

    >>> _is_acronym("PKD"), _is_acronym("HIV-1"), _is_acronym("Fever"), _is_acronym("RENAL FAILURE")
    (True, True, False, False)
    """
    return (len(alias) <= 10 and " " not in alias and any(c.isalpha() for c in alias)
            and not any(c.islower() for c in alias))


def kb_patterns(nlp: Language, kb: KnowledgeBase) -> list[dict[str, Any]]:
    """EntityRuler patterns for every KB name and alias: phrase patterns (matched on LOWER)
    and, for acronyms, case-sensitive token patterns; one-letter names and stop words
    ("all", "was") are left out."""
    stop_words = nlp.Defaults.stop_words
    patterns: list[dict[str, Any]] = []
    seen: set[str] = set()
    for alias in sorted(kb.alias_to_cuis):
        text = alias.strip()
        acronym = _is_acronym(text)
        key = text if acronym else text.lower()
        if len(text) < 2 or (not acronym and key in stop_words) or key in seen:
            continue
        seen.add(key)
        if acronym:
            patterns.append({"label": MENTION_LABEL,
                             "pattern": [{"ORTH": t.text} for t in nlp.make_doc(text)]})
        else:
            patterns.append({"label": MENTION_LABEL, "pattern": text})
    return patterns


def build_pipeline(fact_cfg: FactualityConfig, kb: KnowledgeBase) -> tuple[Language, str]:
    """(spaCy pipeline that marks mentions and abbreviations, a name saying which)."""
    name = fact_cfg.spacy_model or (DEFAULT_MODEL if spacy.util.is_package(DEFAULT_MODEL) else "")
    if name:
        try:
            nlp = spacy.load(name)
        except OSError as err:
            raise ConfigError(f"factuality.spacy_model: cannot load {name!r} ({err})") from None
        if "ner" not in nlp.pipe_names:
            raise ConfigError(f"factuality.spacy_model: {name!r} has no 'ner' component to find mentions")
        described = f"{name} NER"
    else:
        nlp = spacy.blank("en")
        ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER",
                                                     "overwrite_ents": True})
        ruler.add_patterns(kb_patterns(nlp, kb))
        described = "spacy.blank('en') + EntityRuler over KB aliases"
    if fact_cfg.resolve_abbreviations:
        nlp.add_pipe("abbreviation_detector")
        nlp.add_pipe("jmlr_abbreviation_mentions")
        described += " + abbreviations"
    return nlp, described + " + scispaCy EntityLinker"


# ---------------------------------------------------------------------------------------
# Extraction


class ConceptExtractor:
    """Concepts of a text: mentions from the pipeline, linked by scispaCy's EntityLinker.

    ``extract(text) -> list[Concept]``; ``extract_many(texts)`` batches through ``nlp.pipe``.
    ``index_built`` / ``index_seconds`` say whether the KB index was built or loaded, and how long
    that took.
    """

    def __init__(self, kb_path: str | Path, fact_cfg: FactualityConfig,
                 cache_dir: str | Path) -> None:
        if fact_cfg.max_entities_per_mention < 1:
            raise ConfigError("factuality.max_entities_per_mention must be >= 1")
        if not 0 <= fact_cfg.no_definition_threshold <= 1:
            raise ConfigError("factuality.no_definition_threshold must be in [0, 1]")
        self.kb_path = Path(kb_path)
        self.cfg = fact_cfg
        self.kb = load_kb(self.kb_path)
        start = time.perf_counter()
        kb_aliases = self.kb.alias_to_cuis.keys()
        self.index_dir, self.index_built = cached_index_dir(self.kb_path, kb_aliases, cache_dir)
        aliases, vectorizer, ann_index = load_index(self.index_dir)
        self.index_seconds = time.perf_counter() - start
        generator = MemoCandidateGenerator(ann_index=ann_index, tfidf_vectorizer=vectorizer,
                                           ann_concept_aliases_list=aliases, kb=self.kb,
                                           ef_search=INDEX_RECIPE["efSearch"])
        self.types = set(fact_cfg.semantic_types)
        # With a type filter the linker keeps every candidate above the threshold; the filter
        # then picks the best ones of the allowed types.
        self.linker = EntityLinker(
            candidate_generator=generator, resolve_abbreviations=fact_cfg.resolve_abbreviations,
            k=CANDIDATES_K, threshold=fact_cfg.threshold,
            filter_for_definitions=fact_cfg.filter_for_definitions,
            no_definition_threshold=fact_cfg.no_definition_threshold,
            max_entities_per_mention=CANDIDATES_K if self.types else fact_cfg.max_entities_per_mention)
        self.nlp, self.pipeline_name = build_pipeline(fact_cfg, self.kb)

    @property
    def settings(self) -> dict[str, Any]:
        c = self.cfg
        return {"threshold": c.threshold, "max_entities_per_mention": c.max_entities_per_mention,
                "resolve_abbreviations": c.resolve_abbreviations,
                "semantic_types": list(c.semantic_types), "k": CANDIDATES_K,
                "filter_for_definitions": c.filter_for_definitions,
                "no_definition_threshold": c.no_definition_threshold}

    def _concepts(self, doc: Doc) -> list[Concept]:
        concepts = []
        for ent in doc.ents:
            links = ent._.kb_ents
            if self.types:
                links = [(cui, s) for cui, s in links
                         if self.types.intersection(self.kb.cui_to_entity[cui].types)]
            for cui, score in links[: self.cfg.max_entities_per_mention]:
                concepts.append(Concept(cui, self.kb.cui_to_entity[cui].canonical_name,
                                        ent.start_char, ent.end_char, ent.text, float(score)))
        return concepts

    def extract(self, text: str) -> list[Concept]:
        return self.extract_many([text], progress=False)[0]

    def _mention_strings(self, doc: Doc) -> list[str]:
        """The strings the linker will look up: an abbreviation's long form, else the mention."""
        if not self.cfg.resolve_abbreviations:
            return [ent.text for ent in doc.ents]
        return [ent._.long_form.text if isinstance(ent._.long_form, Span) else ent.text
                for ent in doc.ents]

    def extract_many(self, texts: list[str], batch_size: int = 64,
                     progress: bool = True) -> list[list[Concept]]:
        out: list[list[Concept]] = []
        bar = tqdm(total=len(texts), desc="concepts", unit="text", disable=not progress,
                   mininterval=1.0)
        with warnings.catch_warnings():
            # The abbreviation detector runs an empty matcher on texts that define none.
            warnings.filterwarnings("ignore", message=r"\[W036\]")
            for start in range(0, len(texts), batch_size):
                docs = list(self.nlp.pipe(texts[start:start + batch_size], batch_size=batch_size))
                # One batched nmslib query for the batch's new mention strings.
                self.linker.candidate_generator(
                    [m for doc in docs for m in self._mention_strings(doc)], self.linker.k)
                out.extend(self._concepts(self.linker(doc)) for doc in docs)
                bar.update(len(docs))
        bar.close()
        return out


# ---------------------------------------------------------------------------------------
# The command


def run_factuality(cfg: Config, predictions: str | Path, kb: str | Path | None = None,
                   out_dir: str | Path | None = None) -> dict[str, Any]:
    """UMLS-F of every generated rationale in ``predictions`` against its reference.

    Writes ``report.json`` (summary, groups by dataset/mode, per-example concepts with spans,
    matched / missed / extra) and ``report.html`` into ``out_dir`` (default: the predictions
    file's folder). Returns the summary with the groups and skip counts.
    """
    location = str(kb or cfg.factuality.kb)
    if not location:
        raise ConfigError("no knowledge base: pass --kb or set factuality.kb")
    kb_path = resolve_kb(location)
    pred_path = Path(predictions)
    out = Path(out_dir) if out_dir else pred_path.parent
    pairs, skipped = read_predictions(pred_path)
    extractor = ConceptExtractor(kb_path, cfg.factuality, cfg.run.cache_dir)

    texts = list(dict.fromkeys([p.generated for p in pairs] + [p.reference for p in pairs]))
    start = time.perf_counter()
    by_text = dict(zip(texts, extractor.extract_many(texts), strict=True))
    seconds = time.perf_counter() - start
    records = [example_record(p.meta, p.generated, p.reference, by_text[p.generated],
                              by_text[p.reference]) for p in pairs]
    summary, by_group = summarize(records)
    if not records:
        log.warning("%s: no row has both a generated and a reference rationale (%s)",
                    pred_path, ", ".join(f"{k}={v}" for k, v in skipped.items()))
    report = {
        "summary": summary, "by_group": by_group, **skipped,
        "predictions": str(pred_path), "kb": str(kb_path), "kb_concepts": len(extractor.kb.cui_to_entity),
        "kb_index": str(extractor.index_dir), "pipeline": extractor.pipeline_name,
        "settings": extractor.settings,
        "timing": {"index_built": extractor.index_built,
                   "index_s": round(extractor.index_seconds, 3),
                   "extraction_s": round(seconds, 3), "texts": len(texts),
                   "texts_per_s": round(len(texts) / seconds, 2) if seconds > 0 else None},
        "examples": records,
    }
    write_json(out / "report.json", report)
    with atomic_write(out / "report.html") as handle:
        handle.write(render_html(report))
    log.info("UMLS-F over %d examples: P %.3f R %.3f F1 %.3f (%d with no generated concept); "
             "wrote %s", summary["n"], summary["precision"], summary["recall"], summary["f1"],
             summary["n_empty_generated"], out / "report.html")
    return {**summary, "by_group": by_group, **skipped,
            "report_json": str(out / "report.json"), "report_html": str(out / "report.html")}
