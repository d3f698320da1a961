"""Configurations, the supported choice and the verification budget."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from optuna_isbo import ISBOSampler, decisions
from optuna_isbo import recommendation as rec
from optuna_isbo.decisions import ObjectiveFit, calibration_checks, extrapolation_factor
from optuna_isbo.model import fit_gp, standardize


def test_group_configurations_counts_target_evaluations() -> None:
    X = torch.tensor(
        [[0.1, 0.2], [0.5, 0.5], [0.1, 0.2], [0.1, 0.2], [0.9, 0.0]], dtype=torch.float64
    )
    s = torch.tensor([0.0, 1.0, 1.0, 1.0 - 1e-12, 0.5], dtype=torch.float64)
    configs = rec.group_configurations(X, s)
    rows = {tuple(x.tolist()): i for i, x in enumerate(configs.X)}
    a, b, c = rows[(0.1, 0.2)], rows[(0.5, 0.5)], rows[(0.9, 0.0)]
    assert configs.n_target[a] == 2 and configs.n_target[b] == 1 and configs.n_target[c] == 0
    assert configs.first_index[a] == 0 and configs.first_index[b] == 1
    assert configs.first_index[c] == 4


def test_group_configurations_without_hyperparameters() -> None:
    s = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    configs = rec.group_configurations(torch.zeros(3, 0, dtype=torch.float64), s)
    assert configs.X.shape == (1, 0)
    assert configs.n_target.tolist() == [2] and configs.first_index.tolist() == [0]


def test_choose_supported_prefers_target_evidence() -> None:
    mean = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    # The lowest mean rests on an extrapolation (sigma 1): the supported 0.5 +- 0.1 wins.
    assert rec.choose_supported(mean, torch.tensor([1.0, 0.1, 0.1], dtype=torch.float64)) == 2
    # Equally certain: the lowest mean.
    assert rec.choose_supported(mean, torch.full((3,), 0.1, dtype=torch.float64)) == 0
    # Uncertain, but better even at the upper end of its interval: 0 + 1.28 * 0.3 < 0.5 + 0.13.
    assert rec.choose_supported(mean, torch.tensor([0.3, 0.1, 0.1], dtype=torch.float64)) == 0


def test_choose_supported_only_among_target_evaluated() -> None:
    mean = torch.tensor([-5.0, 1.0, 0.5], dtype=torch.float64)
    std = torch.full((3,), 0.01, dtype=torch.float64)
    # A confident extrapolation (config 0, never run at the target) is not a candidate once
    # configurations 1 and 2 have target evaluations.
    n_target = torch.tensor([0, 1, 2])
    assert rec.choose_supported(mean, std, n_target) == 2
    # Without any target evaluation every configuration is a candidate.
    assert rec.choose_supported(mean, std, torch.zeros(3, dtype=torch.long)) == 0
    # A model that passed its checks may recommend its extrapolation.
    assert rec.choose_supported(mean, std, n_target, extrapolate=True) == 0


def test_recommendation_rule_follows_the_checks() -> None:
    assert rec.recommendation_rule(1.0, 0) == "supported"  # never checked
    assert rec.recommendation_rule(50.0, 0) == "supported"
    assert rec.recommendation_rule(1.0, 1) == "extrapolate"
    assert rec.recommendation_rule(rec.MAX_TRUSTED_KAPPA, 3) == "extrapolate"
    assert rec.recommendation_rule(2.5, 3) == "observed"  # missed by 2.5 stated stds
    assert rec.recommendation_rule(2.5, 2) == "observed"
    assert rec.recommendation_rule(2.5, 1) == "supported"  # one miss is weak evidence
    assert rec.recommendation_rule(1.5, 3, max_kappa=1.0) == "observed"


def test_best_observed_at_target_averages_each_configuration() -> None:
    X = torch.tensor([[0.1], [0.1], [0.5], [0.5], [0.9]], dtype=torch.float64)
    s = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    y = torch.tensor([0.0, 2.0, 1.5, -9.0, -9.0], dtype=torch.float64)
    configs = rec.group_configurations(X, s)
    # Config 0.1: mean 1.0 over its two target runs; 0.5: 1.5 (its cheap -9 does not count);
    # 0.9 was never run at the target.
    k = rec.best_observed_at_target(configs, s, y)
    assert configs.X[k].tolist() == [0.1]
    with pytest.raises(ValueError, match="target"):
        rec.best_observed_at_target(configs, torch.zeros(5, dtype=torch.float64), y)


def test_verification_due() -> None:
    assert rec.verification_due(0.0, 10.0, 0.25)
    assert rec.verification_due(2.4, 10.0, 0.25)
    assert not rec.verification_due(2.5, 10.0, 0.25)
    assert not rec.verification_due(0.0, 10.0, 0.0)
    assert not rec.verification_due(0.0, 0.0, 0.25)


def test_interval_is_the_central_normal_interval() -> None:
    r = rec.Recommendation(params={}, value=1.0, std=2.0, trial_number=0, n_target_evaluations=1)
    lo, hi = r.interval(0.8)
    # Phi^{-1}(0.9) = 1.2815515655...
    assert lo == pytest.approx(1.0 - 2.0 * 1.2815515655, rel=1e-9)
    assert hi == pytest.approx(1.0 + 2.0 * 1.2815515655, rel=1e-9)
    with pytest.raises(ValueError, match="level"):
        r.interval(1.0)
    nan = rec.Recommendation(
        params={}, value=1.0, std=math.nan, trial_number=0, n_target_evaluations=0
    )
    assert all(math.isnan(v) for v in nan.interval())


def test_calibration_factor_measures_misses_in_stated_stds() -> None:
    predicted = torch.tensor([0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    std = torch.tensor([1.0, 1.0, 2.0, 2.0], dtype=torch.float64)
    # Misses of 3, -3, 6, -6: every z is +-3, so kappa = 3.
    observed = torch.tensor([3.0, -3.0, 6.0, -6.0], dtype=torch.float64)
    assert rec.calibration_factor(observed, predicted, std) == pytest.approx(3.0)
    # Predictions better than stated do not shrink the uncertainty.
    assert rec.calibration_factor(observed * 0.1, predicted, std) == 1.0
    # No usable check: no change.
    nan = torch.full((2,), math.nan, dtype=torch.float64)
    assert rec.calibration_factor(nan, nan, nan) == 1.0
    zero = torch.zeros(1, dtype=torch.float64)
    assert rec.calibration_factor(zero + 1.0, zero, zero) == 1.0


def test_the_recommendation_is_one_line_on_the_dashboard() -> None:
    """optuna-dashboard's "Best Trial" card shows the best value at any fidelity; the
    recommendation must be findable among the study's attributes as a line a person reads."""
    import optuna

    from optuna_isbo import ISBOSampler

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -1.0, 1.0)
        b = trial.suggest_int("super_batch_size", 16, 256, log=True)
        trial.set_user_attr("isbo:cost", float(b))
        return x * x + 1.0 / b

    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=12)
    result = sampler.recommendation(study)
    line = study.user_attrs["isbo:recommendation"]
    assert line == result.summary()
    assert line.startswith(f"trial {result.trial_number} (x=")
    assert "super_batch_size=256" in line
    assert f"{result.value:.4g} +- {result.std:.4g} at the target" in line
    assert "target evaluation" in line and "feasible" not in line
    assert study.user_attrs["isbo:recommended_trial"] == result.trial_number


