"""ISSGDCallback with the user's own DataLoader: batch sampler, hooks, devices, prices."""

from __future__ import annotations

import copy
import time
from typing import Any

import optuna
import pytest
import torch
import torch.nn.functional as F
from issgd_data import N_CLASSES, N_FEATURES, skewed_data  # noqa: E402  (tests/ helper)
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from optuna_isbo.issgd import ISSGD
from optuna_isbo.issgd.callback import ISSGDCallback
from optuna_isbo.issgd.sampling import draw_by_score, importance_weights, sample_by_score


class _CountingDataset(Dataset[tuple[Tensor, Tensor]]):
    """Counts the items read; adds noise as a stand-in for random augmentation."""

    def __init__(self, x: Tensor, y: Tensor, noise: float = 0.0) -> None:
        self.x, self.y, self.noise, self.reads = x, y, noise, 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        self.reads += 1
        x = self.x[index]
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return x, self.y[index]


def _train(
    issgd: ISSGDCallback, model: nn.Module, loader: DataLoader, lr: float = 0.05
) -> list[int]:
    """A user's loop; returns the number of rows the loader delivered at each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    rows = []
    issgd.start()
    for inputs, targets in loader:
        rows.append(len(targets))
        inputs, targets, weights = issgd.before_step(inputs, targets)
        assert len(targets) == issgd.batch_size and torch.isfinite(weights).all()
        optimizer.zero_grad()
        issgd.weighted_loss(model(inputs), targets, weights).backward()
        optimizer.step()
        issgd.after_step()
    return rows


# ------------------------------------------------------------------------ the data path


def test_uniform_steps_load_b_samples_and_importance_steps_load_b_large() -> None:
    x, y, model = skewed_data(300, seed=0)
    data = _CountingDataset(x, y)
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=32, tau_threshold=1.0, seed=0)
    loader = DataLoader(data, batch_sampler=issgd.batch_sampler(data, n_steps=40))
    rows = _train(issgd, model, loader)
    stats = issgd.stats
    assert len(rows) == 40 == stats["steps"]
    assert set(rows) == {4, 32}
    assert rows.count(32) == stats["is_steps"] > 0 and stats["samples_scored"] == 32 * rows.count(
        32
    )
    assert data.reads == sum(rows)  # a uniform step never pays for loading B samples
    assert stats["cost_seconds"] == pytest.approx(
        stats["scoring_seconds"] + stats["sampling_seconds"] + stats["training_seconds"]
    )


def test_workers_and_augmentation_work_unchanged() -> None:
    x, y, model = skewed_data(200, seed=1)
    data = _CountingDataset(x, y, noise=0.01)
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16, tau_threshold=1.0, seed=1)
    loader = DataLoader(
        data,
        batch_sampler=issgd.batch_sampler(data, n_steps=30),
        num_workers=2,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(0),
    )
    rows = _train(issgd, model, loader)
    assert len(rows) == 30 and set(rows) <= {4, 16}
    assert issgd.stats["is_steps"] == rows.count(16) > 0


def test_the_score_is_that_of_the_augmented_sample_trained_on() -> None:
    x, y, model = skewed_data(64, seed=2)
    augmented = x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    super_inputs, super_targets = augmented[:16], y[:16]
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16, seed=0)
    scores = issgd.scores(super_inputs, super_targets)
    inputs, targets, weights = issgd.before_step(super_inputs, super_targets)
    for row, target, weight in zip(inputs, targets, weights, strict=True):
        (position,) = (super_inputs == row).all(1).nonzero()[0]
        assert target == super_targets[position]  # the very augmented sample, not a new one
        expected = importance_weights(scores, position.reshape(1))[0]
        torch.testing.assert_close(weight, expected)


def test_a_minibatch_passes_through_with_weights_one_and_feeds_tau() -> None:
    x, y, model = skewed_data(32, seed=3)
    issgd = ISSGDCallback(model, batch_size=8, super_batch_size=16, seed=0)
    given = x[:8]
    inputs, targets, weights = issgd.before_step(given, y[:8])
    assert inputs is given
    assert torch.equal(weights, torch.ones(8)) and issgd.tau == 0.0
    loss = issgd.weighted_loss(model(inputs), targets)  # weights of the current step
    torch.testing.assert_close(loss, F.cross_entropy(model(inputs), targets))
    assert issgd.tau > 0
    issgd.after_step()


def test_dict_inputs_are_selected_together() -> None:
    x, y, linear = skewed_data(16, seed=4)

    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = linear

        def forward(self, batch: dict[str, Tensor]) -> Tensor:
            return self.linear(batch["x"] * batch["scale"][:, None])

    model = DictModel()
    inputs = {"x": x, "scale": torch.arange(16.0) + 1}
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16, seed=0)
    chosen, targets, _ = issgd.before_step(inputs, y)
    assert set(chosen) == {"x", "scale"} and len(chosen["x"]) == len(chosen["scale"]) == 4
    for row, scale in zip(chosen["x"], chosen["scale"], strict=True):
        assert torch.equal(row, x[int(scale) - 1])


class _NamedSamples(Dataset[tuple[dict[str, Any], Tensor]]):
    """Dict items with a string field, which default_collate batches as a list of strings."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[dict[str, Any], Tensor]:
        return {"x": self.x[index], "name": f"sample-{index}", "id": index}, self.y[index]


