r"""ISBOSampler against its peers on synthetic multi-fidelity problems with a simulated cost.

Every problem has hyperparameters ``x`` and the fidelity ``B`` (``super_batch_size``, an int
on a log scale from 32 to 4096; the target is 4096). With ``s = log(B / 32) / log(4096 / 32)``
in ``[0, 1]`` the observed value is

.. math::

    y(x, B) = f(x) + \beta(x) (1 - s)^2 + (\sigma (1 - s) + \sigma_0) \varepsilon,
    \qquad \varepsilon \sim \mathcal{N}(0, 1),

so cheap evaluations are biased (by a smooth :math:`\beta(x) \ge 0` whose minimizer differs
from :math:`f`'s) and noisy, and the target fidelity is nearly exact. The cost in seconds is
simulated, ``c(x, B) = 1 + (B / 64) (1 + w(x))`` with ``w(x)`` in ``[0, 1]`` one coordinate of
``x`` (the way network width makes training dearer), and written to the user attribute
``isbo:cost`` that ISBOSampler models. Problems: ``branin`` (2 floats), ``hartmann6``
(6 floats) and ``mixed`` (2 floats, an int, a categorical; :math:`f^* = 0` by construction).

Methods, each given the same cost budget and trial cap: ``isbo-es``, ``isbo-mes``
(ISBOSampler), ``gp`` and ``tpe`` (Optuna's GPSampler and TPESampler with ``B`` as an ordinary
parameter), ``gp-target`` (GPSampler, ``B`` pinned at the target: cost-unaware single-fidelity
BO) and ``random``. The metric is the simple regret *at the target fidelity* of the
configuration each method would hand back after every trial, ``f(x_rec) - f^*``: ISBOSampler's
``recommend(study)``, and for the others the ``x`` of the best observed value (at whatever
fidelity it was observed), evaluated without noise.

Results are appended as one JSON line per (problem, method, seed) run, so a run that is
stopped early still leaves complete runs behind; ``--report`` turns the lines into tables and
anytime plots (median and 25th/75th percentiles of regret versus cumulative cost).

Usage::

    python benchmarks/bench_synthetic.py --seeds 0 1 2 --out benchmarks/results/synthetic.jsonl
    python benchmarks/bench_synthetic.py --report benchmarks/results/synthetic.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from harness import OPTUNA_PEERS, optuna_peer

from optuna_isbo import ISBOSampler

B_LOW = 32
B_TARGET = 4096
FIDELITY = "super_batch_size"
METHODS = ("isbo-es", "isbo-mes", "gp", "tpe", "gp-target", "random")


@dataclass(frozen=True)
class Problem:
    """A synthetic problem: how to suggest ``x``, its ``f``, the bias and the noise scales."""

    name: str
    suggest: Callable[[optuna.Trial], dict[str, Any]]
    f: Callable[[dict[str, Any]], float]
    bias: Callable[[dict[str, Any]], float]
    cost_width: Callable[[dict[str, Any]], float]
    f_min: float
    noise_std: float
    target_noise_std: float


def _branin(p: dict[str, Any]) -> float:
    x1, x2 = p["x1"], p["x2"]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)


def _hartmann6(p: dict[str, Any]) -> float:
    x = np.array([p[f"x{i}"] for i in range(6)])
    return float(-(_H6_ALPHA * np.exp(-(_H6_A * (x - _H6_P) ** 2).sum(axis=1))).sum())


_MIXED_OFFSET = {"a": 0.3, "b": 0.0, "c": 0.6}


def _mixed(p: dict[str, Any]) -> float:
    # Every term is >= 0 and all vanish at x = (0.2, 0.7), k = 7, c = "b": f* = 0.
    x1, x2 = p["x1"], p["x2"]
    bowl = 2.0 * ((x1 - 0.2) ** 2 + (x2 - 0.7) ** 2)
    ripple = 0.1 * (1 - math.cos(6 * math.pi * (x1 - 0.2)))
    return bowl + ripple + 0.02 * (p["k"] - 7) ** 2 + _MIXED_OFFSET[p["c"]]


def _wave(u: Sequence[float], weights: Sequence[float], phase: float) -> float:
    """A smooth bump in [0, 1] over the unit cube: ``(1 + sin(2 pi w.u + phase)) / 2``."""
    return 0.5 * (1 + math.sin(2 * math.pi * float(np.dot(u, weights)) + phase))


PROBLEMS: dict[str, Problem] = {
    "branin": Problem(
        name="branin",
        suggest=lambda t: {
            "x1": t.suggest_float("x1", -5.0, 10.0),
            "x2": t.suggest_float("x2", 0.0, 15.0),
        },
        f=_branin,
        bias=lambda p: 20.0 * _wave([(p["x1"] + 5) / 15, p["x2"] / 15], [0.8, -0.6], 0.5),
        cost_width=lambda p: p["x2"] / 15,
        f_min=0.397887,
        noise_std=8.0,
        target_noise_std=0.1,
    ),
    "hartmann6": Problem(
        name="hartmann6",
        suggest=lambda t: {f"x{i}": t.suggest_float(f"x{i}", 0.0, 1.0) for i in range(6)},
        f=_hartmann6,
        bias=lambda p: (
            1.0 * _wave([p[f"x{i}"] for i in range(6)], [0.7, -0.5, 0.4, 0.6, -0.3, 0.5], 1.0)
        ),
        cost_width=lambda p: p["x0"],
        f_min=-3.32237,
        noise_std=0.3,
        target_noise_std=0.01,
    ),
    "mixed": Problem(
        name="mixed",
        suggest=lambda t: {
            "x1": t.suggest_float("x1", 0.0, 1.0),
            "x2": t.suggest_float("x2", 0.0, 1.0),
            "k": t.suggest_int("k", 1, 16),
            "c": t.suggest_categorical("c", ["a", "b", "c"]),
        },
        f=_mixed,
        bias=lambda p: (
            0.6 * _wave([p["x1"], p["x2"], p["k"] / 16], [-0.9, 0.7, 0.5], 0.0)
            + (0.4 if p["c"] == "b" else 0.0)
        ),
        cost_width=lambda p: (p["k"] - 1) / 15,
        f_min=0.0,
        noise_std=0.2,
        target_noise_std=0.005,
    ),
}


def unit_fidelity(b: float) -> float:
    """``s = log(B / B_LOW) / log(B_TARGET / B_LOW)``."""
    return math.log(b / B_LOW) / math.log(B_TARGET / B_LOW)


def observe(
    problem: Problem, params: dict[str, Any], b: int, rng: np.random.Generator
) -> tuple[float, float]:
    """A noisy value at fidelity ``b`` and its simulated cost in seconds."""
    s = unit_fidelity(b)
    std = problem.noise_std * (1 - s) + problem.target_noise_std
    value = problem.f(params) + problem.bias(params) * (1 - s) ** 2 + std * rng.normal()
    cost_seconds = 1.0 + b / 64 * (1 + problem.cost_width(params))
    return value, cost_seconds


def make_sampler(method: str, seed: int) -> optuna.samplers.BaseSampler:
    if method == "isbo-es":
        return ISBOSampler(seed=seed)
    if method == "isbo-mes":
        return ISBOSampler(seed=seed, acquisition="mes")
    if method == "gp-target":
        return optuna_peer("gp", seed)
    if method in OPTUNA_PEERS:
        return optuna_peer(method, seed)
    raise ValueError(f"Unknown `method` {method!r}; choose from {METHODS}.")


def run_one(
    problem: Problem,
    method: str,
    seed: int,
    budget_seconds: float,
    max_trials: int,
    recommend_every: int = 1,
) -> dict[str, Any]:
    """One optimization run; the regret of the recommendation after every trial.

    ISBOSampler's ``recommend`` (a GP fit) is called after every ``recommend_every``-th trial
    and after the last one; in between, the previous recommendation stands.
    """
    sampler = make_sampler(method, seed)
    study = optuna.create_study(sampler=sampler)
    rng = np.random.default_rng([seed, 7919])
    cumulative_cost = 0.0
    costs, regrets, fidelities = [], [], []
    sampler_seconds = 0.0
    best_value, best_params = math.inf, {}
    recommended: dict[str, Any] = {}
    while cumulative_cost < budget_seconds and len(costs) < max_trials:
        start = time.perf_counter()
        trial = study.ask()
        params = problem.suggest(trial)
        if method == "gp-target":
            b = B_TARGET
        else:
            b = trial.suggest_int(FIDELITY, B_LOW, B_TARGET, log=True)
        sampler_seconds += time.perf_counter() - start
        value, cost_seconds = observe(problem, params, b, rng)
        trial.set_user_attr("isbo:cost", cost_seconds)
        study.tell(trial, value)
        cumulative_cost += cost_seconds
        if value < best_value:
            best_value, best_params = value, params
        n_done = len(costs) + 1
        last = cumulative_cost >= budget_seconds or n_done >= max_trials
        if isinstance(sampler, ISBOSampler) and (n_done % recommend_every == 0 or last):
            start = time.perf_counter()
            recommended = sampler.recommend(study)
            sampler_seconds += time.perf_counter() - start
            recommended.pop(FIDELITY, None)
        elif not isinstance(sampler, ISBOSampler) or not recommended:
            recommended = best_params
        costs.append(cumulative_cost)
        regrets.append(problem.f(recommended) - problem.f_min)
        fidelities.append(b)
    return {
        "problem": problem.name,
        "method": method,
        "seed": seed,
        "cumulative_cost_seconds": costs,
        "regret": regrets,
        "fidelity": fidelities,
        "sampler_seconds": sampler_seconds,
    }


# -- report ----------------------------------------------------------------------------------
def regret_at(run: dict[str, Any], budget_seconds: float) -> float:
    """Regret of the recommendation after the last trial finished within ``budget_seconds``."""
    regret = math.inf
    for cost, r in zip(run["cumulative_cost_seconds"], run["regret"], strict=True):
        if cost > budget_seconds:
            break
        regret = r
    return regret


def load_runs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    runs = []
    for path in paths:
        with path.open() as fh:
            runs.extend(json.loads(line) for line in fh if line.strip())
    return runs


def complete_seeds(runs: list[dict[str, Any]], problem: str, methods: Sequence[str]) -> list[int]:
    """Seeds for which every method has a run on ``problem``."""
    have: dict[str, set[int]] = {m: set() for m in methods}
    for r in runs:
        if r["problem"] == problem and r["method"] in have:
            have[r["method"]].add(r["seed"])
    return sorted(set.intersection(*have.values())) if have else []


def report(runs: list[dict[str, Any]], budget_seconds: float, out_dir: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    problems = [p for p in PROBLEMS if any(r["problem"] == p for r in runs)]
    grid = np.geomspace(budget_seconds / 100, budget_seconds, 200)
    fractions = (0.1, 0.25, 0.5, 1.0)
    summary: dict[str, Any] = {}
    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4), squeeze=False)
    for ax, problem in zip(axes[0], problems, strict=True):
        seeds = complete_seeds(runs, problem, methods)
        by_method = {
            m: [
                r
                for r in runs
                if r["problem"] == problem and r["method"] == m and r["seed"] in seeds
            ]
            for m in methods
        }
        curves = {
            m: np.array([[regret_at(r, c) for c in grid] for r in rs])
            for m, rs in by_method.items()
        }
        medians = {m: np.median(c, axis=0) for m, c in curves.items()}
        entry: dict[str, Any] = {"seeds": seeds, "methods": {}}
        print(f"\n### {problem} ({len(seeds)} seeds: {seeds}; budget {budget_seconds:.0f} s)\n")
        print(
            "| method | "
            + " | ".join(f"regret @ {f:g} budget" for f in fractions)
            + " | trials | sampler s / run |"
        )
        print("|---|" + "---|" * (len(fractions) + 2))
        for m in methods:
            rs = by_method[m]
            cells = []
            at = {}
            for f in fractions:
                values = np.array([regret_at(r, f * budget_seconds) for r in rs])
                q25, q50, q75 = np.percentile(values, [25, 50, 75])
                at[str(f)] = [float(q25), float(q50), float(q75)]
                cells.append(f"{q50:.3g} ({q25:.3g}-{q75:.3g})")
            n_trials = float(np.median([len(r["regret"]) for r in rs]))
            sampler_s = float(np.median([r["sampler_seconds"] for r in rs]))
            entry["methods"][m] = {
                "regret_at_fraction": at,
                "trials": n_trials,
                "sampler_seconds": sampler_s,
            }
            print(f"| {m} | " + " | ".join(cells) + f" | {n_trials:.0f} | {sampler_s:.1f} |")
        # Cost for each method's median curve to first reach each peer's final median regret.
        print("\nCost (s) of the median curve to first reach the peer's final median regret:\n")
        isbo = [m for m in methods if m.startswith("isbo")]
        peers = [m for m in methods if not m.startswith("isbo")]
        print(
            "| peer | final median regret | peer cost | "
            + " | ".join(f"{m} cost | {m} / peer" for m in isbo)
            + " |"
        )
        print("|---|---|---|" + "---|---|" * len(isbo))
        entry["cost_to_reach"] = {}
        for peer in peers:
            level = medians[peer][-1]
            peer_cost = _first_cost(grid, medians[peer], level)
            row = [f"{level:.3g}", f"{peer_cost:.0f}"]
            entry["cost_to_reach"][peer] = {"level": float(level), "peer_cost": peer_cost}
            for m in isbo:
                c = _first_cost(grid, medians[m], level)
                entry["cost_to_reach"][peer][m] = c
                row += [
                    f"{c:.0f}" if math.isfinite(c) else "not reached",
                    f"{c / peer_cost:.2f}" if math.isfinite(c) else "-",
                ]
            print(f"| {peer} | " + " | ".join(row) + " |")
        summary[problem] = entry
        for m in methods:
            q25, q75 = np.percentile(curves[m], [25, 75], axis=0)
            (line,) = ax.plot(grid, medians[m], label=m)
            ax.fill_between(grid, q25, q75, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cumulative simulated cost (s)")
        ax.set_ylabel("regret of recommendation at target")
        ax.set_title(f"{problem} ({len(seeds)} seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "synthetic.png", dpi=120)
    (out_dir / "synthetic.json").write_text(json.dumps(summary, indent=1))
    return summary


def _first_cost(grid: np.ndarray, curve: np.ndarray, level: float) -> float:
    hits = np.nonzero(curve <= level * (1 + 1e-9))[0]
    return float(grid[hits[0]]) if hits.size else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--budget-seconds", type=float, default=2000.0)
    parser.add_argument("--max-trials", type=int, default=40)
    parser.add_argument(
        "--recommend-every", type=int, default=1, help="ISBO recommends after every k-th trial"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/synthetic.jsonl"))
    parser.add_argument(
        "--report", type=Path, nargs="+", help="summarize these JSONL files and exit"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.report:
        report(load_runs(args.report), args.budget_seconds, args.out_dir)
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.problems:
            for method in args.methods:
                start = time.perf_counter()
                run = run_one(
                    PROBLEMS[name],
                    method,
                    seed,
                    args.budget_seconds,
                    args.max_trials,
                    args.recommend_every,
                )
                with args.out.open("a") as fh:
                    fh.write(json.dumps(run) + "\n")
                print(
                    f"seed {seed} {name:9s} {method:9s} trials {len(run['regret']):3d} "
                    f"final regret {run['regret'][-1]:.4g} "
                    f"wall {time.perf_counter() - start:.1f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
