"""ISBOSampler on unusual input: clear errors, and no silently wrong answer."""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from optuna_isbo import ISBOSampler
from optuna_isbo.cost import trial_cost_seconds
from optuna_isbo.fits import ModelFits
from optuna_isbo.model import fit_gp, standardize
from optuna_isbo.recommendation import Recommendation, small_sample_factor
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.trials import RELATIVE_PARAMS_KEY as _RELATIVE_PARAMS_KEY
from optuna_isbo.trials import pending_params as _pending_params

optuna.logging.set_verbosity(optuna.logging.WARNING)

FIDELITY = "super_batch_size"
X_DIST = FloatDistribution(0.0, 1.0)
B_DIST = IntDistribution(16, 256, log=True)


def _objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0.0, 1.0)
    b = trial.suggest_int(FIDELITY, 16, 256, log=True)
    trial.set_user_attr("isbo:cost", 1.0 + b / 16)
    return (x - 0.3) ** 2 + 1.0 / b


def test_recommend_keeps_the_fidelity_when_the_last_trial_lacks_it() -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=4)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=6)
    # An objective that returned before suggesting the fidelity.
    study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0), n_trials=1)
    assert FIDELITY not in study.trials[-1].params
    assert sampler.recommend(study)[FIDELITY] == 256
    # The next trials still get a fidelity from the model or the target search.
    study.optimize(_objective, n_trials=1)
    assert study.trials[-1].user_attrs["isbo:phase"] in ("model", "verify", "target")
    assert FIDELITY in study.trials[-1].params


@pytest.mark.parametrize("scale", [1e160, 1e300, -1e300])
def test_huge_values_are_standardized_without_overflow(scale: float) -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    xs = [0.1, 0.5, 0.85, 0.3, 0.7]  # one largest |x - 0.5|: a unique best for either sign
    for x in xs:
        study.add_trial(
            create_trial(
                value=scale * (1.0 + (x - 0.5) ** 2),
                params={"x": x},
                distributions={"x": X_DIST},
            )
        )
    best_x = 0.5 if scale > 0 else 0.1  # minimizing: the smallest value
    assert sampler.recommend(study)["x"] == best_x
    recommendation = sampler.recommendation(study)
    assert math.isfinite(recommendation.value) and math.isfinite(recommendation.std)


def test_values_beyond_the_float_range_get_a_clear_error() -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    # Four trials: the recommendation fits a model from four observations on (fewer are
    # ranked by their observed values, which needs no arithmetic on them).
    for x, v in [(0.1, 1.7e308), (0.4, -1.7e308), (0.6, 1.7e308), (0.9, -1.7e308)]:
        study.add_trial(create_trial(value=v, params={"x": x}, distributions={"x": X_DIST}))
    with pytest.raises(ValueError, match="float64 range"):
        sampler.recommend(study)


def test_log_float_fidelity_recommends_its_exact_upper_bound() -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=3, fidelity_param="n_epochs")
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        epochs = trial.suggest_float("n_epochs", 0.5, 20.0, log=True)
        return (x - 0.5) ** 2 + 1.0 / epochs

    study.optimize(objective, n_trials=5)
    assert sampler.recommend(study)["n_epochs"] == 20.0
    assert any(t.params["n_epochs"] in (0.5, 20.0) for t in study.trials)


def test_target_fidelity_at_the_lower_bound_is_an_error() -> None:
    study = optuna.create_study(sampler=ISBOSampler(seed=0, target_fidelity=16))
    # Raised by the first suggestion of the fidelity, not silently tuned as a parameter.
    with pytest.raises(ValueError, match="lowest value"):
        study.optimize(_objective, n_trials=1, catch=())


