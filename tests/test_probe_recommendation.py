"""What the recommendation and the budget split make of unusual studies.

Each case was found by probing the sampler with studies a user can build:

* conditional parameters (outside the joint search space) that tell trials of one model
  configuration apart, with and without constraints and a fidelity;
* constraint values missing from a completed trial, and studies where nothing is feasible;
* runs above ``target_fidelity``;
* a repeated configuration with one far-out value (the outlier fence);
* ``isbo:diverged`` given as a NumPy or torch bool, an int or a string;
* enqueued trials and one absurd cost in the split of the cost between the two searches;
* a recommendation resting on one cheap observed value.

The studies are built with ``study.add_trial`` (no optimization loop), so each test fits a GP
or two at most. Objectives are deterministic, and the assertions follow from what was
observed: e.g. "the recommendation is at least as good as the best observed configuration".
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import create_trial

from optuna_isbo import ISBOSampler
from optuna_isbo.constraints import observed_feasible
from optuna_isbo.decisions import sanitized_costs, search_at_target, split_costs
from optuna_isbo.search_space import SearchSpace
from optuna_isbo.trials import ran_in_full

optuna.logging.set_verbosity(optuna.logging.WARNING)

FIDELITY = "super_batch_size"
X = FloatDistribution(0.0, 1.0)
B = IntDistribution(32, 512, log=True)
KIND = CategoricalDistribution(["a", "b"])


def _add(
    study: optuna.Study,
    value: float,
    params: dict[str, Any],
    *,
    constraints: dict[str, float] | None = None,
    user_attrs: dict[str, Any] | None = None,
) -> None:
    """Add a completed trial; every float parameter on ``[0, 1]``, the fidelity on ``B``."""
    distributions: dict[str, BaseDistribution] = {
        name: (KIND if name == "kind" else B if name == FIDELITY else X) for name in params
    }
    study.add_trial(
        create_trial(
            value=value,
            params=params,
            distributions=distributions,
            constraints=constraints,
            user_attrs=user_attrs,
        )
    )


def _bias(b: int) -> float:
    """How much worse a run at super-batch ``b`` looks than one at the target 512."""
    return 0.1 * (1.0 - math.log(b) / math.log(512))


# ---- conditional parameters ---------------------------------------------------------------


def _two_arms(kind: str, p: float) -> float:
    """Arm ``a`` is best at ``pa = 0.5`` (0) but poor on average; arm ``b`` is 0.02 or so."""
    return (p - 0.5) ** 2 if kind == "a" else 0.02 + 0.2 * (p - 0.5) ** 2


_ARM_RUNS = [
    ("a", 0.0),
    ("a", 0.95),
    ("a", 0.41),
    ("a", 0.1),
    ("a", 0.85),
    ("b", 0.3),
    ("b", 0.6),
    ("b", 0.8),
    ("b", 0.45),
]


def test_a_conditional_configuration_is_ranked_by_what_it_observed() -> None:
    """The joint space is ``kind`` alone; the model sees arm ``a`` as one configuration whose
    mean (0.15) is worse than arm ``b``'s (0.03). The exact configuration ``pa = 0.41`` was
    observed at 0.0081, the best of the study: the model cannot rank exact configurations, so
    the recommendation must be at least as good as the best one observed."""
    sampler = ISBOSampler(seed=0, fidelity_param=None)
    study = optuna.create_study(sampler=sampler)
    for kind, p in _ARM_RUNS:
        _add(study, _two_arms(kind, p), {"kind": kind, f"p{kind}": p})
    result = sampler.recommendation(study)
    kind = result.params["kind"]
    retrained = _two_arms(kind, result.params[f"p{kind}"])
    assert retrained <= min(t.value for t in study.trials if t.value is not None)
    assert result.params == {"kind": "a", "pa": 0.41}
    # Reported for itself: its one observed value, no model uncertainty.
    assert result.value == pytest.approx(_two_arms("a", 0.41))
    assert math.isnan(result.std) and result.n_target_evaluations == 1
    assert result.trial_number == 2


def test_a_conditional_configuration_with_a_fidelity_is_ranked_by_its_target_values() -> None:
    """As above with a fidelity: cheap runs in both arms, target runs in both. The best target
    value observed is arm ``a`` at ``pa = 0.41``; arm ``b`` is better on average."""
    sampler = ISBOSampler(seed=0, warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    cheap = [("a", 0.2, 32), ("a", 0.7, 64), ("b", 0.2, 32), ("b", 0.5, 64), ("a", 0.9, 128)]
    target = [("a", 0.41, 512), ("a", 0.05, 512), ("b", 0.45, 512), ("b", 0.7, 512)]
    for kind, p, b in cheap + target:
        _add(study, _two_arms(kind, p) + _bias(b), {"kind": kind, f"p{kind}": p, FIDELITY: b})
    result = sampler.recommendation(study)
    best_target = min(_two_arms(kind, p) for kind, p, _ in target)
    kind = result.params["kind"]
    assert _two_arms(kind, result.params[f"p{kind}"]) <= best_target
    assert result.params == {"kind": "a", "pa": 0.41, FIDELITY: 512}
    assert result.value == pytest.approx(_two_arms("a", 0.41))
    assert result.n_target_evaluations == 1 and math.isnan(result.std)


def test_a_conditional_configuration_keeps_its_own_feasibility() -> None:
    """Arm ``a`` is feasible for ``pa >= 0.3`` (value ``pa``), arm ``b`` always (0.8). Half of
    arm ``a``'s runs are feasible, so the arm looks feasible with probability 0.5; its best
    run, ``pa = 0.05``, is infeasible. The recommendation must be a configuration observed
    feasible, reported with its own probability (its share of feasible target runs: 1)."""
    sampler = ISBOSampler(seed=0, fidelity_param=None)
    study = optuna.create_study(sampler=sampler)
    for p in [0.05, 0.1, 0.2, 0.35, 0.5, 0.9]:
        _add(study, p, {"kind": "a", "pa": p}, constraints={"c": 0.3 - p})
    for p in [0.2, 0.7]:
        _add(study, 0.8, {"kind": "b", "pb": p}, constraints={"c": -1.0})
    result = sampler.recommendation(study)
    trial = study.trials[result.trial_number]
    assert all(c <= 0.0 for c in trial.constraints.values())
    assert result.params == {"kind": "a", "pa": 0.35}
    assert result.feasibility_probability == 1.0
    assert result.value == pytest.approx(0.35)


def test_a_rerun_of_a_configuration_is_not_a_conditional_mixture() -> None:
    """A verification reruns a configuration from its encoding: a log-scale value comes back
    moved in its last bits. The model sees one configuration, and so must the ranking:
    the recommendation stays the model's (a finite standard deviation)."""
    lr = FloatDistribution(1e-4, 1.0, log=True)
    space = SearchSpace({"lr": lr, FIDELITY: B}, FIDELITY)
    original = 0.0123456789
    rerun = space.decode(space.encode_params({"lr": original, FIDELITY: 32})[0], 1.0)["lr"]
    assert rerun != original
    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    runs = [(original, 32), (rerun, 512), (0.1, 32), (0.5, 512), (0.001, 64), (0.3, 32)]
    for value, b in runs:
        trial = create_trial(
            value=math.log10(value / original) ** 2 + _bias(b),
            params={"lr": value, FIDELITY: b},
            distributions={"lr": lr, FIDELITY: B},
        )
        study.add_trial(trial)
    result = sampler.recommendation(study)
    assert result.params["lr"] == rerun and result.n_target_evaluations == 1
    assert math.isfinite(result.std)


