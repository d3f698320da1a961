"""What ISBOSampler's models believe at the end of a recorded ``bench_nn_tuning.py`` study.

Rebuilds the study of one (method, seed) run from its JSON line (parameters, values, phases,
``isbo:cost`` and the trial's wall clock as its duration), fits the objective and cost GPs as
the sampler's next ``ask`` would, and prints:

- the fitted hyperparameters of the objective GP (lengthscales, the fidelity kernel's ``beta``
  and exponent, noise and its slope over the fidelity);
- the configuration with the lowest posterior mean at the target and, for that configuration
  at each fidelity of the grid: posterior mean and standard deviation of the objective, the
  observation-noise standard deviation, the correlation of an observation there with the
  target value, and the expected cost;
- the recommendation, its prediction, and what was measured when it was retrained (the
  validation errors that the run recorded).

Usage::

    python benchmarks/diagnose_fidelity_model.py benchmarks/results/nn_tuning_fashion.jsonl \\
        --method isbo --seed 0
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution

from optuna_isbo import ISBOSampler
from optuna_isbo.cost import trial_cost_seconds
from optuna_isbo.decisions import model_inputs as _inputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_nn_tuning as bench  # noqa: E402
import fashion_task  # noqa: E402  (on sys.path through bench_nn_tuning)


def distributions(method: str, settings: dict[str, Any]) -> dict[str, BaseDistribution]:
    """The search space of ``method``'s studies in ``bench_nn_tuning``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    fashion_task.suggest_hyperparameters(trial, fidelity=method == "isbo")
    if method == "isbo-steps":
        trial.suggest_int(bench.STEPS_PARAM, settings["min_steps"], settings["steps"], log=True)
    return dict(trial.distributions)


def rebuild(run: dict[str, Any], sampler: ISBOSampler) -> optuna.Study:
    """The study of ``run``: its completed trials, with phases, costs and durations."""
    space = distributions(run["method"], run)
    study = optuna.create_study(sampler=sampler)
    start = datetime.datetime(2026, 1, 1)
    for t in run["trials"]:
        if t["state"] != "COMPLETE":
            continue
        attrs: dict[str, Any] = {}
        if t["cost_seconds"] is not None:
            attrs["isbo:cost"] = t["cost_seconds"]
        if t["phase"] is not None:
            attrs["isbo:phase"] = t["phase"]
        if t["diverged"]:
            attrs["isbo:diverged"] = True
        params = {k: v for k, v in t["params"].items() if k in space}
        study.add_trial(
            optuna.trial.FrozenTrial(
                number=t["number"],
                state=optuna.trial.TrialState.COMPLETE,
                value=t["value"],
                datetime_start=start + datetime.timedelta(seconds=t["start_seconds"]),
                datetime_complete=start + datetime.timedelta(seconds=t["end_seconds"]),
                params=params,
                distributions={k: space[k] for k in params},
                user_attrs=attrs,
                system_attrs={},
                intermediate_values={},
                trial_id=t["number"],
            )
        )
    return study


def diagnose(run: dict[str, Any]) -> None:
    """Print what the sampler's models believe at the end of ``run``."""
    sampler = ISBOSampler(seed=run["seed"], n_startup_trials=run["startup_trials"])
    if run["method"] == "isbo-steps":
        sampler = ISBOSampler(
            fidelity_param=bench.STEPS_PARAM,
            seed=run["seed"],
            n_startup_trials=run["startup_trials"],
        )
    elif run["method"] != "isbo":
        raise SystemExit(f"{run['method']} chooses no fidelity; use isbo or isbo-steps.")
    study = rebuild(run, sampler)
    space, completed = sampler._recommendation_data(study)
    fit = sampler._fits.objective(study, space, completed)
    p = fit.model.params
    print(f"{run['method']} seed {run['seed']}: {len(completed)} completed trials")
    print(
        "objective GP: lengthscales "
        + " ".join(f"{float(v):.3g}" for v in p.lengthscales)
        + f"; outputscale {float(p.outputscale):.3g}; fidelity beta {float(p.fidelity_beta):.3g}"
        f", exponent {float(p.fidelity_exponent):.3g}; noise sd at the target "
        f"{fit.scale * float(p.noise.sqrt()):.4f} (objective units), slope "
        f"{float(p.noise_slope):.3g}"
    )
    X, _ = space.encode_trials(completed)
    ones = torch.ones(X.shape[0], dtype=torch.float64)
    mean_1, var_1 = fit.model.mean_var(_inputs(space, X, ones))
    k = int(mean_1.argmin())
    leader = completed[k]
    print(
        f"lowest target mean: trial {leader.number} (observed {leader.value:.4f} at "
        f"{space.fidelity_param} = {leader.params.get(space.fidelity_param)}), predicted "
        f"{fit.shift + fit.scale * float(mean_1[k]):.4f} +- "
        f"{fit.scale * float(var_1[k].sqrt()):.4f} at the target"
    )
    costs = torch.tensor([trial_cost_seconds(t) for t in completed], dtype=torch.float64)
    cost_model = sampler._fits.cost(space, costs, fit.inputs)
    target = _inputs(space, X[k : k + 1], torch.ones(1, dtype=torch.float64))
    print("| s | fidelity | mean | sd | noise sd | corr(y_s, f_target) | cost (s) |")
    print("|---|---|---|---|---|---|---|")
    for s in space.fidelity_grid(5).tolist():
        A = _inputs(space, X[k : k + 1], torch.tensor([s], dtype=torch.float64))
        mean, var = fit.model.mean_var(A)
        noise = fit.model.noise_var(A)
        cross = fit.model.cross_cov_diag(A, target)
        corr = float(cross / ((var + noise).sqrt() * var_1[k].sqrt()))
        fidelity = space.decode(X[k], float(s))[space.fidelity_param]
        print(
            f"| {s:.2f} | {fidelity} | {fit.shift + fit.scale * float(mean):.4f} | "
            f"{fit.scale * float(var.sqrt()):.4f} | {fit.scale * float(noise.sqrt()):.4f} | "
            f"{corr:.3f} | {float(cost_model.expected_seconds(A)):.2f} |"
        )
    final = run["recommendations"][-1]
    prediction = final["prediction"]
    print(
        f"recommendation at 100 %: predicted {prediction['value']:.4f} +- {prediction['std']:.4f}"
        f" ({prediction['n_target_evaluations']} target evaluations); retrained validation "
        "errors " + ", ".join(f"{v:.4f}" for v in final["validation_errors"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--method", default="isbo")
    parser.add_argument("--seed", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    runs = bench.load_runs(args.runs)
    for seed in args.seed:
        matches = [r for r in runs if r["method"] == args.method and r["seed"] == seed]
        if not matches:
            raise SystemExit(f"No {args.method} run with seed {seed} in {args.runs}.")
        diagnose(matches[-1])
        print()


if __name__ == "__main__":
    main()
