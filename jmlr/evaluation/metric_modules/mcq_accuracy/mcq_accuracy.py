"""Multiple-choice accuracy with a percentile bootstrap interval, as an ``evaluate`` metric.

Load it by path, offline (no hub):
``evaluate.load("<site-packages>/jmlr/evaluation/metric_modules/mcq_accuracy")``. It needs
only numpy, so the folder can be copied and loaded without jmlr. ``jmlr evaluate`` computes
its accuracies and intervals through it.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """Share of questions whose predicted option letter equals the gold one (an
unparseable answer, the empty string, counts as wrong), and its percentile bootstrap interval:
the questions resampled with replacement `bootstrap_samples` times from a numpy generator
seeded with `seed`, so the same inputs give the same interval."""

_KWARGS = """
Args:
    predictions: predicted option letters ("" when no letter could be read).
    references: gold option letters.
    bootstrap_samples: resamples for the interval (0: no interval, the accuracy twice).
    seed: seed of the resampling.
    level: the interval's coverage (0.95).
Returns:
    accuracy, ci_low, ci_high, n, n_correct.
Example (with the folder's path; the result follows the arrow):
    metric = evaluate.load("path/to/mcq_accuracy")
    metric.compute(predictions=["A", "B"], references=["A", "C"], bootstrap_samples=0)
    -> {'accuracy': 0.5, 'ci_low': 0.5, 'ci_high': 0.5, 'n': 2, 'n_correct': 1}
"""


def bootstrap(correct, samples, seed, level=0.95):
    values = np.asarray(correct, dtype=float)
    if values.size == 0 or samples <= 0:
        mean = float(values.mean()) if values.size else 0.0
        return mean, mean
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class McqAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, bootstrap_samples=1000, seed=0, level=0.95):
        correct = [bool(p) and p == r for p, r in zip(predictions, references, strict=True)]
        low, high = bootstrap(correct, bootstrap_samples, seed, level)
        accuracy = float(np.mean(correct)) if correct else 0.0
        return {"accuracy": accuracy, "ci_low": low, "ci_high": high, "n": len(correct),
                "n_correct": int(sum(correct))}