def test_one_absurd_cost_does_not_set_the_scale_of_all_others() -> None:
    sampler = ISBOSampler(
        seed=0, n_startup_trials=0, verify_cost_fraction=0.0, mf_cost_fraction=1.0
    )
    study = optuna.create_study(sampler=sampler)
    for i in range(8):
        x = (i + 0.5) / 8
        study.add_trial(
            create_trial(
                value=(x - 0.3) ** 2,
                params={"x": x, FIDELITY: 64},
                distributions={"x": X_DIST, FIDELITY: B_DIST},
                user_attrs={"isbo:cost": 1e308 if i == 7 else 2.0 + x},
            )
        )
    # The cost model exactly as an ask fits it.
    space = SearchSpace(sampler._joint_search_space(study), FIDELITY, None)
    X, s = space.encode_trials(study.trials)
    cost = torch.tensor([trial_cost_seconds(t, "isbo:cost") for t in study.trials])
    model = sampler._fits.cost(space, cost, torch.cat([X, s[:, None]], dim=1))

    def predicted(x: float) -> float:
        x_enc, s_enc = space.encode_params({"x": x, FIDELITY: 64})
        return float(model.expected_seconds(torch.cat([x_enc, torch.tensor([s_enc])])[None]))

    # The clipped log cost of the outlier is log(median) + log(1e4); away from it the cost GP
    # returns to the other trials' 2-3 s, and nowhere does it exceed the clipped range.
    for x in (0.05, 0.3, 0.6):
        assert 1.0 < predicted(x) < 30.0
    assert predicted(0.94) < 3.0 * 1e4
    # The ask goes through the same model.
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_int(FIDELITY, 16, 256, log=True)
    asked = study._storage.get_trial(trial._trial_id).user_attrs["isbo:predicted_cost_seconds"]
    assert 1.0 < asked < 3.0 * 1e4


def test_sampler_pickles_deep_copies_and_a_restored_one_continues(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    sampler = ISBOSampler(seed=3, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler, storage=storage, study_name="s")
    study.optimize(_objective, n_trials=5)
    restored = pickle.loads(pickle.dumps(sampler))
    copied = copy.deepcopy(sampler)
    assert isinstance(copied, ISBOSampler) and copied._lock is not sampler._lock
    resumed = optuna.load_study(study_name="s", storage=storage, sampler=restored)
    resumed.optimize(_objective, n_trials=2)
    trials = resumed.trials
    assert len(trials) == 7 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["isbo:phase"] for t in trials[5:]} <= {"model", "verify", "target"}
    # The deep copy proposes what the restored sampler proposed (same seed, same warm starts).
    replay = optuna.create_study(sampler=copied)
    for t in trials[:5]:
        replay.add_trial(t)
    next_trial = replay.ask()
    params = {
        "x": next_trial.suggest_float("x", 0.0, 1.0),
        FIDELITY: next_trial.suggest_int(FIDELITY, 16, 256, log=True),
    }
    assert params == trials[5].params


def test_the_fidelity_as_the_only_parameter() -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=3)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        b = trial.suggest_int(FIDELITY, 16, 256, log=True)
        trial.set_user_attr("isbo:cost", float(b))
        return 1.0 / b

    study.optimize(objective, n_trials=6)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {t.user_attrs["isbo:phase"] for t in study.trials[3:]} <= {"model", "verify", "target"}
    assert sampler.recommend(study) == {FIDELITY: 256}


@pytest.mark.parametrize(
    "system_attrs",
    [
        {f"{_RELATIVE_PARAMS_KEY}:0": '{"x": 0.'},  # chunks written, count not yet
        {f"{_RELATIVE_PARAMS_KEY}:0": '{"x": 0.', f"{_RELATIVE_PARAMS_KEY}:n": 1},
        {f"{_RELATIVE_PARAMS_KEY}:0": '{"x": 0.5}', f"{_RELATIVE_PARAMS_KEY}:n": 2},
        {f"{_RELATIVE_PARAMS_KEY}:0": "[1, 2]", f"{_RELATIVE_PARAMS_KEY}:n": 1},
        {f"{_RELATIVE_PARAMS_KEY}:n": "three"},
    ],
)
def test_partial_shared_params_of_a_running_trial_are_tolerated(
    system_attrs: dict[str, Any],
) -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    for i in range(4):
        study.add_trial(
            create_trial(
                value=float(i),
                params={"x": i / 4, FIDELITY: 32},
                distributions={"x": X_DIST, FIDELITY: B_DIST},
            )
        )
    running = study.ask()
    for key, value in system_attrs.items():
        study._storage.set_trial_system_attr(running._trial_id, key, value)
    frozen = study._storage.get_trial(running._trial_id)
    assert _pending_params(frozen) == {}
    study.optimize(_objective, n_trials=2)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 6