def test_per_sample_lists_are_selected_with_the_tensors() -> None:
    x, y, linear = skewed_data(64, seed=5)
    rows_seen = []

    class NamedModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = linear

        def forward(self, batch: dict[str, Any]) -> Tensor:
            # every chunk of a scored super-batch gets the names of its own rows
            assert len(batch["name"]) == len(batch["x"])
            rows_seen.append(len(batch["x"]))
            return self.linear(batch["x"])

    model = NamedModel()
    dataset = _NamedSamples(x, y)
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16, seed=0, forward_batch_size=5)
    loader = DataLoader(dataset, batch_size=16, shuffle=True)  # super-batches: scored steps
    for batch, targets in loader:
        assert isinstance(batch["name"], list) and len(batch["name"]) == 16
        chosen, chosen_targets, _ = issgd.before_step(batch, targets)
        assert isinstance(chosen["name"], list) and len(chosen["name"]) == 4
        assert chosen["name"] == [f"sample-{int(i)}" for i in chosen["id"]]
        assert torch.equal(chosen_targets, y[chosen["id"]])
        issgd.weighted_loss(model(chosen), chosen_targets).backward()
        issgd.after_step()
    assert 5 in rows_seen and 1 in rows_seen  # chunks of 5, 5, 5, 1 rows

    # In a tuple too, keeping its type; a list of another length is no per-sample field.
    class TupleModel(nn.Module):
        def forward(self, batch: tuple[Tensor, tuple[str, ...], list[str]]) -> Tensor:
            return linear(batch[0])

    issgd = ISSGDCallback(TupleModel(), batch_size=4, super_batch_size=16, seed=1)
    names = tuple(f"sample-{i}" for i in range(16))
    (x_chosen, names_chosen, modes), _, _ = issgd.before_step(
        (x[:16], names, ["train", "eval"]), y[:16]
    )
    assert isinstance(names_chosen, tuple) and len(names_chosen) == 4
    for row, name in zip(x_chosen, names_chosen, strict=True):
        assert torch.equal(row, x[int(name.removeprefix("sample-"))])
    assert modes == ["train", "eval"]


def test_issgd_batches_equal_a_user_loop_over_a_data_loader() -> None:
    x, y, model = skewed_data(120, seed=5)
    data = TensorDataset(x, y)
    kwargs: dict[str, Any] = dict(batch_size=4, super_batch_size=16, tau_threshold=1.0, seed=7)
    simple_model, loop_model = copy.deepcopy(model), copy.deepcopy(model)
    simple = ISSGD(simple_model, data, **kwargs)
    optimizer = torch.optim.SGD(simple_model.parameters(), lr=0.1)
    simple_batches = []
    for inputs, targets, weights in simple.batches(30):
        simple_batches.append((inputs, targets, weights))
        optimizer.zero_grad()
        simple.weighted_loss(simple_model(inputs), targets, weights).backward()
        optimizer.step()

    issgd = ISSGDCallback(loop_model, **kwargs)
    optimizer = torch.optim.SGD(loop_model.parameters(), lr=0.1)
    loader = DataLoader(data, batch_sampler=issgd.batch_sampler(data, n_steps=30))
    for step, (inputs, targets) in enumerate(loader):
        inputs, targets, weights = issgd.before_step(inputs, targets)
        for a, b in zip((inputs, targets, weights), simple_batches[step], strict=True):
            assert torch.equal(a, b)
        optimizer.zero_grad()
        issgd.weighted_loss(loop_model(inputs), targets, weights).backward()
        optimizer.step()
        issgd.after_step()
    assert simple.stats["is_steps"] == issgd.stats["is_steps"] > 0
    for p, q in zip(simple_model.parameters(), loop_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_report_writes_the_rule_to_a_real_study() -> None:
    x, y, model = skewed_data(100, seed=6)

    def objective(trial: optuna.Trial) -> float:
        issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16, seed=0)
        data = TensorDataset(x, y)
        _train(issgd, model, DataLoader(data, batch_sampler=issgd.batch_sampler(data, 25)))
        issgd.report(trial)
        return 0.0

    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    attrs = study.trials[0].user_attrs
    assert attrs["isbo:steps"] == 25 and attrs["isbo:switch"] == "fidelity"
    assert attrs["isbo:switch_rule"] in ("warmup", "fidelity")
    assert attrs["isbo:cost"] > 0 and "isbo:cost_seconds" not in attrs


