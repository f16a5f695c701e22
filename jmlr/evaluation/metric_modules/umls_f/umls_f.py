"""UMLS-F (JMLR, Wang et al. 2024) as an ``evaluate`` metric: the macro precision, recall
and F1 of the UMLS concepts of generated rationales against those of reference rationales.

Load it by path, offline (no hub):
``evaluate.load("<site-packages>/jmlr/evaluation/metric_modules/umls_f")``. It takes concept
ids already extracted (``jmlr factuality`` links them with scispaCy), needs nothing but
numpy, and ``jmlr factuality`` computes its macro scores through it.
"""

import datasets
import evaluate

_DESCRIPTION = """Per example, G = concept ids of the generated rationale, R = those of the
reference: P = |G∩R|/|G|, R = |G∩R|/|R|, F1 = 2PR/(P+R); P is 0 when G is empty, R is 0
when R is empty, F1 is 0 when P+R is 0 (saying nothing is never rewarded). Reported: the
means over examples (rounded to 6 places), n, and how many examples had an empty G or R."""

_KWARGS = """
Args:
    predictions: for each example, the concept ids (CUIs) found in the generated rationale.
    references: for each example, the concept ids found in the reference rationale.
Returns:
    n, precision, recall, f1, n_empty_generated, n_empty_reference.
Example (with the folder's path; the result follows the arrow):
    metric = evaluate.load("path/to/umls_f")
    metric.compute(predictions=[["C1", "C2"]], references=[["C2", "C3", "C4"]])["f1"]
    -> 0.4
"""


def set_scores(generated, reference):
    common = len(generated & reference)
    precision = common / len(generated) if generated else 0.0
    recall = common / len(reference) if reference else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class UmlsF(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("string")),
                "references": datasets.Sequence(datasets.Value("string"))}))

    def _compute(self, predictions, references):
        scores = [set_scores(set(g), set(r)) for g, r in zip(predictions, references, strict=True)]
        n = len(scores)

        def mean(i):
            return round(sum(s[i] for s in scores) / n, 6) if n else 0.0

        return {"n": n, "precision": mean(0), "recall": mean(1), "f1": mean(2),
                "n_empty_generated": sum(1 for g in predictions if not g),
                "n_empty_reference": sum(1 for r in references if not r)}
