"""Latency of one ``ask`` (the sampler's own work) as the study grows.

For each number of completed trials ``n``, a study is filled with ``n`` random trials of a
search space with five mixed parameters plus the fidelity ``super_batch_size`` (values from a
synthetic function, costs in ``isbo:cost``), then the time of ``study.ask(distributions)`` is
measured several times; ``ask`` with fixed distributions runs the relative sampling inside it.
All samplers are measured in the same run, so their ratios are meaningful on a shared machine.

Usage::

    python benchmarks/bench_overhead.py --sizes 10 50 100 200 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optuna_isbo import ISBOSampler

DISTRIBUTIONS: dict[str, BaseDistribution] = {
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "momentum": FloatDistribution(0.0, 0.99),
    "dropout": FloatDistribution(0.0, 0.5, step=0.05),
    "width": IntDistribution(8, 256, log=True),
    "activation": CategoricalDistribution(["relu", "tanh", "gelu"]),
    "super_batch_size": IntDistribution(32, 4096, log=True),
}

SAMPLERS: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
    "isbo-es": lambda: ISBOSampler(seed=0, n_startup_trials=1),
    "isbo-mes": lambda: ISBOSampler(seed=0, n_startup_trials=1, acquisition="mes"),
    "gp": lambda: optuna.samplers.GPSampler(seed=0, n_startup_trials=1),
    "tpe": lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=1),
}


def _filled_study(sampler: optuna.samplers.BaseSampler, n: int, seed: int) -> optuna.Study:
    rng = np.random.default_rng(seed)
    study = optuna.create_study(sampler=sampler)
    for _ in range(n):
        params = {
            "lr": float(10 ** rng.uniform(-4, 0)),
            "momentum": float(rng.uniform(0, 0.99)),
            "dropout": float(rng.integers(0, 11) * 0.05),
            "width": int(round(2 ** rng.uniform(3, 8))),
            "activation": str(rng.choice(["relu", "tanh", "gelu"])),
            "super_batch_size": int(round(2 ** rng.uniform(5, 12))),
        }
        s = math.log(params["super_batch_size"] / 32) / math.log(4096 / 32)
        value = (math.log10(params["lr"]) + 2) ** 2 + params["dropout"] + (1 - s) * rng.normal()
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=DISTRIBUTIONS,
                value=value,
                user_attrs={"isbo:cost": 1.0 + params["super_batch_size"] / 256},
            )
        )
    return study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    medians: dict[tuple[str, int], float] = {}
    for n in args.sizes:
        for name in args.samplers:
            study = _filled_study(SAMPLERS[name](), n, seed=n)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                trial = study.ask(DISTRIBUTIONS)
                times.append(time.perf_counter() - start)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            medians[(name, n)] = statistics.median(times)
            print(f"n={n:4d} {name:9s} median ask {medians[(name, n)]:.3f} s", flush=True)

    header = "| n | " + " | ".join(args.samplers) + " | isbo-es / gp | isbo-mes / gp |"
    print("\n" + header)
    print("|" + "---|" * (len(args.samplers) + 3))
    for n in args.sizes:
        cells = [f"{medians[(name, n)]:.3f}" for name in args.samplers]
        ratios = [
            f"{medians[(k, n)] / medians[('gp', n)]:.2f}"
            if (k, n) in medians and ("gp", n) in medians
            else "-"
            for k in ("isbo-es", "isbo-mes")
        ]
        print(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
