"""Promotion of cheap runs into the target search's startup design (``promotion.py``)."""

from __future__ import annotations

from typing import Any

import optuna
import torch
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import create_trial

from optuna_isbo import ISBOSampler
from optuna_isbo.promotion import promotion_candidate, promotion_due, promotions_pay

optuna.logging.set_verbosity(optuna.logging.WARNING)
FIDELITY = "super_batch_size"


def _t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_the_best_ranked_configuration_at_its_highest_rung_is_promoted() -> None:
    # Configurations a..e; rung 0.0 holds a, b, c, d; rung 0.5 holds c (again) and e.
    X = _t([0.1], [0.2], [0.3], [0.4], [0.3], [0.5])
    s = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    y = torch.tensor([0.30, 0.10, 0.05, 0.40, 0.90, 0.20], dtype=torch.float64)
    # c is best at rung 0 but is ranked at its highest rung (0.5), where it is last; b is
    # best at rung 0 among those whose highest rung it is: p = 2/5 against e's 1/3 at rung
    # 0.5: e ranks first, then b.
    assert promotion_candidate(X, s, y) == 5
    pending = _t([0.5])
    assert promotion_candidate(X, s, y, pending=pending) == 1
    # A configuration with a target evaluation is never promoted.
    X2 = torch.cat([X, _t([0.5], [0.2])])
    s2 = torch.cat([s, torch.ones(2, dtype=torch.float64)])
    y2 = torch.cat([y, torch.tensor([0.3, 0.3], dtype=torch.float64)])
    assert promotion_candidate(X2, s2, y2) == 0  # a: p = 3/5, then c 2/3, d 4/5
    # Evaluations that may not rank (infeasible) leave their configuration out.
    usable = torch.ones(8, dtype=torch.bool)
    usable[0] = False
    # (then c, last of two at rung 0.5, p = 2/3, comes before d, last of three, p = 3/4)
    assert promotion_candidate(X2, s2, y2, usable=usable) == 4
    # Nothing left below the target.
    done = torch.cat([X2, _t([0.1], [0.3], [0.4])])
    s3 = torch.cat([s2, torch.ones(3, dtype=torch.float64)])
    y3 = torch.cat([y2, torch.zeros(3, dtype=torch.float64)])
    assert promotion_candidate(done, s3, y3) is None


def test_promotions_alternate_and_stop_once_they_do_worse() -> None:
    assert promotion_due(0, 0) and not promotion_due(1, 0) and promotion_due(1, 1)
    assert promotions_pay([0.9], [0.1, 0.2])  # too little evidence
    assert promotions_pay([0.1, 0.3], [0.2, 0.4])
    assert not promotions_pay([0.5, 0.6], [0.2, 0.4])


def _target(x: float, y: float) -> float:
    return (x - 0.7) ** 2 + (y - 0.7) ** 2


def _study_with_failed_checks(cheap: Any) -> optuna.Study:
    """16 cheap runs valued by ``cheap``, two verifications that missed by 8 stated
    standard deviations: the checks failed, and the target search proposes every trial."""
    dists: dict[str, Any] = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}
    dists[FIDELITY] = IntDistribution(16, 256, log=True)
    study = optuna.create_study(sampler=ISBOSampler(seed=0))
    grid = [(i / 4 + 0.1, j / 4 + 0.1) for i in range(4) for j in range(4)]
    for x, y in grid:
        study.add_trial(
            create_trial(
                value=cheap(x, y),
                params={"x": x, "y": y, FIDELITY: 16},
                distributions=dists,
                user_attrs={"isbo:cost": 10.0, "isbo:phase": "startup"},
            )
        )
    for x, y in [(0.35, 0.35), (0.6, 0.1)]:
        study.add_trial(
            create_trial(
                value=_target(x, y),
                params={"x": x, "y": y, FIDELITY: 256},
                distributions=dists,
                user_attrs={
                    "isbo:cost": 160.0,
                    "isbo:phase": "verify",
                    "isbo:predicted_value_at_target": _target(x, y) - 0.08,
                    "isbo:predicted_std_at_target": 0.01,
                },
            )
        )
    return study


def _objective(trial: optuna.Trial) -> float:
    x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
    b = trial.suggest_int(FIDELITY, 16, 256, log=True)
    trial.set_user_attr("isbo:cost", 10.0 * b / 16)
    return _target(x, y)


