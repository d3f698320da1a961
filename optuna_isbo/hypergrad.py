r"""Non-greedy forward-mode hypergradients for SGD schedules.

This module learns learning-rate, momentum and weight-decay *schedules* by differentiating the
validation loss at the end of a whole training run with respect to the schedule, following

    Paul Micaelli and Amos Storkey. "Gradient-based Hyperparameter Optimization Over Long
    Horizons." NeurIPS 2021 (arXiv:2007.07869, "Non-greedy gradient-based hyperparameter
    optimization over long horizons").

The inner optimizer is SGD with momentum and coupled weight decay, exactly as
:class:`torch.optim.SGD` computes it (``dampening=0``, ``nesterov=False``). For steps
:math:`t = 1, \dots, T` with minibatch loss :math:`L_t`,

.. math::

    v_t &= \mu_t v_{t-1} + \nabla L_t(\theta_{t-1}) + \beta_t \theta_{t-1}, \qquad v_0 = 0, \\
    \theta_t &= \theta_{t-1} - \alpha_t v_t,

with learning rate :math:`\alpha_t`, momentum :math:`\mu_t` and weight decay :math:`\beta_t`.
The :math:`T` steps are split into ``n_blocks`` contiguous blocks of equal length, and every
hyperparameter is *shared* within a block: :math:`\alpha_t = \alpha_{b(t)}` and so on. The
hyperparameters are therefore the :math:`3 \times n_\text{blocks}` numbers
:math:`h = (\alpha_j, \mu_j, \beta_j)_j`.

Forward-mode differentiation carries the tangents :math:`Z_t = \partial\theta_t / \partial h`
and :math:`C_t = \partial v_t / \partial h` along the run. Differentiating the recurrence,

.. math::

    C_t &= \mu_t C_{t-1} + (H_t + \beta_t I) Z_{t-1}
          + \frac{\partial \mu_t}{\partial h} v_{t-1}
          + \frac{\partial \beta_t}{\partial h} \theta_{t-1}, \\
    Z_t &= Z_{t-1} - \alpha_t C_t - \frac{\partial \alpha_t}{\partial h} v_t,

where :math:`H_t = \nabla^2 L_t(\theta_{t-1})` enters only through Hessian-vector products
(forward-over-reverse :func:`torch.func.jvp` of :func:`torch.func.grad`, vectorized over the
tangents with :func:`torch.func.vmap`). Because hyperparameters are shared within a block,
:math:`\partial \alpha_t / \partial \alpha_j` is the indicator of step :math:`t` lying in block
:math:`j`, and the tangent of a block stays exactly zero until that block starts, so only the
tangents of the blocks reached so far are propagated. The hypergradient is

.. math::

    \frac{d L_\text{val}(\theta_T)}{d h} = Z_T^\top \nabla_\theta L_\text{val}(\theta_T).

The state held during a run is :math:`\theta, v` and :math:`Z, C` of shape
``(3, n_blocks, n_params)`` each: memory is independent of the horizon :math:`T`, unlike
reverse-mode differentiation through the unrolled run, whose memory grows linearly in
:math:`T`.

The outer loop updates the schedules with the sign of the hypergradient, the per-entry step
size halving whenever the sign of that entry flips (as in the reference above), and clips them
into their bounds. A training run or hypergradient that is not finite rejects the outer step:
the schedules return to the last accepted ones and the step sizes are halved.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import operator
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import functional_call, grad_and_value, jvp, vmap
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "HYPERPARAMETER_NAMES",
    "HypergradientResult",
    "OuterStep",
    "ScheduleScheduler",
    "Schedules",
    "hypergradient",
    "learn_schedules",
    "minibatch_indices",
    "train_with_schedules",
]

_logger = logging.getLogger(__name__)

HYPERPARAMETER_NAMES: tuple[str, str, str] = ("lr", "momentum", "weight_decay")
"""The hyperparameter types, in the order of the first axis of every ``(3, n_blocks)`` array."""

_LR, _MOMENTUM, _WEIGHT_DECAY = 0, 1, 2

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Data = TensorDataset | tuple[Any, Any] | list[Any]
"""``(inputs, targets)``: tensors, NumPy arrays or nested lists, or a two-tensor dataset."""

# torch.optim.SGD keeps no momentum buffer while a group's momentum is exactly 0 and starts a
# fresh one (v = g) when momentum becomes positive, whereas the recurrence differentiated here
# always keeps v_t. The smallest positive normal double keeps the buffer alive; multiplying a
# finite buffer by it underflows to 0 next to any normal gradient, so the arithmetic is that of
# momentum 0.
_TINY_MOMENTUM = sys.float_info.min


@dataclass(frozen=True)
class Schedules:
    """Piecewise-constant SGD schedules over ``n_steps`` steps split into equal blocks.

    Parameters
    ----------
    lr
        Learning rate of each block, length ``n_blocks``.
    momentum
        Momentum of each block, length ``n_blocks``, each in ``[0, 1)``.
    weight_decay
        Coupled (L2) weight decay of each block, length ``n_blocks``.
    n_steps
        Number of optimizer steps the schedules cover; a multiple of ``n_blocks``.
    """

    lr: tuple[float, ...]
    momentum: tuple[float, ...]
    weight_decay: tuple[float, ...]
    n_steps: int

    def __post_init__(self) -> None:
        n_blocks = len(self.lr)
        if n_blocks == 0:
            raise ValueError("lr must hold at least one block.")
        for name in ("momentum", "weight_decay"):
            if len(getattr(self, name)) != n_blocks:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} blocks but lr has {n_blocks}."
                )
        object.__setattr__(self, "n_steps", _check_horizon(self.n_steps, n_blocks)[0])
        values = (*self.lr, *self.momentum, *self.weight_decay)
        if not all(math.isfinite(x) for x in values):
            raise ValueError("Schedules must be finite.")
        if min(values) < 0.0:
            raise ValueError("lr, momentum and weight_decay must be non-negative.")
        if max(self.momentum) >= 1.0:
            raise ValueError(f"momentum must be below 1, got {max(self.momentum)}.")

    @classmethod
    def constant(
        cls,
        n_steps: int,
        n_blocks: int,
        *,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> Schedules:
        """Schedules holding the same value in every block."""
        n_steps, n_blocks = _check_horizon(n_steps, n_blocks)
        return cls(
            lr=(float(lr),) * n_blocks,
            momentum=(float(momentum),) * n_blocks,
            weight_decay=(float(weight_decay),) * n_blocks,
            n_steps=n_steps,
        )

    @classmethod
    def from_tensor(cls, values: torch.Tensor, n_steps: int) -> Schedules:
        """Build schedules from a ``(3, n_blocks)`` tensor ordered as ``HYPERPARAMETER_NAMES``."""
        if values.ndim != 2 or values.shape[0] != len(HYPERPARAMETER_NAMES):
            raise ValueError(f"values must have shape (3, n_blocks), got {tuple(values.shape)}.")
        rows = values.detach().to(torch.float64).cpu().tolist()
        return cls(
            lr=tuple(rows[_LR]),
            momentum=tuple(rows[_MOMENTUM]),
            weight_decay=tuple(rows[_WEIGHT_DECAY]),
            n_steps=n_steps,
        )

    @property
    def n_blocks(self) -> int:
        """Number of blocks."""
        return len(self.lr)

    @property
    def steps_per_block(self) -> int:
        """Number of optimizer steps sharing one value."""
        return self.n_steps // self.n_blocks

    def block_of(self, step: int) -> int:
        """Block index of the 0-based ``step``; steps past the horizon use the last block."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        return min(step // self.steps_per_block, self.n_blocks - 1)

    def values_at(self, step: int) -> tuple[float, float, float]:
        """``(lr, momentum, weight_decay)`` used by the 0-based ``step``."""
        block = self.block_of(step)
        return self.lr[block], self.momentum[block], self.weight_decay[block]

    def as_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The schedules as a ``(3, n_blocks)`` tensor ordered as ``HYPERPARAMETER_NAMES``."""
        return torch.tensor([self.lr, self.momentum, self.weight_decay], dtype=dtype)

    def scheduler(self, optimizer: torch.optim.Optimizer) -> ScheduleScheduler:
        """A scheduler replaying these schedules on a :class:`torch.optim.SGD` optimizer."""
        return ScheduleScheduler(optimizer, self)


class ScheduleScheduler:
    """Set ``lr``, ``momentum`` and ``weight_decay`` of a :class:`torch.optim.SGD` each step.

    Used like a learning-rate scheduler: construction sets the values of step 0, and
    :meth:`step` is called after every ``optimizer.step()``. Steps past the horizon keep the
    values of the last block. Training with it reproduces the run that
    :func:`hypergradient` differentiates (same initial parameters, same minibatches).

    Parameters
    ----------
    optimizer
        A :class:`torch.optim.SGD` with ``dampening=0``, ``nesterov=False`` and
        ``maximize=False``; every parameter group receives the same values.
    schedules
        The schedules to replay.

    Examples
    --------
    .. code-block:: python

        optimizer = torch.optim.SGD(model.parameters(), lr=schedules.lr[0])
        scheduler = schedules.scheduler(optimizer)
        for inputs, targets in batches:
            optimizer.zero_grad()
            loss_fn(model(inputs), targets).backward()
            optimizer.step()
            scheduler.step()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedules: Schedules) -> None:
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(
                f"optimizer must be a torch.optim.SGD, got {type(optimizer).__name__}."
            )
        for group in optimizer.param_groups:
            if group.get("dampening", 0) != 0 or group.get("nesterov", False):
                raise ValueError("optimizer must use dampening=0 and nesterov=False.")
            if group.get("maximize", False):
                raise ValueError("optimizer must use maximize=False.")
        self.optimizer = optimizer
        self.schedules = schedules
        self.last_step = 0
        self._apply()

    def step(self) -> None:
        """Advance to the next optimizer step and set its hyperparameters."""
        self.last_step += 1
        self._apply()

    def get_last_values(self) -> tuple[float, float, float]:
        """``(lr, momentum, weight_decay)`` that the next ``optimizer.step()`` uses."""
        return self.schedules.values_at(self.last_step)

    def state_dict(self) -> dict[str, Any]:
        """State for checkpointing, as for :mod:`torch.optim.lr_scheduler`."""
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        self.last_step = int(state_dict["last_step"])
        self._apply()

    def _apply(self) -> None:
        lr, momentum, weight_decay = self.get_last_values()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["momentum"] = max(momentum, _TINY_MOMENTUM)
            group["weight_decay"] = weight_decay