# -------------------------------------------------------------------- a switch that knows prices


class _Priced(nn.Module):
    """A linear model whose training and scoring forward passes take a set number of seconds."""

    def __init__(self, linear: nn.Linear, train_seconds: float, score_seconds: float) -> None:
        super().__init__()
        self.linear = linear
        self.train_seconds, self.score_seconds = train_seconds, score_seconds

    def forward(self, x: Tensor) -> Tensor:
        seconds = self.train_seconds if self.training else self.score_seconds
        if seconds > 0:  # sleep(0) would still yield the CPU to other processes
            time.sleep(seconds)
        return self.linear(x)


@pytest.mark.parametrize(
    ("train_seconds", "score_seconds", "forward_batch_size", "pays"),
    [(0.004, 0.0, 16, True), (0.0, 0.004, 1, False)],
    ids=["cheap-scoring", "dear-scoring"],
)
def test_speed_switch_decides_from_measured_seconds(
    train_seconds: float, score_seconds: float, forward_batch_size: int, pays: bool
) -> None:
    x, y, linear = skewed_data(200, seed=8)
    model = _Priced(linear, train_seconds, score_seconds)
    b, big_b = 4, 16
    issgd = ISSGD(
        model,
        TensorDataset(x, y),
        batch_size=b,
        super_batch_size=big_b,
        switch="speed",
        warmup_steps=3,
        forward_batch_size=forward_batch_size,
        seed=0,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    rules = []
    for inputs, targets, weights in issgd.batches(40):
        optimizer.zero_grad()
        issgd.weighted_loss(model(inputs), targets, weights).backward()
        optimizer.step()
        rules.append(issgd.stats["switch_rule"])
    stats = issgd.stats
    assert "probe" in rules and rules[-1] == "measured-cost"
    if pays:  # scoring 16 samples costs next to nothing against a 4 ms training step
        assert stats["cost_ratio"] < min(1.5, stats["variance_ratio"])
        assert stats["is_steps"] > 15 and issgd.is_active
    else:  # 16 passes of 4 ms of scoring against a training step of well under 1 ms
        assert stats["cost_ratio"] > 10 and not issgd.is_active
        assert stats["is_steps"] <= 3  # the probe only
    assert stats["uniform_step_seconds"] > 0 and stats["is_step_seconds"] > 0


# ---------------------------------------------------------------- devices, precision, modes


def test_scoring_under_autocast_dtype_is_float32_and_close() -> None:
    x, y, model = skewed_data(64, seed=9)
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    exact = ISSGDCallback(model, batch_size=4, super_batch_size=16).scores(x, y)
    bf16 = ISSGDCallback(
        model, batch_size=4, super_batch_size=16, autocast_dtype=torch.bfloat16
    ).scores(x, y)
    assert seen[-1] == torch.bfloat16 and bf16.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: logits off by ~|z| 2^-8 <= 0.1, scores by < 0.2
    torch.testing.assert_close(bf16, exact, atol=0.2, rtol=0.0)


def test_scores_are_ordinary_tensors_and_inference_mode_can_be_turned_off() -> None:
    class Cached(nn.Linear):
        """Caches a tensor made in its first forward pass and uses it in training."""

        def __init__(self) -> None:
            super().__init__(N_FEATURES, N_CLASSES)
            self.cache: Tensor | None = None

        def forward(self, x: Tensor) -> Tensor:
            if self.cache is None:
                self.cache = torch.full((N_CLASSES,), 2.0)
            return super().forward(x) * self.cache

    x, y, _ = skewed_data(32, seed=10)
    scores = ISSGDCallback(nn.Linear(N_FEATURES, N_CLASSES), batch_size=4, super_batch_size=16)
    assert not scores.scores(x, y).is_inference()

    for inference_mode in (True, False):
        model = Cached()
        issgd = ISSGDCallback(
            model, batch_size=4, super_batch_size=16, inference_mode=inference_mode
        )
        inputs, targets, weights = issgd.before_step(x[:16], y[:16])  # first forward: scoring
        if inference_mode:
            with pytest.raises(RuntimeError, match="Inference tensors"):
                issgd.weighted_loss(model(inputs), targets, weights).backward()
        else:
            issgd.weighted_loss(model(inputs), targets, weights).backward()
            assert model.weight.grad is not None


def test_selection_stays_on_the_scores_device_and_falls_back_without_raising() -> None:
    scores = torch.tensor([0.0, 1.0, 3.0, 0.0])
    positions, weights = sample_by_score(scores, 4000, torch.Generator().manual_seed(0))
    assert positions.device == scores.device and weights.device == scores.device
    assert set(positions.tolist()) == {1, 2}  # zero scores are never drawn
    assert abs(float((positions == 2).float().mean()) - 0.75) < 0.03  # 4.6 standard errors
    torch.testing.assert_close(
        weights[positions == 2], torch.full_like(weights[positions == 2], 4 / 12)
    )
    for bad in ([0.0, 0.0], [1.0, float("nan")], [1.0, -0.5], [1.0, float("inf")]):
        positions, weights, usable = draw_by_score(torch.tensor(bad), 8)
        assert not bool(usable) and torch.equal(weights, torch.ones(8))
        assert bool(((positions >= 0) & (positions < 2)).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_step_has_no_host_synchronization() -> None:
    x, y, model = skewed_data(64, seed=11)
    device = torch.device("cuda")
    model = model.to(device)
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16, tau_threshold=0.0, seed=0)
    inputs, targets = x[:16].to(device), y[:16].to(device)
    issgd.before_step(inputs[:4], targets[:4])  # first batch: the class range is checked once
    issgd.weighted_loss(model(inputs[:4]), targets[:4]).backward()
    issgd.after_step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        chosen, chosen_targets, weights = issgd.before_step(inputs, targets)
        loss = issgd.weighted_loss(model(chosen), chosen_targets)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    issgd.after_step()
    assert chosen.device.type == weights.device.type == "cuda"
    assert issgd.stats["is_steps"] == 1 and issgd.stats["scoring_seconds"] > 0


# --------------------------------------------------------------------------------- errors


def test_batches_of_another_size_or_shape_raise_clearly() -> None:
    x, y, model = skewed_data(32, seed=12)
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16)
    with pytest.raises(ValueError, match=r"batch_size=4 or super_batch_size=16 rows, got 8"):
        issgd.before_step(x[:8], y[:8])
    with pytest.raises(ValueError, match="one row per sample, got 4 inputs"):
        issgd.before_step(x[:4], y[:5])
    with pytest.raises(ValueError, match="targets must be a tensor"):
        issgd.before_step(x[:4], [0, 1, 2, 0])  # type: ignore[arg-type]
    # 0-d targets: the package's own message, not torch's "len() of a 0-d tensor"
    zero_d = r"4 inputs and targets of shape \(\)\. A 0-d tensor has no rows"
    with pytest.raises(ValueError, match=zero_d):
        issgd.before_step(x[:4], torch.tensor(1))
    with pytest.raises(ValueError, match=zero_d):
        issgd.scores(x[:4], torch.tensor(1))
    with pytest.raises(ValueError, match="no current step"):
        issgd.weighted_loss(model(x[:4]), y[:4])
    bad = y[:16].clone()
    bad[3] = N_CLASSES
    with pytest.raises(ValueError, match=r"\[0, 3\).*got target 3"):
        issgd.before_step(x[:16], bad)


