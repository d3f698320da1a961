"""Log expected improvement per unit of cost, for the target search of a study with a fidelity.

At the target fidelity the cost of a run still depends on the configuration: a wide network,
heavy augmentation or a small batch can make one run several times dearer than another. The
multi-fidelity search weighs its choices by cost; a target search that picks by value alone
hands most of a study's budget to its dearest runs. :class:`CostAwareGPSampler` is Optuna's
``GPSampler`` whose acquisition is charged for runs dearer than a typical one,

.. math::

    \\alpha(x) = \\log \\mathrm{EI}(x)
        - \\tfrac{1}{\\beta} \\log\\bigl(1 + e^{\\beta (\\mu_c(x) - \\tilde c)}\\bigr),

where :math:`\\mu_c(x)` is the posterior mean of a GP (Optuna's kernel, priors and fit) on the
log cost in seconds of the runs at the target, and :math:`\\tilde c` the median of those log
costs. This is expected improvement per unit of cost (Snoek et al., "Practical Bayesian
Optimization of Machine Learning Algorithms", NeurIPS 2012, Sec. 3.2) with the unit the
typical target run and (almost) no credit for cheaper ones: a run four times dearer than the
median must promise four times the expected improvement, while a cheap run is not preferred
for its cheapness alone, the failure of plain EI per unit cost where the cheap region is poor
(Lee et al., "Cost-aware Bayesian Optimization", 2020). The same charge applies to every
acquisition ``GPSampler`` builds (log EI, its batched and constrained forms), since each is a
log utility of the candidate ``x``.

The charge is the hinge :math:`\\max(0, \\mu_c(x) - \\tilde c)` smoothed by a softplus of
sharpness :math:`\\beta` = :data:`SHARPNESS_PER_NAT`: it lies above the hinge by at most
:math:`\\log 2 / \\beta = 0.17` nats (at the median) and by :math:`e^{-\\beta |d|} / \\beta` at a
distance :math:`d` from it. With the hinge's kink, ``GPSampler``'s L-BFGS local search took
seven times as many gradient steps, and an ``ask`` three times as long.

Studies without a fidelity keep plain ``GPSampler``: there ISBOSampler's proposals are
``GPSampler``'s by contract (:mod:`optuna_isbo.target_search`).
"""

from __future__ import annotations

from collections.abc import Callable, Container

import numpy as np
import torch
from optuna._gp import gp
from optuna._gp.acqf import BaseAcquisitionFunc
from optuna._gp.search_space import SearchSpace as GPSearchSpace
from optuna.samplers import GPSampler
from optuna.trial import FrozenTrial

# The fewest costed runs, and the least spread of their log costs (a factor of 1.1), below
# which the acquisition is left uncharged: there is nothing to learn a cost landscape from.
MIN_COSTED_RUNS = 4
MIN_LOG_COST_SPREAD = float(np.log(1.1))
# The most target runs the cost GP learns from: beyond them, an evenly spaced subset in trial
# order. The fit is cubic in the runs; on all of 1,000 runs the charged ``ask`` took 9-12 s
# against GPSampler's 3-5 s, and a smooth log cost needs far fewer points than the objective.
MAX_COSTED_RUNS = 256
# Sharpness of the smoothed hinge, per nat of log cost (the module docstring).
SHARPNESS_PER_NAT = 4.0


