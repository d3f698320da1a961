"""IS-SGD inside the user's own training loop and DataLoader: the hooks a loop needs.

:class:`ISSGDCallback` joins the four pieces (scores, drawing, weights, switch) for a loop
that keeps its own :class:`~torch.utils.data.DataLoader` (transforms, ``num_workers``,
``pin_memory``), device and mixed precision:

.. code-block:: python

    issgd = ISSGDCallback(model, batch_size=32, super_batch_size=B, seed=trial.number)
    loader = DataLoader(
        train_set,
        batch_sampler=issgd.batch_sampler(train_set, n_steps=1000),
        num_workers=4,
        pin_memory=True,
    )
    issgd.start()
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        inputs, targets, weights = issgd.before_step(inputs, targets)  # samples, weights
        optimizer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = issgd.weighted_loss(model(inputs), targets, weights)
        loss.backward()
        optimizer.step()
        issgd.after_step()  # timings
    issgd.report(trial)

The batch sampler hands the loader ``B`` indices while importance sampling is on and ``b``
while it is off. :meth:`~ISSGDCallback.before_step` tells the two apart by size: it scores a
super-batch on its device and returns the ``b`` samples drawn from it with their weights, or
returns a minibatch as it is with weights 1. Augmentation happens in the loader, before
scoring: the score is that of the augmented sample, which is then the one trained on. The
estimator stays unbiased for the loss averaged over samples *and* augmentations, since the
super-batch is a uniform draw of (sample, augmentation) pairs.

:class:`optuna_isbo.integration.lightning.ISSGDLightningCallback` calls these hooks from a
PyTorch Lightning ``Trainer``; :class:`optuna_isbo.ISSGD` drives them from a map-style dataset
without a DataLoader.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from optuna_isbo.issgd.checks import (
    IGNORE_INDEX,
    as_float,
    as_int,
    as_seed,
    as_sizes,
    batch_rows,
    check_model,
    check_per_sample,
    check_target_rows,
    dataset_size,
    index_rows,
    shape,
)
from optuna_isbo.issgd.sampling import ISBatchSampler, default_n_steps, draw_by_score
from optuna_isbo.issgd.scores import (
    LossFn,
    Score,
    check_outputs,
    per_sample_loss,
    score_samples,
    scores_from_logits,
)
from optuna_isbo.issgd.switch import ISSwitch, SwitchMode, SwitchStats

if TYPE_CHECKING:
    import optuna

__all__ = ["ISSGDCallback", "ISSGDStats"]

_FORWARD_BATCH_SIZE_CAP = 1024


def model_device(model: nn.Module) -> torch.device:
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _derived_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for the ``stream``-th generator of a seeded component."""
    sequence = np.random.SeedSequence([seed % 2**64, stream])
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


class ISSGDStats(SwitchStats):
    """:attr:`ISSGDCallback.stats`: counts, seconds and the switch's state, one type per key."""

    steps: int
    is_steps: int
    fallback_steps: int
    samples_scored: int
    batch_size: int
    super_batch_size: int
    scoring_seconds: float
    sampling_seconds: float
    training_seconds: float
    cost_seconds: float


