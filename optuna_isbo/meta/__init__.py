r"""A GP prior pre-trained on finished studies of related tasks (HyperBO).

Wang et al., "Pre-trained Gaussian processes for Bayesian optimization" (HyperBO), fit the mean
function and the kernel hyperparameters of a GP on the data of related tasks, then use that
fixed GP as the prior of a new task. :func:`fit_prior` does this for Optuna studies that share a
search space, and :class:`GPPrior` is the result: it can be saved to and loaded from a plain JSON
file and given to :class:`~optuna_isbo.ISBOSampler` as ``ISBOSampler(prior=...)``.

**Model.** Each study ``i`` is an independent draw from one GP,

.. math::

    y_i(x, s) = m_w(x) + f_i(x, s) + \varepsilon, \qquad
    f_i \sim \mathcal{GP}(0, k_\theta), \quad \varepsilon \sim \mathcal{N}(0, \sigma_n^2(s)),

with the kernel and noise law of :mod:`optuna_isbo.model` (Matérn-5/2 ARD on ``x``, times the
fidelity kernel on ``s`` when the space has a fidelity parameter) and a mean function ``m_w`` of
the encoded hyperparameters ``x`` (the fidelity is not an input of the mean):

- ``"constant"``: :math:`m(x) = b`;
- ``"linear"``: :math:`m(x) = b + w^\top x`;
- ``"mlp"``: :math:`m(x) = b + v^\top \tanh(W^\top x + c)` with ``hidden_units`` hidden units.

**Objectives.** ``"marginal_likelihood"`` (default; studies need not share points) maximizes
:math:`\sum_i \log p(y_i \mid X_i; w, \theta)` plus weak log priors on the hyperparameters (the
defaults of :mod:`optuna_isbo.model`) and a standard-normal prior on the mean weights.
``"empirical_kl"`` needs every study evaluated at the same ``n`` points ``X``; with the ``M``
studies' values as columns of ``Y (n, M)``, the empirical mean ``mu = Y 1 / M`` and the unbiased
empirical covariance ``S = (Y - mu)(Y - mu)^T / (M - 1)``, it minimizes

.. math::

    \mathrm{KL}\left(\mathcal{N}(\mu, S) \,\|\, \mathcal{N}(m_w(X), K_\theta(X) + \Sigma_n)\right)
    = \tfrac12\left[\mathrm{tr}(K^{-1} S) + (m - \mu)^\top K^{-1} (m - \mu)
      + \log\det K\right] + \mathrm{const},

the ``log det S`` term (infinite when ``M <= n``) being a constant of the parameters.
Both are minimized with L-BFGS-B on torch gradients.

**Units.** Values are sign-flipped for maximized studies (so that the prior is always about a
minimized objective), and each study's outliers are tamed as the sampler tames them
(:func:`~optuna_isbo.model.tame_outliers`: values beyond :math:`q_{75} + 5 (q_{75} - q_{25})`
of the study are set to that fence, runs marked ``isbo:diverged`` to its worst other value), so
that one diverged run reported at its loss cannot set the scale. The values are then pooled
over all studies and standardized *once* with the pooled mean and standard deviation
(``y_shift``, ``y_scale``). Studies are not standardized one by one:
objective values of related tasks share a scale, and the prior mean is what they have in
common. A new study's values go through the same transform (:meth:`GPPrior.transform`). The
mean and standard deviation are taken of the values divided by their largest magnitude, so
values near the float64 limit (``1e300``) or near its smallest normal numbers standardize as
well as values near 1, and the fit does not depend on the objective's unit. Values equal to
about 12 significant digits have the scale of their magnitude.

**File format** (:meth:`GPPrior.save`, :meth:`GPPrior.load`): one JSON object, no pickle,
validated field by field on load; see :mod:`optuna_isbo.meta.prior_file`.

**Modules.** :mod:`~optuna_isbo.meta.mean` (the mean functions),
:mod:`~optuna_isbo.meta.prior_file` (what a prior holds, its file format and the checks of
every field), :mod:`~optuna_isbo.meta.prior` (:class:`GPPrior`: the prior in use),
:mod:`~optuna_isbo.meta.studies` (the data that the fit reads from the studies),
:mod:`~optuna_isbo.meta.likelihood` (the GP marginal likelihood of a batch of studies) and
:mod:`~optuna_isbo.meta.fit` (:func:`fit_prior`).
"""

from optuna_isbo.meta.fit import fit_prior
from optuna_isbo.meta.mean import MeanFunction
from optuna_isbo.meta.prior import GPPrior

__all__ = ["GPPrior", "MeanFunction", "fit_prior"]
