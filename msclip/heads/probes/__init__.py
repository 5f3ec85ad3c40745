"""Probes on frozen image features: kNN, logistic regression and ridge regression.

Every probe takes features ``[N, D]`` (numpy arrays, memory-mapped arrays or torch tensors, any
float dtype) computed once by the frozen encoder, and labels ``[N]`` (class indices,
single-label), ``[N, C]`` (0/1, multi-label) or targets ``[N]`` / ``[N, K]`` (regression). They
run on the CPU, need no GPU and are deterministic for a given seed.

* **kNN** on cosine similarity (Wu et al., CVPR 2018, "Unsupervised Feature Learning via
  Non-Parametric Instance Discrimination"; the protocol of DINO, Caron et al., ICCV 2021, and
  SMARTIES): each test image takes the ``k`` training images of highest cosine similarity, which
  vote with weight ``exp(sim / T)`` (``k = 20``, ``T = 0.07``), or with weight 1 (``k = 5``,
  unweighted, as torchgeo-bench). The score of class ``c`` is the weighted fraction of votes
  for ``c`` (in ``[0, 1]``); for multi-label data it is the weighted mean of the neighbours'
  0/1 labels of ``c``, so both read as probabilities. Its top-5 accuracy counts an image only
  when its class got a vote (the unvoted classes tie at 0 and would fill the top 5). The
  similarity matrix is computed in blocks of training rows, keeping only the running top ``k``,
  so memory does not grow with the training set. Tie rule: among equal similarities the lower
  training index is taken (and ranks first), so the neighbours are the first ``k`` of a stable
  sort by similarity, descending.
* **Logistic regression** (the linear probe of CLIP, Radford et al., ICML 2021, and of
  torchgeo-bench): multinomial (softmax) for single-label data, binary for two classes and one
  binary problem per class (one-vs-rest) for multi-label data. It minimises scikit-learn's
  objective, ``mean_i loss_i + ||W||^2 / (2 C N)`` (intercept not penalised), with the same
  solver, SciPy's L-BFGS-B (Byrd et al., 1995; Zhu et al., 1997), in float64: scikit-learn
  ``LogisticRegression(C=C)`` reaches the same optimum (probabilities agree to 1e-4 and
  better when both converge). SciPy rather than ``torch.optim.LBFGS``: its line search and
  stopping rules are those of scikit-learn, it is deterministic, and float64 on a ``[N, D]``
  matrix is cheap on the CPU. The inverse regularisation ``C`` is swept over
  ``logspace(-7, 2, 20)`` from the smallest (strongest regularisation) up, each fit starting
  from the previous solution (warm start); the ``C`` with the best validation score wins (ties:
  the lowest validation log-loss, then the largest ``C``), then the probe is refitted on train
  + validation.
* **Ridge regression** with an ``alpha`` sweep: the closed form, through one eigendecomposition
  of the (centred) Gram matrix shared by every ``alpha``; equal to scikit-learn ``Ridge``.

The heads trained by gradient descent (a batch-norm + linear head trained by AdamW, and the
text-initialised head) live in :mod:`msclip.heads.linear` and share the checks, results and
evaluation of this module.

Features are standardised (zero mean, unit variance per dimension, statistics of the fitting
set, population standard deviation, constant dimensions left unscaled) before the logistic and
ridge probes unless ``standardize=False``: the regularisation then means the same for every
encoder. kNN uses cosine similarity of the raw features.

Every probe returns a :class:`ProbeResult`: metrics with bootstrap 95% intervals
(:mod:`msclip.eval.bootstrap`), the chosen hyper-parameters and the test scores.

The probes live in one module each, re-exported here: :mod:`msclip.heads.probes.knn`,
:mod:`msclip.heads.probes.logistic`, :mod:`msclip.heads.probes.ridge`; what they share (input
checks, results, evaluation, standardisation, sweeps) is :mod:`msclip.heads.probes.common`.
"""

from __future__ import annotations

from msclip.heads.probes.common import (
    DEFAULT_ALPHAS,
    DEFAULT_CS,
    MULTILABEL_THRESHOLD,
    TASKS,
    ProbeResult,
    SweepResult,
    check_features,
    check_labels,
    check_targets,
    evaluate_scores,
)
from msclip.heads.probes.knn import (
    knn_neighbors,
    knn_probe,
    knn_scores,
    knn_vote,
)
from msclip.heads.probes.logistic import (
    LogisticModel,
    fit_logistic,
    logistic_probe,
    logistic_sweep,
)
from msclip.heads.probes.ridge import (
    RidgeModel,
    fit_ridge,
    ridge_probe,
    ridge_sweep,
)

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "MULTILABEL_THRESHOLD",
    "TASKS",
    "LogisticModel",
    "ProbeResult",
    "RidgeModel",
    "SweepResult",
    "check_features",
    "check_labels",
    "check_targets",
    "evaluate_scores",
    "fit_logistic",
    "fit_ridge",
    "knn_neighbors",
    "knn_probe",
    "knn_scores",
    "knn_vote",
    "logistic_probe",
    "logistic_sweep",
    "ridge_probe",
    "ridge_sweep",
]