class _Clock:
    """Marks on the device's timeline: CUDA events, else host time (after a sync off the CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        self.synchronize()
        return time.perf_counter()

    def seconds(self, start: Any, stop: Any) -> float:
        """Seconds between two marks; for CUDA, after :meth:`synchronize`."""
        if self.cuda:
            return float(start.elapsed_time(stop)) / 1000.0
        return float(stop - start)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


class ISSGDCallback:
    """Importance sampling as hooks around the steps of any PyTorch training loop.

    Parameters
    ----------
    model
        The network being trained; it returns the logits. Scoring runs it in eval mode.
    batch_size
        Minibatch size ``b`` (>= 1).
    super_batch_size
        Super-batch size ``B >= b``. ``B == b`` is plain uniform SGD.
    loss_fn
        ``loss_fn(logits, targets) -> per-sample losses`` of shape ``(n,)``; ``None``
        (default) is softmax cross-entropy with ``ignore_index``, scored in closed form; it
        needs logits of shape ``(n, C)`` and targets ``(n,)`` in ``[0, C)`` (or
        ``ignore_index``) or ``(n, C)`` class probabilities, and raises :class:`ValueError`
        naming the shapes otherwise.
    score
        ``"gnorm"`` (default, the norm of the loss gradient with respect to the logits) or
        ``"loss"`` (the per-sample loss, non-negative).
    switch
        When importance sampling is on (see :mod:`optuna_isbo.issgd.switch`).
        ``"fidelity"`` (default): whenever the estimated variance reduction at this ``B`` is
        real (variance ratio above 1.2) after 20 uniform warm-up steps, whatever the cost;
        use it when ``B`` is ISBO's fidelity. ``"speed"``: only when it pays per second, from
        measured step times (the fixed model ``(B + 3b) / (3b)`` until they exist).
    tau_threshold
        Explicit override of ``switch``: IS on while the smoothed variance reduction ``tau``
        exceeds it, from the first step (the reference implementation's rule; it used
        ``(B + 3b) / (3b)``).
    momentum
        Smoothing factor in ``[0, 1)`` of ``tau``. Not an optimizer momentum.
    warmup_steps
        Uniform steps (updates of ``tau``) before ``"fidelity"`` or ``"speed"`` may turn IS on;
        default 20.
    forward_batch_size
        Samples per scoring forward pass. Default ``max(b, min(B, 1024))``.
    seed
        Seeds the index draws of :meth:`batch_sampler` and, through an independent derived
        seed, the selection draws; ``None`` for random seeds.
    ignore_index
        Cross-entropy only: targets equal to it are ignored, loss 0 and score 0 (as
        :func:`torch.nn.functional.cross_entropy`, whose default -100 it shares); both kinds
        of step estimate the mean over *all* samples with the ignored ones counting 0.
    autocast_dtype
        If given, scoring forward passes run under ``torch.autocast(device, autocast_dtype)``
        (e.g. ``torch.bfloat16``); scores are float32 either way.
    inference_mode
        Scoring under :func:`torch.inference_mode` (default) or, if ``False``, under
        :func:`torch.no_grad` (for models that cache tensors of a forward pass for training).

    Notes
    -----
    On a GPU, scoring, selection and weights stay on the device: the only host-device
    exchange of a step is one synchronization in :meth:`after_step`, which makes the step's
    wall-clock time exact and lets the switch read ``tau`` without waiting. Scoring time is
    taken from CUDA events. For the same reason the class range of cross-entropy targets is
    checked on every CPU batch but only on the first batch on an accelerator (later ones
    would meet the device's own assertion). A super-batch whose scores are unusable
    (non-finite, negative, all zero) is sampled uniformly with weights 1; the warning and
    ``fallback_steps`` follow at :meth:`after_step` (or when :attr:`stats` is read).
    """

    def __init__(
        self,
        model: nn.Module,
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
        self._model = check_model(model)
        batch_size, super_batch_size = as_sizes(batch_size, super_batch_size)
        self._validate(loss_fn, score, autocast_dtype, inference_mode)
        if tau_threshold is not None:
            tau_threshold = as_float("tau_threshold", tau_threshold)
        self._switch = ISSwitch(
            batch_size=batch_size,
            super_batch_size=super_batch_size,
            switch=switch,
            tau_threshold=tau_threshold,
            momentum=momentum,
            warmup_steps=warmup_steps,
        )
        if forward_batch_size is None:
            forward_batch_size = max(batch_size, min(super_batch_size, _FORWARD_BATCH_SIZE_CAP))
        self._forward_batch_size = as_int("forward_batch_size", forward_batch_size, 1)
        seed = as_seed(seed)
        self._ignore_index = as_int("ignore_index", ignore_index)
        self._b, self._big_b = batch_size, super_batch_size
        self._loss_fn = loss_fn
        self._score: Score = score
        self._autocast_dtype = autocast_dtype
        self._inference_mode = bool(inference_mode)

        self._index_generator = torch.Generator()
        self._selection_generator = torch.Generator()
        if seed is None:
            self._index_generator.seed()
            self._selection_generator.seed()
        else:
            self._index_generator.manual_seed(seed)
            self._selection_generator.manual_seed(_derived_seed(seed, 1))

        self._steps = 0
        self._is_steps = 0
        self._fallback_steps = 0
        self._samples_scored = 0
        self._scoring_seconds = 0.0
        self._sampling_seconds = 0.0
        self._training_seconds = 0.0

        self._weights: Tensor | None = None
        self._feed_tau = False
        self._pending_usable: list[Tensor] = []
        self._last_end: float | None = None
        self._open: dict[str, Any] | None = None
        self._range_checked = False

    @staticmethod
    def _validate(
        loss_fn: object, score: object, autocast_dtype: object, inference_mode: object
    ) -> None:
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError("loss_fn must be callable or None.")
        if score not in ("gnorm", "loss"):
            raise ValueError(f"score must be 'gnorm' or 'loss', got {score!r}.")
        if autocast_dtype is not None and not isinstance(autocast_dtype, torch.dtype):
            raise ValueError(
                f"autocast_dtype must be a torch.dtype (such as torch.bfloat16) or None, got "
                f"{autocast_dtype!r}."
            )
        if not isinstance(inference_mode, bool):
            raise ValueError(f"inference_mode must be a bool, got {inference_mode!r}.")

    # ----------------------------------------------------------------------------- properties

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def batch_size(self) -> int:
        """``b``."""
        return self._b

    @property
    def super_batch_size(self) -> int:
        """``B``."""
        return self._big_b

    @property
    def switch(self) -> ISSwitch:
        """The running variance-reduction estimate and switching rule."""
        return self._switch

    @property
    def tau(self) -> float:
        """Current smoothed estimate of the variance reduction (0 before the first update)."""
        return self._switch.tau

    @property
    def tau_threshold(self) -> float:
        """IS is on while :attr:`tau` exceeds this value (``inf``: never at this ``B``)."""
        return self._switch.tau_threshold

    @property
    def is_active(self) -> bool:
        """Whether the switch would importance-sample the next batch (never when ``B == b``)."""
        return self._switch.decide()[0]

    @property
    def weights(self) -> Tensor | None:
        """Shape ``(b,)``: the weights of the current step (``None`` before the first)."""
        return self._weights

    @property
    def stats(self) -> ISSGDStats:
        """A snapshot of the statistics so far.

        Keys
        ----
        ``steps``
            Steps begun by :meth:`before_step`.
        ``is_steps``
            Of those, steps on a minibatch drawn by importance sampling.
        ``fallback_steps``
            Super-batches whose scores were non-finite, negative or all zero, sampled
            uniformly instead.
        ``samples_scored``
            Samples passed through a scoring forward pass (``B`` per super-batch).
        ``tau``, ``tau_threshold``, ``variance_ratio``, ``cost_ratio``, ``switch``,
        ``switch_rule``, ``uniform_step_seconds``, ``is_step_seconds``,
        ``scoring_seconds_per_sample``
            The switch's state (:attr:`ISSwitch.stats <optuna_isbo.issgd.switch.ISSwitch.stats>`):
            ``switch_rule`` names the rule behind the latest decision (``"warmup"``,
            ``"fidelity"``, ``"fixed-cost"``, ``"probe"``, ``"measured-cost"``,
            ``"threshold"``, ``"uniform"``).
        ``batch_size``, ``super_batch_size``
            ``b`` and ``B``.
        ``scoring_seconds``
            Seconds spent in scoring forward passes.
        ``sampling_seconds``
            Seconds spent getting the data: waiting for the next batch after a step (the
            DataLoader; for :class:`~optuna_isbo.ISSGD`, drawing, gathering and moving it) and
            selecting ``b`` of ``B``.
        ``training_seconds``
            Seconds from handing out the minibatch to :meth:`after_step`: the caller's forward,
            loss, backward and optimizer step.
        ``cost_seconds``
            ``scoring_seconds + sampling_seconds + training_seconds``, the wall-clock time of
            the steps (not of anything before :meth:`start` or after the last step).
        """
        self._resolve()
        cost_seconds = self._scoring_seconds + self._sampling_seconds + self._training_seconds
        return ISSGDStats(
            steps=self._steps,
            is_steps=self._is_steps,
            fallback_steps=self._fallback_steps,
            samples_scored=self._samples_scored,
            batch_size=self._b,
            super_batch_size=self._big_b,
            scoring_seconds=self._scoring_seconds,
            sampling_seconds=self._sampling_seconds,
            training_seconds=self._training_seconds,
            cost_seconds=cost_seconds,
            **self._switch.stats,
        )

    # -------------------------------------------------------------------------------- data

    def batch_sampler(self, dataset: object, n_steps: int | None = None) -> ISBatchSampler:
        """A batch sampler for ``DataLoader(dataset, batch_sampler=...)``.

        Parameters
        ----------
        dataset
            The map-style dataset the DataLoader reads (or its size ``N``); ``B <= N``.
        n_steps
            Batches per pass over the sampler (one DataLoader epoch). Default
            ``ceil(N / b)``.

        Returns
        -------
        ISBatchSampler
            Yields lists of ``B`` indices while IS is on, of ``b`` while off, drawn uniformly
            with replacement by this callback's seeded generator.

        Raises
        ------
        TypeError
            For a DataLoader or an IterableDataset (pass the dataset itself).
        ValueError
            If ``B > N``.
        """
        if isinstance(dataset, int | np.integer) and not isinstance(dataset, bool):
            n_samples = as_int("dataset", dataset, 1)
        else:
            n_samples = dataset_size(dataset, "ISSGDCallback.batch_sampler")
        if n_steps is None:
            n_steps = default_n_steps(n_samples, self._b)
        return ISBatchSampler(
            n_samples,
            self._switch,
            batch_size=self._b,
            super_batch_size=self._big_b,
            n_steps=n_steps,
            generator=self._index_generator,
        )

    # ------------------------------------------------------------------------------- hooks

    def start(self) -> None:
        """Mark the start of training: the wait for the first batch counts from here."""
        self._last_end = time.perf_counter()

    def before_step(self, inputs: Any, targets: Tensor) -> tuple[Any, Tensor, Tensor]:
        """Which samples to train on, and their weights.

        Parameters
        ----------
        inputs
            The batch's inputs as the DataLoader gave them, on the model's device: shape
            ``(n, ...)``, or a list, tuple or dict of such tensors (the model is called on it).
            ``n == B`` (a super-batch) or ``n == b`` (a minibatch). A list or tuple of ``n``
            plain items among them (what ``default_collate`` makes of strings) holds one item
            per sample and is subset with the tensors.
        targets
            The batch's targets, shape ``(n, ...)``, on the same device.

        Returns
        -------
        inputs, targets
            The ``b`` samples to train on: drawn by score from a super-batch, or the minibatch
            itself.
        weights
            Shape ``(b,)``, float32 on the targets' device: ``1 / (B p_i)`` for a super-batch,
            ones for a minibatch. Always finite.

        Raises
        ------
        ValueError
            If the batch has neither ``b`` nor ``B`` rows, the targets are not a tensor with one
            row per sample (a 0-d tensor included), or the model's outputs do not fit the
            loss.
        """
        entry = time.perf_counter()
        if self._open is not None:
            self._close(entry)  # the loop did not call after_step
        if not isinstance(targets, Tensor):
            raise ValueError(f"targets must be a tensor, got {type(targets).__name__}.")
        n = batch_rows(inputs)
        check_target_rows(targets, n)
        b, big_b = self._b, self._big_b
        importance = n == big_b and big_b > b
        if not importance and n != b:
            raise ValueError(
                f"a batch must have batch_size={b} or super_batch_size={big_b} rows, got {n}. "
                "Give the DataLoader batch_sampler=issgd.batch_sampler(dataset) and a "
                "collate_fn that keeps every sample."
            )
        device = targets.device
        clock = _Clock(device)
        waited = 0.0 if self._last_end is None else entry - self._last_end
        begin = clock.mark()
        scored = begin
        if importance:
            scores = score_samples(
                self._model,
                inputs,
                targets,
                self._loss_fn,
                score=self._score,
                ignore_index=self._ignore_index,
                forward_batch_size=self._forward_batch_size,
                autocast_dtype=self._autocast_dtype,
                inference_mode=self._inference_mode,
                check_range=self._check_range(targets),
            )
            scored = clock.mark()
            self._samples_scored += big_b
            self._switch.update(scores)
            positions, weights, usable = draw_by_score(scores, b, self._selection_generator)
            inputs, targets = index_rows(inputs, positions, n), targets[positions]
            self._pending_usable.append(usable)
        else:
            weights = torch.ones(b, device=device)
        handed_out = clock.mark()
        self._steps += 1
        self._weights = weights
        self._feed_tau = not importance
        self._open = {
            "clock": clock,
            "importance": importance,
            "waited": waited,
            "entry": entry,
            "begin": begin,
            "scored": scored,
            "handed_out": handed_out,
        }
        return inputs, targets, weights

    def weighted_loss(
        self, logits: Tensor, targets: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        """Weighted mean of the per-sample losses, ``mean(weights * loss_fn(logits, targets))``.

        For a uniform minibatch, the first call after :meth:`before_step` also feeds the
        switch with the scores computed from these ``logits``, at no extra forward pass. A
        loop that computes its own loss should call :meth:`observe` instead, or ``tau`` is
        never updated while IS is off, and IS never switches on.

        Parameters
        ----------
        logits
            Shape ``(b, C)`` with gradient (``(b, ...)`` for a custom ``loss_fn``).
        targets
            Shape ``(b, ...)``.
        weights
            Shape ``(b,)``, treated as constants; ``None`` for those of the current step.

        Returns
        -------
        Tensor
            A scalar with gradient.

        Raises
        ------
        ValueError
            If the shapes do not fit the loss (the message names them), or a class index of
            the default cross-entropy is out of range.
        """
        check_range = self._check_range(targets)
        check_outputs(logits, targets, self._loss_fn, self._ignore_index, check_range)
        if weights is None:
            weights = self._weights
            if weights is None:
                raise ValueError("no current step: call before_step first, or pass weights.")
        if not isinstance(weights, Tensor) or weights.shape != (len(logits),):
            got = f"shape {shape(weights)}" if isinstance(weights, Tensor) else repr(weights)
            raise ValueError(f"weights must have shape ({len(logits)},), got {got}.")
        losses = check_per_sample(
            per_sample_loss(
                logits, targets, self._loss_fn, ignore_index=self._ignore_index, check_range=False
            ),
            len(logits),
        )
        if self._feed_tau:
            self._feed_tau = False
            self._switch.update(self._logit_scores(logits, targets, losses))
        return (weights.detach().to(losses.dtype) * losses).mean()

    def observe(self, logits: Tensor, targets: Tensor) -> None:
        """Feed the switch from a uniform minibatch's training logits (no-op after a super-batch).

        For loops that compute their own loss instead of :meth:`weighted_loss`.
        """
        check_outputs(
            logits, targets, self._loss_fn, self._ignore_index, self._check_range(targets)
        )
        if self._feed_tau:
            self._feed_tau = False
            self._switch.update(self._logit_scores(logits, targets, None))

    def after_step(self) -> None:
        """End the step: synchronize the device once, record its seconds for the switch."""
        self._close(None)

    def scores(self, inputs: Any, targets: Tensor) -> Tensor:
        """Scores of samples, shape ``(n,)`` float32, as :meth:`before_step` computes them.

        Eval mode, no gradient, in chunks of ``forward_batch_size``; every submodule's mode is
        restored afterwards (BatchNorm statistics do not move, dropout is off).
        """
        return score_samples(
            self._model,
            inputs,
            targets,
            self._loss_fn,
            score=self._score,
            ignore_index=self._ignore_index,
            forward_batch_size=self._forward_batch_size,
            autocast_dtype=self._autocast_dtype,
            inference_mode=self._inference_mode,
        )

    def report(self, trial: optuna.trial.BaseTrial) -> None:
        """Write :attr:`stats` to the trial as user attributes.

        ``"isbo:cost"`` holds ``stats["cost_seconds"]`` (float seconds), the cost that
        :class:`~optuna_isbo.ISBOSampler` models; every other statistic ``key`` goes under
        ``"isbo:<key>"`` (for example ``"isbo:is_steps"``, ``"isbo:switch_rule"``).

        Parameters
        ----------
        trial
            Any object with ``set_user_attr``, typically the :class:`optuna.trial.Trial` passed
            to the objective.
        """
        stats: dict[str, Any] = dict(self.stats)
        trial.set_user_attr("isbo:cost", float(stats.pop("cost_seconds")))
        for key, value in stats.items():
            trial.set_user_attr(f"isbo:{key}", value)

    # ------------------------------------------------------------------------------ private

    def _check_range(self, targets: Tensor) -> bool:
        """Check class ranges always on the CPU; on an accelerator for the first batch only."""
        if targets.device.type == "cpu":
            return True
        first, self._range_checked = not self._range_checked, True
        return first

    def _logit_scores(self, logits: Tensor, targets: Tensor, losses: Tensor | None) -> Tensor:
        return scores_from_logits(
            logits.detach(),
            targets,
            self._loss_fn,
            score=self._score,
            ignore_index=self._ignore_index,
            losses=None if losses is None else losses.detach(),
        )

    def _close(self, entry: float | None) -> None:
        """Close the open step at ``entry`` (a next before_step) or now, after a sync."""
        step = self._open
        if step is None:
            return
        self._open = None
        self._feed_tau = False
        clock: _Clock = step["clock"]
        if entry is None:
            end_mark = clock.mark()
            clock.synchronize()
            end = time.perf_counter()
        else:
            end_mark = clock.mark()
            clock.synchronize()
            end = entry
        scoring = clock.seconds(step["begin"], step["scored"])
        training = clock.seconds(step["handed_out"], end_mark)
        total = step["waited"] + (end - step["entry"])
        sampling = max(total - scoring - training, 0.0)
        self._scoring_seconds += scoring
        self._sampling_seconds += sampling
        self._training_seconds += training
        self._last_end = end
        self._switch.record_step(step["importance"], scoring + sampling + training, scoring)
        self._resolve()

    def _resolve(self) -> None:
        """Count the finished super-batches as IS or fallback steps; warn for fallbacks."""
        pending, self._pending_usable = self._pending_usable, []
        for usable in pending:
            if bool(usable):
                self._is_steps += 1
            else:
                self._fallback_steps += 1
                warnings.warn(
                    "ISSGD: the super-batch scores are non-finite, negative or all zero; "
                    "this step falls back to uniform sampling.",
                    RuntimeWarning,
                    stacklevel=3,
                )