@dataclass(frozen=True)
class HypergradientResult:
    """Outcome of one forward-mode differentiated training run.

    Attributes
    ----------
    hypergradient
        ``(3, n_blocks)`` derivative of the validation loss at the end of the run with respect
        to the schedules, rows ordered as ``HYPERPARAMETER_NAMES``; rows of hyperparameters
        that were not differentiated are zero. NaN where the run diverged.
    val_loss
        Validation loss at the final parameters (``nan`` when the run diverged).
    train_loss
        Minibatch loss of the last step taken.
    params
        ``(n_params,)`` final trainable parameters (``requires_grad=True``), flattened in
        ``model.named_parameters()`` order; frozen parameters are not included.
    velocity
        ``(n_params,)`` final momentum buffer of the trainable parameters.
    tangents
        ``(3, n_blocks, n_params)`` final :math:`Z_T = d\\theta_T / d h`.
    diverged
        Whether a training loss, the validation loss or the hypergradient was not finite.
    """

    hypergradient: torch.Tensor
    val_loss: float
    train_loss: float
    params: torch.Tensor
    velocity: torch.Tensor
    tangents: torch.Tensor
    diverged: bool


@dataclass(frozen=True)
class OuterStep:
    """Progress record passed to the ``callback`` of :func:`learn_schedules`.

    Attributes
    ----------
    index
        0-based outer step.
    schedules
        Schedules evaluated at this outer step.
    val_loss
        Validation loss they reached (``nan`` when the run diverged).
    hypergradient
        ``(3, n_blocks)`` hypergradient, NaN when the run diverged.
    accepted
        Whether the step was accepted (finite loss and hypergradient).
    elapsed_seconds
        Wall-clock seconds since :func:`learn_schedules` started.
    """

    index: int
    schedules: Schedules
    val_loss: float
    hypergradient: torch.Tensor
    accepted: bool
    elapsed_seconds: float


