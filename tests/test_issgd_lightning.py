"""ISSGDLightningCallback in a real Lightning Trainer.fit on the CPU (optional extra)."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning", reason="PyTorch Lightning is not installed (extra 'lightning')")

import lightning.pytorch as pl  # noqa: E402
from issgd_data import skewed_data  # noqa: E402  (tests/ helper)

from optuna_isbo.integration.lightning import ISSGDLightningCallback  # noqa: E402
from optuna_isbo.issgd.callback import ISSGDCallback  # noqa: E402

# Lightning's own pytree helper uses an API that torch deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*")

B_SMALL, B_LARGE = 4, 16


class _Net(pl.LightningModule):
    def __init__(self, body: nn.Module, data: TensorDataset, **issgd_args: Any) -> None:
        super().__init__()
        self.body = body
        self.data = data
        self.issgd = ISSGDCallback(self.body, **issgd_args)
        self.rows_seen: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        inputs, targets = batch
        self.rows_seen.append(len(inputs))
        return self.issgd.weighted_loss(self(inputs), targets)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)

    def train_dataloader(self) -> DataLoader:
        sampler = self.issgd.batch_sampler(self.data, n_steps=15)
        return DataLoader(self.data, batch_sampler=sampler)


def _trainer(callback: pl.Callback, max_steps: int, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_trainer_fit_trains_on_importance_sampled_minibatches_and_reports() -> None:
    x, y, body = skewed_data(200, seed=0)
    net = _Net(
        body,
        TensorDataset(x, y),
        batch_size=B_SMALL,
        super_batch_size=B_LARGE,
        tau_threshold=1.0,
        seed=0,
    )
    study = optuna.create_study()
    trial = study.ask()
    weights_before = body.weight.detach().clone()
    trainer = _trainer(ISSGDLightningCallback(net.issgd, trial=trial), max_steps=40)
    trainer.fit(net)

    stats = net.issgd.stats
    assert stats["steps"] == 40  # two epochs of 15 steps and 10 of a third: len(sampler) works
    assert 0 < stats["is_steps"] < 40 and stats["fallback_steps"] == 0
    assert stats["samples_scored"] == B_LARGE * stats["is_steps"]
    assert net.rows_seen == [B_SMALL] * 40  # super-batches were cut to b before training_step
    assert not torch.equal(body.weight.detach(), weights_before)
    assert stats["training_seconds"] > 0 and stats["uniform_step_seconds"] > 0
    attrs = trial.user_attrs
    assert attrs["isbo:cost"] == pytest.approx(stats["cost_seconds"])
    assert attrs["isbo:is_steps"] == stats["is_steps"] and attrs["isbo:steps"] == 40
    assert attrs["isbo:switch"] == "threshold"
    assert float(trainer.callback_metrics["issgd/tau"]) == pytest.approx(stats["tau"])


def test_bf16_mixed_precision_scores_under_the_trainers_autocast() -> None:
    x, y, body = skewed_data(200, seed=1)
    net = _Net(
        body, TensorDataset(x, y), batch_size=B_SMALL, super_batch_size=B_LARGE, tau_threshold=1.0
    )
    seen: list[torch.dtype] = []

    def record(module: nn.Module, args: Any, out: Tensor) -> None:
        if not module.training:  # a scoring pass
            seen.append(out.dtype)

    body.register_forward_hook(record)
    _trainer(
        ISSGDLightningCallback(net.issgd, log=False), max_steps=20, precision="bf16-mixed"
    ).fit(net)
    assert net.issgd.stats["is_steps"] > 0
    assert seen and set(seen) == {torch.bfloat16}


def test_a_tuple_batch_is_a_clear_type_error() -> None:
    x, y, body = skewed_data(40, seed=2)

    class TupleNet(_Net):
        def train_dataloader(self) -> DataLoader:
            sampler = self.issgd.batch_sampler(self.data, n_steps=5)
            return DataLoader(
                self.data,
                batch_sampler=sampler,
                collate_fn=lambda items: tuple(torch.utils.data.default_collate(items)),
            )

    net = TupleNet(body, TensorDataset(x, y), batch_size=B_SMALL, super_batch_size=B_LARGE)
    with pytest.raises(TypeError, match=r"must be a list \[inputs, targets\], got a tuple"):
        _trainer(ISSGDLightningCallback(net.issgd), max_steps=2).fit(net)