def test_batch_sampler_wants_a_dataset_that_holds_the_super_batch() -> None:
    x, y, model = skewed_data(20, seed=13)
    issgd = ISSGDCallback(model, batch_size=4, super_batch_size=16)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.raises(TypeError, match=r"got a DataLoader; pass its dataset"):
        issgd.batch_sampler(loader)

    class Stream(IterableDataset[Tensor]):
        def __iter__(self) -> Any:
            return iter(x)

    with pytest.raises(TypeError, match="IterableDataset"):
        issgd.batch_sampler(Stream())
    with pytest.raises(ValueError, match=r"super_batch_size must be <= len\(dataset\) = 12"):
        issgd.batch_sampler(TensorDataset(x[:12], y[:12]))
    assert len(issgd.batch_sampler(TensorDataset(x, y))) == 5  # ceil(20 / 4)
    assert len(issgd.batch_sampler(20, n_steps=7)) == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"autocast_dtype": "bf16"}, "autocast_dtype must be a torch.dtype"),
        ({"inference_mode": 1}, "inference_mode must be a bool"),
        ({"switch": "always"}, "switch must be 'fidelity' or 'speed'"),
        ({"super_batch_size": 2}, "super_batch_size must be an integer >= 4"),
        ({"model": "net"}, "model must be a torch.nn.Module"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = dict(model=nn.Linear(2, 2), batch_size=4, super_batch_size=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ISSGDCallback(**args)  # type: ignore[arg-type]
