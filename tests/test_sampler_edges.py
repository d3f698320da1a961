"""Changing search spaces, enqueued trials, stale workers, huge ranges, read-only storages."""

from __future__ import annotations

import datetime
import logging
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from optuna_isbo import ISBOSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
FIDELITY = "super_batch_size"
X = FloatDistribution(0.0, 1.0)
B = IntDistribution(16, 256, log=True)


def test_a_conditional_parameter_comes_from_the_recommended_trial() -> None:
    """``xa`` exists only when ``kind == "a"``: the joint space holds ``kind`` alone, and the
    recommended configuration's ``xa`` must be its best trial's, not the first one's."""
    sampler = ISBOSampler(seed=0, fidelity_param=None)
    study = optuna.create_study(sampler=sampler)
    for xa, value in [(0.9, 0.81), (0.1, 0.01), (0.5, 0.25)]:
        study.add_trial(
            create_trial(
                value=value,
                params={"kind": "a", "xa": xa},
                distributions={"kind": CategoricalDistribution(["a", "b"]), "xa": X},
            )
        )
    study.add_trial(
        create_trial(
            value=2.0,
            params={"kind": "b"},
            distributions={"kind": CategoricalDistribution(["a", "b"])},
        )
    )
    assert sampler.recommend(study) == {"kind": "a", "xa": 0.1}


def test_a_conditional_configuration_is_reported_for_itself() -> None:
    """The model sees ``kind`` alone, one configuration ``kind=a`` with three target
    evaluations; the recommended ``xa = 0.1`` ran once, so the report is that run's value, one
    target evaluation, and no model uncertainty (the model cannot tell ``xa`` apart)."""
    sampler = ISBOSampler(seed=0, fidelity_param=None)
    study = optuna.create_study(sampler=sampler)
    kind = CategoricalDistribution(["a", "b"])
    for xa, value in [(0.9, 0.81), (0.1, 0.01), (0.5, 0.25)]:
        study.add_trial(
            create_trial(
                value=value, params={"kind": "a", "xa": xa}, distributions={"kind": kind, "xa": X}
            )
        )
    for xb, value in [(0.3, 2.0), (0.6, 2.5)]:
        study.add_trial(
            create_trial(
                value=value, params={"kind": "b", "xb": xb}, distributions={"kind": kind, "xb": X}
            )
        )
    recommendation = sampler.recommendation(study)
    assert recommendation.params == {"kind": "a", "xa": 0.1}
    assert recommendation.trial_number == 1
    assert recommendation.n_target_evaluations == 1
    assert recommendation.value == pytest.approx(0.01)
    assert math.isnan(recommendation.std)


def test_a_widened_range_keeps_a_real_configuration() -> None:
    sampler = ISBOSampler(seed=0, fidelity_param=None)
    study = optuna.create_study(sampler=sampler)
    for x, y, high in [(0.2, 0.5, 1.0), (0.4, 0.1, 1.0), (1.3, 0.12, 1.5), (0.7, 0.11, 1.5)]:
        study.add_trial(
            create_trial(
                value=(x - 1.3) ** 2 + (y - 0.1) ** 2,
                params={"x": x, "y": y},
                distributions={"x": FloatDistribution(0.0, high), "y": X},
            )
        )
    # ``x`` left the joint space; the best trial with the best ``y`` neighbourhood is trial 2.
    recommended = sampler.recommend(study)
    assert recommended == {"x": 1.3, "y": 0.12}


def test_a_changed_fidelity_range_is_refused_clearly() -> None:
    sampler = ISBOSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    for high in (256, 512):
        study.add_trial(
            create_trial(
                value=0.5,
                params={"x": 0.5, FIDELITY: 32},
                distributions={"x": X, FIDELITY: IntDistribution(16, high, log=True)},
            )
        )
    with pytest.raises(ValueError, match="changed its distribution.*new study"):
        sampler.recommend(study)
    with pytest.raises(ValueError, match="changed its distribution"):
        study.ask({"x": X, FIDELITY: IntDistribution(16, 512, log=True)})


def test_an_enqueued_trial_is_labelled_for_what_it_ran() -> None:
    """A user's enqueued fidelity overrides whatever the sampler chose, verification included:
    the trial must not claim to be a verification at the target, nor count as one."""
    sampler = ISBOSampler(seed=0, n_startup_trials=0, mf_cost_fraction=1.0)
    study = optuna.create_study(sampler=sampler)
    for i in range(4):  # the best configuration is known at B = 16 only: a verification is due
        study.add_trial(
            create_trial(
                value=(i / 4 - 0.3) ** 2,
                params={"x": i / 4, FIDELITY: 16},
                distributions={"x": X, FIDELITY: B},
            )
        )
    study.enqueue_trial({FIDELITY: 16})
    trial = study.ask({"x": X, FIDELITY: B})
    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    assert trial.params[FIDELITY] == 16
    assert attrs["isbo:phase"] == "enqueued"
    assert attrs["isbo:fidelity"] == 16
    assert "isbo:predicted_value_at_target" not in attrs


