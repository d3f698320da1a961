"""Argument, shape and data checks shared by the IS-SGD modules (private).

Every check raises :class:`ValueError` (or :class:`TypeError` for a wrong kind of object) with
a message that names the argument and the shapes involved, so that a mistake in a training
loop is explained where it is made rather than deep inside a loss or a sampling routine.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

IGNORE_INDEX = -100
"""Target that the default cross-entropy ignores (as :func:`torch.nn.functional.cross_entropy`)."""


def shape(tensor: object) -> tuple[int, ...]:
    return tuple(tensor.shape)  # type: ignore[attr-defined]


def as_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an ``int``: any integral number (Python, NumPy, 0-d tensor); not a bool."""
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer{bound}, got the bool {value!r}.")
    try:
        result = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(
            f"{name} must be an integer{bound}, got {value!r} of type {type(value).__name__}."
        ) from None
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be an integer{bound}, got {result}.")
    return result


def as_sizes(batch_size: object, super_batch_size: object) -> tuple[int, int]:
    """``(b, B)`` as ``int``: ``b >= 1`` and ``B >= b``, the message naming both otherwise."""
    b = as_int("batch_size", batch_size, 1)
    big_b = as_int("super_batch_size", super_batch_size, 1)
    if big_b < b:
        raise ValueError(
            f"super_batch_size must be an integer >= {b} (batch_size), got {big_b}: the "
            "minibatch of batch_size samples is drawn from a super-batch of super_batch_size "
            "samples (super_batch_size == batch_size is plain uniform SGD)."
        )
    return b, big_b