# ---- constraints --------------------------------------------------------------------------


def test_a_trial_without_constraint_values_is_not_evidence_of_feasibility() -> None:
    """Feasible iff ``x >= 0.5``. The best target run (``x = 0.3``) never called
    ``set_constraint``; its neighbours at the target are infeasible. It must not be reported
    feasible with probability 1 on no evidence, and a configuration observed feasible wins."""
    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    _add(study, 0.0, {"x": 0.3, FIDELITY: 512})  # no constraint values
    runs = [(0.25, 512), (0.35, 512), (0.6, 512), (0.8, 512), (0.1, 32), (0.5, 64), (0.9, 32)]
    for x, b in runs:
        _add(study, (x - 0.3) ** 2 + _bias(b), {"x": x, FIDELITY: b}, constraints={"c": 0.5 - x})
    result = sampler.recommendation(study)
    assert result.feasibility_probability is not None
    if result.trial_number == 0:
        assert result.feasibility_probability < 1.0
    trial = study.trials[result.trial_number]
    assert trial.constraints and all(c <= 0.0 for c in trial.constraints.values())
    assert result.params["x"] == 0.6 and result.feasibility_probability == 1.0


def test_a_missing_constraint_value_is_not_observed_feasible() -> None:
    C = torch.tensor([[math.nan, -1.0], [-1.0, math.nan], [-1.0, -2.0]], dtype=torch.float64)
    assert observed_feasible(C).tolist() == [False, False, True]


