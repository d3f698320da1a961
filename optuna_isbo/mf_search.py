r"""The multi-fidelity search's proposal: information about the target optimum per second.

Given the fitted objective GP over ``(x, s)``, the cost model and, in a constrained study, the
constraint GPs, :func:`propose` chooses the next trial's configuration *and* fidelity:

1. **Representer points** at the target fidelity ``s = 1``: a scrambled Sobol design, the
   evaluated configurations of lowest posterior mean (at most ``MAX_POOL_SEEN``: in a long study
   the others are where the minimum is not) and local moves around the best eight; in a
   constrained study only those likely feasible (:func:`~optuna_isbo.acquisition.likely_feasible`).
   Thompson samples over them give the representer points and the samples of the minimum
   (:func:`~optuna_isbo.acquisition.select_representer_points`).
2. **The acquisition**: entropy search (``"es"``) or max-value entropy search (``"mes"``) about
   the optimum at the target, divided by the expected cost of the candidate
   (:func:`~optuna_isbo.acquisition.per_cost`), weighted by the probability of feasibility at
   the target in a constrained study.
3. **Its maximum** over ``x`` and the fidelity grid
   (:func:`~optuna_isbo.optim.maximize_acquisition`).

The verification of the model's beliefs at the target and the split of the cost between this
search and the target search are decided before (:mod:`optuna_isbo.decisions`); the sampler
calls :func:`propose` for the trials that are this search's to choose.
"""

from __future__ import annotations

from typing import Any

import torch
from optuna.study import Study

from optuna_isbo import acquisition as acq
from optuna_isbo.constraints import ConstraintModel
from optuna_isbo.decisions import ObjectiveFit, model_inputs
from optuna_isbo.model import CostModel
from optuna_isbo.optim import maximize_acquisition, perturb
from optuna_isbo.search_space import SearchSpace

#: Evaluated configurations in the representer pool, at most.
MAX_POOL_SEEN = 128


def propose(
    study: Study,
    space: SearchSpace,
    fit: ObjectiveFit,
    cost_model: CostModel,
    feasibility: ConstraintModel | None,
    pending: torch.Tensor,
    *,
    failed: torch.Tensor | None = None,
    acquisition: str,
    n_fidelities: int,
    consider_running_trials: bool,
    ask_seed: int,
    kappa: float = 1.0,
    n_checks: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The next trial's parameters (fidelity included) and the attributes that explain them.

    Parameters
    ----------
    study
        The study (for the objective's direction in the reported predictions).
    space
        The search space.
    fit
        The objective GP over the evaluated inputs ``fit.inputs (n, D)``.
    cost_model
        The GP of the log cost.
    feasibility
        The constraint GPs, or ``None`` without constraints.
    pending
        ``(m, D)`` model inputs of the running trials.
    failed
        ``(f, D)`` model inputs of configurations that failed (an error, a pruned or
        non-finite run). The acquisition's model is conditioned on them at the worst value
        observed, as the target search lists them
        (:class:`~optuna_isbo.target_search.TargetView`): the region that fails loses its
        promise instead of being probed point by point.
    acquisition
        ``"es"`` or ``"mes"``.
    n_fidelities
        Number of levels of the fidelity grid.
    consider_running_trials
        Whether the running trials condition the model (kriging believer,
        :meth:`~optuna_isbo.model.GPModel.with_pending`).
    ask_seed
        Seed of this ask's random numbers.
    kappa, n_checks
        Calibration factor of the verifications and their number, reported in the attributes.

    Returns
    -------
    tuple
        Parameters (study units, the fidelity at its chosen level) and the ``isbo:`` trial
        attributes: phase ``"model"``, the acquisition value, the information gain, the
        predicted cost and the predicted value at the target.
    """
    has_fidelity = space.fidelity_param is not None
    generator = torch.Generator().manual_seed(ask_seed)
    model = fit.model
    if failed is not None and failed.shape[0] > 0:
        worst = model.y.max().expand(failed.shape[0])
        model = model.with_pending(failed, y_pending=worst)
    if consider_running_trials and pending.shape[0] > 0:
        model = model.with_pending(pending)

    X_seen = _unique_rows(fit.inputs[:, : space.dim])
    ones = torch.ones(X_seen.shape[0], dtype=torch.float64)
    mean_seen = model.mean(model_inputs(space, X_seen, ones))
    by_mean = torch.argsort(mean_seen)
    seed_points = X_seen[by_mean[:8]]
    X_seen = X_seen[by_mean[:MAX_POOL_SEEN]]
    if space.dim > 0:
        pool_X = torch.cat(
            [
                space.sample_sobol(256, seed=ask_seed % (2**31)),
                X_seen,
                perturb(seed_points.repeat(8, 1), space, step=0.05, generator=generator),
            ]
        )
        pool_X = torch.unique(pool_X, dim=0)
    else:
        pool_X = X_seen
    pool = model_inputs(space, pool_X, torch.ones(pool_X.shape[0], dtype=torch.float64))
    if feasibility is not None:
        pool = acq.likely_feasible(pool, feasibility.probability)
    representers = acq.select_representer_points(
        model, pool, n_points=50, n_thompson=64, generator=generator
    )
    if acquisition == "es":
        gain, _ = acq.entropy_search(model, representers.Z, generator=generator)
    else:
        gain = acq.max_value_entropy_search(model, representers.min_value_samples)
    value = acq.per_cost(gain, cost_model)
    if feasibility is not None:
        value = acq.weighted_by_feasibility(value, feasibility.probability, has_fidelity)
    best = maximize_acquisition(
        value,
        space,
        fidelity_grid=space.fidelity_grid(n_fidelities),
        seed_points=seed_points,
        generator=generator,
        sobol_seed=(ask_seed + 1) % (2**31),
        n_refine=2 if acquisition == "mes" else 0,
    )
    chosen = model_inputs(space, best.x[None], torch.tensor([best.s], dtype=torch.float64))
    mean, var = model.mean_var(acq.to_target_fidelity(chosen, has_fidelity))
    attrs = {
        "phase": "model",
        "acquisition": acquisition,
        "acquisition_value": best.value,
        "information_gain_nats": float(gain(chosen)[0]),
        "predicted_cost_seconds": float(cost_model.expected_seconds(chosen)[0]),
        "predicted_value_at_target": fit.value_of(float(mean[0]), study),
        "predicted_std_at_target": fit.scale * float(var[0].sqrt()),
        "calibration_factor": kappa,
        "n_target_checks": n_checks,
    }
    return space.decode(best.x, best.s), attrs


def _unique_rows(X: torch.Tensor) -> torch.Tensor:
    """Distinct rows of ``X (n, d)``; one empty row when ``d = 0``."""
    return X[:1] if X.shape[1] == 0 else torch.unique(X, dim=0)