def test_shared_params_round_trip_across_chunks() -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    names = [f"p{i:03d}_" + "x" * 40 for i in range(60)]  # JSON longer than one chunk
    for i in range(2):
        study.add_trial(
            create_trial(
                value=float(i),
                params={n: (i + 0.5) / 2 for n in names},
                distributions=dict.fromkeys(names, X_DIST),
            )
        )
    trial = study.ask()
    for n in names:
        trial.suggest_float(n, 0.0, 1.0)
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.system_attrs[f"{_RELATIVE_PARAMS_KEY}:n"] >= 2
    assert _pending_params(frozen) == frozen.params


def test_recommend_falls_back_when_the_model_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = ISBOSampler(seed=0, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    for x, b, v in [(0.1, 16, -5.0), (0.3, 256, 2.0), (0.5, 256, 1.0), (0.9, 256, 0.5)]:
        study.add_trial(
            create_trial(
                value=v,
                params={"x": x, FIDELITY: b},
                distributions={"x": X_DIST, FIDELITY: B_DIST},
            )
        )

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise torch.linalg.LinAlgError("not positive definite")

    monkeypatch.setattr(ModelFits, "objective", broken)
    with pytest.warns(RuntimeWarning, match="model failed"):
        recommendation = sampler.recommendation(study)
    # The best value at the highest fidelity, not the lucky cheap one.
    assert recommendation.params == {"x": 0.9, FIDELITY: 256}
    assert recommendation.value == 0.5 and math.isnan(recommendation.std)
    assert recommendation.n_target_evaluations == 1


_CHEAP_VALUES = (1.0, 0.2, 0.6, 1.2)


_TARGET_RUNS = ((0.3, 0.25), (0.7, 1.15))


def _verified_study(
    misses: list[float | None],
    cheap_values: Sequence[float] = _CHEAP_VALUES,
    target_runs: Sequence[tuple[float, float]] = _TARGET_RUNS,
    **sampler_kwargs: Any,
) -> optuna.Study:
    """Four cheap trials and target trials (by default two), best near ``x = 0.3``.

    ``misses[j]``: the ``j``-th target trial is a verification whose prediction was off by that
    many stated standard deviations (0.01), or ``None`` for an ordinary trial.
    ``cheap_values``: the values of the cheap trials at ``x = 0.1, 0.3, 0.5, 0.7``.
    ``target_runs``: ``(x, value)`` of the target trials.
    """
    # The multi-fidelity search alone, unless the checks send the study to the target search.
    sampler = ISBOSampler(
        seed=0, n_startup_trials=0, **({"mf_cost_fraction": 1.0} | sampler_kwargs)
    )
    study = optuna.create_study(sampler=sampler)
    cheap = zip((0.1, 0.3, 0.5, 0.7), cheap_values, strict=True)
    for x, v in cheap:
        study.add_trial(
            create_trial(
                value=v,
                params={"x": x, FIDELITY: 16},
                distributions={"x": X_DIST, FIDELITY: B_DIST},
                user_attrs={"isbo:cost": 1.0},
            )
        )
    for (x, v), miss in zip(target_runs, misses, strict=True):
        attrs: dict[str, Any] = {"isbo:cost": 20.0}
        if miss is not None:
            attrs |= {
                "isbo:phase": "verify",
                "isbo:predicted_value_at_target": v - 0.01 * miss,
                "isbo:predicted_std_at_target": 0.01,
            }
        study.add_trial(
            create_trial(
                value=v,
                params={"x": x, FIDELITY: 256},
                distributions={"x": X_DIST, FIDELITY: B_DIST},
                user_attrs=attrs,
            )
        )
    return study


def _recommendation(study: optuna.Study) -> Recommendation:
    sampler = study.sampler
    assert isinstance(sampler, ISBOSampler)
    return sampler.recommendation(study)


def test_missed_verification_predictions_widen_the_reported_uncertainty() -> None:
    before = _recommendation(_verified_study([None, None]))
    # Both verifications missed by 8 stated stds.
    after = _recommendation(_verified_study([8.0, 8.0]))
    assert after.params == before.params
    # A model that failed its checks no longer ranks or values the configurations: the
    # configuration is the best observed at the target, and with two target trials (too few
    # for a GP of them alone to state a variance) its value is the one observed there,
    # whatever the cheap trials said.
    assert after.value == 0.25 and math.isnan(after.std)
    reversed_cheap = _recommendation(_verified_study([8.0, 8.0], _CHEAP_VALUES[::-1]))
    assert reversed_cheap.params == after.params
    assert reversed_cheap.value == after.value and math.isnan(reversed_cheap.std)
    # One failed check widens the uncertainty but does not overrule the model.
    one = _recommendation(_verified_study([8.0, None]))
    assert one.std == pytest.approx(8.0 * before.std, rel=1e-6)
    assert one.value == pytest.approx(before.value)


def test_a_model_that_failed_its_checks_is_replaced_by_a_gp_of_the_target_trials() -> None:
    targets = ((0.3, 0.25), (0.7, 1.15), (0.5, 0.6), (0.9, 1.4))
    after = _recommendation(_verified_study([8.0, 8.0, None, None], target_runs=targets))
    # The value and uncertainty are those of a GP of the four target trials alone (its
    # standard deviation widened for the output scale it fitted), whatever the cheap trials
    # said.
    space = SearchSpace({"x": X_DIST, FIDELITY: B_DIST}, FIDELITY)
    X = torch.stack([space.encode_params({"x": x, FIDELITY: 256})[0] for x, _ in targets])
    inputs = torch.cat([X, torch.ones(4, 1, dtype=torch.float64)], dim=1)
    values = torch.tensor([v for _, v in targets], dtype=torch.float64)
    y_std, shift, scale = standardize(values)
    mean, var = fit_gp(inputs, y_std, has_fidelity=True).mean_var(inputs[:1])
    assert after.params["x"] == 0.3
    assert after.value == pytest.approx(shift + scale * float(mean[0]), rel=1e-6)
    widen = small_sample_factor(4)
    assert widen > 1.2
    assert after.std == pytest.approx(widen * scale * float(var[0].sqrt()), rel=1e-6)
    reversed_cheap = _recommendation(
        _verified_study([8.0, 8.0, None, None], _CHEAP_VALUES[::-1], target_runs=targets)
    )
    assert reversed_cheap.params == after.params
    assert reversed_cheap.std == after.std
    assert reversed_cheap.value == after.value


def _add_cheap_trials(study: optuna.Study, n: int) -> None:
    """``n`` completed trials at the cheapest fidelity, best near ``x = 0.3``."""
    for i in range(n):
        study.add_trial(
            create_trial(
                value=(i / n - 0.3) ** 2,
                params={"x": i / n, FIDELITY: 16},
                distributions={"x": X_DIST, FIDELITY: B_DIST},
            )
        )


def test_verification_defers_to_an_earlier_trial_still_deciding() -> None:
    """Two workers deciding at once would both verify the same configuration."""
    sampler = ISBOSampler(seed=0, n_startup_trials=0, mf_cost_fraction=1.0)
    study = optuna.create_study(sampler=sampler)
    _add_cheap_trials(study, 4)
    space = {"x": X_DIST, FIDELITY: B_DIST}
    deciding = study.ask()  # another worker's trial, inside its own ask
    deferred = study.ask(space)
    assert study._storage.get_trial(deferred._trial_id).user_attrs["isbo:phase"] == "model"
    study.tell(deciding, state=TrialState.FAIL)
    study.tell(deferred, state=TrialState.FAIL)
    # Nobody else deciding: the best configuration, seen only at B = 16, is verified.
    verifying = study.ask(space)
    assert study._storage.get_trial(verifying._trial_id).user_attrs["isbo:phase"] == "verify"
    assert verifying.params[FIDELITY] == 256


def test_target_trials_of_the_acquisition_do_not_use_up_the_verification_budget() -> None:
    """Most of the cost went to target trials far from the best configuration, seen only at
    ``B = 16``: those trials do not test it, so it is verified; a spent budget stops that."""
    space = {"x": X_DIST, FIDELITY: B_DIST}

    def study_with(verify_cost: float | None) -> optuna.Study:
        study = optuna.create_study(
            sampler=ISBOSampler(seed=0, n_startup_trials=0, mf_cost_fraction=1.0)
        )
        _add_cheap_trials(study, 4)  # 4 trials without a cost attribute: 1 ms each
        for x in (0.7, 0.8, 0.9):
            study.add_trial(
                create_trial(
                    value=(x - 0.3) ** 2,
                    params={"x": x, FIDELITY: 256},
                    distributions=space,
                    user_attrs={"isbo:cost": 20.0, "isbo:phase": "model"},
                )
            )
        if verify_cost is not None:  # an earlier verification elsewhere, with this cost
            study.add_trial(
                create_trial(
                    value=(0.6 - 0.3) ** 2,
                    params={"x": 0.6, FIDELITY: 256},
                    distributions=space,
                    user_attrs={"isbo:cost": verify_cost, "isbo:phase": "verify"},
                )
            )
        return study

    study = study_with(None)
    trial = study.ask(space)
    assert study._storage.get_trial(trial._trial_id).user_attrs["isbo:phase"] == "verify"
    assert trial.params[FIDELITY] == 256
    assert trial.params["x"] == pytest.approx(0.25)  # the best cheap trial
    # Verification trials that took 25 / 85 > 1/4 of the cost: the budget is spent.
    study = study_with(25.0)
    trial = study.ask(space)
    assert study._storage.get_trial(trial._trial_id).user_attrs["isbo:phase"] == "model"


def test_verification_defers_while_an_earlier_trial_has_no_readable_params() -> None:
    """A worker may see another's ``isbo:phase`` before its chosen parameters: it defers."""
    sampler = ISBOSampler(seed=0, n_startup_trials=0, mf_cost_fraction=1.0)
    study = optuna.create_study(sampler=sampler)
    _add_cheap_trials(study, 4)
    space = {"x": X_DIST, FIDELITY: B_DIST}
    other = study.ask()
    study._storage.set_trial_user_attr(other._trial_id, "isbo:phase", "verify")
    later = study.ask(space)
    assert study._storage.get_trial(later._trial_id).user_attrs["isbo:phase"] == "model"


def test_recommendation_needs_target_evidence_once_there_is_some() -> None:
    # The cheap runs make x near 0.1 look far better than anything run at the target. The
    # model may extrapolate that to the target, but the recommendation is the best of the
    # configurations that were evaluated there.
    sampler = ISBOSampler(seed=0, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    rows = [(0.1, 16, -5.0), (0.12, 16, -5.1), (0.3, 16, 0.0), (0.5, 256, 1.0), (0.9, 256, 0.5)]
    for x, b, v in rows:
        study.add_trial(
            create_trial(
                value=v,
                params={"x": x, FIDELITY: b},
                distributions={"x": X_DIST, FIDELITY: B_DIST},
            )
        )
    recommendation = sampler.recommendation(study)
    assert recommendation.n_target_evaluations >= 1
    assert recommendation.params["x"] in (0.5, 0.9)
    assert recommendation.params[FIDELITY] == 256


def test_failed_checks_send_the_model_to_the_target_fidelity() -> None:
    def next_trial(misses: list[float | None]) -> optuna.trial.FrozenTrial:
        study = _verified_study(misses, verify_cost_fraction=0.0)
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_int(FIDELITY, 16, 256, log=True)
        return study._storage.get_trial(trial._trial_id)

    # Both verifications missed by 8 stated stds: the cheap runs misled the model, and the
    # target search proposes the trial, even with the whole cost open to the multi-fidelity
    # search (``mf_cost_fraction=1``).
    missed = next_trial([8.0, 8.0])
    assert missed.user_attrs["isbo:phase"] == "target"
    assert missed.params[FIDELITY] == 256
    # Checks the model passed leave the cheap fidelities open (20x cheaper here), and so does
    # a single failed one.
    for misses in ([0.0, 0.0], [8.0, None]):
        trial = next_trial(misses)
        assert trial.user_attrs["isbo:phase"] == "model"
        assert trial.params[FIDELITY] < 256


def test_a_model_that_failed_its_checks_chooses_from_the_target_trials_alone() -> None:
    """After two failed checks the next trial does not depend on the cheap trials' values."""

    def next_params(cheap_values: Sequence[float]) -> dict[str, Any]:
        study = _verified_study([8.0, 8.0], cheap_values, verify_cost_fraction=0.0)
        trial = study.ask({"x": X_DIST, FIDELITY: B_DIST})
        return trial.params

    chosen = next_params(_CHEAP_VALUES)
    assert next_params(_CHEAP_VALUES[::-1]) == chosen
    assert next_params([-5.0, 3.0, 0.0, 7.0]) == chosen

    # With the checks passed, the cheap trials count: changing them changes the choice.
    def passed(cheap_values: Sequence[float]) -> dict[str, Any]:
        study = _verified_study([0.0, 0.0], cheap_values, verify_cost_fraction=0.0)
        return study.ask({"x": X_DIST, FIDELITY: B_DIST}).params

    assert passed(_CHEAP_VALUES) != passed(_CHEAP_VALUES[::-1])
