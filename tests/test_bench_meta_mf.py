"""The task family of ``benchmarks/bench_meta_mf.py``: related tasks with moved optima."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_meta_mf  # noqa: E402

# The minimizer of the 6-D Hartmann function (Surjanovic and Bingham's library of test
# functions), to the digits published there.
HARTMANN_ARGMIN = np.array([0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573])


@pytest.mark.parametrize("k", [0, 1, 5])
def test_every_task_keeps_the_minimum_at_its_own_moved_minimizer(k: int) -> None:
    problem = bench_meta_mf.task(k)
    gamma = bench_meta_mf.gammas(k)
    minimizer = HARTMANN_ARGMIN ** (1.0 / gamma)
    params = dict(zip(bench_meta_mf.NAMES, minimizer.tolist(), strict=True))
    assert problem.target(params) == pytest.approx(problem.f_min, abs=1e-4)
    # The untouched minimizer is no longer optimal: the optimum moved.
    plain = dict(zip(bench_meta_mf.NAMES, HARTMANN_ARGMIN.tolist(), strict=True))
    assert problem.target(plain) > problem.f_min + 1e-3
    rng = np.random.default_rng(k)
    for x in rng.uniform(size=(200, 6)):
        assert problem.target(dict(zip(bench_meta_mf.NAMES, x.tolist(), strict=True))) > (
            problem.f_min - 1e-9
        )


def test_the_held_out_tasks_are_not_training_tasks() -> None:
    assert not set(bench_meta_mf.HELD_OUT) & set(bench_meta_mf.TRAINING)
    exponents = {tuple(bench_meta_mf.gammas(k)) for k in range(11)}
    assert len(exponents) == 11
    for k in range(11):
        g = bench_meta_mf.gammas(k)
        assert np.all((g >= 1 / 1.6) & (g <= 1.6))
