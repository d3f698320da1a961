r"""Importance-sampled SGD (IS-SGD) for any PyTorch training loop.

This package implements the importance sampling of Katharopoulos & Fleuret (2018) as four
small pieces, each in its own module:

1. **How samples are scored** (:mod:`optuna_isbo.issgd.scores`,
   :func:`gradient_norm_scores`). The score of sample :math:`i` is the norm of the gradient of
   its loss with respect to its logits :math:`z_i`, an upper bound (up to a constant) of the
   norm of its gradient with respect to the parameters,

   .. math::

       g_i = \left\| \frac{\partial L_i}{\partial z_i} \right\|_2 ,

   which for softmax cross-entropy has the closed form
   :math:`g_i = \| \mathrm{softmax}(z_i) - \mathrm{onehot}(y_i) \|_2`. Other losses get their
   scores by automatic differentiation with respect to the logits; ``score="loss"`` uses the
   per-sample losses themselves.
2. **How samples are drawn** (:mod:`optuna_isbo.issgd.sampling`, :func:`sample_by_score`). A
   super-batch of :math:`B` indices is drawn uniformly with replacement from the :math:`N`
   samples of the dataset (by a batch sampler that can feed the user's DataLoader), scored,
   and a minibatch of :math:`b` indices is drawn from it with replacement with probability
   :math:`p_i = g_i / \sum_j g_j`.
3. **How they are reweighted**. Each drawn sample gets the weight :math:`w_i = 1 / (B p_i)`, so
   that :math:`\mathbb{E}[\frac1b \sum_i w_i \nabla L_i]` is the mean gradient of the
   super-batch, and therefore of the dataset: the estimator stays unbiased.
4. **When importance sampling is on** (:mod:`optuna_isbo.issgd.switch`,
   :func:`variance_reduction`). With :math:`n` scores :math:`s` of uniformly drawn samples and
   :math:`\hat g = s / \sum_j s_j`,

   .. math::

       \tau_{\mathrm{new}} = \sqrt{n \sum_i \hat g_i^2}
           = \frac{\mathrm{RMS}(s)}{\mathrm{mean}(s)} \ge 1 ,

   smoothed as :math:`\tau \leftarrow m\,\tau + (1 - m)\,\tau_{\mathrm{new}}` (:math:`m = 0.9`,
   from 0). If the scores were exact per-sample gradient norms, :math:`\tau^2` would be the
   ratio of the variances of a uniform and an importance-sampled draw from an infinite
   super-batch; at a finite :math:`B` the ratio is :math:`r_B = B\tau^2 / (B + b\tau^2 - 1)`.
   ``switch="fidelity"`` (default) turns IS on when :math:`r_B > 1.2` after 20 uniform
   steps, whatever it costs: a larger :math:`B` then gives an equal or better run at a higher
   cost, so :math:`B` is a *fidelity* for ISBO (Ariafar et al., 2021). ``switch="speed"``
   turns it on only when :math:`r_B` exceeds the measured ratio of the seconds of an IS step
   to a uniform one (the fixed model :math:`(B + 3b)/(3b)` until both are timed).
   ``tau_threshold`` is an explicit override: IS on while :math:`\tau >` ``tau_threshold``.

With :math:`B = b` this is exactly uniform SGD: importance sampling never switches on and every
weight is 1.

:class:`ISSGD` (:mod:`optuna_isbo.issgd.core`) is the simple path: it reads a map-style
dataset itself. A training loop with its own DataLoader uses
:class:`~optuna_isbo.issgd.callback.ISSGDCallback` (the same pieces as hooks) and, with PyTorch
Lightning, :class:`optuna_isbo.integration.lightning.ISSGDLightningCallback`. The argument and
shape checks they share are in :mod:`optuna_isbo.issgd.checks`.

References
----------
- A. Katharopoulos and F. Fleuret. Not All Samples Are Created Equal: Deep Learning with
  Importance Sampling. ICML 2018.
- S. Ariafar, Z. Mariet, E. Elhamifar, D. Brooks, J. Dy and J. Snoek. Weighting Is Worth the
  Wait: Bayesian Optimization with Importance Sampling. AISTATS 2021.
"""

from optuna_isbo.issgd.callback import ISSGDCallback, ISSGDStats
from optuna_isbo.issgd.checks import IGNORE_INDEX
from optuna_isbo.issgd.core import ISSGD
from optuna_isbo.issgd.sampling import sample_by_score
from optuna_isbo.issgd.scores import LossFn, Score, gradient_norm_scores
from optuna_isbo.issgd.switch import SwitchMode, variance_reduction

__all__ = [
    "IGNORE_INDEX",
    "ISSGD",
    "ISSGDCallback",
    "ISSGDStats",
    "LossFn",
    "Score",
    "SwitchMode",
    "gradient_norm_scores",
    "sample_by_score",
    "variance_reduction",
]
