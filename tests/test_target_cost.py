"""The target search's charge for dear runs (:mod:`optuna_isbo.target_cost`)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna._gp import gp, prior
from optuna._gp.acqf import BaseAcquisitionFunc
from optuna._gp.search_space import SearchSpace as GPSearchSpace
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import GPSampler
from optuna.trial import create_trial

from optuna_isbo import ISBOSampler, target_cost
from optuna_isbo.cost import trial_cost_seconds
from optuna_isbo.target_cost import (
    MAX_COSTED_RUNS,
    SHARPNESS_PER_NAT,
    CostAwareGPSampler,
    CostChargedAcquisition,
)

DISTS: dict[str, BaseDistribution] = {
    "x": FloatDistribution(0.0, 1.0),
    "y": FloatDistribution(0.0, 1.0),
}


class _Flat(BaseAcquisitionFunc):
    def eval_acqf(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[:-1], dtype=torch.float64)


def test_the_charge_is_the_log_cost_ratio_above_the_median_and_nothing_below() -> None:
    space = GPSearchSpace(DISTS)
    x_train = np.random.default_rng(0).random((24, 2))
    log_cost = 3.0 * x_train[:, 0]  # cost grows e^3-fold along x, independent of y
    mean, std = float(log_cost.mean()), float(log_cost.std())
    cost_gpr = gp.fit_kernel_params(
        X=x_train,
        Y=(log_cost - mean) / std,
        is_categorical=space.is_categorical,
        log_prior=prior.default_log_prior,
        minimum_noise=prior.DEFAULT_MINIMUM_NOISE_VAR,
        deterministic_objective=True,
    )
    reference = float(np.median(log_cost))
    acqf = CostChargedAcquisition(
        _Flat(np.ones(2), space), cost_gpr, (log_cost - mean) / std, mean, std, reference
    )
    x = torch.tensor([[0.05, 0.5], [0.3, 0.2], [0.7, 0.9], [0.95, 0.5]], dtype=torch.float64)
    predicted = acqf.predicted_log_cost(x)
    posterior_mean, _ = cost_gpr.posterior(x)
    torch.testing.assert_close(predicted, mean + std * posterior_mean)
    torch.testing.assert_close(acqf.predicted_log_cost(x[0]), predicted[0])
    # The GP recovers the noise-free linear log cost within 0.05 (5 % in cost) inside the data.
    torch.testing.assert_close(predicted, 3.0 * x[:, 0], atol=0.05, rtol=0.0)
    hinge = (predicted - reference).clamp_min(0.0)
    charge = acqf.charge(x)
    torch.testing.assert_close(acqf.eval_acqf(x), -charge)
    # The smoothed hinge lies above the hinge by at most log(2) / sharpness (at the median)
    # and by e^(-sharpness * |excess|) / sharpness away from it.
    gap = charge - hinge
    assert bool((gap > 0.0).all()) and bool((gap <= math.log(2.0) / SHARPNESS_PER_NAT).all())
    bound = torch.exp(-SHARPNESS_PER_NAT * (predicted - reference).abs()) / SHARPNESS_PER_NAT
    assert bool((gap <= bound * (1 + 1e-9)).all())
    assert predicted[0] - reference < -1.0 and charge[0] < 0.01  # a cheap run: no credit
    assert predicted[3] - reference > 1.0  # a run e^1 dearer than the median pays about e^1


def _two_mirrored_optima(x: float, y: float) -> float:
    return min((x - 0.2) ** 2, (x - 0.8) ** 2) + (y - 0.5) ** 2


def _add_run(study: optuna.Study, x: float, y: float, cost_seconds: float | None = None) -> None:
    """A completed run at ``(x, y)``, costing ``e^(3x)`` seconds unless ``cost_seconds``."""
    study.add_trial(
        create_trial(
            value=_two_mirrored_optima(x, y),
            params={"x": x, "y": y},
            distributions=DISTS,
            user_attrs={"isbo:cost": math.exp(3.0 * x) if cost_seconds is None else cost_seconds},
        )
    )


def _mirrored_study(sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Observations symmetric about ``x = 0.5``, where runs at large ``x`` are dearer."""
    study = optuna.create_study(sampler=sampler)
    for x in (0.1, 0.25, 0.4):
        for y in (0.2, 0.5, 0.8):
            for mirrored in (x, 1.0 - x):
                _add_run(study, mirrored, y)
    return study


def _proposed_x(sampler: optuna.samplers.BaseSampler) -> float:
    study = _mirrored_study(sampler)
    if isinstance(sampler, CostAwareGPSampler):
        sampler.costed({t.number for t in study.trials})
    trial = study.ask()
    return trial.suggest_float("x", 0.0, 1.0) + 0.0 * trial.suggest_float("y", 0.0, 1.0)