def test_a_recommended_outlier_reports_its_observed_value_not_the_fence() -> None:
    """The only target evaluation is far above the cheap values, beyond the outlier fence:
    the model saw it at the fence (about 0.21). Recommending it is right (it is the only
    supported candidate); saying it is predicted at 0.21 +- 0.005 was silently wrong."""
    import math

    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    from optuna_isbo import ISBOSampler

    distributions = {
        "x": FloatDistribution(0.0, 1.0),
        "super_batch_size": IntDistribution(32, 512, log=True),
    }
    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    for i, value in enumerate([0.10, 0.11, 0.12, 0.13, 0.105, 0.115, 0.125]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.1 * i, "super_batch_size": 32},
                distributions=distributions,
                value=value,
                user_attrs={"isbo:cost": 0.2},
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.95, "super_batch_size": 512},
            distributions=distributions,
            value=2.0,
            user_attrs={"isbo:cost": 1.0},
        )
    )
    result = sampler.recommendation(study)
    assert result.n_target_evaluations == 1 and result.params["x"] == 0.95
    assert result.value == 2.0 and math.isnan(result.std)
    assert study.user_attrs["isbo:recommended_value"] == 2.0


def test_after_passed_checks_a_cheap_only_configuration_is_not_recommended() -> None:
    """Cheap runs equal the target objective ``(x - 0.8)^2``, and two verifications at
    ``x = 0.3, 0.5`` were predicted exactly: the model passed its checks and believes the
    cheap-only ``x = 0.8`` is best. The recommendation is still a target-evaluated
    configuration (``x = 0.5``); ``x = 0.8`` is for a verification trial to evaluate."""
    dists = {"x": FloatDistribution(0.0, 1.0), "B": IntDistribution(16, 256, log=True)}
    sampler = ISBOSampler(seed=0, fidelity_param="B")
    study = optuna.create_study(sampler=sampler)
    for i in range(11):
        x = i / 10
        study.add_trial(
            create_trial(
                value=(x - 0.8) ** 2,
                params={"x": x, "B": 16},
                distributions=dists,
                user_attrs={"isbo:cost": 10.0},
            )
        )
    for x in (0.3, 0.5):
        study.add_trial(
            create_trial(
                value=(x - 0.8) ** 2,
                params={"x": x, "B": 256},
                distributions=dists,
                user_attrs={
                    "isbo:cost": 160.0,
                    "isbo:phase": "verify",
                    "isbo:predicted_value_at_target": (x - 0.8) ** 2,
                    "isbo:predicted_std_at_target": 0.05,
                },
            )
        )
    assert calibration_checks(study.trials, study)[2] == "extrapolate"
    recommendation = sampler.recommendation(study)
    assert recommendation.n_target_evaluations == 1
    assert recommendation.params == {"x": 0.5, "B": 256}