def minibatch_indices(
    n_examples: int, batch_size: int, n_steps: int, seed: int = 0, start_step: int = 0
) -> Iterator[torch.Tensor]:
    """Yield the ``(batch_size,)`` index tensors of steps ``start_step, ..., n_steps - 1``.

    Each epoch is a fresh random permutation drawn from a generator seeded with ``seed``; the
    remainder that does not fill a minibatch is dropped. The same arguments always give the
    same minibatches, which is what lets a learned run be replayed. Indices are generated
    lazily, one epoch at a time, so memory does not grow with ``n_steps``.
    """
    n_examples, batch_size = _check_positive(n_examples=n_examples, batch_size=batch_size)
    n_steps = _as_int("n_steps", n_steps, 0)
    start_step = _as_int("start_step", start_step, 0)
    if batch_size > n_examples:
        raise ValueError(f"batch_size ({batch_size}) exceeds the {n_examples} examples.")
    generator = torch.Generator().manual_seed(_check_seed(seed))
    per_epoch = n_examples // batch_size

    def stream() -> Iterator[torch.Tensor]:
        while True:
            permutation = torch.randperm(n_examples, generator=generator)
            for i in range(per_epoch):
                yield permutation[i * batch_size : (i + 1) * batch_size]

    return itertools.islice(stream(), start_step, n_steps)


def train_with_schedules(
    model: torch.nn.Module,
    train_data: Data,
    schedules: Schedules,
    *,
    batch_size: int,
    seed: int = 0,
    loss_fn: LossFn = torch.nn.functional.cross_entropy,
) -> None:
    """Train ``model`` in place with :class:`torch.optim.SGD` following ``schedules``.

    Uses the minibatches of :func:`minibatch_indices` with the same ``seed``, so that training
    a model with the same initial parameters reproduces the run of :func:`hypergradient`.
    ``train_data`` and ``loss_fn`` are taken as :func:`hypergradient` takes them.
    """
    inputs, targets = _as_tensors(train_data, "train_data", model)
    reduced_loss = _scalar_loss(loss_fn)
    optimizer = torch.optim.SGD(model.parameters(), lr=schedules.lr[0])
    scheduler = schedules.scheduler(optimizer)
    for index in minibatch_indices(len(inputs), batch_size, schedules.n_steps, seed):
        optimizer.zero_grad(set_to_none=True)
        reduced_loss(model(inputs[index]), targets[index]).backward()
        optimizer.step()
        scheduler.step()