def test_the_target_search_promotes_what_the_cheap_runs_rank_best() -> None:
    """Cheap runs that rank as the target does: the first startup slot promotes the best of
    them (the grid point nearest the optimum), the next one is a design point, and so on."""
    study = _study_with_failed_checks(lambda x, y: 0.5 + 2.0 * _target(x, y))
    study.optimize(_objective, n_trials=4)
    new = study.trials[18:]
    assert all(t.user_attrs["isbo:phase"] == "target" for t in new)
    assert [t.user_attrs["isbo:promoted"] for t in new] == [True, False, True, False]
    assert (new[0].params["x"], new[0].params["y"]) == (0.6, 0.6)
    assert all(t.params[FIDELITY] == 256 for t in new)


def test_promotions_stop_when_the_cheap_ranking_misleads() -> None:
    """Cheap runs that rank the target upside down: after two promotions and two design
    points the promoted ones did worse, and the rest of the startup design fills space."""
    study = _study_with_failed_checks(lambda x, y: 2.0 - _target(x, y))
    study.optimize(_objective, n_trials=8)
    new = study.trials[18:]
    assert [t.user_attrs.get("isbo:promoted") for t in new[:4]] == [True, False, True, False]
    assert not any(t.user_attrs.get("isbo:promoted") for t in new[4:])


def test_a_configuration_observed_infeasible_is_not_promoted() -> None:
    # Configuration a: feasible at rung 0, infeasible at rung 0.5 (a memory bound that grows
    # with the fidelity); b: feasible, ranked below a at rung 0.
    X = _t([0.1], [0.1], [0.2])
    s = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    y = torch.tensor([0.1, 0.05, 0.3], dtype=torch.float64)
    usable = torch.tensor([True, False, True])
    assert promotion_candidate(X, s, y, usable=usable) == 2


def _fails_dear(trial: optuna.Trial) -> float:
    x, y = trial.suggest_float("x", 0.0, 1.0), trial.suggest_float("y", 0.0, 1.0)
    b = trial.suggest_int(FIDELITY, 16, 256, log=True)
    trial.set_user_attr("isbo:cost", 10.0 * b / 16)
    if b >= 128 and x < 0.5:
        raise MemoryError("out of memory at a large super-batch")
    return _target(x, y)


def test_a_promotion_that_failed_is_not_promoted_again() -> None:
    """The cheap runs' best configurations fail at the target (out of memory). A failed
    promotion counts as a promotion (the next slot is a design point) and as the worst
    outcome in the verdict on promotions, and its configuration is never promoted again."""
    study = _study_with_failed_checks(lambda x, y: (x - 0.1) ** 2 + (y - 0.1) ** 2)
    study.optimize(_fails_dear, n_trials=8, catch=(MemoryError,))
    new = study.trials[18:]
    flags = [bool(t.user_attrs.get("isbo:promoted")) for t in new]
    assert flags[:4] == [True, False, True, False]
    assert not any(a and b for a, b in zip(flags, flags[1:], strict=False))
    promoted = [(t.params["x"], t.params["y"]) for t in new if t.user_attrs.get("isbo:promoted")]
    assert len(promoted) == len(set(promoted)) >= 2
    failed = [(t.params["x"], t.params["y"]) for t in new if t.state.name == "FAIL"]
    assert len(failed) == len(set(failed))


def test_no_promotion_before_the_checks_have_failed() -> None:
    """While the multi-fidelity search runs (no failed checks), its verifications promote its
    best guesses and the target search's start stays space-filling, as GPSampler's."""
    sampler = ISBOSampler(seed=0, n_startup_trials=6)
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=20)
    starts = [t for t in study.trials if "isbo:promoted" in t.user_attrs]
    assert starts and not any(t.user_attrs["isbo:promoted"] for t in starts)


def test_no_promotion_while_another_worker_is_still_deciding() -> None:
    """Another worker's trial has not said what it runs yet (inside its ``ask``): it may be
    promoting the same configuration, so this trial takes a design point instead."""
    study = _study_with_failed_checks(lambda x, y: 0.5 + 2.0 * _target(x, y))
    deciding = study.ask()  # running, nothing suggested or chosen yet
    trial = study.ask(
        {
            "x": FloatDistribution(0.0, 1.0),
            "y": FloatDistribution(0.0, 1.0),
            FIDELITY: IntDistribution(16, 256, log=True),
        }
    )
    attrs = study._storage.get_trial(trial._trial_id).user_attrs
    assert attrs["isbo:phase"] == "target" and attrs["isbo:promoted"] is False
    study.tell(deciding, state=optuna.trial.TrialState.FAIL)
    study.tell(trial, _target(trial.params["x"], trial.params["y"]))
    nxt = study.ask(
        {
            "x": FloatDistribution(0.0, 1.0),
            "y": FloatDistribution(0.0, 1.0),
            FIDELITY: IntDistribution(16, 256, log=True),
        }
    )
    assert study._storage.get_trial(nxt._trial_id).user_attrs["isbo:promoted"] is True