class CostChargedAcquisition(BaseAcquisitionFunc):
    """``base`` minus the log factor by which a candidate's predicted cost exceeds the median
    (smoothed; the module docstring).

    Parameters
    ----------
    base
        Any of ``GPSampler``'s acquisitions; its ``eval_acqf`` maps ``x`` of shape
        ``(..., d)`` (normalized parameters) to log utilities of shape ``(...)``.
    cost_gpr
        GP on the standardized log costs, over the same normalized parameters.
    cost_y
        Its training targets, the standardized log costs, shape ``(n,)``.
    log_cost_mean, log_cost_std
        The standardization: ``log c = log_cost_mean + log_cost_std * y``.
    reference_log_cost
        :math:`\\tilde c`, the median observed log cost in seconds.
    """

    def __init__(
        self,
        base: BaseAcquisitionFunc,
        cost_gpr: gp.GPRegressor,
        cost_y: np.ndarray,
        log_cost_mean: float,
        log_cost_std: float,
        reference_log_cost: float,
    ) -> None:
        self._base = base
        self._cost_gpr = cost_gpr
        # The posterior mean alone, k(x, X) @ alpha with alpha = (K + noise I)^-1 y: the charge
        # needs no variance, whose solve per candidate would double the acquisition's price.
        with torch.no_grad():
            cov = cost_gpr.kernel().clone()
            cov.diagonal().add_(cost_gpr.noise_var)
            chol = torch.linalg.cholesky(cov)
            y = torch.as_tensor(cost_y, dtype=torch.float64).unsqueeze(-1)
            self._alpha = torch.cholesky_solve(y, chol).squeeze(-1)
        self._log_cost_mean = log_cost_mean
        self._log_cost_std = log_cost_std
        self._reference = reference_log_cost
        super().__init__(base.length_scales, base.search_space)

    def predicted_log_cost(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean log cost in seconds, shape ``x.shape[:-1]``."""
        mean = self._cost_gpr.kernel(x.reshape(-1, x.shape[-1])) @ self._alpha
        return self._log_cost_mean + self._log_cost_std * mean.reshape(x.shape[:-1])

    def charge(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\max(0, \\mu_c(x) - \\tilde c)`, smoothed; shape ``x.shape[:-1]``."""
        excess = self.predicted_log_cost(x) - self._reference
        return torch.nn.functional.softplus(excess, beta=SHARPNESS_PER_NAT)

    def eval_acqf(self, x: torch.Tensor) -> torch.Tensor:
        return self._base.eval_acqf(x) - self.charge(x)


class CostAwareGPSampler(GPSampler):
    """``GPSampler`` whose acquisition is charged for dear runs (the module docstring).

    Parameters
    ----------
    cost_seconds
        The cost in seconds of a completed trial (:func:`optuna_isbo.cost.trial_cost_seconds`).
    **kwargs
        ``GPSampler``'s.

    Notes
    -----
    Only the trials named by :meth:`costed` teach the cost GP: the runs at the target. The
    search also sees failed configurations listed at the worst value, whose cost says nothing
    about a run at the target. Until :data:`MIN_COSTED_RUNS` of them have costs spread beyond a
    factor of 1.1, the proposals are ``GPSampler``'s; beyond :data:`MAX_COSTED_RUNS`, an evenly
    spaced subset of them (in trial order) teaches it.
    """

    def __init__(self, *, cost_seconds: Callable[[FrozenTrial], float], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._cost_seconds = cost_seconds
        self._costed: Container[int] = ()
        self._cost_gpr_cache: gp.GPRegressor | None = None

    def costed(self, numbers: Container[int]) -> None:
        """The trials (by number) whose cost the next proposals learn from (none: no charge;
        :func:`optuna_isbo.target_search.sample_at_target` names them for each proposal)."""
        self._costed = numbers

    def _get_acqf_and_best_params(
        self,
        completed_trials: list[FrozenTrial],
        gprs_list: list[gp.GPRegressor],
        internal_search_space: GPSearchSpace,
        normalized_params: np.ndarray,
        normalized_params_of_running_trials: np.ndarray | None,
        standardized_score_vals: np.ndarray,
    ) -> tuple[BaseAcquisitionFunc, np.ndarray | None]:
        acqf, best_params = super()._get_acqf_and_best_params(
            completed_trials,
            gprs_list,
            internal_search_space,
            normalized_params,
            normalized_params_of_running_trials,
            standardized_score_vals,
        )
        rows = [i for i, t in enumerate(completed_trials) if t.number in self._costed]
        if len(rows) < MIN_COSTED_RUNS:
            return acqf, best_params
        if len(rows) > MAX_COSTED_RUNS:
            kept = np.linspace(0, len(rows) - 1, MAX_COSTED_RUNS).round().astype(int)
            rows = [rows[k] for k in kept]
        log_cost = np.log([self._cost_seconds(completed_trials[i]) for i in rows])
        if np.ptp(log_cost) < MIN_LOG_COST_SPREAD:
            return acqf, best_params
        mean, std = float(log_cost.mean()), float(log_cost.std())
        cache = self._cost_gpr_cache
        dim = normalized_params.shape[1]
        if cache is not None and len(cache.inverse_squared_lengthscales) != dim:
            cache = None
        cost_y = (log_cost - mean) / std
        self._cost_gpr_cache = gp.fit_kernel_params(
            X=normalized_params[rows],
            Y=cost_y,
            is_categorical=internal_search_space.is_categorical,
            log_prior=self._log_prior,
            minimum_noise=self._minimum_noise,
            gpr_cache=cache,
            deterministic_objective=False,
        )
        charged = CostChargedAcquisition(
            acqf, self._cost_gpr_cache, cost_y, mean, std, float(np.median(log_cost))
        )
        return charged, best_params
