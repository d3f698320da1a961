r"""A pre-trained prior with a fidelity, on a family of related multi-fidelity tasks.

The family: BoTorch's AugmentedHartmann (6 ``x`` in ``[0, 1]`` and a continuous fidelity, as
``aug-hartmann`` of ``bench_mf.py``) with each coordinate warped, task ``k`` evaluating the
function at :math:`x_j^{\gamma_{kj}}`, :math:`\log \gamma_{kj}` uniform in
:math:`[-\log 1.6, \log 1.6]` (seeded by ``k``). The warp is a bijection of ``[0, 1]``, so every
task keeps the minimum value ``-3.32237`` and the landscape's shape, while its minimizer moves
(the first coordinate's 0.20 to anywhere in 0.08-0.37). Tasks 0, 1 and 2 are held out; the
prior (:func:`optuna_isbo.fit_prior`, fidelity included) is pre-trained on finished
``isbo-mes`` studies of tasks 3 to 10 (seed 1000, kept in ``results/meta_mf_studies.db``).

Methods: ``isbo-mes`` (no prior) and ``isbo-prior`` (the same with the prior), through
``bench_mf.py``'s harness: the affine cost, a budget of 30 target evaluations, at most 100
trials, recommendations scored by their noiseless target value (refreshed every third trial).
The report (``bench_mf.prior_goals``) gives, per held-out task, the share of the budget at
which the prior's median curve reaches the no-prior final median (the goal: a third), and
both final medians and 90th percentiles.

Usage::

    python benchmarks/bench_meta_mf.py --seeds 0 1 2 3 4 5 6 7 8 9 --jobs 2 \
        --out benchmarks/results/meta_mf_hartmann.jsonl
    python benchmarks/bench_meta_mf.py --report benchmarks/results/meta_mf_hartmann.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from optuna_isbo import GPPrior, fit_prior

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mf  # noqa: E402
from harness import run_tasks  # noqa: E402
from mf_protocol import Driver, MFProblem  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT = (0, 1, 2)
TRAINING = tuple(range(3, 11))
META_SEED = 1000
MAX_LOG_GAMMA = math.log(1.6)
NAMES = tuple(f"x{i}" for i in range(6))
METHODS = ("isbo-mes", "isbo-prior")
COST_MODEL = "affine"


def gammas(k: int) -> np.ndarray:
    """The warp exponents of task ``k``, shape ``(6,)``."""
    rng = np.random.default_rng([k, 271828])
    return np.exp(rng.uniform(-MAX_LOG_GAMMA, MAX_LOG_GAMMA, size=len(NAMES)))


@cache
def task(k: int) -> MFProblem:
    """Task ``k`` of the family (see the module docstring)."""
    base = bench_mf.build_problems()["aug-hartmann"]
    gamma = gammas(k)

    def warp(params: dict[str, Any]) -> dict[str, Any]:
        return {n: float(params[n]) ** g for n, g in zip(NAMES, gamma, strict=True)}

    return dataclasses.replace(
        base,
        name=f"hartmann-warp-{k}",
        observe=lambda params, s, rng, noise: base.observe(warp(params), s, rng, noise),
        target=lambda params: base.target(warp(params)),
    )


def prior_path(out: Path) -> Path:
    return out.parent / "meta_mf_priors" / "hartmann-warp.json"


def fit_family_prior(out: Path, budget: float, max_trials: int) -> GPPrior:
    """The prior from the training tasks' studies, fitted once and kept beside ``out``."""
    path = prior_path(out)
    if path.exists():
        return GPPrior.load(path)
    storage = f"sqlite:///{out.parent / 'meta_mf_studies.db'}"
    studies = [
        bench_mf.kept_study(
            storage, task(k), COST_MODEL, "isbo-mes", META_SEED, budget, max_trials
        )
        for k in TRAINING
    ]
    prior = fit_prior(
        studies, fidelity_param=bench_mf.N_STEPS, target_fidelity=bench_mf.N_STEPS_HIGH, seed=0
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    prior.save(path)
    return prior


def _task(item: tuple[int, str, int, float, int, str]) -> dict[str, Any]:
    k, method, seed, budget, max_trials, path = item

    def factory(problem: MFProblem, cost_model: str, m: str, s: int, *rest: Any) -> Driver:
        prior = GPPrior.load(path) if method == "isbo-prior" else None
        return bench_mf.OptunaDriver(problem, "isbo-mes", s, prior=prior)

    run = bench_mf.run_one(task(k), COST_MODEL, method, seed, budget, max_trials, 3, 1.0, factory)
    return {**run, "gammas": gammas(k).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--tasks", type=int, nargs="+", default=list(HELD_OUT))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--budget", type=float, default=30.0)
    parser.add_argument("--max-trials", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "meta_mf_hartmann.jsonl")
    parser.add_argument("--report", type=Path, nargs="+")
    args = parser.parse_args()
    if args.report:
        bench_mf.prior_goals(bench_mf.load_runs(args.report))
        return
    if set(args.tasks) & set(TRAINING):
        raise SystemExit(f"Tasks {TRAINING} train the prior; hold out others.")
    bench_mf._init_worker()
    fit_family_prior(args.out, args.budget, args.max_trials)
    items = [
        (k, method, seed, args.budget, args.max_trials, str(prior_path(args.out)))
        for seed in args.seeds
        for k in args.tasks
        for method in args.methods
    ]

    def describe(run: dict[str, Any]) -> str:
        return (
            f"seed {run['seed']} {run['problem']} {run['method']:10s} trials "
            f"{len(run['cost']):4d} final regret {run['regret'][-1]:.4f} "
            f"wall {run['wall_seconds']:.0f} s"
        )

    run_tasks(
        _task,
        items,
        jobs=args.jobs,
        out=args.out,
        describe=describe,
        initializer=bench_mf._init_worker,
    )
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
