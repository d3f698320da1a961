r"""Pre-training a GP prior on finished studies: :func:`fit_prior`.

The model, the two objectives and the units are those of :mod:`optuna_isbo.meta`; the fit
minimizes the objective over the kernel hyperparameters and the mean weights with L-BFGS-B on
torch gradients, within the bounds that :mod:`optuna_isbo.meta.prior_file` checks.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from optuna.distributions import BaseDistribution

from optuna_isbo.meta.likelihood import _neg_log_ml
from optuna_isbo.meta.mean import MEAN_KINDS, MeanFunction, _mean_forward, _weight_shapes
from optuna_isbo.meta.prior import GPPrior
from optuna_isbo.meta.prior_file import _WEIGHT_BOUND, OBJECTIVES
from optuna_isbo.meta.studies import StudyLike, _collect, _StudyData
from optuna_isbo.model import (
    _JITTER,
    _LOG_BETA_BOUNDS,
    _LOG_EXPONENT_BOUNDS,
    _LOG_LENGTHSCALE_BOUNDS,
    _LOG_NOISE_BOUNDS,
    _LOG_NOISE_SLOPE_BOUNDS,
    _LOG_OUTPUTSCALE_BOUNDS,
    GPParams,
    _default_priors,
    _kernel,
    _noise_var,
    minimize_lbfgsb,
)

__all__ = ["fit_prior"]

_DTYPE = torch.float64


@dataclass
class _Layout:
    """Positions of the parameters in the unconstrained vector ``theta``."""

    d: int
    shapes: dict[str, tuple[int, ...]]

    @property
    def n_kernel(self) -> int:
        return self.d + 5

    def unpack(self, theta: torch.Tensor) -> tuple[GPParams, dict[str, torch.Tensor]]:
        d = self.d
        params = GPParams(
            lengthscales=theta[:d].exp(),
            outputscale=theta[d].exp(),
            noise=theta[d + 1].exp(),
            mean=torch.zeros((), dtype=_DTYPE),
            fidelity_beta=theta[d + 2].exp(),
            fidelity_exponent=theta[d + 3].exp(),
            noise_slope=theta[d + 4].exp(),
        )
        weights = {}
        i = self.n_kernel
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            weights[name] = theta[i : i + size].reshape(shape)
            i += size
        return params, weights


def _int_argument(name: str, value: Any, minimum: int) -> int:
    """``value`` as an ``int``: any integral number (Python, NumPy); not a bool."""
    if not isinstance(value, bool):
        try:
            result = operator.index(value)
        except TypeError:
            pass
        else:
            if result >= minimum:
                return result
    raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def _standardization(y: torch.Tensor) -> tuple[float, float, float]:
    """``(peak, mean, std)`` with ``y = peak * (mean + std * z)`` for standardized ``z``.

    ``peak = max |y|`` and the mean and the (unbiased) standard deviation are those of
    ``y / peak``, which lies in ``[-1, 1]``, so that nothing overflows or underflows. Values
    equal to within ``1e-12`` of their magnitude (or a single value) get ``std = 1``: the
    scale is their magnitude. All zeros give ``(1, 0, 1)``.
    """
    peak = float(y.abs().max())
    if peak == 0.0:
        return 1.0, 0.0, 1.0
    u = y / peak
    mean = float(u.mean())
    std = float(u.std()) if u.shape[0] > 1 else 0.0
    return peak, mean, std if std > 1e-12 else 1.0


def _shared_points(data: list[_StudyData]) -> tuple[torch.Tensor, torch.Tensor]:
    """Common inputs ``(n, D)`` and values ``(n, M)`` when every study has the same points."""
    X0 = data[0].inputs
    keys0 = [tuple(np.round(row.numpy(), 10)) for row in X0]
    index = {key: i for i, key in enumerate(keys0)}
    if len(index) != len(keys0):
        raise ValueError(
            f"objective='empirical_kl' needs distinct points, but study {data[0].name!r} "
            "repeats a configuration."
        )
    Y = torch.empty(X0.shape[0], len(data), dtype=_DTYPE)
    for j, study in enumerate(data):
        keys = [tuple(np.round(row.numpy(), 10)) for row in study.inputs]
        if len(keys) != len(keys0) or set(keys) != set(keys0) or len(set(keys)) != len(keys):
            raise ValueError(
                "objective='empirical_kl' needs every study evaluated at the same points, but "
                f"study {study.name!r} and study {data[0].name!r} differ; use "
                "objective='marginal_likelihood'."
            )
        for row, key in enumerate(keys):
            Y[index[key], j] = study.y[row]
    return X0, Y


def fit_prior(
    studies: Sequence[StudyLike],
    *,
    mean: str = "linear",
    objective: str = "marginal_likelihood",
    search_space: dict[str, BaseDistribution] | None = None,
    fidelity_param: str | None = "super_batch_size",
    target_fidelity: float | None = None,
    min_trials: int = 5,
    hidden_units: int = 16,
    max_iter: int = 500,
    seed: int = 0,
) -> GPPrior:
    """Pre-train a GP prior (mean function and kernel hyperparameters) on finished studies.

    Parameters
    ----------
    studies
        Finished single-objective studies of related tasks: :class:`optuna.study.Study` objects
        (any storage) or ``(storage, study_name)`` pairs, ``storage`` a URL or a
        :class:`~optuna.storages.BaseStorage`. Their search spaces must match (same parameter
        names and distributions; parameters with a single value are ignored). Maximized
        studies are sign-flipped. Only ``COMPLETE`` trials with a finite value count, their
        outliers and diverged runs (``isbo:diverged``) tamed as the sampler tames them.
    mean
        Mean function: ``"constant"``, ``"linear"`` (default) or ``"mlp"``.
    objective
        ``"marginal_likelihood"`` (default; studies may have different points) or
        ``"empirical_kl"`` (every study evaluated at the same configurations, at least two
        studies). See :mod:`optuna_isbo.meta`.
    search_space
        The expected search space. Defaults to that of the first usable study; every study
        must match it.
    fidelity_param, target_fidelity
        The fidelity axis, as for :class:`~optuna_isbo.ISBOSampler` (ignored when the space has
        no such parameter).
    min_trials
        Studies with fewer usable trials are skipped with a warning.
    hidden_units
        Hidden units of the ``"mlp"`` mean.
    max_iter
        Iteration cap of L-BFGS-B.
    seed
        Seed of the initial ``"mlp"`` weights.

    Returns
    -------
    GPPrior
        The fitted prior, in units of the pooled, standardized minimized objective.

    Raises
    ------
    ValueError
        On mismatched search spaces (the message names the study and the parameters), unknown
        ``mean`` or ``objective``, a count or seed that is not an integer in range, no usable
        study, ``"empirical_kl"`` on studies that do not share their points, or objective
        values whose standard deviation exceeds the float64 range.
    """
    if mean not in MEAN_KINDS:
        raise ValueError(f"`mean` must be one of {MEAN_KINDS}, got {mean!r}.")
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}, got {objective!r}.")
    min_trials = _int_argument("min_trials", min_trials, 1)
    hidden_units = _int_argument("hidden_units", hidden_units, 1)
    max_iter = _int_argument("max_iter", max_iter, 1)
    seed = _int_argument("seed", seed, 0)
    space, data = _collect(studies, search_space, fidelity_param, target_fidelity, min_trials)
    has_fidelity = space.fidelity_param is not None
    heteroscedastic = has_fidelity

    y_all = torch.cat([s.y for s in data])
    peak, unit_mean, unit_std = _standardization(y_all)
    y_shift, y_scale = peak * unit_mean, peak * unit_std
    if not math.isfinite(y_scale):
        raise ValueError(
            "fit_prior cannot standardize the objective values: their standard deviation "
            f"({unit_std:.3g} x {peak:.3g}) exceeds the float64 range. Rescale the objective."
        )
    for s in data:
        s.y = (s.y / peak - unit_mean) / unit_std

    shared: tuple[torch.Tensor, torch.Tensor] | None = None
    if objective == "empirical_kl":
        if len(data) < 2:
            raise ValueError("objective='empirical_kl' needs at least two usable studies.")
        shared = _shared_points(data)

    d = space.dim
    layout = _Layout(d, _weight_shapes(mean, d, hidden_units if mean == "mlp" else 0))
    priors = _default_priors(d + (1 if has_fidelity else 0))
    n_total = int(y_all.shape[0])

    # Studies with the same number of points are evaluated as one batch.
    groups: dict[int, list[_StudyData]] = {}
    for study in data:
        groups.setdefault(study.inputs.shape[0], []).append(study)
    batches = [
        (torch.stack([s.inputs for s in group]), torch.stack([s.y for s in group]))
        for group in groups.values()
    ]

    def loss_fn(theta: torch.Tensor) -> torch.Tensor | None:
        params, weights = layout.unpack(theta)
        if shared is None:
            total = theta.new_zeros(())
            for inputs, y in batches:
                resid = y - _mean_forward(mean, weights, inputs[..., :d])
                nll = _neg_log_ml(inputs, resid, params, has_fidelity, heteroscedastic)
                if nll is None:
                    return None
                total = total + nll
        else:
            X, Y = shared
            n, m = Y.shape
            K = _kernel(X, X, params, has_fidelity)
            K = K + torch.diag(_noise_var(X, params, heteroscedastic) + _JITTER)
            chol, info = torch.linalg.cholesky_ex(K)
            if int(info) != 0:
                return None
            mu = Y.mean(1)
            centred = (Y - mu[:, None]) / math.sqrt(m - 1)
            diff = mu - _mean_forward(mean, weights, X[:, :d])
            Z = torch.linalg.solve_triangular(
                chol, torch.cat([centred, diff[:, None]], 1), upper=False
            )
            kl = 0.5 * Z.square().sum() + chol.diagonal().log().sum()
            total = m * kl  # on the scale of a sum of m per-study log likelihoods
        log_prior = priors.lengthscale.log_prob(params.lengthscales).sum()
        log_prior = log_prior + priors.outputscale.log_prob(params.outputscale)
        log_prior = log_prior + priors.noise.log_prob(params.noise)
        if has_fidelity:
            log_prior = log_prior + priors.fidelity_beta.log_prob(params.fidelity_beta)
            log_prior = log_prior + priors.fidelity_exponent.log_prob(params.fidelity_exponent)
            log_prior = log_prior + priors.noise_slope.log_prob(params.noise_slope)
        w = theta[layout.n_kernel :]
        log_prior = log_prior - 0.5 * w.square().sum()
        return (total - log_prior) / n_total

    fixed_beta = (math.log(0.5), math.log(0.5))
    fixed_exp = (math.log(1.5), math.log(1.5))
    fixed_slope = (math.log(1e-3), math.log(1e-3))
    bounds = (
        [_LOG_LENGTHSCALE_BOUNDS] * d
        + [_LOG_OUTPUTSCALE_BOUNDS, _LOG_NOISE_BOUNDS]
        + [_LOG_BETA_BOUNDS if has_fidelity else fixed_beta]
        + [_LOG_EXPONENT_BOUNDS if has_fidelity else fixed_exp]
        + [_LOG_NOISE_SLOPE_BOUNDS if heteroscedastic else fixed_slope]
    )
    n_weights = sum(math.prod(shape) for shape in layout.shapes.values())
    bounds += [(-_WEIGHT_BOUND, _WEIGHT_BOUND)] * n_weights
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])

    rng = np.random.default_rng(seed)
    ls0 = math.exp(priors.lengthscale.loc.item() - priors.lengthscale.scale.item() ** 2)
    ls0 = min(max(ls0, 0.1), 2.0)
    kernel0 = [math.log(ls0)] * d + [0.0, math.log(0.1), math.log(0.5), math.log(1.5), 0.0]
    weights0: list[float] = []
    for name, shape in layout.shapes.items():
        size = math.prod(shape)
        if name == "hidden_weight":
            weights0 += list(rng.normal(0.0, 1.0, size))
        elif name == "hidden_bias":
            weights0 += list(rng.normal(0.0, 0.5, size))
        else:
            weights0 += [0.0] * size
    x0 = np.clip(np.array(kernel0 + weights0, dtype=np.float64), lo, hi)

    theta_found, loss_found = minimize_lbfgsb(loss_fn, x0, bounds, max_iter)
    feasible = math.isfinite(loss_found)
    theta_best = theta_found if feasible else x0
    final_loss = loss_found if feasible else math.nan
    params, weights = layout.unpack(torch.from_numpy(np.array(theta_best)))
    params = replace(
        params, **{f.name: getattr(params, f.name).detach().clone() for f in fields(params)}
    )
    if not heteroscedastic:
        params = replace(params, noise_slope=torch.zeros((), dtype=_DTYPE))
    mean_function = MeanFunction(
        kind=mean,
        input_dim=d,
        hidden_units=hidden_units if mean == "mlp" else 0,
        weights={k: v.detach().clone() for k, v in weights.items()},
    )
    return GPPrior(
        distributions=dict(space.distributions),
        fidelity_param=space.fidelity_param,
        target_fidelity=None if not has_fidelity else float(space.target_fidelity),
        params=params,
        heteroscedastic=heteroscedastic,
        mean_function=mean_function,
        y_shift=y_shift,
        y_scale=y_scale,
        fit_info={
            "objective": objective,
            "n_studies": len(data),
            "n_points": n_total,
            "loss": final_loss if math.isfinite(final_loss) else 0.0,
            "study_names": [s.name for s in data],
        },
    )
