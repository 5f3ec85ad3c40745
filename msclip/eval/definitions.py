"""Names of the metric definitions msclip offers (AP@k denominators, no-relevant policies).

Plain data with no heavy imports, so that command-line programs can list the choices in
``--help`` without loading the metrics (numpy, pandas) or the model code. The metrics themselves
are in :mod:`msclip.eval.metrics`; the definitions are published in ``docs/metrics.md``.
"""

from __future__ import annotations

__all__ = ["AP_DEFINITIONS", "DEFAULT_AP_DEFINITION", "NO_RELEVANT_POLICIES"]

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
