"""Names of the metric definitions msclip offers (AP@k denominators, no-relevant policies).

Plain data with no heavy imports, so that command-line programs can list the choices in
``--help`` without loading the metrics (numpy, pandas) or the model code. The metrics themselves
are in :mod:`msclip.eval.metrics`; the definitions are published in ``docs/metrics.md``.
"""

from __future__ import annotations

__all__ = [
    "AP_DEFINITIONS",
    "DEFAULT_AP_DEFINITION",
    "NO_RELEVANT_POLICIES",
    "UNIT_METRICS",
    "interval_header",
    "metric_format",
]

#: AP@k denominators (see the module docstring / ``docs/metrics.md``): name -> description.
AP_DEFINITIONS: dict[str, str] = {
    "relevant_retrieved": (
        "sum of precision@i at relevant ranks i <= k, divided by the number of relevant items "
        "within the top k (torchmetrics RetrievalMAP(top_k) 1.0.0-1.7.3)"
    ),
    "relevant_retrieved_positive": (
        "as relevant_retrieved, but items with score <= 0 never count as relevant "
        "(torchmetrics RetrievalMAP(top_k) >= 1.7.4)"
    ),
    "min_k_relevant": (
        "sum of precision@i at relevant ranks i <= k, divided by min(k, total relevant items)"
    ),
    "all_relevant": (
        "sum of precision@i at relevant ranks i <= k, divided by the total number of relevant "
        "items (truncated AP)"
    ),
}

#: Definition used when none is given: the one behind the published mAP@100 numbers.
DEFAULT_AP_DEFINITION = "relevant_retrieved"

#: Values for queries/classes without any relevant item: ``"nan"`` (excluded from means) or
#: ``"zero"`` (counted as 0, torchmetrics' default ``empty_target_action="neg"``).
NO_RELEVANT_POLICIES: tuple[str, ...] = ("nan", "zero")

#: Metrics in the units of a regression head's targets (image-level and per pixel), not scores
#: between 0 and 1: a target of small scale (a height in km, a fraction times 1e-6) has an RMSE
#: of 1e-6, which four decimals print as 0.0000.
UNIT_METRICS: frozenset[str] = frozenset({"rmse", "mae", "bias", "target_mean", "target_std"})


def metric_format(name: object) -> str:
    """The format of a metric's value in printed tables and ``report.md``: six significant
    digits (``.6g``) for one in the targets' units (:data:`UNIT_METRICS`, also as the end of a
    column name, ``height_rmse``), as a regression head's values are printed; four decimals
    (``.4f``) for scores. The CSVs and records keep full precision."""
    s = str(name)
    in_units = s in UNIT_METRICS or any(s.endswith(f"_{m}") for m in UNIT_METRICS)
    return ".6g" if in_units else ".4f"


def interval_header(confidence: object = 0.95) -> str:
    """The column header of bootstrap intervals of coverage ``confidence``: ``95% CI`` for
    0.95, ``90% CI`` for 0.9, ``99.5% CI`` for 0.995 (the coverage the intervals were drawn
    with, never a fixed 95%)."""
    return f"{100 * float(confidence):.6g}% CI"
