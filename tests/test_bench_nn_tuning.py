"""A few-second smoke test of ``benchmarks/bench_nn_tuning.py`` on tiny random images: each
method's run record, the fidelity of ``isbo-steps``, the retraining seeds, ISBO's recorded
interval, and the report's fidelity shares and coverage computed from hand-made records."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_nn_tuning as bench  # noqa: E402

SETTINGS = bench.Settings(
    budget_seconds=6.0,
    steps=6,
    min_steps=2,
    startup_trials=2,
    report_every=3,
    fractions=(0.5, 1.0),
    retrain_seeds=(10**9, 10**9 + 1),
)


@pytest.fixture
def tiny_task(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> TensorDataset:
        images = torch.rand(n, 1, 28, 28, generator=generator)
        return TensorDataset(images, torch.randint(10, (n,), generator=generator))

    data = bench.TaskData(split(bench.TARGET_SUPER_BATCH), split(64), split(64), "fashion-mnist")
    monkeypatch.setattr(bench, "_DATA", data)
    monkeypatch.setattr(bench, "_RETRAINED", {})


@pytest.mark.parametrize("method", ["isbo-steps", "tpe-hyperband", "random", "tpe+is"])
@pytest.mark.usefixtures("tiny_task")
def test_run_record(method: str) -> None:
    run = bench.run_one(method, 0, SETTINGS)
    complete = [t for t in run["trials"] if t["state"] == "COMPLETE"]
    assert complete, "no trial finished within the budget"
    for trial in complete:
        assert 0.0 <= trial["value"] <= 1.0
        assert trial["end_seconds"] <= SETTINGS.budget_seconds + 1.0
        steps = trial["params"][bench.STEPS_PARAM]
        if method == "isbo-steps":
            assert SETTINGS.min_steps <= steps <= SETTINGS.steps
        else:
            assert steps == SETTINGS.steps
        assert trial["params"][bench.FIDELITY] == bench.BATCH_SIZE
    assert [r["fraction"] for r in run["recommendations"]] == list(SETTINGS.fractions)
    final = run["recommendations"][-1]
    assert len(final["test_errors"]) == len(final["validation_errors"]) == 2
    assert final["test_error"] == pytest.approx(sum(final["test_errors"]) / 2)
    # The choice is retrained at its method's target: all steps, B = b for these methods
    # and the IS target for a peer whose choice is retrained with ISSGD.
    assert bench.STEPS_PARAM not in final["params"]
    retrained_b = bench.TARGET_SUPER_BATCH if method == "tpe+is" else bench.BATCH_SIZE
    assert final["params"][bench.FIDELITY] == retrained_b
    if method == "isbo-steps":
        lo, hi = final["prediction"]["interval80"]
        assert lo <= final["prediction"]["value"] <= hi or math.isnan(lo)
    else:
        assert final["prediction"] == {}


def _trial(b: int, cost: float) -> dict[str, Any]:
    params = {bench.FIDELITY: b, bench.STEPS_PARAM: 200}
    return {"state": "COMPLETE", "params": params, "cost_seconds": cost}


def test_fidelity_shares_and_coverage_from_records() -> None:
    trials = [_trial(32, 1.0), _trial(32, 1.0), _trial(100, 2.0), _trial(512, 6.0)]
    recommendations = [
        # covered: 0.20 in [0.18, 0.22]; missed: 0.30 outside [0.18, 0.22]
        {
            "fraction": 1.0,
            "prediction": {"value": 0.2, "interval80": [0.18, 0.22]},
            "validation_errors": [0.19, 0.21],
        },
    ]
    missed = [{**recommendations[0], "validation_errors": [0.3, 0.3]}]
    runs = {
        "isbo": [
            {"method": "isbo", "trials": trials, "recommendations": recommendations},
            {"method": "isbo", "trials": trials, "recommendations": missed},
        ]
    }
    shares = bench.print_fidelity_shares(runs)["isbo"]
    assert shares["lowest"] == {"trials": 0.5, "cost": 0.2}
    assert shares["between"] == {"trials": 0.25, "cost": 0.2}
    assert shares["target"] == {"trials": 0.25, "cost": 0.6}
    coverage = bench.print_coverage(runs, [1.0])["isbo"][1.0]
    assert coverage["coverage"] == 0.5 and coverage["n"] == 2
    assert coverage["median_abs_error"] == pytest.approx((0.0 + 0.1) / 2)