@pytest.mark.parametrize("fidelity_param", [None, FIDELITY])
def test_with_nothing_feasible_the_least_violating_configuration_is_recommended(
    fidelity_param: str | None,
) -> None:
    """``c = 1 + x`` is never feasible; the objective prefers ``x = 0.3``. The configuration
    with the smallest violation observed at the target is ``x = 0.1``, and a warning says
    that nothing feasible was found."""
    sampler = ISBOSampler(seed=0, fidelity_param=fidelity_param)
    study = optuna.create_study(sampler=sampler)
    target = [0.1, 0.25, 0.3, 0.6, 0.9]
    cheap = [0.05, 0.4, 0.7] if fidelity_param else []
    for x in target + cheap:
        b = 512 if x in target else 32
        params = {"x": x} | ({FIDELITY: b} if fidelity_param else {})
        _add(study, (x - 0.3) ** 2 + _bias(b), params, constraints={"c": 1.0 + x})
    with pytest.warns(RuntimeWarning, match="[Nn]o .*feasible"):
        result = sampler.recommendation(study)
    assert result.params["x"] == 0.1
    assert result.feasibility_probability == 0.0
    assert study.trials[result.trial_number].constraints["c"] == pytest.approx(1.1)


# ---- the target fidelity ------------------------------------------------------------------


def test_a_run_above_the_target_is_not_a_target_evaluation() -> None:
    """``target_fidelity=128``: a run at 512 measures another quantity (here 0.02 better than
    at the target). It is left out with a warning, never counted as a target evaluation."""
    sampler = ISBOSampler(seed=0, target_fidelity=128)
    study = optuna.create_study(sampler=sampler)
    _add(study, (0.3 - 0.3) ** 2 + _bias(512), {"x": 0.3, FIDELITY: 512})
    runs = [(0.5, 128), (0.7, 128), (0.2, 32), (0.4, 64), (0.9, 32), (0.45, 128)]
    for x, b in runs:
        _add(study, (x - 0.3) ** 2 + _bias(b), {"x": x, FIDELITY: b})
    with pytest.warns(RuntimeWarning, match="above the target"):
        result = sampler.recommendation(study)
    assert result.trial_number != 0
    at_target = [t for t in study.trials if t.params[FIDELITY] == 128]
    assert result.n_target_evaluations == sum(
        t.params["x"] == result.params["x"] for t in at_target
    )
    assert result.params[FIDELITY] == 128


def test_above_target_is_beyond_the_fidelity_axis() -> None:
    space = SearchSpace({"x": X, FIDELITY: B}, FIDELITY, target_fidelity=128)
    assert space.fidelity_to_unit(512) == space.fidelity_to_unit(128) == 1.0
    above = [space.above_target(b) for b in (32, 127, 128, 129, 512)]
    assert above == [False, False, False, True, True]


def test_a_study_run_above_the_target_only_is_refused_clearly() -> None:
    sampler = ISBOSampler(seed=0, target_fidelity=128)
    study = optuna.create_study(sampler=sampler)
    _add(study, 0.1, {"x": 0.3, FIDELITY: 512})
    _add(study, 0.2, {"x": 0.6, FIDELITY: 256})
    with pytest.warns(RuntimeWarning, match="above the target"):
        with pytest.raises(ValueError, match="above the target"):
            sampler.recommendation(study)


# ---- outliers -----------------------------------------------------------------------------


def test_a_configuration_with_a_fenced_spike_is_ranked_by_its_observed_mean() -> None:
    """``x = 0.3`` ran four times at 0, 0, 50, 0: the model saw 50 pulled in to the fence,
    the configuration's observed mean is 12.5, far worse than the others (about 0.2). Ranking
    and report must use the same quantity: it is not recommended."""
    sampler = ISBOSampler(seed=0, fidelity_param=None)
    study = optuna.create_study(sampler=sampler)
    for value in [0.0, 0.0, 50.0, 0.0]:
        _add(study, value, {"x": 0.3})
    for x in [0.0, 0.1, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0]:
        _add(study, 0.2 + (x - 0.3) ** 2, {"x": x})
    result = sampler.recommendation(study)
    assert result.params["x"] != 0.3
    worst_other = max(t.value for t in study.trials[4:] if t.value is not None)
    assert result.value < worst_other