def as_float(name: str, value: object) -> float:
    """``value`` as a ``float``: any real number (Python, NumPy), no bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}.")
    return float(value)


def as_seed(value: object) -> int | None:
    if value is None:
        return None
    seed = as_int("seed", value)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must lie in [-2**63, 2**64), got {seed}.")
    return seed


def check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return model


def dataset_size(dataset: object, who: str) -> int:
    """``len(dataset)`` of a map-style dataset; clear errors for a loader or a stream."""
    if isinstance(dataset, DataLoader):
        raise TypeError(
            "dataset must be a map-style Dataset, got a DataLoader; pass its dataset "
            f"(loader.dataset) instead: {who} draws its own indices and batches."
        )
    if isinstance(dataset, IterableDataset):
        raise TypeError(
            "dataset must be a map-style Dataset (__len__ and __getitem__), got the "
            f"IterableDataset {type(dataset).__name__}: {who} needs random access by index."
        )
    try:
        n_samples = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError("dataset must be a map-style Dataset with __len__.") from None
    if not hasattr(dataset, "__getitem__"):
        raise TypeError(
            f"dataset must be a map-style Dataset with __getitem__, got {type(dataset).__name__}."
        )
    if n_samples < 1:
        raise ValueError("dataset must not be empty.")
    return int(n_samples)


def check_logits(logits: object, targets: Tensor) -> Tensor:
    """Logits must be a tensor with one row per sample, shape ``(len(targets), ...)``."""
    if not isinstance(logits, Tensor):
        raise ValueError(
            f"The model must return a tensor of logits, got {type(logits).__name__}; wrap the "
            "model so that it returns the logits tensor only."
        )
    if logits.ndim == 0 or targets.ndim == 0 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            "logits and targets must have one row per sample: logits have shape "
            f"{shape(logits)} and targets shape {shape(targets)}."
        )
    return logits


def check_cross_entropy(
    logits: Tensor, targets: Tensor, ignore_index: int, check_range: bool = True
) -> None:
    """Raise a ValueError naming the shapes unless ``(logits, targets)`` suit cross-entropy.

    Logits must be ``(n, C)``; targets ``(n,)`` integer class indices in ``[0, C)`` or equal to
    ``ignore_index``, or ``(n, C)`` floating class probabilities. The class range is checked
    only if ``check_range`` (on an accelerator the check waits for the device).
    """
    if logits.ndim != 2:
        hint = (
            " For one logit per sample, pass a loss_fn such as "
            "torch.nn.functional.binary_cross_entropy_with_logits(..., reduction='none')."
            if logits.ndim == 1
            else " For several outputs per sample, pass a loss_fn that returns one loss per "
            "sample."
        )
        raise ValueError(
            "Cross-entropy scoring (loss_fn=None) needs logits of shape (n, C), got shape "
            f"{shape(logits)} with targets of shape {shape(targets)}." + hint
        )
    n, n_classes = logits.shape
    if targets.dtype.is_floating_point:
        if targets.shape != logits.shape:
            raise ValueError(
                "Cross-entropy with floating-point targets needs class probabilities of the "
                f"logits' shape {shape(logits)}, got targets of shape {shape(targets)}; "
                "class indices must be an integer tensor of shape (n,)."
            )
        return
    if targets.dtype == torch.bool or targets.dtype.is_complex:
        raise ValueError(
            f"Cross-entropy targets must be integer class indices, got dtype {targets.dtype}."
        )
    if targets.shape != (n,):
        raise ValueError(
            f"Cross-entropy needs targets of shape ({n},) (class indices) for logits of shape "
            f"{shape(logits)}, got targets of shape {shape(targets)}."
        )
    if not check_range:
        return
    bad = ((targets < 0) | (targets >= n_classes)) & (targets != ignore_index)
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(
            f"Cross-entropy targets must be class indices in [0, {n_classes}) for logits of shape "
            f"{shape(logits)}, or ignore_index={ignore_index}; got target {value}."
        )


def check_per_sample(losses: object, n: int) -> Tensor:
    if not isinstance(losses, Tensor) or losses.shape != (n,):
        got = f"shape {shape(losses)}" if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"loss_fn must return per-sample losses of shape ({n},), got {got}.")
    return losses


def check_target_kind(targets: Tensor) -> None:
    """Targets ``(N, ...)`` of a dataset, checked for cross-entropy before any forward pass.

    Integer class indices must be ``(N,)`` and class probabilities ``(N, C)``; the class range
    is checked against the logits at the first step.
    """
    if targets.dtype == torch.bool or targets.dtype.is_complex:
        raise ValueError(
            "Cross-entropy (loss_fn=None) needs integer class indices or floating class "
            f"probabilities as targets, got dtype {targets.dtype}."
        )
    if targets.dtype.is_floating_point and targets.ndim != 2:
        raise ValueError(
            "Cross-entropy (loss_fn=None) with floating-point targets needs class "
            f"probabilities, one (C,) row per sample; the dataset's targets have shape "
            f"{shape(targets[0])} per sample. Class indices must be integers."
        )
    if not targets.dtype.is_floating_point and targets.ndim != 1:
        raise ValueError(
            "Cross-entropy (loss_fn=None) needs one integer class index per sample; the "
            f"dataset's targets have shape {shape(targets[0])} per sample."
        )


def describe(item: object) -> str:
    if isinstance(item, Tensor):
        return f"a single Tensor of shape {shape(item)}"
    if isinstance(item, dict):
        return f"a dict with keys {sorted(map(str, item))}"
    if isinstance(item, tuple | list):
        return f"a {type(item).__name__} of {len(item)} elements"
    return f"a {type(item).__name__}"


def check_item(item: object, index: int) -> tuple[Any, Any]:
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    raise ValueError(
        f"dataset items must be (input, target) pairs, but item {index} is {describe(item)}. "
        "Wrap the dataset so that __getitem__ returns (input, target)."
    )


def stack(values: list[Any], indices: list[int], what: str) -> Tensor:
    tensors = []
    for value, index in zip(values, indices, strict=True):
        try:
            tensors.append(torch.as_tensor(value))
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"The {what} of dataset item {index} ({type(value).__name__}) cannot be "
                f"converted to a tensor: {err}"
            ) from None
    shapes = {shape(t) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(
            f"dataset items must have {what}s of one shape to be batched, got shapes "
            f"{sorted(shapes)}."
        )
    return torch.stack(tensors)


def check_target_rows(targets: object, n: int) -> Tensor:
    """Targets must be a tensor with ``n`` rows, shape ``(n, ...)`` (not a 0-d tensor)."""
    if not isinstance(targets, Tensor):
        raise ValueError(f"targets must be a tensor, got {type(targets).__name__}.")
    if targets.ndim == 0 or targets.shape[0] != n:
        hint = (
            " A 0-d tensor has no rows: give one target per sample, shape (n, ...)."
            if targets.ndim == 0
            else ""
        )
        raise ValueError(
            f"inputs and targets must have one row per sample, got {n} inputs and targets "
            f"of shape {shape(targets)}.{hint}"
        )
    return targets


def batch_rows(inputs: object, what: str = "inputs") -> int:
    """Number of rows (leading dimension) of a tensor or a nest of tensors (list, tuple, dict).

    All tensors of the nest must share the leading dimension.
    """
    rows = {t.shape[0] if t.ndim else None for t in tensor_leaves(inputs)}
    if not rows:
        raise ValueError(
            f"{what} must be a tensor, or a list, tuple or dict of tensors, got "
            f"{describe(inputs)}."
        )
    if None in rows or len(rows) > 1:
        raise ValueError(
            f"every tensor of the {what} must have the samples along its first dimension, with "
            f"one common number of rows; got rows {sorted(map(str, rows))}."
        )
    return int(next(iter(rows)))  # type: ignore[arg-type]


def tensor_leaves(nest: object) -> list[Tensor]:
    if isinstance(nest, Tensor):
        return [nest]
    if isinstance(nest, Mapping):
        return [leaf for value in nest.values() for leaf in tensor_leaves(value)]
    if isinstance(nest, list | tuple):
        return [leaf for value in nest for leaf in tensor_leaves(value)]
    return []


def _is_per_sample_sequence(nest: object, n: int | None) -> bool:
    """Whether ``nest`` is a list or tuple of ``n`` plain items, one per sample.

    That is what :func:`torch.utils.data.default_collate` makes of strings (and a custom
    collate function of other objects): no tensor, list, tuple or dict among the items.
    A named tuple is a record of fields, never a sequence of samples.
    """
    return (
        n is not None
        and isinstance(nest, list | tuple)
        and not hasattr(nest, "_fields")
        and len(nest) == n
        and not any(isinstance(item, Tensor | Mapping | list | tuple) for item in nest)
    )


def index_rows(nest: Any, rows: Tensor | slice, n: int | None = None) -> Any:
    """``nest[rows]`` for a tensor, applied to every tensor of a list, tuple or dict.

    With ``n`` (the number of samples of the batch), a list or tuple of ``n`` plain items
    (strings, numbers, other objects: no tensors or containers), such as the list that
    ``default_collate`` makes of a string field, holds one item per sample and is indexed too,
    keeping its type. Other non-tensor leaves are passed through unchanged.
    """
    if isinstance(nest, Tensor):
        return nest[rows]
    if _is_per_sample_sequence(nest, n):
        if isinstance(rows, slice):
            return nest[rows]
        return type(nest)(nest[i] for i in rows.tolist())
    if isinstance(nest, Mapping):
        return type(nest)({key: index_rows(value, rows, n) for key, value in nest.items()})  # type: ignore[call-arg]
    if isinstance(nest, tuple) and hasattr(nest, "_fields"):
        return type(nest)(*(index_rows(value, rows, n) for value in nest))
    if isinstance(nest, list | tuple):
        return type(nest)(index_rows(value, rows, n) for value in nest)
    return nest
