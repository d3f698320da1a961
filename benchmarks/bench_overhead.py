"""Latency and memory of one ``ask`` (the sampler's own work) as the study grows.

For each number of parameters ``d`` (``--n-params``: 5, 10, 20; see :func:`search_space`) and
each number of completed trials ``n`` (``--sizes``), a study is filled with ``n`` random
trials plus the fidelity ``super_batch_size``: a third at the target fidelity, labelled as the
target search's trials, the rest spread over the fidelity range, values from a synthetic
function, costs in ``isbo:cost``. Then, in a fresh process per (sampler, ``d``, ``n``), one
untimed ``ask`` (a sampler in a study has answered the previous one: warm starts and caches
set, GPSampler's too) and ``--repeats`` timed ones; ``ask`` with fixed distributions runs the
relative sampling inside it. Torch gets one thread (``--threads``, 0 for torch's default),
which makes the timings comparable on a shared machine; still, run it alone.

Samplers: ``isbo`` (the default sampler; on these studies its multi-fidelity search proposes,
the cheap trials being under its share of the cost), ``isbo-target`` (its target search,
Optuna's GPSampler on the target trials), ``isbo-mf`` (the multi-fidelity search with
verification off, the expensive path), ``gp`` (Optuna's GPSampler on all trials, the
fidelity an ordinary parameter) and ``tpe``.

Memory: the peak resident set during the timed asks above the resident set before them
(Linux ``/proc``), and the process's peak.

The growth with ``n`` is summarized by the log-log slope ``log(t2 / t1) / log(n2 / n1)``
between consecutive sizes (1 = linear, 3 = cubic). Results go to ``--out-json`` and a PNG next
to it.

Usage::

    python benchmarks/bench_overhead.py                       # 5/10/20 params, 100/500/1000
    python benchmarks/bench_overhead.py --n-params 10 --sizes 1000 2000 --samplers isbo gp
    python benchmarks/bench_overhead.py --n-params 10 --sizes 1000 --samplers isbo --profile
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from optuna_isbo import ISBOSampler

FIDELITY = "super_batch_size"
FIDELITY_DISTRIBUTION = IntDistribution(32, 4096, log=True)
# The share of the filled trials run at the target fidelity and labelled as the target
# search's; the others are spread over the fidelity range and labelled as the model's.
TARGET_SHARE = 1 / 3


def search_space(n_params: int) -> dict[str, BaseDistribution]:
    """``n_params`` hyperparameters plus the fidelity.

    Of every ten parameters six are floats (one with a step), one a log-float, two integers
    (one log) and one categorical, as in a network's tuning space; fewer than ten take the
    first ``n_params`` of that pattern in the order log-float, float, stepped float, log-int,
    categorical, int, float, ...
    """
    pattern: list[tuple[str, BaseDistribution]] = [
        ("lr", FloatDistribution(1e-4, 1.0, log=True)),
        ("momentum", FloatDistribution(0.0, 0.99)),
        ("dropout", FloatDistribution(0.0, 0.5, step=0.05)),
        ("width", IntDistribution(8, 256, log=True)),
        ("activation", CategoricalDistribution(["relu", "tanh", "gelu"])),
        ("depth", IntDistribution(1, 8)),
        ("wd", FloatDistribution(0.0, 0.1)),
        ("beta", FloatDistribution(0.5, 0.999)),
        ("warmup", FloatDistribution(0.0, 0.3)),
        ("smoothing", FloatDistribution(0.0, 0.2)),
    ]
    space: dict[str, BaseDistribution] = {}
    for i in range(n_params):
        name, dist = pattern[i % len(pattern)]
        space[name if i < len(pattern) else f"{name}_{i // len(pattern)}"] = dist
    space[FIDELITY] = FIDELITY_DISTRIBUTION
    return space


def _random_value(dist: BaseDistribution, rng: np.random.Generator) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[int(rng.integers(len(dist.choices)))]
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        value = rng.uniform(low, high)
    if isinstance(dist, IntDistribution):
        return int(min(max(round(value), dist.low), dist.high))
    if dist.step is not None:
        return float(low + round((value - low) / dist.step) * dist.step)
    return float(value)


SAMPLERS: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
    # The default sampler: on these studies its target search (GPSampler on the target trials)
    # and its multi-fidelity search alternate by their shares of the cost.
    "isbo": lambda: ISBOSampler(seed=0, n_startup_trials=1),
    # The multi-fidelity search alone (its own GP over all trials and the entropy search),
    # verification off: the expensive path.
    # The target search alone (GPSampler on the target trials, a third of the study).
    "isbo-target": lambda: ISBOSampler(seed=0, n_startup_trials=1, mf_cost_fraction=0.0),
    "isbo-mf": lambda: ISBOSampler(
        seed=0, n_startup_trials=1, verify_cost_fraction=0.0, mf_cost_fraction=1.0
    ),
    "gp": lambda: optuna.samplers.GPSampler(seed=0, n_startup_trials=1),
    "tpe": lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=1),
}


def _unit(value: Any, dist: BaseDistribution) -> float:
    """``value`` of ``dist`` mapped to [0, 1] (log scale for log distributions)."""
    if isinstance(dist, CategoricalDistribution):
        return dist.to_internal_repr(value) / max(len(dist.choices) - 1, 1)
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    if dist.log:
        return (math.log(value) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low))
    return (value - dist.low) / (dist.high - dist.low)


def synthetic_value(
    params: dict[str, Any], distributions: dict[str, BaseDistribution], rng: np.random.Generator
) -> float:
    """``sum((u - 0.3)^2)`` over the parameters but the fidelity, each mapped to ``u`` in
    [0, 1], plus ``(1 - s) N(0, 1)``, ``s`` the fidelity in [0, 1] on a log scale."""
    low, high = FIDELITY_DISTRIBUTION.low, FIDELITY_DISTRIBUTION.high
    s = math.log(params[FIDELITY] / low) / math.log(high / low)
    mean = sum((_unit(params[k], d) - 0.3) ** 2 for k, d in distributions.items() if k != FIDELITY)
    return mean + (1 - s) * float(rng.normal())


def synthetic_cost(params: dict[str, Any]) -> float:
    """The cost of a trial in seconds: ``1 + B / 256``."""
    return 1.0 + params[FIDELITY] / 256


def _filled_study(
    sampler: optuna.samplers.BaseSampler,
    n: int,
    seed: int,
    distributions: dict[str, BaseDistribution],
) -> optuna.Study:
    """A study with ``n`` completed random trials of ``distributions``.

    A third run at the target fidelity (labelled ``isbo:phase = "target"``), the rest at
    random fidelities (``"model"``); the value is a smooth function of the parameters plus a
    bias that shrinks with the fidelity, the cost ``1 + B / 256`` seconds.
    """
    rng = np.random.default_rng(seed)
    study = optuna.create_study(sampler=sampler)
    high = FIDELITY_DISTRIBUTION.high
    for _ in range(n):
        params = {k: _random_value(d, rng) for k, d in distributions.items()}
        at_target = rng.uniform() < TARGET_SHARE
        if at_target:
            params[FIDELITY] = high
        value = synthetic_value(params, distributions, rng)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=distributions,
                value=value,
                user_attrs={
                    "isbo:cost": synthetic_cost(params),
                    "isbo:phase": "target" if at_target else "model",
                },
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


def _memory_mib(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from ``/proc``, in MiB; NaN elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return math.nan


def measure(name: str, d: int, n: int, repeats: int, warmup: int, threads: int) -> dict[str, Any]:
    """Time ``repeats`` asks of sampler ``name`` on a filled study of ``n`` trials, ``d`` params.

    Runs in its own process. Memory: the process's peak resident set is reset after the study
    is built (``/proc/self/clear_refs``, Linux), so ``ask_peak_mib`` is the peak during the
    asks above the resident set before them.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads:
        import torch

        torch.set_num_threads(threads)
    distributions = search_space(d)
    study = _filled_study(SAMPLERS[name](), n, seed=n, distributions=distributions)
    # Untimed asks first: in a study the sampler has answered the previous ask (its warm
    # starts and caches are set), and so has GPSampler.
    for _ in range(warmup):
        trial = study.ask(distributions)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _memory_mib("VmRSS")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trial = study.ask(distributions)
        times.append(time.perf_counter() - start)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    peak = _memory_mib("VmHWM")
    return {
        "sampler": name,
        "n_params": d,
        "n_trials": n,
        "seconds": times,
        "peak_rss_mib": peak,
        "ask_peak_mib": peak - before,
    }