def test_small_sample_factor_is_the_t_quantile_over_the_normal_one() -> None:
    # Student-t 0.9 quantiles from tables: 3, 5 and 14 degrees of freedom.
    assert rec.small_sample_factor(4) == pytest.approx(1.637744 / rec.Z_80, rel=1e-5)
    assert rec.small_sample_factor(6) == pytest.approx(1.475884 / rec.Z_80, rel=1e-5)
    assert rec.small_sample_factor(15) == pytest.approx(1.345030 / rec.Z_80, rel=1e-5)
    factors = [rec.small_sample_factor(n) for n in (4, 10, 100, 10_000)]
    assert factors == sorted(factors, reverse=True)
    assert 1.0 < factors[-1] < 1.0005


def _fidelity_fit(top_shift: float, levels: tuple[float, ...] = (0.0, 0.4, 0.7)) -> ObjectiveFit:
    """A GP of ``sin(6 x)`` at cheap fidelities ``levels``, the highest shifted by ``top_shift``
    (about 0.01 noise)."""
    gen = torch.Generator().manual_seed(0)
    rows, values = [], []
    for s in levels:
        for x in torch.linspace(0.0, 1.0, 8, dtype=torch.float64).tolist():
            rows.append([x, s])
            shift = top_shift if s == max(levels) else 0.0
            noise = 0.01 * float(torch.randn(1, generator=gen, dtype=torch.float64))
            values.append(math.sin(6.0 * x) + shift + noise)
    inputs = torch.tensor(rows, dtype=torch.float64)
    y_std, shift, scale = standardize(torch.tensor(values, dtype=torch.float64))
    return ObjectiveFit(fit_gp(inputs, y_std, has_fidelity=True), inputs, shift, scale)


def test_extrapolation_factor_measures_how_the_cheap_rungs_predict_the_highest() -> None:
    # For a calibrated model the eight held-out ``z_i^2`` average about 1; a factor above 2
    # (their mean above 4) has probability ``P(chi^2_8 > 32) < 1e-4``.
    # Every fidelity shows the same function: the lower rungs predict the highest within its
    # stated uncertainty.
    assert extrapolation_factor(_fidelity_fit(0.0)) < 2.0
    # The highest rung lies 1.5 (about 150 noise standard deviations, a whole amplitude of
    # the function) below what the lower rungs show: the model's extrapolation along the
    # fidelity missed by more than it stated.
    assert extrapolation_factor(_fidelity_fit(-1.5)) > 2.0
    # A single cheap level below the target: nothing to hold out, nothing measured.
    assert extrapolation_factor(_fidelity_fit(-1.5, levels=(0.5,))) == 1.0


def _cheap_study(sampler: ISBOSampler, n: int, verified: bool = False) -> optuna.Study:
    dists = {"x": FloatDistribution(0.0, 1.0), "B": IntDistribution(16, 256, log=True)}
    study = optuna.create_study(sampler=sampler)
    for i in range(n):
        x = (i + 0.5) / n
        study.add_trial(
            create_trial(
                value=(x - 0.6) ** 2 + 0.1,
                params={"x": x, "B": (16, 64)[i % 2]},
                distributions=dists,
                user_attrs={"isbo:cost": 1.0},
            )
        )
    if verified:
        study.add_trial(
            create_trial(
                value=0.01,
                params={"x": 0.6, "B": 256},
                distributions=dists,
                user_attrs={
                    "isbo:cost": 16.0,
                    "isbo:phase": "verify",
                    "isbo:predicted_value_at_target": 0.01,
                    "isbo:predicted_std_at_target": 0.05,
                },
            )
        )
    return study


@pytest.mark.parametrize("verified", [False, True])
def test_unchecked_extrapolations_are_widened_by_the_extrapolation_factor(
    monkeypatch: pytest.MonkeyPatch, verified: bool
) -> None:
    stds = []
    for factor in (1.0, 3.0):
        monkeypatch.setattr(decisions, "extrapolation_factor", lambda fit, f=factor: f)
        sampler = ISBOSampler(seed=0, fidelity_param="B")
        stds.append(sampler.recommendation(_cheap_study(sampler, 8, verified)).std)
    # Before any check every configuration is an extrapolation, widened by the factor; a check
    # (one passed verification) replaces it by ``kappa``, and the recommendation is then the
    # verified configuration.
    assert stds[1] == pytest.approx((1.0 if verified else 3.0) * stds[0], rel=1e-9)


def test_a_model_of_fewer_than_four_observations_is_not_reported() -> None:
    for n, has_std in [(3, False), (4, True)]:
        sampler = ISBOSampler(seed=0, fidelity_param="B")
        recommendation = sampler.recommendation(_cheap_study(sampler, n))
        # With three trials the predictive t distribution (2 degrees of freedom) has no
        # variance: the value is the best one observed at the highest fidelity, no std.
        assert math.isnan(recommendation.std) != has_std
        assert recommendation.n_target_evaluations == 0
        if not has_std:
            assert recommendation.observed_at == {"B": 64}