def hypergradient(
    model: torch.nn.Module,
    train_data: Data,
    val_data: Data,
    schedules: Schedules,
    *,
    batch_size: int,
    seed: int = 0,
    loss_fn: LossFn = torch.nn.functional.cross_entropy,
    differentiate: Sequence[str] = HYPERPARAMETER_NAMES,
    velocity: torch.Tensor | None = None,
    start_step: int = 0,
    val_batch_size: int | None = None,
) -> HypergradientResult:
    """Train with ``schedules`` and differentiate the final validation loss in forward mode.

    The model is not modified: training runs on a flat copy of its trainable parameters
    (``requires_grad=True``) through :func:`torch.func.functional_call`. Frozen parameters
    (``requires_grad=False``) stay fixed, as :class:`torch.optim.SGD` leaves parameters without
    a gradient untouched in :func:`train_with_schedules`.

    The forward pass must be a deterministic function of the parameters and the inputs, because
    it is differentiated twice and vectorized: no dropout in training mode, no other random
    numbers, and no buffer updates such as the running statistics of batch normalization in
    training mode (buffers are used as the constants they are). A probe forward pass on one
    minibatch checks this before the run and raises :class:`ValueError` naming the layer or
    buffer at fault; ``model.eval()`` makes dropout and batch normalization deterministic.

    Parameters
    ----------
    model
        Network holding the initial parameters :math:`\\theta_0`; it needs at least one
        trainable parameter.
    train_data, val_data:
        The whole data set as ``(inputs, targets)``: tensors, NumPy arrays or (nested) lists, or
        a two-tensor :class:`~torch.utils.data.TensorDataset`. Arrays and lists become tensors
        on the device of the model's parameters, floating ones in their dtype, signed integer
        ones and unsigned integer targets (``uint8`` labels) in ``torch.long``; tensors are
        used as they are. Not a :class:`~torch.utils.data.DataLoader`: the minibatches are
        drawn here (:func:`minibatch_indices`). Every value must be finite.
    schedules
        Schedules of the run; ``schedules.n_steps`` steps are taken.
    batch_size
        Minibatch size of the training steps.
    seed
        Seed of :func:`minibatch_indices`.
    loss_fn
        ``loss_fn(outputs, targets)``, used for training and validation: a scalar (the mean
        loss), or a per-sample loss (``reduction="none"``) that is reduced by its mean over
        all elements. It must support forward-mode differentiation of its gradient
        (``torch.func.jvp`` of ``torch.func.grad``), as
        :func:`~torch.nn.functional.cross_entropy`, :func:`~torch.nn.functional.nll_loss`,
        :func:`~torch.nn.functional.l1_loss` and
        :func:`~torch.nn.functional.binary_cross_entropy_with_logits` do with any reduction.
        :func:`~torch.nn.functional.mse_loss` does only with ``reduction="none"`` or
        ``"sum"`` in torch 2.13: passed itself (or as a :class:`~torch.nn.MSELoss`) it is
        evaluated as the mean of ``reduction="none"``, the same value; a ``loss_fn`` that calls
        it with the default ``reduction="mean"`` raises :class:`ValueError`, as does any other
        loss without this derivative.
    differentiate
        Hyperparameter types to differentiate, a subset of ``HYPERPARAMETER_NAMES``; fewer
        types propagate fewer tangents.
    velocity
        ``(n_params,)`` initial momentum buffer of the trainable parameters (zero when
        ``None``), to continue a run.
    start_step
        Position of the first step in the minibatch stream, to continue a run.
    val_batch_size
        Chunk size for the validation loss and gradient (the whole set when ``None``).

    Returns
    -------
    HypergradientResult
        The hypergradient, losses and final state.

    Raises
    ------
    ValueError
        On invalid arguments, non-finite data, a model without trainable parameters, a forward
        pass that is random or updates buffers (see above), or a ``loss_fn`` or model without
        the forward-mode derivative of its gradient (at the first step).
    TypeError
        If ``model`` is not a :class:`torch.nn.Module`, if the data are not an
        ``(inputs, targets)`` pair (a DataLoader, say), or if ``loss_fn`` does not return a
        tensor.
    """
    (batch_size,) = _check_positive(batch_size=batch_size)
    if val_batch_size is not None:
        (val_batch_size,) = _check_positive(val_batch_size=val_batch_size)
    seed = _check_seed(seed)
    start_step = _as_int("start_step", start_step, 0)
    rows = _rows_of(differentiate)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    x_train, y_train = _as_tensors(train_data, "train_data", model)
    x_val, y_val = _as_tensors(val_data, "val_data", model)
    reduced_loss = _scalar_loss(loss_fn)
    trainable = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"The model ({type(model).__name__}) has no trainable parameters "
            "(requires_grad=True); there is nothing for the schedules to train."
        )
    names = [name for name, _ in trainable]
    initial = [p for _, p in trainable]
    shapes = [p.shape for p in initial]
    sizes = [p.numel() for p in initial]
    # Frozen parameters and buffers enter the forward pass as constants.
    constants = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    constants.update({name: b.detach() for name, b in model.named_buffers()})
    theta = torch.cat([p.reshape(-1) for p in initial]).clone()
    n_params = theta.numel()
    if velocity is None:
        v = torch.zeros_like(theta)
    elif velocity.shape != theta.shape:
        raise ValueError(f"velocity must have shape ({n_params},), got {tuple(velocity.shape)}.")
    else:
        v = velocity.detach().to(theta).clone()

    def loss_at(flat: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        params = {
            name: chunk.view(shape)
            for name, chunk, shape in zip(names, flat.split(sizes), shapes, strict=True)
        }
        return reduced_loss(functional_call(model, (params, constants), (inputs,)), targets)

    _check_forward(model, dict(zip(names, initial, strict=True)), constants, x_train[:batch_size])
    grad_and_loss = grad_and_value(loss_at)

    def gradient_and_hvp(
        flat: torch.Tensor, tangent: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = jvp(lambda p: grad_and_loss(p, inputs, targets), (flat,), (tangent,))
        (gradient, loss), (hvp, _) = outputs[0], outputs[1]
        return gradient, loss, hvp

    # Only the primal is unbatched: vmap evaluates the gradient once and the Hessian-vector
    # products of all live tangents together.
    batched = vmap(
        gradient_and_hvp,
        in_dims=(None, 0, None, None),
        out_dims=(None, None, 0),  # type: ignore[arg-type]
    )

    n_blocks = schedules.n_blocks
    per_block = schedules.steps_per_block
    h = schedules.as_tensor(torch.float64).tolist()
    # Blocks first, so that the tangents of the blocks reached so far are one contiguous view.
    z = theta.new_zeros(n_blocks, len(rows), n_params)
    c = torch.zeros_like(z)
    slot = {row: i for i, row in enumerate(rows)}
    train_loss = math.nan
    diverged = False
    batches = minibatch_indices(
        len(x_train), batch_size, start_step + schedules.n_steps, seed, start_step
    )
    for t, index in enumerate(batches):
        block = t // per_block
        lr, momentum, weight_decay = (h[r][block] for r in range(3))
        # Tangents of the blocks after the current one are still exactly zero.
        z_live, c_live = z[: block + 1], c[: block + 1]
        try:
            gradient, loss, hvp = batched(
                theta, z_live.view(-1, n_params), x_train[index], y_train[index]
            )
        except (NotImplementedError, RuntimeError) as err:
            if not _lacks_forward_derivative(err):
                raise
            raise ValueError(_forward_derivative_message(loss_fn, err)) from err
        train_loss = float(loss)
        if not math.isfinite(train_loss):
            diverged = True
            break
        c_live.mul_(momentum).add_(hvp.view_as(c_live)).add_(z_live, alpha=weight_decay)
        if _MOMENTUM in slot:
            c[block, slot[_MOMENTUM]] += v
        if _WEIGHT_DECAY in slot:
            c[block, slot[_WEIGHT_DECAY]] += theta
        v = momentum * v + gradient + weight_decay * theta
        theta = theta - lr * v
        z_live.add_(c_live, alpha=-lr)
        if _LR in slot:
            z[block, slot[_LR]] -= v

    tangents = theta.new_zeros(len(HYPERPARAMETER_NAMES), n_blocks, n_params)
    tangents[rows] = z.transpose(0, 1)
    val_loss = math.nan
    hypergrad = torch.full((3, n_blocks), math.nan, dtype=theta.dtype)
    if not diverged:
        val_grad, val_loss_tensor = _validation_gradient(
            loss_at, theta, x_val, y_val, val_batch_size
        )
        val_loss = float(val_loss_tensor)
        hypergrad = tangents @ val_grad
        diverged = not (math.isfinite(val_loss) and bool(torch.isfinite(hypergrad).all()))
    return HypergradientResult(
        hypergradient=hypergrad.detach(),
        val_loss=val_loss,
        train_loss=train_loss,
        params=theta.detach(),
        velocity=v.detach(),
        tangents=tangents,
        diverged=diverged,
    )


def learn_schedules(
    model_fn: Callable[[], torch.nn.Module],
    train_data: Data,
    val_data: Data,
    *,
    n_steps: int,
    n_blocks: int,
    batch_size: int,
    n_outer_steps: int = 10,
    lr_init: float = 0.05,
    momentum_init: float = 0.5,
    weight_decay_init: float = 0.0,
    lr_bounds: tuple[float, float] = (0.0, 1.0),
    momentum_bounds: tuple[float, float] = (0.0, 0.99),
    weight_decay_bounds: tuple[float, float] = (0.0, 1e-2),
    outer_step_sizes: tuple[float, float, float] | None = None,
    learn: Sequence[str] = HYPERPARAMETER_NAMES,
    loss_fn: LossFn = torch.nn.functional.cross_entropy,
    seed: int = 0,
    val_batch_size: int | None = None,
    callback: Callable[[OuterStep], None] | None = None,
) -> Schedules:
    """Learn SGD schedules by non-greedy forward-mode hypergradient descent.

    Every outer step trains from the same initial parameters over the whole horizon with the
    current schedules, takes the hypergradient of the final validation loss
    (:func:`hypergradient`), and moves every learned value by its step size against the sign of
    its hypergradient entry, clipped into its bounds. An entry's step size halves whenever the
    sign of its hypergradient flips. A diverged run (non-finite training loss, validation loss
    or hypergradient) is rejected: the schedules go back to the last accepted ones, every step
    size halves, and the step is retaken; when no run has been accepted yet the learning rates
    are halved instead, down to ``lr_bounds[0]``: a run that diverges there ends the search.

    Parameters
    ----------
    model_fn
        Builds the network. It is called once, under ``torch.manual_seed(seed)`` in a forked
        RNG state, and every outer step starts from the parameters it returned; build a model
        the same way to replay the schedules. Parameters with ``requires_grad=False`` stay
        frozen, as in the replay. The forward pass must be deterministic and leave the buffers
        alone (see :func:`hypergradient`): return ``model.eval()`` for a network with dropout or
        batch normalization.
    train_data, val_data:
        The whole data set as ``(inputs, targets)``: tensors, NumPy arrays or (nested) lists, or
        a two-tensor :class:`~torch.utils.data.TensorDataset` (see :func:`hypergradient`); not
        a :class:`~torch.utils.data.DataLoader`. Every value must be finite.
    n_steps
        Horizon: optimizer steps of each training run; a multiple of ``n_blocks``.
    n_blocks
        Number of contiguous blocks of steps sharing one value of each hyperparameter.
    batch_size
        Minibatch size.
    n_outer_steps
        Number of training runs (hypergradient evaluations).
    lr_init, momentum_init, weight_decay_init:
        Initial value of every block.
    lr_bounds, momentum_bounds, weight_decay_bounds:
        Inclusive ``(low, high)`` bounds; lows are non-negative and momentum stays below 1.
    outer_step_sizes
        Initial step sizes of the ``(lr, momentum, weight_decay)`` updates; by default a tenth
        of the width of each bound.
    learn
        Hyperparameter types to learn; the others keep their initial values.
    loss_fn
        ``loss_fn(outputs, targets)`` returning the mean loss, or a per-sample loss
        (``reduction="none"``) whose mean is taken (see :func:`hypergradient`).
    seed
        Seed of the model initialization and of the minibatch order (the same every run).
    val_batch_size
        Chunk size for the validation loss and gradient (the whole set when ``None``).
    callback
        Called with an :class:`OuterStep` after every outer step, e.g. to show progress; the
        same information is logged at INFO level.

    Returns
    -------
    Schedules
        The evaluated schedules with the lowest validation loss.

    Raises
    ------
    ValueError
        On invalid arguments, non-finite values in the data, or a model that
        :func:`hypergradient` cannot differentiate: one without trainable parameters, or whose
        forward pass is random (dropout in training mode) or updates buffers (batch
        normalization in training mode). These are detected before the first training run; a
        ``loss_fn`` or model without the forward-mode derivative of its gradient is detected at
        its first step.
    TypeError
        If ``model_fn`` does not return a :class:`torch.nn.Module`, if the data are not an
        ``(inputs, targets)`` pair (a DataLoader, say), or if ``loss_fn`` does not return a
        tensor.
    RuntimeError
        If every training run diverged (the last one at the lower bound of ``lr_bounds``, or
        after ``n_outer_steps`` runs).
    """
    n_steps, n_blocks = _check_horizon(n_steps, n_blocks)
    batch_size, n_outer_steps = _check_positive(batch_size=batch_size, n_outer_steps=n_outer_steps)
    seed = _check_seed(seed)
    rows = _rows_of(learn)
    bounds = [
        _check_bounds("lr_bounds", lr_bounds),
        _check_bounds("momentum_bounds", momentum_bounds),
        _check_bounds("weight_decay_bounds", weight_decay_bounds),
    ]
    if momentum_bounds[1] >= 1.0:
        raise ValueError(f"momentum_bounds must stay below 1, got {momentum_bounds}.")
    initial_values = (lr_init, momentum_init, weight_decay_init)
    for name, value, (low, high) in zip(
        ("lr_init", "momentum_init", "weight_decay_init"), initial_values, bounds, strict=True
    ):
        if not low <= value <= high:
            raise ValueError(f"{name}={value} lies outside its bounds [{low}, {high}].")
    if outer_step_sizes is None:
        initial_step_sizes = [0.1 * (high - low) for low, high in bounds]
    elif len(outer_step_sizes) != 3 or not all(x > 0 for x in outer_step_sizes):
        raise ValueError(f"outer_step_sizes must be 3 positive numbers, got {outer_step_sizes}.")
    else:
        initial_step_sizes = [float(x) for x in outer_step_sizes]
    # Fail on the form of the data before building the model; convert them once it is built.
    _check_pair(train_data, "train_data")
    _check_pair(val_data, "val_data")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_fn()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model_fn must return a torch.nn.Module, got {type(model).__name__}.")
    train_pair = _as_tensors(train_data, "train_data", model)
    val_pair = _as_tensors(val_data, "val_data", model)
    if len(train_pair[0]) < batch_size:
        raise ValueError(f"batch_size ({batch_size}) exceeds the number of training examples.")
    lows = torch.tensor([b[0] for b in bounds], dtype=torch.float64)[:, None]
    highs = torch.tensor([b[1] for b in bounds], dtype=torch.float64)[:, None]
    values = torch.tensor(initial_values, dtype=torch.float64)[:, None].repeat(1, n_blocks)
    step_sizes = torch.tensor(initial_step_sizes, dtype=torch.float64)[:, None].repeat(1, n_blocks)
    learned = torch.zeros(3, 1, dtype=torch.bool)
    learned[rows] = True
    learned_names = [HYPERPARAMETER_NAMES[r] for r in rows]

    accepted_values: torch.Tensor | None = None
    previous_sign = torch.zeros(3, n_blocks, dtype=torch.float64)
    best: tuple[float, Schedules] | None = None
    start = time.perf_counter()
    index = 0
    for index in range(n_outer_steps):
        exhausted = False
        schedules = Schedules.from_tensor(values, n_steps)
        result = hypergradient(
            model,
            train_pair,
            val_pair,
            schedules,
            batch_size=batch_size,
            seed=seed,
            loss_fn=loss_fn,
            differentiate=learned_names,
            val_batch_size=val_batch_size,
        )
        accepted = not result.diverged
        if accepted:
            if best is None or result.val_loss < best[0]:
                best = (result.val_loss, schedules)
            sign = torch.where(learned, result.hypergradient.to(torch.float64).sign(), 0.0)
            step_sizes = torch.where(sign * previous_sign < 0, 0.5 * step_sizes, step_sizes)
            previous_sign = sign
            accepted_values = values
            values = torch.clamp(values - step_sizes * sign, lows, highs)
        elif accepted_values is None:
            # Halved, but not below the lower bound; at the bound the run, deterministic, would
            # diverge again, and the search stops.
            halved = torch.clamp(0.5 * values[_LR], min=bounds[_LR][0])
            exhausted = bool((halved == values[_LR]).all())
            values = values.clone()
            values[_LR] = halved
        else:
            step_sizes = 0.5 * step_sizes
            values = torch.clamp(accepted_values - step_sizes * previous_sign, lows, highs)
        record = OuterStep(
            index=index,
            schedules=schedules,
            val_loss=result.val_loss,
            hypergradient=result.hypergradient,
            accepted=accepted,
            elapsed_seconds=time.perf_counter() - start,
        )
        _logger.info(
            "outer step %d/%d: val_loss=%.5g accepted=%s (%.1f s)",
            index + 1,
            n_outer_steps,
            record.val_loss,
            accepted,
            record.elapsed_seconds,
        )
        if callback is not None:
            callback(record)
        if exhausted:
            break
    if best is None:
        raise RuntimeError(
            f"All {index + 1} training runs diverged, the last with lr={min(schedules.lr):g} "
            f"(lr_bounds={bounds[_LR]}); lower lr_init or lr_bounds."
        )
    return best[1]


def _validation_gradient(
    loss_at: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient and value of the mean validation loss, accumulated over chunks."""
    n = len(inputs)
    chunk = n if chunk_size is None else chunk_size
    total_grad = torch.zeros_like(theta)
    total_loss = theta.new_zeros(())
    for begin in range(0, n, chunk):
        x, y = inputs[begin : begin + chunk], targets[begin : begin + chunk]
        weight = len(x) / n
        g, loss = grad_and_value(loss_at)(theta, x, y)
        total_grad += weight * g
        total_loss += weight * loss.detach()
    return total_grad, total_loss


_UNSIGNED_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)

_DATA_FORMS = (
    "(inputs, targets) tensors, NumPy arrays or lists, or a two-tensor "
    "torch.utils.data.TensorDataset"
)


def _check_pair(data: object, name: str) -> tuple[Any, Any]:
    """The ``(inputs, targets)`` of ``data``; TypeError or ValueError naming ``name`` if none."""
    if isinstance(data, TensorDataset):
        items: tuple[Any, ...] = tuple(data.tensors)
    elif isinstance(data, tuple | list):
        items = tuple(data)
    elif isinstance(data, DataLoader):
        raise TypeError(
            f"{name} must be the whole data set as {_DATA_FORMS}, got a DataLoader: the "
            "minibatches are drawn here (minibatch_indices, from seed), so pass the DataLoader's "
            "dataset as (inputs, targets), e.g. loader.dataset when it is a TensorDataset."
        )
    elif isinstance(data, Dataset):
        raise TypeError(
            f"{name} must be the whole data set as {_DATA_FORMS}, got a "
            f"{type(data).__name__}; stack its samples into an (inputs, targets) pair."
        )
    else:
        raise TypeError(f"{name} must be {_DATA_FORMS}, got a {type(data).__name__}.")
    if len(items) != 2:
        raise ValueError(f"{name} must hold (inputs, targets), got {len(items)} items.")
    return items[0], items[1]


def _as_tensors(
    data: Data, name: str, model: torch.nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of ``data`` as tensors, checked to be finite and of equal length.

    Array-likes (NumPy arrays, lists) become tensors on the device of ``model``'s first
    floating parameter, floating ones in its dtype, signed integer ones and unsigned integer
    targets (class indices) in ``torch.long``; tensors are returned as they are.
    """
    parameters = () if model is None else model.parameters()
    reference = next((p for p in parameters if p.is_floating_point()), None)
    pair: list[torch.Tensor] = []
    for part, value in zip(("inputs", "targets"), _check_pair(data, name), strict=True):
        label = f"{name}[{len(pair)}] ({part})"
        if isinstance(value, torch.Tensor):
            tensor = value
        else:
            try:
                tensor = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(
                    f"{label} must be a tensor, a NumPy array or a (nested) list of numbers, "
                    f"got a {type(value).__name__} that torch.as_tensor cannot convert: {err}"
                ) from err
            if tensor.is_floating_point() and reference is not None:
                tensor = tensor.to(reference.dtype)
            elif tensor.dtype in (torch.int8, torch.int16, torch.int32) or (
                part == "targets" and tensor.dtype in _UNSIGNED_DTYPES
            ):
                # Class indices, as cross_entropy wants them; labels are often stored unsigned
                # (uint8 in IDX files), while unsigned inputs (pixels) keep their dtype.
                tensor = tensor.long()
            if reference is not None:
                tensor = tensor.to(reference.device)
        if tensor.ndim == 0:
            raise ValueError(f"{label} must have one row per example, got a scalar.")
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = (~finite).reshape(len(tensor), -1).any(dim=1).nonzero()
                raise ValueError(
                    f"{label} holds non-finite values (NaN or inf) in {len(bad)} of its "
                    f"{len(tensor)} rows (the first is row {int(bad[0])}); remove or impute them."
                )
        pair.append(tensor)
    inputs, targets = pair
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(
            f"{name} must hold the same positive number of inputs and targets, got "
            f"{len(inputs)} and {len(targets)}."
        )
    return inputs, targets


def _scalar_loss(loss_fn: LossFn) -> LossFn:
    """``loss_fn`` returning a scalar: a non-scalar (per-sample) loss is reduced by its mean.

    :func:`torch.nn.functional.mse_loss` with ``reduction="mean"``, passed itself or as a
    :class:`torch.nn.MSELoss`, is evaluated as the mean of ``reduction="none"``: the same value,
    but with the forward-mode derivative of its gradient that torch 2.13 lacks for "mean".
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
    inner = loss_fn
    if loss_fn is torch.nn.functional.mse_loss or (
        isinstance(loss_fn, torch.nn.MSELoss) and loss_fn.reduction == "mean"
    ):
        inner = functools.partial(torch.nn.functional.mse_loss, reduction="none")

    def reduced(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        value = inner(outputs, targets)
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"loss_fn ({_describe(loss_fn)}) must return a tensor, got {type(value).__name__}."
            )
        return value if value.ndim == 0 else value.mean()

    return reduced


def _describe(fn: object) -> str:
    if isinstance(fn, torch.nn.Module):
        return repr(fn)
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:
        return repr(fn)
    return f"{module}.{qualname}" if module else str(qualname)


def _lacks_forward_derivative(err: Exception) -> bool:
    """Whether ``err`` says that forward-mode AD of an operation is missing or broken."""
    message = str(err)
    return isinstance(err, NotImplementedError) or any(
        marker in message for marker in ("forward AD", "ZeroTensors are immutable")
    )


def _forward_derivative_message(loss_fn: LossFn, err: Exception) -> str:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    message = (
        f"loss_fn ({_describe(loss_fn)}) or the model lacks the forward-mode derivative of its "
        "gradient (torch.func.jvp of torch.func.grad) that the hypergradient needs, in torch "
        f"{torch.__version__}: {detail}. "
    )
    if "ZeroTensors are immutable" in str(err):
        return message + (
            "torch.nn.functional.mse_loss with reduction='mean' fails so: pass "
            "loss_fn=torch.nn.functional.mse_loss itself (it is evaluated without that "
            "reduction), call it with reduction='none' (the mean is taken), or write "
            "((outputs - targets) ** 2).mean()."
        )
    return message + (
        "Write loss_fn with elementary tensor operations, or use a loss that has it, such as "
        "torch.nn.functional.cross_entropy, nll_loss, l1_loss or mse_loss."
    )


def _rows_of(names: Sequence[str]) -> list[int]:
    if isinstance(names, str):
        names = (names,)
    unknown = set(names) - set(HYPERPARAMETER_NAMES)
    if unknown or not names:
        raise ValueError(
            f"Hyperparameter types must be a non-empty subset of {HYPERPARAMETER_NAMES}, "
            f"got {tuple(names)}."
        )
    return sorted(HYPERPARAMETER_NAMES.index(n) for n in set(names))


def _as_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an ``int``: any integral number (Python, NumPy); not a bool."""
    if not isinstance(value, bool):
        try:
            result = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            if result >= minimum:
                return result
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(f"{name} must be {kind}, got {value!r}.")


def _check_positive(**values: int) -> tuple[int, ...]:
    return tuple(_as_int(name, value, 1) for name, value in values.items())


def _check_seed(seed: int) -> int:
    seed = _as_int("seed", seed, -(2**63))
    if seed >= 2**64:
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}.")
    return seed


def _check_horizon(n_steps: int, n_blocks: int) -> tuple[int, int]:
    n_steps, n_blocks = _check_positive(n_steps=n_steps, n_blocks=n_blocks)
    if n_steps % n_blocks != 0:
        raise ValueError(f"n_steps ({n_steps}) must be a multiple of n_blocks ({n_blocks}).")
    return n_steps, n_blocks


def _check_forward(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    constants: dict[str, torch.Tensor],
    inputs: torch.Tensor,
) -> None:
    """Raise ValueError unless the forward pass is deterministic and leaves buffers alone.

    One forward pass on ``inputs``, vectorized (a batch of one) with random operations
    forbidden, on copies of the buffers that are compared with the originals afterwards.
    """
    for name, module in model.named_modules():
        if (
            module.training
            and isinstance(module, torch.nn.modules.dropout._DropoutNd)
            and module.p > 0
        ):
            raise ValueError(
                "The forward pass must be deterministic to be differentiated, but "
                f"{_layer(name, module)} is a dropout layer in training mode (p={module.p}); "
                "call model.eval() (model_fn may return model.eval()) or set p=0."
            )
    copies = {name: c.clone() for name, c in constants.items()}

    def forward(_: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = functional_call(model, (params, copies), (inputs,))
        return output

    with torch.no_grad():
        try:
            vmap(forward, randomness="error")(inputs.new_zeros(1))
        except RuntimeError as err:
            if "random" not in str(err):
                raise
            raise ValueError(
                "The forward pass must be deterministic to be differentiated, but it draws "
                "random numbers (dropout or noise in training mode); call model.eval() or "
                "remove the randomness."
            ) from err
    changed = [name for name, c in copies.items() if not torch.equal(c, constants[name])]
    if changed:
        owner_name = changed[0].rpartition(".")[0]
        owner = _layer(owner_name, model.get_submodule(owner_name))
        raise ValueError(
            "The forward pass must not update buffers, which the differentiated run keeps "
            f"constant, but it changed {changed} of {owner}. Batch normalization in training "
            "mode updates its running statistics: call model.eval() to use them as constants "
            "(model_fn may return model.eval()), or build the layer with "
            "track_running_stats=False."
        )


def _layer(name: str, module: torch.nn.Module) -> str:
    return f"layer {name!r} ({type(module).__name__})" if name else type(module).__name__


def _check_bounds(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    if len(bounds) != 2:
        raise ValueError(f"{name} must be a (low, high) pair, got {bounds}.")
    low, high = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low < 0.0 or low > high:
        raise ValueError(f"{name} must satisfy 0 <= low <= high (finite), got {bounds}.")
    return low, high
