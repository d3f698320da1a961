r"""Black-box constraints: ``trial.set_constraint`` values, modelled at the target fidelity.

Optuna 5 records constraint values on a trial (``trial.set_constraint(key, value)``, or a
sampler's ``constraints_func``); a trial is feasible when every value is ``<= 0``. The target
search (Optuna's ``GPSampler``) handles them itself, with log constrained expected improvement.
For the multi-fidelity search each constraint ``c_k`` gets a GP over ``(x, s)`` like the
objective's (cheap fidelities inform it through the fidelity kernel), and the probability of
feasibility at the target,

.. math::

    P_{feas}(x) = \prod_k \Phi\left(\frac{-\mu_k(x, 1)}{\sigma_k(x, 1)}\right),

assuming independent constraints (Gardner et al., "Bayesian Optimization with Inequality
Constraints", ICML 2014), weighs the information gain per second. The recommendation is chosen
among configurations observed feasible at the target, and reports this probability.

Infinite constraint values are clipped to the finite range of the others, as Optuna's
``GPSampler`` does; Optuna itself refuses NaN.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence

import torch
from optuna.trial import FrozenTrial

from optuna_isbo.model import GPModel, GPParams, fit_gp, standardize


def constraint_keys(trials: Sequence[FrozenTrial]) -> list[str]:
    """The sorted constraint names that any of ``trials`` carries (empty: unconstrained)."""
    return sorted({key for t in trials for key in t.constraints})


def constraint_values(trials: Sequence[FrozenTrial], keys: Sequence[str]) -> torch.Tensor:
    """``(n, k)`` constraint values, NaN where a trial lacks one, infinities clipped.

    An infinite value becomes the largest (or smallest) finite value of its column, with a
    warning; a column with no finite value becomes 1 (infeasible) or -1.
    """
    C = torch.tensor(
        [[float(t.constraints.get(key, math.nan)) for key in keys] for t in trials],
        dtype=torch.float64,
    ).reshape(len(trials), len(keys))
    infinite = torch.isinf(C)
    if bool(infinite.any()):
        warnings.warn(
            "Infinite constraint values are clipped to the finite range of the others.",
            RuntimeWarning,
            stacklevel=2,
        )
        finite = torch.isfinite(C)
        hi = torch.where(finite, C, -math.inf).amax(dim=0)
        lo = torch.where(finite, C, math.inf).amin(dim=0)
        hi = torch.where(torch.isfinite(hi), hi, 1.0).expand_as(C)
        lo = torch.where(torch.isfinite(lo), lo, -1.0).expand_as(C)
        C = torch.where(C == math.inf, hi, torch.where(C == -math.inf, lo, C))
    return C


def observed_feasible(C: torch.Tensor) -> torch.Tensor:
    """``(n,)`` whether each trial was observed feasible: every value known and ``<= 0``.

    ``C`` is ``(n, k)`` from :func:`constraint_values`. A trial that lacks a value (it
    returned before ``set_constraint``) is not evidence of feasibility, so it is not observed
    feasible; it is not observed infeasible either (``torch.isnan(C)`` tells the two apart).
    """
    return (C <= 0.0).all(dim=1)


@dataclasses.dataclass(frozen=True)
class ConstraintModel:
    """GPs of the standardized constraint values; ``thresholds[k]`` is where ``c_k = 0``."""

    gps: list[GPModel]
    thresholds: list[float]

    def probability(self, A: torch.Tensor) -> torch.Tensor:
        """``(m,)`` probability that every constraint holds at inputs ``A (m, D)``.

        Differentiable in ``A``. Pass inputs at the target fidelity for :math:`P_{feas}`.
        """
        p = torch.ones(A.shape[0], dtype=torch.float64)
        for gp, threshold in zip(self.gps, self.thresholds, strict=True):
            mean, var = gp.mean_var(A)
            p = p * torch.special.ndtr((threshold - mean) / var.clamp_min(1e-12).sqrt())
        return p


def fit_constraint_model(
    inputs: torch.Tensor,
    C: torch.Tensor,
    *,
    has_fidelity: bool,
    warm_starts: dict[int, GPParams] | None = None,
) -> ConstraintModel:
    """One GP per constraint column of ``C (n, k)`` over ``inputs (n, D)``.

    Rows where a constraint is missing are left out of its GP. ``warm_starts`` maps a column
    to the hyperparameters of its previous fit, and is updated in place.
    """
    gps, thresholds = [], []
    for k in range(C.shape[1]):
        present = ~torch.isnan(C[:, k])
        if not bool(present.any()):
            continue
        z, shift, scale = standardize(C[present, k])
        warm = None if warm_starts is None else warm_starts.get(k)
        gp = fit_gp(inputs[present], z, has_fidelity=has_fidelity, warm_start=warm)
        if warm_starts is not None:
            warm_starts[k] = gp.params
        gps.append(gp)
        thresholds.append(-shift / scale)
    return ConstraintModel(gps, thresholds)