def profile_ask(name: str, d: int, n: int, threads: int, top: int = 30) -> None:
    """Print a cProfile of one warm ask (cumulative time, the ``top`` entries)."""
    import cProfile
    import pstats

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if threads:
        import torch

        torch.set_num_threads(threads)
    distributions = search_space(d)
    study = _filled_study(SAMPLERS[name](), n, seed=n, distributions=distributions)
    trial = study.ask(distributions)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    trial = study.ask(distributions)
    profiler.disable()
    print(
        f"\n## {name}, {d} parameters, {n} trials: one ask {time.perf_counter() - start:.3f} s\n"
    )
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--n-params", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed asks before the timed ones")
    parser.add_argument("--samplers", nargs="+", default=["isbo", "isbo-mf", "gp"])
    parser.add_argument(
        "--isbo-max-size",
        type=int,
        default=None,
        help="skip the ISBO samplers at sizes above this (they are the slow ones)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (0: torch's default)"
    )
    parser.add_argument("--out-json", type=Path, default=Path("benchmarks/results/overhead.json"))
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one warm ask per (sampler, d, n) with cProfile and print where it goes",
    )
    args = parser.parse_args()
    if args.profile:
        for d in args.n_params:
            for n in args.sizes:
                for name in args.samplers:
                    profile_ask(name, d, n, args.threads)
        return

    medians: dict[tuple[str, int], float] = {}
    all_times: dict[str, list[float]] = {}
    rows = []
    context = multiprocessing.get_context("spawn")
    for d in args.n_params:
        for n in args.sizes:
            for name in args.samplers:
                if (
                    name.startswith("isbo")
                    and args.isbo_max_size is not None
                    and n > args.isbo_max_size
                ):
                    print(f"d={d:2d} n={n:4d} {name:8s} skipped (--isbo-max-size)", flush=True)
                    continue
                # A fresh process per measurement: no cache or memory peak carries over.
                with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                    row = pool.submit(
                        measure, name, d, n, args.repeats, args.warmup, args.threads
                    ).result()
                key = f"{name}@d{d}"
                medians[(key, n)] = statistics.median(row["seconds"])
                all_times[f"{key}@{n}"] = row["seconds"]
                rows.append(row)
                print(
                    f"d={d:2d} n={n:4d} {name:8s} median ask {medians[(key, n)]:.3f} s, "
                    f"peak memory during ask +{row['ask_peak_mib']:.0f} MiB "
                    f"(process {row['peak_rss_mib']:.0f} MiB)",
                    flush=True,
                )

    print("\n| params | trials | " + " | ".join(args.samplers) + " | ratios to gp |")
    print("|" + "---|" * (len(args.samplers) + 3))
    for d in args.n_params:
        for n in args.sizes:
            cells = [
                f"{medians[(f'{k}@d{d}', n)]:.3f}" if (f"{k}@d{d}", n) in medians else "skipped"
                for k in args.samplers
            ]
            gp = medians.get((f"gp@d{d}", n))
            ratios = [
                f"{k} {medians[(f'{k}@d{d}', n)] / gp:.2f}"
                for k in args.samplers
                if k != "gp" and gp and (f"{k}@d{d}", n) in medians
            ]
            print(f"| {d} | {n} | " + " | ".join(cells) + " | " + ", ".join(ratios) + " |")

    print("\nlog-log slope of the median between consecutive sizes:\n")
    keys = sorted({k for k, _ in medians})
    print("| n1 -> n2 | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for n1, n2 in zip(args.sizes, args.sizes[1:], strict=False):
        cells = [_slope(medians, key, n1, n2) for key in keys]
        print(f"| {n1} -> {n2} | " + " | ".join(cells) + " |")

    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(
        json.dumps(
            {
                "repeats": args.repeats,
                "threads": args.threads,
                "rows": rows,
                "times_seconds": all_times,
            },
            indent=1,
        )
    )
    _plot(medians, keys, args.out_json.with_suffix(".png"))


if __name__ == "__main__":
    main()
