"""The target search: Optuna's GPSampler behind ISBOSampler, and how the cost is split.

The promise is "never worse than GPSampler by construction". Without a fidelity the sampler
*is* GPSampler, which these tests check to the last bit of every proposal; with a fidelity the
multi-fidelity search may take only its share of the cost, which they check trial by trial.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from optuna_isbo import ISBOSampler, target_search
from optuna_isbo import trials as study_trials
from optuna_isbo.cost import trial_cost_seconds
from optuna_isbo.decisions import TARGET_PHASE, mf_share, search_at_target

FIDELITY = "super_batch_size"


def _mixed_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -3.0, 3.0)
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    depth = trial.suggest_int("depth", 1, 6)
    act = trial.suggest_categorical("act", ["relu", "tanh", "gelu"])
    return (x - 1.0) ** 2 + (math.log10(lr) + 2.0) ** 2 + 0.3 * (depth - 4) ** 2 + (act != "tanh")


def _constrained_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    trial.set_constraint("memory", x + y - 1.0)  # feasible iff x + y <= 1
    return -(x + 2.0 * y)


def _pinned_objective(trial: optuna.Trial) -> float:
    # The objective pins the fidelity: a one-valued distribution is no fidelity axis.
    trial.suggest_int(FIDELITY, 256, 256)
    return _mixed_objective(trial)


def _params(sampler: optuna.samplers.BaseSampler, objective: Any, n_trials: int) -> list[Any]:
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=n_trials)
    return [(t.params, t.value) for t in study.trials]


@pytest.mark.parametrize(
    ("objective", "kwargs"),
    [
        (_mixed_objective, {}),
        (_mixed_objective, {"fidelity_param": None}),
        (_pinned_objective, {}),
        (_constrained_objective, {"fidelity_param": None}),
    ],
)
def test_without_a_fidelity_the_sampler_is_gpsampler(objective: Any, kwargs: Any) -> None:
    n_trials = 14  # 10 startup trials, then 4 from the GP
    reference = _params(optuna.samplers.GPSampler(seed=5), objective, n_trials)
    assert _params(ISBOSampler(seed=5, **kwargs), objective, n_trials) == reference


def test_search_at_target_splits_the_cost() -> None:
    phases = ["startup", "target", "model"]
    # 10 s of multi-fidelity cost out of 30: a third.
    assert not search_at_target(phases, [4.0, 20.0, 6.0], 0.5)
    assert search_at_target(phases, [4.0, 20.0, 6.0], 0.3)
    assert search_at_target(phases, [4.0, 20.0, 6.0], 0.0)
    # Only each search's own trials count for it: an unlabelled trial (one added by hand, or
    # by another sampler) is the user's, charged to neither search.
    assert not search_at_target([None, "target"], [10.0, 10.0], 0.4)
    assert search_at_target([None, "target", "model"], [10.0, 10.0, 10.0], 0.4)


def test_the_share_follows_the_checks() -> None:
    # Untested: rho. Failed checks: nothing. Passed checks: towards 0.8, halving the gap
    # with each one.
    assert mf_share("supported", 0, 0.5) == 0.5
    assert mf_share("supported", 1, 0.5) == 0.5  # one failed check decides nothing yet
    assert mf_share("observed", 2, 1.0) == 0.0
    assert mf_share("extrapolate", 1, 0.5) == pytest.approx(0.65)
    assert mf_share("extrapolate", 2, 0.5) == pytest.approx(0.725)
    assert mf_share("extrapolate", 30, 0.5) == pytest.approx(0.8)
    # A user's larger or smaller rho is kept where it is beyond 0.8, or grows from it.
    assert mf_share("extrapolate", 3, 1.0) == 1.0
    assert mf_share("extrapolate", 1, 0.0) == pytest.approx(0.4)


def _fidelity_objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    b = trial.suggest_int(FIDELITY, 16, 256, log=True)
    # Simulated seconds far above any ask, so that the durations never decide the cost.
    trial.set_user_attr("isbo:cost", 10.0 * (1.0 + 30.0 * (math.log(b / 16) / math.log(16)) ** 2))
    return (x - 0.3) ** 2 + (y - 0.6) ** 2 + 0.2 * (1.0 - math.log(b / 16) / math.log(16))


@pytest.mark.parametrize("mf_cost_fraction", [0.25, 0.5])
def test_the_multi_fidelity_search_takes_only_its_share_of_the_cost(
    mf_cost_fraction: float,
) -> None:
    # Without verifications the share stays at ``mf_cost_fraction`` (``mf_share``).
    sampler = ISBOSampler(
        seed=0, n_startup_trials=4, mf_cost_fraction=mf_cost_fraction, verify_cost_fraction=0.0
    )
    study = optuna.create_study(sampler=sampler)
    study.optimize(_fidelity_objective, n_trials=22)
    trials = study.trials
    phases = [t.user_attrs["isbo:phase"] for t in trials]
    costs = [trial_cost_seconds(t) for t in trials]
    assert TARGET_PHASE in phases and "model" in phases
    for k in range(4, len(trials)):
        mf_before = sum(c for p, c in zip(phases[:k], costs[:k], strict=True) if p != "target")
        share = mf_before / sum(costs[:k])
        if phases[k] == TARGET_PHASE:
            assert share > mf_cost_fraction
            assert trials[k].params[FIDELITY] == 256
        else:
            assert share <= mf_cost_fraction
    # The target search never takes so much that the multi-fidelity search falls far behind
    # its share: one target trial at most overshoots it.
    mf_total = sum(c for p, c in zip(phases, costs, strict=True) if p != "target")
    assert mf_total >= mf_cost_fraction * sum(costs) - max(costs)


def _fails_near_the_optimum(trial: optuna.Trial, with_fidelity: bool) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    y = trial.suggest_float("y", 0.0, 1.0)
    if with_fidelity:
        b = trial.suggest_int(FIDELITY, 16, 256, log=True)
        trial.set_user_attr("isbo:cost", 10.0 * b / 16)
    if abs(x - 0.3) < 0.1 and abs(y - 0.6) < 0.1:
        raise RuntimeError("out of memory")  # the best region cannot be run at all
    return (x - 0.3) ** 2 + (y - 0.6) ** 2


@pytest.mark.parametrize("with_fidelity", [False, True])
def test_a_failed_configuration_is_not_proposed_again(with_fidelity: bool) -> None:
    """A deterministic acquisition that forgot a failure would propose it again and again."""
    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(
        lambda t: _fails_near_the_optimum(t, with_fidelity), n_trials=24, catch=(RuntimeError,)
    )
    failed = [t.params for t in study.trials if t.state == TrialState.FAIL]
    for i, a in enumerate(failed):
        for b in failed[:i]:
            assert abs(a["x"] - b["x"]) + abs(a["y"] - b["y"]) > 2e-3, (a, b)
    # Most trials still run: the region that fails is left after a few tries.
    assert len(failed) <= 8


_POOR, _GOOD = (0.1, 0.1), (0.75, 0.7)


def _two_basins(x: float, y: float) -> float:
    """A poor basin (0.35 at ``_POOR``) and a good one (0.10 at ``_GOOD``) at the target."""
    poor = 0.35 + 2.0 * ((x - _POOR[0]) ** 2 + (y - _POOR[1]) ** 2)
    good = 0.10 + 3.0 * ((x - _GOOD[0]) ** 2 + (y - _GOOD[1]) ** 2)
    return min(poor, good, 1.0)


def test_after_failed_checks_the_search_leaves_a_poor_basin() -> None:
    """The collapse of an epoch-1 fidelity that misleads (LCBench task 167184): the cheap runs
    favour the poor basin, the verifications there missed, and every target run so far sits
    in it. The target search must still find the good basin, as GPSampler finds it from its
    own start; a search that only refines around its target runs stays in the poor one."""
    dists = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}
    dists[FIDELITY] = IntDistribution(16, 256, log=True)
    study = optuna.create_study(sampler=ISBOSampler(seed=0))
    grid = [(i / 4 + 0.1, j / 4 + 0.1) for i in range(4) for j in range(4)]
    for x, y in grid:  # cheap runs: the poor basin looks best by far
        cheap = _two_basins(x, y) - 0.6 * math.exp(-4.0 * ((x - 0.1) ** 2 + (y - 0.1) ** 2))
        study.add_trial(
            create_trial(
                value=cheap,
                params={"x": x, "y": y, FIDELITY: 16},
                distributions=dists,
                user_attrs={"isbo:cost": 10.0},
            )
        )
    for k, (x, y) in enumerate([(0.1, 0.1), (0.12, 0.08), (0.05, 0.15), (0.2, 0.1)]):
        attrs: dict[str, Any] = {"isbo:cost": 160.0}
        if k < 2:  # two verifications that missed by 8 stated standard deviations
            attrs |= {
                "isbo:phase": "verify",
                "isbo:predicted_value_at_target": _two_basins(x, y) - 0.08,
                "isbo:predicted_std_at_target": 0.01,
            }
        study.add_trial(
            create_trial(
                value=_two_basins(x, y),
                params={"x": x, "y": y, FIDELITY: 256},
                distributions=dists,
                user_attrs=attrs,
            )
        )

    def objective(trial: optuna.Trial) -> float:
        x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
        b = trial.suggest_int(FIDELITY, 16, 256, log=True)
        trial.set_user_attr("isbo:cost", 10.0 * b / 16)
        return _two_basins(x, y) if b == 256 else _two_basins(x, y) - 0.3

    study.optimize(objective, n_trials=10)
    new = study.trials[20:]
    assert all(t.user_attrs["isbo:phase"] == "target" for t in new)
    assert min(_two_basins(t.params["x"], t.params["y"]) for t in new) < 0.3
    recommended = study.sampler.recommend(study)  # type: ignore[attr-defined]
    assert _two_basins(recommended["x"], recommended["y"]) < 0.3


def _heavy_tailed_objective(trial: optuna.Trial) -> float:
    # Bad configurations far above the rest: from trial 12 on, GPSampler's own values have one
    # or two beyond the outlier fence q75 + 5 IQR, but they widen the values' spread only 1.4-
    # to 4.7-fold, not enough to squeeze the others.
    return math.exp(_mixed_objective(trial) / 3.0)


def test_honest_bad_values_reach_gpsampler_as_they_are() -> None:
    n_trials = 16
    reference = _params(optuna.samplers.GPSampler(seed=5), _heavy_tailed_objective, n_trials)
    isbo = _params(ISBOSampler(seed=5, fidelity_param=None), _heavy_tailed_objective, n_trials)
    assert isbo == reference


def test_values_that_squeeze_the_others_are_pulled_in() -> None:
    """A diverged training's loss of 4e7 among errors of 0.1-0.3 (HPOLib's tables have such
    runs) is handed to GPSampler at the fence; a poor cell's 0.6 among 0.27-0.35 is not."""
    study = optuna.create_study()
    diverged = [0.1, 0.2, 0.15, 0.3, 0.25, 0.12, 4e7]
    poor = [0.27, 0.3, 0.35, 0.29, 0.31, 0.33, 0.6]
    for value in diverged:
        study.add_trial(create_trial(value=value, params={}, distributions={}))
    trials = study.trials
    squeeze = target_search.OUTLIER_MIN_SQUEEZE
    tamed = study_trials.tamed_values(trials, study, min_squeeze=squeeze)
    assert list(tamed) == [6] and tamed[6] < 1.0
    poor_study = optuna.create_study()
    for value in poor:
        poor_study.add_trial(create_trial(value=value, params={}, distributions={}))
    trials = poor_study.trials
    assert study_trials.tamed_values(trials, poor_study, min_squeeze=squeeze) == {}
    # The multi-fidelity model's own rule pulls in both.
    assert list(study_trials.tamed_values(trials, poor_study)) == [6]
