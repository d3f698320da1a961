"""IS-SGD over a map-style dataset: :class:`ISSGD` reads the samples and yields the batches.

The simple path of :mod:`optuna_isbo.issgd` (see there for the four pieces and the formulas):
no DataLoader, the dataset is indexed directly. It drives the hooks of
:class:`~optuna_isbo.issgd.callback.ISSGDCallback`, which a loop with a DataLoader of its own
uses instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from optuna_isbo.issgd.callback import ISSGDCallback, ISSGDStats, model_device
from optuna_isbo.issgd.checks import (
    IGNORE_INDEX,
    as_int,
    as_sizes,
    check_item,
    check_model,
    check_target_kind,
    dataset_size,
    stack,
)
from optuna_isbo.issgd.scores import LossFn, Score
from optuna_isbo.issgd.switch import SwitchMode

if TYPE_CHECKING:
    import optuna

__all__ = ["ISSGD"]


class ISSGD:
    """Importance-sampled minibatches, weights and statistics for a PyTorch training loop.

    Each step draws ``b`` (``batch_size``) training samples. While importance sampling is on,
    it draws a super-batch of ``B`` (``super_batch_size``) samples uniformly with replacement,
    scores them with the model in eval mode, and draws the ``b`` samples from it with
    probability proportional to their score, with weights ``1 / (B p_i)`` that keep the
    gradient estimate unbiased. While it is off, the step draws ``b`` samples uniformly (with
    replacement) with weights 1, and the scores of those samples, computed by
    :meth:`weighted_loss` from the training logits, keep the estimated variance reduction
    :attr:`tau` up to date. ``switch`` says when it is on; see :mod:`optuna_isbo.issgd`.

    This class reads the dataset itself. For a DataLoader of your own (transforms, workers,
    pinned memory) or Lightning, use :class:`~optuna_isbo.issgd.callback.ISSGDCallback`, which
    this class is built on (:attr:`callback`).

    Example
    -------
    .. code-block:: python

        issgd = ISSGD(model, train_set, batch_size=128, super_batch_size=512, seed=0)
        for inputs, targets, weights in issgd.batches(1000):
            optimizer.zero_grad()
            loss = issgd.weighted_loss(model(inputs), targets, weights)
            loss.backward()
            optimizer.step()
        issgd.report(trial)  # optional: statistics and cost as Optuna user attributes

    Parameters
    ----------
    model
        The network being trained; its outputs are the logits. Batches are placed on the device
        of its first parameter (or buffer; CPU if it has neither).
    dataset
        A map-style dataset (``__len__`` and ``__getitem__``) whose items are
        ``(input, target)`` pairs (a tuple or list of two). A
        :class:`~torch.utils.data.TensorDataset` of two tensors is indexed with one index tensor
        per batch; any other dataset is read item by item, each element converted with
        :func:`torch.as_tensor` and the batch collated with :func:`torch.stack`. Items of any
        other form (a single tensor, three elements, a dict) raise :class:`ValueError`: wrap such
        a dataset so that it returns ``(input, target)``. Pass the dataset itself, not a
        :class:`~torch.utils.data.DataLoader`: ISSGD draws its own indices.
    batch_size
        Minibatch size ``b`` (>= 1).
    super_batch_size
        Super-batch size ``B`` with ``b <= B <= len(dataset)``. ``B == b`` is plain uniform SGD.
    loss_fn
        ``loss_fn(logits, targets) -> per-sample losses`` of shape ``(n,)``. ``None`` (default)
        is softmax cross-entropy, whose scores have a closed form; it needs logits of shape
        ``(n, C)`` and targets of shape ``(n,)`` (integer class indices in ``[0, C)`` or
        ``ignore_index``) or ``(n, C)`` (class probabilities), and raises :class:`ValueError`
        naming the shapes otherwise. Any other loss is scored by automatic differentiation with
        respect to the logits (its ``i``-th loss must depend on row ``i`` of the logits only).
    score
        ``"gnorm"`` (default): the norm of the loss gradient with respect to the logits.
        ``"loss"``: the per-sample loss (must be non-negative).
    switch
        ``"fidelity"`` (default): IS on whenever the estimated variance reduction at this ``B``
        is real (variance ratio ``B tau^2 / (B + b tau^2 - 1) > 1.2``), after 20 uniform
        warm-up steps, whatever it costs; at a fixed number of steps a larger ``B`` then gives
        an equal or better run at a higher cost (``B`` as ISBO's fidelity). ``"speed"``: IS on
        only when it pays per second, the variance ratio exceeding the measured ratio of the
        seconds of an IS step to a uniform step (``(B + 3b) / (3b)`` until both are timed).
    tau_threshold
        Explicit override of ``switch``: IS on while ``tau > tau_threshold``, from the first
        step (the reference implementation's rule, which used ``(B + 3b) / (3b)``, the default
        of earlier versions of this class).
    momentum
        Smoothing factor ``m`` in ``[0, 1)`` of the running estimate of ``tau``:
        ``tau <- m * tau + (1 - m) * tau_new``. This is **not** an optimizer momentum.
    warmup_steps
        Uniform steps before ``"fidelity"`` or ``"speed"`` may turn IS on (default 20).
    forward_batch_size
        Number of samples per scoring forward pass. Default ``max(b, min(B, 1024))``.
    seed
        Seed of the random generator that draws every index (and, derived from it, of the
        selection by score); ``None`` for a random seed. With a seed and a deterministic model
        the sequence of batches is reproducible.
    ignore_index
        Used by the default cross-entropy only (``loss_fn=None``): targets equal to it are
        ignored, as by :func:`torch.nn.functional.cross_entropy`, whose default (-100) it
        shares. An ignored sample has loss 0 and score 0: importance sampling never draws it,
        and a uniform batch counts it as a zero in the mean of :meth:`weighted_loss`. Both
        kinds of step thus estimate the same objective, the mean over *all* samples with the
        ignored ones contributing 0 (torch's ``reduction="mean"`` divides by the number of
        samples not ignored instead, which varies from batch to batch).
    autocast_dtype
        If given (e.g. ``torch.bfloat16``), scoring runs under ``torch.autocast`` with it.
    inference_mode
        Scoring under :func:`torch.inference_mode` (default) or :func:`torch.no_grad`.

    Sizes and the seed accept any integral number (``int``, NumPy integers); bools and
    non-integers raise :class:`ValueError`.

    Notes
    -----
    Timings (:attr:`stats`, :meth:`report`) are wall-clock, measured by :meth:`batches` itself;
    on CUDA devices the device is synchronized once per step, at its end, and scoring is
    timed by CUDA events.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset[Any],
        *,
        batch_size: int,
        super_batch_size: int,
        loss_fn: LossFn | None = None,
        score: Score = "gnorm",
        switch: SwitchMode = "fidelity",
        tau_threshold: float | None = None,
        momentum: float = 0.9,
        warmup_steps: int | None = None,
        forward_batch_size: int | None = None,
        seed: int | None = None,
        ignore_index: int = IGNORE_INDEX,
        autocast_dtype: torch.dtype | None = None,
        inference_mode: bool = True,
    ) -> None:
        check_model(model)
        n_samples = dataset_size(dataset, "ISSGD")
        batch_size, super_batch_size = as_sizes(batch_size, super_batch_size)
        if super_batch_size > n_samples:
            raise ValueError(
                f"super_batch_size must be <= len(dataset) = {n_samples}, got {super_batch_size}."
            )
        self._callback = ISSGDCallback(
            model,
            batch_size=batch_size,
            super_batch_size=super_batch_size,
            loss_fn=loss_fn,
            score=score,
            switch=switch,
            tau_threshold=tau_threshold,
            momentum=momentum,
            warmup_steps=warmup_steps,
            forward_batch_size=forward_batch_size,
            seed=seed,
            ignore_index=ignore_index,
            autocast_dtype=autocast_dtype,
            inference_mode=inference_mode,
        )
        self._tensors: tuple[Tensor, Tensor] | None = None
        if isinstance(dataset, TensorDataset):
            if len(dataset.tensors) != 2:
                raise ValueError(
                    "dataset items must be (input, target) pairs: a TensorDataset of exactly two "
                    f"tensors, got {len(dataset.tensors)}."
                )
            self._tensors = (dataset.tensors[0], dataset.tensors[1])
            targets = self._tensors[1]
        else:
            _, target = check_item(dataset[0], 0)
            targets = stack([target], [0], "target")
        if loss_fn is None:
            check_target_kind(targets)
        self._model = model
        self._dataset = dataset
        self._sampler = self._callback.batch_sampler(n_samples)

    # ----------------------------------------------------------------------------- properties

    @property
    def callback(self) -> ISSGDCallback:
        """The hooks this class drives; they hold the switch and the statistics."""
        return self._callback

    @property
    def tau(self) -> float:
        """Current smoothed estimate of the variance reduction (0 before the first update)."""
        return self._callback.tau

    @property
    def tau_threshold(self) -> float:
        """Importance sampling is on while :attr:`tau` exceeds this value (``inf``: never)."""
        return self._callback.tau_threshold

    @property
    def is_active(self) -> bool:
        """Whether the next batch will be importance-sampled (never when ``B == b``)."""
        return self._callback.is_active

    @property
    def stats(self) -> ISSGDStats:
        """A snapshot of the statistics so far (see :attr:`ISSGDCallback.stats`).

        ``steps`` counts the batches yielded by :meth:`batches`; ``sampling_seconds`` the
        seconds spent drawing indices, gathering samples, moving them to the model's device
        and selecting by score; ``training_seconds`` those between handing out a batch and the
        request for the next one (or the end of the loop); ``cost_seconds`` their sum with
        ``scoring_seconds``, without anything done before the first batch or after the loop
        (such as validation). ``switch_rule`` names the rule behind the latest decision.
        """
        return self._callback.stats

    # ------------------------------------------------------------------------------ public API

    def batches(self, n_steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Iterate over ``n_steps`` training batches.

        Parameters
        ----------
        n_steps
            Number of batches (>= 0).

        Yields
        ------
        inputs
            Shape ``(b, ...)`` on the model's device.
        targets
            Shape ``(b, ...)`` on the model's device.
        weights
            Shape ``(b,)``, float32 on the model's device: ``1 / (B p_i)`` for an importance
            step, ones otherwise. Always finite.
        """
        return self._batches(as_int("n_steps", n_steps, 0))

    def weighted_loss(self, logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
        """Weighted mean of the per-sample losses, ``mean(weights * loss_fn(logits, targets))``.

        For a batch drawn uniformly (importance sampling off), the first call after the batch
        was handed out also updates :attr:`tau` with the scores computed from these ``logits``,
        at no extra forward pass. A loop that computes its own loss instead never updates
        ``tau`` while importance sampling is off, so it never switches on (or it calls
        ``issgd.callback.observe(logits, targets)``).

        Parameters
        ----------
        logits
            Shape ``(b, C)``: the model's outputs for the batch, with gradient (``(b, ...)``
            for a custom ``loss_fn``).
        targets
            The batch's targets, shape ``(b, ...)``.
        weights
            Shape ``(b,)``: the weights yielded with the batch; treated as constants.

        Returns
        -------
        Tensor
            A scalar with gradient.

        Raises
        ------
        ValueError
            If the shapes do not fit the loss (the message names them), or a class index of the
            default cross-entropy is out of range.
        """
        return self._callback.weighted_loss(logits, targets, weights)

    def scores(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Score samples with the model in eval mode, without gradient, in chunks.

        Every submodule's train/eval mode is restored afterwards, so BatchNorm running
        statistics do not move and dropout is off while scoring.

        Parameters
        ----------
        inputs
            Shape ``(n, ...)`` on the model's device.
        targets
            Shape ``(n, ...)`` on the model's device.

        Returns
        -------
        Tensor
            Shape ``(n,)``, float32.

        Raises
        ------
        ValueError
            If the model's outputs do not fit the loss (see :meth:`weighted_loss`).
        """
        return self._callback.scores(inputs, targets)

    def report(self, trial: optuna.trial.BaseTrial) -> None:
        """Write :attr:`stats` to the trial as user attributes.

        ``"isbo:cost"`` holds ``stats["cost_seconds"]`` (float seconds), the cost that
        :class:`~optuna_isbo.ISBOSampler` models; every other statistic ``key`` goes under
        ``"isbo:<key>"`` (for example ``"isbo:is_steps"``).

        Parameters
        ----------
        trial
            Any object with ``set_user_attr``, typically the :class:`optuna.trial.Trial` passed
            to the objective.
        """
        self._callback.report(trial)

    # -------------------------------------------------------------------------------- private

    def _gather(self, indices: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._tensors is not None:
            inputs, targets = self._tensors
            inputs = inputs[indices.to(inputs.device)]
            targets = targets[indices.to(targets.device)]
        else:
            positions = indices.tolist()
            pairs = [check_item(self._dataset[i], i) for i in positions]
            inputs = stack([pair[0] for pair in pairs], positions, "input")
            targets = stack([pair[1] for pair in pairs], positions, "target")
        return inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def _batches(self, n_steps: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        callback = self._callback
        callback.start()
        for indices in self._sampler.index_batches(n_steps):
            inputs, targets = self._gather(indices, model_device(self._model))
            inputs, targets, weights = callback.before_step(inputs, targets)
            callback._resolve()  # a fallback warns before its batch is handed out
            try:
                yield inputs, targets, weights
            finally:
                callback.after_step()