def test_between_equal_optima_the_charged_search_takes_the_cheap_one() -> None:
    """The values are mirrored about ``x = 0.5``, so log EI is too and GPSampler goes either
    way; the charge (up to ``3 * 0.4`` nats beyond the median cost) breaks the tie toward the
    cheap optimum every time."""
    seeds = range(8)
    plain = [_proposed_x(GPSampler(seed=s, n_startup_trials=4)) for s in seeds]
    charged = [
        _proposed_x(
            CostAwareGPSampler(cost_seconds=trial_cost_seconds, seed=s, n_startup_trials=4)
        )
        for s in seeds
    ]
    assert any(x > 0.5 for x in plain)  # without the charge the dear optimum is taken too
    assert all(x < 0.5 for x in charged)


@pytest.mark.parametrize("spread", [1.0, 1.05])
def test_without_a_cost_landscape_the_search_is_gpsampler(spread: float) -> None:
    """Costs within a factor of 1.1 of each other leave GPSampler's proposal unchanged."""

    def proposals(sampler: optuna.samplers.BaseSampler) -> list[float]:
        study = optuna.create_study(sampler=sampler)
        rng = np.random.default_rng(1)
        for k in range(12):
            x, y = rng.random(2)
            _add_run(study, x, y, cost_seconds=10.0 * spread ** (k % 2))
        if isinstance(sampler, CostAwareGPSampler):
            sampler.costed({t.number for t in study.trials})
        out = []
        for _ in range(3):
            trial = study.ask()
            value = _two_mirrored_optima(
                trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
            )
            out.append(trial.params["x"])
            study.tell(trial, value)
        return out

    charged = CostAwareGPSampler(cost_seconds=trial_cost_seconds, seed=3, n_startup_trials=4)
    assert proposals(charged) == proposals(GPSampler(seed=3, n_startup_trials=4))


def test_a_study_with_a_fidelity_charges_its_target_search() -> None:
    sampler = ISBOSampler(seed=0, fidelity_param="b")
    assert isinstance(sampler._target, CostAwareGPSampler)
    restored = pickle.loads(pickle.dumps(sampler))
    assert isinstance(restored._target, CostAwareGPSampler)


def test_the_target_search_of_a_study_with_a_fidelity_takes_the_cheap_optimum() -> None:
    """The mirrored study of the test above with a fidelity: ``mf_cost_fraction=0`` gives every
    trial to the target search, which must take the cheap one of the two equal optima, as
    :class:`CostAwareGPSampler` alone does (the sampler routes its target search there)."""
    dists: dict[str, BaseDistribution] = {**DISTS, "b": FloatDistribution(1.0, 16.0, log=True)}
    taken = []
    for seed in range(8):
        sampler = ISBOSampler(seed=seed, fidelity_param="b", mf_cost_fraction=0.0)
        study = optuna.create_study(sampler=sampler)
        for trial in _mirrored_study(GPSampler(seed=seed)).trials:
            study.add_trial(
                create_trial(
                    value=trial.value,
                    params={**trial.params, "b": 16.0},
                    distributions=dists,
                    user_attrs={**trial.user_attrs, "isbo:phase": "target"},
                )
            )
        asked = study.ask()
        x = asked.suggest_float("x", 0.0, 1.0)
        asked.suggest_float("y", 0.0, 1.0)
        assert asked.suggest_float("b", 1.0, 16.0, log=True) == 16.0
        assert study.trials[-1].user_attrs.get("isbo:phase") == "target"
        taken.append(x)
    assert all(x < 0.5 for x in taken), taken


def test_the_cost_gp_learns_from_at_most_max_costed_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond ``MAX_COSTED_RUNS`` target runs the cost GP sees an evenly spaced subset (its fit
    is cubic in the runs), still spanning the whole study."""
    fitted: list[np.ndarray] = []
    fit = gp.fit_kernel_params

    def recording_fit(**kwargs: Any) -> gp.GPRegressor:
        fitted.append(kwargs["X"])
        return fit(**kwargs)

    monkeypatch.setattr(target_cost.gp, "fit_kernel_params", recording_fit)
    n_runs = MAX_COSTED_RUNS + 44
    sampler = CostAwareGPSampler(cost_seconds=trial_cost_seconds, seed=0, n_startup_trials=4)
    study = optuna.create_study(sampler=sampler)
    x_of_run = np.random.default_rng(2).random((n_runs, 2))
    for x, y in x_of_run:
        _add_run(study, x, y)
    sampler.costed({t.number for t in study.trials})
    study.ask({"x": DISTS["x"], "y": DISTS["y"]})
    # GPSampler's objective fit may be recorded too (on every run); the cost fit is not.
    (cost_fit,) = [X for X in fitted if X.shape[0] != n_runs]
    assert cost_fit.shape[0] == MAX_COSTED_RUNS
    np.testing.assert_allclose(cost_fit[0], x_of_run[0])  # the first run and the last
    np.testing.assert_allclose(cost_fit[-1], x_of_run[-1])
