"""IS-SGD in a PyTorch Lightning ``Trainer``: :class:`ISSGDLightningCallback`.

Needs the optional extra ``lightning`` (``pip install "optuna-isbo[lightning]"``). The callback
calls the hooks of an :class:`~optuna_isbo.issgd.callback.ISSGDCallback` from the Trainer's own
loop; the training data stay in the user's DataLoader:

.. code-block:: python

    from optuna_isbo.issgd.callback import ISSGDCallback
    from optuna_isbo.integration.lightning import ISSGDLightningCallback

    class Net(lightning.LightningModule):
        def __init__(self, issgd_args):
            super().__init__()
            self.body = make_model()
            self.issgd = ISSGDCallback(self.body, **issgd_args)

        def training_step(self, batch, batch_idx):
            inputs, targets = batch  # the b samples chosen by the callback
            return self.issgd.weighted_loss(self.body(inputs), targets)  # current weights

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

        def train_dataloader(self):
            sampler = self.issgd.batch_sampler(train_set, n_steps=500)
            return DataLoader(train_set, batch_sampler=sampler, num_workers=4)

    net = Net(dict(batch_size=32, super_batch_size=B, seed=trial.number))
    trainer = lightning.Trainer(
        max_steps=500, callbacks=[ISSGDLightningCallback(net.issgd, trial=trial)]
    )
    trainer.fit(net)  # at the end, the statistics go to the trial as ISSGD.report writes them

Before each training step the callback replaces the batch's inputs and targets, in place, by
the ``b`` samples drawn by score from a super-batch (or leaves a minibatch as it is); the
weights are those of :meth:`ISSGDCallback.weighted_loss <optuna_isbo.issgd.callback.
ISSGDCallback.weighted_loss>` when called without them (or ``issgd.weights``). The batch must
therefore be a ``list`` ``[inputs, targets]``, as PyTorch's default ``collate_fn`` makes of
``(input, target)`` items. Scoring runs under the Trainer's precision (its autocast for
``"bf16-mixed"`` or ``"16-mixed"``). Single-process training only: a distributed run would need
one batch sampler per process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from optuna_isbo.issgd.callback import ISSGDCallback

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "optuna_isbo.integration.lightning needs PyTorch Lightning; install the "
        '"lightning" extra: pip install "optuna-isbo[lightning]"'
    ) from error

if TYPE_CHECKING:
    import optuna

__all__ = ["ISSGDLightningCallback"]


class ISSGDLightningCallback(Callback):
    """A Lightning ``Callback`` that runs an :class:`ISSGDCallback` around each training step.

    Parameters
    ----------
    issgd
        The hooks, built on the module the Trainer trains (or a part of it that returns the
        logits); the same object gives ``training_step`` its ``weighted_loss`` and the
        DataLoader its ``batch_sampler``.
    trial
        If given, :meth:`ISSGDCallback.report` writes the statistics to it when training ends,
        ``"isbo:cost"`` and ``"isbo:<key>"`` user attributes as :meth:`ISSGD.report
        <optuna_isbo.ISSGD.report>` writes them.
    log
        Whether to log ``issgd/tau`` and ``issgd/is_steps`` with the module's logger at every
        step.
    trainer_precision
        Whether scoring runs in the Trainer's precision context (its autocast for mixed
        precision). ``issgd``'s own ``autocast_dtype`` applies inside it.

    Raises
    ------
    TypeError
        At the first training step, if the batch is not a list ``[inputs, targets]``.
    """

    def __init__(
        self,
        issgd: ISSGDCallback,
        trial: optuna.trial.BaseTrial | None = None,
        *,
        log: bool = True,
        trainer_precision: bool = True,
    ) -> None:
        if not isinstance(issgd, ISSGDCallback):
            raise TypeError(
                f"issgd must be an optuna_isbo.issgd.callback.ISSGDCallback, got "
                f"{type(issgd).__name__}."
            )
        super().__init__()
        self.issgd = issgd
        self.trial = trial
        self._log = bool(log)
        self._trainer_precision = bool(trainer_precision)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.issgd.start()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, list) or len(batch) != 2:
            kind = type(batch).__name__
            size = f" of {len(batch)} elements" if isinstance(batch, list | tuple) else ""
            raise TypeError(
                "ISSGDLightningCallback replaces the batch's samples in place, so the batch must "
                f"be a list [inputs, targets], got a {kind}{size}. PyTorch's default collate_fn "
                "makes one from (input, target) items."
            )
        if self._trainer_precision:
            with trainer.precision_plugin.forward_context():
                inputs, targets, _ = self.issgd.before_step(batch[0], batch[1])
        else:
            inputs, targets, _ = self.issgd.before_step(batch[0], batch[1])
        batch[0], batch[1] = inputs, targets

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.issgd.after_step()
        if self._log:
            stats = self.issgd.stats
            metrics = {
                "issgd/tau": float(stats["tau"]),
                "issgd/is_steps": float(stats["is_steps"]),
            }
            pl_module.log_dict(
                metrics, on_step=True, on_epoch=False, batch_size=self.issgd.batch_size
            )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.trial is not None:
            self.issgd.report(self.trial)
