"""Latency of one ``ask`` (the sampler's own work) as the study grows.

For each number of completed trials ``n``, a study is filled with ``n`` random trials of a
search space with five mixed parameters plus the fidelity ``super_batch_size`` (values from a
synthetic function, costs in ``isbo:cost``), then the time of ``study.ask(distributions)`` is
measured several times; ``ask`` with fixed distributions runs the relative sampling inside it.
All samplers are measured in the same run, so their ratios are meaningful on a shared machine.
Torch runs with its default number of threads, as a user's study would, unless ``--threads``.

The growth with ``n`` is summarized by the log-log slope ``log(t2 / t1) / log(n2 / n1)``
between consecutive sizes (1 = linear, 3 = cubic). Results go to ``--out-json`` and a PNG next
to it.

Usage::

    python benchmarks/bench_overhead.py --sizes 10 50 100 200 500 --repeats 3
    python benchmarks/bench_overhead.py --sizes 10 50 100 200 500 --isbo-max-size 200
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

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
    # Verification off: the filled studies have almost no target-fidelity trials, so every ask
    # would verify the best configuration, which only fits the two GPs. The acquisition path
    # measured here is the expensive one.
    "isbo-es": lambda: ISBOSampler(seed=0, n_startup_trials=1, verify_cost_fraction=0.0),
    "isbo-mes": lambda: ISBOSampler(
        seed=0, n_startup_trials=1, acquisition="mes", verify_cost_fraction=0.0
    ),
    "isbo-es-verify": lambda: ISBOSampler(seed=0, n_startup_trials=1),
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


def _slope(medians: dict[tuple[str, int], float], name: str, n1: int, n2: int) -> str:
    if (name, n1) not in medians or (name, n2) not in medians:
        return "-"
    return f"{math.log(medians[(name, n2)] / medians[(name, n1)]) / math.log(n2 / n1):.2f}"


def _plot(medians: dict[tuple[str, int], float], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for name in names:
        sizes = sorted(n for (k, n) in medians if k == name)
        ax.plot(sizes, [medians[(name, n)] for n in sizes], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("completed trials")
    ax.set_ylabel("median ask latency (s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 200, 500])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument(
        "--isbo-max-size",
        type=int,
        default=None,
        help="skip the ISBO samplers at sizes above this (they are the slow ones)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--out-json", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    medians: dict[tuple[str, int], float] = {}
    all_times: dict[str, list[float]] = {}
    for n in args.sizes:
        for name in args.samplers:
            if (
                name.startswith("isbo")
                and args.isbo_max_size is not None
                and n > args.isbo_max_size
            ):
                print(f"n={n:4d} {name:9s} skipped (--isbo-max-size)", flush=True)
                continue
            study = _filled_study(SAMPLERS[name](), n, seed=n)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                trial = study.ask(DISTRIBUTIONS)
                times.append(time.perf_counter() - start)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            medians[(name, n)] = statistics.median(times)
            all_times[f"{name}@{n}"] = times
            print(f"n={n:4d} {name:9s} median ask {medians[(name, n)]:.3f} s", flush=True)

    header = "| n | " + " | ".join(args.samplers) + " | isbo-es / gp | isbo-mes / gp |"
    print("\n" + header)
    print("|" + "---|" * (len(args.samplers) + 3))
    for n in args.sizes:
        cells = [
            f"{medians[(name, n)]:.3f}" if (name, n) in medians else "skipped"
            for name in args.samplers
        ]
        ratios = [
            f"{medians[(k, n)] / medians[('gp', n)]:.2f}"
            if (k, n) in medians and ("gp", n) in medians
            else "-"
            for k in ("isbo-es", "isbo-mes")
        ]
        print(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

    print("\nlog-log slope of the median between consecutive sizes:\n")
    print("| n1 -> n2 | " + " | ".join(args.samplers) + " |")
    print("|" + "---|" * (len(args.samplers) + 1))
    for n1, n2 in zip(args.sizes, args.sizes[1:], strict=False):
        cells = [_slope(medians, name, n1, n2) for name in args.samplers]
        print(f"| {n1} -> {n2} | " + " | ".join(cells) + " |")

    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(
        json.dumps(
            {"repeats": args.repeats, "times_seconds": all_times, "sizes": args.sizes}, indent=1
        )
    )
    _plot(
        medians,
        [k for k in args.samplers if any(name == k for name, _ in medians)],
        args.out_json.with_suffix(".png"),
    )


if __name__ == "__main__":
    main()