# ---- isbo:diverged ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "diverged"),
    [
        (True, True),
        (np.True_, True),
        (torch.tensor(True), True),
        (np.array(True), True),
        (1, True),
        (False, False),
        (np.False_, False),
        (torch.tensor(False), False),
        (0, False),
        (None, False),
    ],
)
def test_bool_like_diverged_flags_are_honoured(flag: object, diverged: bool) -> None:
    trial = create_trial(
        value=1.0, params={}, distributions={}, user_attrs={"isbo:diverged": flag}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ran_in_full(trial) is not diverged


@pytest.mark.parametrize("flag", ["true", 2, 1.0, [True]])
def test_other_diverged_flags_are_refused_with_a_warning(flag: object) -> None:
    trial = create_trial(
        value=1.0, params={}, distributions={}, user_attrs={"isbo:diverged": flag}
    )
    with pytest.warns(RuntimeWarning, match="isbo:diverged"):
        assert ran_in_full(trial)


# ---- the split of the cost ----------------------------------------------------------------


def test_enqueued_trials_count_toward_neither_search() -> None:
    """Eight user-enqueued runs at the target cost 128 s; the multi-fidelity search has spent
    2 s of its own, the target search 16 s. At a share of 0.5, it is the multi-fidelity
    search's turn; so it is with trials of no phase (added by hand, or by another sampler)."""
    costs = [16.0] * 8 + [1.0, 1.0, 16.0]
    assert not search_at_target(["enqueued"] * 8 + ["startup"] * 2 + ["target"], costs, 0.5)
    assert not search_at_target([None] * 8 + ["startup"] * 2 + ["target"], costs, 0.5)
    # Among the searches' own trials the split is as before.
    assert search_at_target(["enqueued"] * 8 + ["startup", "model", "target"], costs, 0.0)
    assert search_at_target(["enqueued", "startup", "target"], [5.0, 3.0, 2.0], 0.5)
    assert not search_at_target(["enqueued", "startup", "target"], [5.0, 2.0, 3.0], 0.5)


def test_enqueued_target_runs_leave_the_multi_fidelity_search_its_share() -> None:
    """Eight enqueued target runs, two cheap startup runs and one run of the target search:
    the next trial is the multi-fidelity search's (2 s spent against the target search's 16)."""
    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    for i in range(8):
        x = (i + 0.5) / 8
        attrs = {"isbo:phase": "enqueued", "isbo:cost": 16.0}
        _add(study, (x - 0.3) ** 2, {"x": x, FIDELITY: 512}, user_attrs=attrs)
    for x in [0.33, 0.77]:
        attrs = {"isbo:phase": "startup", "isbo:cost": 1.0}
        _add(study, (x - 0.3) ** 2 + _bias(32), {"x": x, FIDELITY: 32}, user_attrs=attrs)
    attrs = {"isbo:phase": "target", "isbo:cost": 16.0}
    _add(study, 0.04, {"x": 0.5, FIDELITY: 512}, user_attrs=attrs)
    trial = study.ask({"x": X, FIDELITY: B})
    assert study._storage.get_trial(trial._trial_id).user_attrs["isbo:phase"] != "target"


def test_one_absurd_cost_is_charged_as_the_cost_model_clips_it() -> None:
    """A startup trial's cost of 1e300 s (a unit mistake) is charged, like the cost model
    sees it, at 1e4 times the median cost: the multi-fidelity search gets its turn back once
    the target search has spent as much, instead of never."""
    startup = [1.0] * 9 + [1e300]
    assert sanitized_costs(startup).tolist() == pytest.approx([1.0] * 9 + [1e4])
    # Costs at the floor (nothing measured: 1 ms) do not set the median; cheap costs stay.
    measured = [1e-3] * 5 + [20.0, 25.0, 0.5]
    assert sanitized_costs(measured).tolist() == measured
    n_target = 10_100  # the median becomes 16, so the absurd cost counts 1.6e5 s
    phases = ["startup"] * 10 + ["target"] * n_target
    costs = startup + [16.0] * n_target
    assert 9.0 + 16.0 * 1e4 < 0.5 * (9.0 + 16.0 * 1e4 + 16.0 * n_target)
    assert not search_at_target(phases, costs, 0.5)
    # Costs within the window are charged as they are.
    assert search_at_target(["startup", "startup", "target"], [1.0, 3.0, 1.0], 0.5)


def test_one_stalled_cheap_run_does_not_hand_the_study_to_the_target_search() -> None:
    """A plausible but inexplicable cost: one run at the cheapest fidelity took 2,000 s among
    runs of 1-16 s (the target costs 16 s). Charged in full, the multi-fidelity search would
    wait for 125 target runs; a cheap run is charged at most what the dearest target run cost,
    and the capped charge is reported once."""
    costs = [1.0, 2000.0, 4.0, 16.0]
    at_target = [False, False, False, True]
    assert split_costs(costs, at_target).tolist() == [1.0, 16.0, 4.0, 16.0]
    assert split_costs(costs).tolist() == costs  # no fidelities: only the absurd is clipped
    assert split_costs([3.0, 2000.0], [False, False]).tolist() == [3.0, 2000.0]  # no target run
    phases = ["startup"] * 3 + ["target"]
    assert search_at_target(phases, costs, 0.5)
    assert not search_at_target(phases + ["target"], costs + [16.0], 0.5, at_target + [True])

    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    for x, b, cost in [(0.1, 32, 1.0), (0.5, 32, 2000.0), (0.9, 128, 4.0), (0.3, 32, 1.0)]:
        attrs = {"isbo:phase": "startup", "isbo:cost": cost}
        _add(study, (x - 0.3) ** 2 + _bias(b), {"x": x, FIDELITY: b}, user_attrs=attrs)
    for x in [0.2, 0.7]:
        attrs = {"isbo:phase": "target", "isbo:cost": 16.0}
        _add(study, (x - 0.3) ** 2, {"x": x, FIDELITY: 512}, user_attrs=attrs)
    for _ in range(4):
        attrs = {"isbo:phase": "startup", "isbo:cost": 1.0}
        _add(study, 0.3 + _bias(32), {"x": 0.95, FIDELITY: 32}, user_attrs=attrs)
    with pytest.warns(RuntimeWarning, match="Trial 1 cost 2000 s below the target fidelity"):
        trial = study.ask({"x": X, FIDELITY: B})
    # Charged in full (2,008 s against 32 s) the next trial would be the target search's.
    assert study._storage.get_trial(trial._trial_id).user_attrs["isbo:phase"] != "target"


# ---- what the recommendation says it is ---------------------------------------------------


def test_one_cheap_trial_is_reported_as_observed_not_as_a_prediction() -> None:
    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    _add(study, 0.0444, {"x": 0.3, FIDELITY: 32})
    result = sampler.recommendation(study)
    assert result.value == 0.0444 and math.isnan(result.std)
    assert result.n_target_evaluations == 0
    line = result.summary()
    assert "observed at super_batch_size=32" in line
    assert "at the target" not in line and "extrapolated" not in line
    assert result.observed_at == {FIDELITY: 32}


def test_conditional_configurations_without_target_runs_are_ranked_where_observed() -> None:
    """No target evaluation yet, and the joint space cannot tell arm ``a``'s runs apart: the
    recommendation is the exact configuration with the best mean at the highest fidelity
    observed (128), reported as observed there."""
    sampler = ISBOSampler(seed=0, warn_independent_sampling=False)
    study = optuna.create_study(sampler=sampler)
    runs = [("a", 0.45, 128), ("a", 0.0, 128), ("b", 0.5, 128), ("a", 0.5, 32), ("b", 0.9, 32)]
    for kind, p, b in runs:
        _add(study, _two_arms(kind, p) + _bias(b), {"kind": kind, f"p{kind}": p, FIDELITY: b})
    result = sampler.recommendation(study)
    assert result.params == {"kind": "a", "pa": 0.45, FIDELITY: 512}
    assert result.value == pytest.approx(_two_arms("a", 0.45) + _bias(128))
    assert result.n_target_evaluations == 0 and result.observed_at == {FIDELITY: 128}
    assert "observed at super_batch_size=128" in result.summary()