def test_a_stale_running_trial_does_not_block_verification() -> None:
    """A worker killed inside its ``ask`` leaves a running trial without parameters."""
    sampler = ISBOSampler(seed=0, n_startup_trials=0, mf_cost_fraction=1.0)
    study = optuna.create_study(sampler=sampler)
    for i in range(4):
        study.add_trial(
            create_trial(
                value=(i / 4 - 0.3) ** 2,
                params={"x": i / 4, FIDELITY: 16},
                distributions={"x": X, FIDELITY: B},
            )
        )
    stale = create_trial(state=TrialState.RUNNING)
    stale.datetime_start = datetime.datetime.now() - datetime.timedelta(hours=2)
    study.add_trial(stale)
    trial = study.ask({"x": X, FIDELITY: B})
    assert study._storage.get_trial(trial._trial_id).user_attrs["isbo:phase"] == "verify"


def test_an_int_fidelity_beyond_2_to_the_53_stays_in_its_range() -> None:
    huge = IntDistribution(1, 10**17, log=True)
    sampler = ISBOSampler(seed=0, n_startup_trials=0)
    study = optuna.create_study(sampler=sampler)
    for x, b in [(0.2, 10), (0.6, 10**9), (0.4, 10**17)]:
        study.add_trial(
            create_trial(
                value=(x - 0.4) ** 2,
                params={"x": x, FIDELITY: b},
                distributions={"x": X, FIDELITY: huge},
            )
        )
    recommended = sampler.recommend(study)[FIDELITY]
    assert recommended == 10**17 and huge._contains(huge.to_internal_repr(recommended))


def test_recommend_works_on_a_read_only_storage(tmp_path: Path) -> None:
    path = tmp_path / "study.db"
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name="s")
    for x in (0.1, 0.5, 0.9):
        study.add_trial(
            create_trial(
                value=(x - 0.5) ** 2,
                params={"x": x, FIDELITY: 256},
                distributions={"x": X, FIDELITY: B},
            )
        )
    # Opened read-only by SQLite itself (file permissions do not bind root).
    read_only = optuna.load_study(
        study_name="s", storage=f"sqlite:///file:{path}?mode=ro&uri=true"
    )
    sampler = ISBOSampler(seed=0)
    with pytest.warns(RuntimeWarning, match="could not be written"):
        recommended: dict[str, Any] = sampler.recommend(read_only)
    assert recommended == {"x": 0.5, FIDELITY: 256}


@pytest.mark.parametrize("fidelity_param", [FIDELITY, None])
def test_a_fully_enqueued_trial_is_labelled_enqueued(fidelity_param: str | None) -> None:
    """Every parameter fixed: the sampler never proposes, in startup or after it."""
    sampler = ISBOSampler(seed=0, n_startup_trials=2, fidelity_param=fidelity_param)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        b = trial.suggest_int(FIDELITY, 16, 256, log=True)
        trial.set_user_attr("isbo:cost", float(b))
        return (x - 0.3) ** 2 + 1.0 / b

    study.enqueue_trial({"x": 0.5, FIDELITY: 64})
    study.optimize(objective, n_trials=4)
    study.enqueue_trial({"x": 0.5, FIDELITY: 64})
    study.enqueue_trial({"x": 0.25})
    study.optimize(objective, n_trials=2)
    phases = [t.user_attrs.get("isbo:phase") for t in study.trials]
    assert phases[0] == "enqueued" and phases[4] == "enqueued" and phases[5] == "enqueued"
    assert phases[1] == "startup"


def test_optunas_verbosity_applies_to_the_samplers_messages() -> None:
    """The sampler logs through a child of Optuna's logger, so that
    ``optuna.logging.set_verbosity`` silences its "sampled independently" message too."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        y = trial.suggest_float("y", 0.0, 1.0) if trial.number % 2 else 0.0
        return (x - 0.3) ** 2 + y

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    collect = Collect()
    library = logging.getLogger("optuna")
    before = optuna.logging.get_verbosity()
    library.addHandler(collect)
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=ISBOSampler(seed=0, n_startup_trials=2))
        study.optimize(objective, n_trials=5)
        assert any("sampled independently" in m for m in collect.messages)
        collect.messages.clear()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study.optimize(objective, n_trials=3)
        assert not any("sampled independently" in m for m in collect.messages)
    finally:
        library.removeHandler(collect)
        optuna.logging.set_verbosity(before)
