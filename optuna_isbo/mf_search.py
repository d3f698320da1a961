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

The split of the cost between this search and the target search is decided before
(:mod:`optuna_isbo.decisions`); for the trials that are this search's to choose, the sampler
calls :func:`model_trial`, which fits the models (:class:`~optuna_isbo.fits.ModelFits`) and
either verifies the model's best guess at the target
(:func:`~optuna_isbo.decisions.verification_candidate`) or calls :func:`propose`.
"""

from __future__ import annotations

from typing import Any

import torch
from optuna.study import Study
from optuna.trial import FrozenTrial

from optuna_isbo import acquisition as acq
from optuna_isbo import constraints
from optuna_isbo import trials as study_trials
from optuna_isbo.constraints import ConstraintModel
from optuna_isbo.cost import trial_cost_seconds
from optuna_isbo.decisions import ObjectiveFit, model_inputs, verification_candidate
from optuna_isbo.fits import ModelFits
from optuna_isbo.model import CostModel
from optuna_isbo.optim import maximize_acquisition, perturb
from optuna_isbo.search_space import SearchSpace

#: Evaluated configurations in the representer pool, at most.
MAX_POOL_SEEN = 128


def model_trial(
    fits: ModelFits,
    study: Study,
    space: SearchSpace,
    completed: list[FrozenTrial],
    pending_params: list[dict[str, Any]],
    failed_params: list[dict[str, Any]],
    *,
    cost_attr: str,
    verify_cost_fraction: float,
    acquisition: str,
    n_fidelities: int,
    consider_running_trials: bool,
    ask_seed: int,
    kappa: float,
    n_checks: int,
    may_verify: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The multi-fidelity search's trial: a verification, else :func:`propose`'s proposal.

    ``pending_params`` are the running trials' parameters, ``failed_params`` those of the
    configurations that failed (:func:`optuna_isbo.trials.mark_params`); neither is
    verified, and the failures condition the acquisition's model at the worst value.
    ``kappa`` and ``n_checks`` are :func:`~optuna_isbo.decisions.calibration_checks`';
    ``may_verify`` is ``False`` while another worker's trial is still deciding what it runs.
    The cost GP learns from the runs that ran in full (a diverged run's cost is truncated),
    or from every run while none did.

    Returns
    -------
    tuple
        The parameters (fidelity included) and the trial's ``isbo:`` attributes.
    """
    has_fidelity = space.fidelity_param is not None
    fit = fits.objective(study, space, completed)
    model, inputs = fit.model, fit.inputs
    cost_seconds = torch.tensor(
        [trial_cost_seconds(t, cost_attr) for t in completed], dtype=torch.float64
    )
    full_runs = torch.tensor([study_trials.ran_in_full(t) for t in completed])
    if not bool(full_runs.any()):
        full_runs[:] = True
    cost_model = fits.cost(space, cost_seconds[full_runs], inputs[full_runs])
    pending = _encoded_inputs(space, pending_params, inputs.shape[1])
    failed = _encoded_inputs(space, failed_params, inputs.shape[1])

    feasibility = None
    keys = constraints.constraint_keys(completed)
    if keys:
        feasibility = fits.constraints(
            space, inputs, constraints.constraint_values(completed, keys)
        )
    verifying = torch.tensor(
        [t.user_attrs.get(study_trials.ATTR_PREFIX + "phase") == "verify" for t in completed]
    )
    x_verify = (
        verification_candidate(
            space,
            fit,
            cost_seconds,
            verifying,
            torch.cat([pending, failed]),
            verify_cost_fraction,
            feasibility,
        )
        if may_verify
        else None
    )
    if x_verify is not None:
        chosen = model_inputs(space, x_verify[None], torch.ones(1, dtype=torch.float64))
        mean, var = model.mean_var(chosen)
        attrs = {
            "phase": "verify",
            "predicted_cost_seconds": float(cost_model.expected_seconds(chosen)[0]),
            "predicted_value_at_target": fit.value_of(float(mean[0]), study),
            "predicted_std_at_target": fit.scale * float(var[0].sqrt()),
        }
        return space.decode(x_verify, 1.0), attrs

    if not has_fidelity:
        kappa, n_checks = 1.0, 0
    return propose(
        study,
        space,
        fit,
        cost_model,
        feasibility,
        pending,
        failed=failed,
        acquisition=acquisition,
        n_fidelities=n_fidelities,
        consider_running_trials=consider_running_trials,
        ask_seed=ask_seed,
        kappa=kappa,
        n_checks=n_checks,
    )


def _encoded_inputs(
    space: SearchSpace, params: list[dict[str, Any]], n_columns: int
) -> torch.Tensor:
    """``(len(params), n_columns)`` model inputs of parameter dicts (none: an empty tensor)."""
    if not params:
        return torch.zeros(0, n_columns, dtype=torch.float64)
    encoded = [space.encode_params(p) for p in params]
    X = torch.stack([x for x, _ in encoded])
    s = torch.tensor([s for _, s in encoded], dtype=torch.float64)
    return model_inputs(space, X, s)


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
