"""The prior mean function of the encoded hyperparameters (see :mod:`optuna_isbo.meta`).

``"constant"``: :math:`m(x) = b`; ``"linear"``: :math:`m(x) = b + w^\top x`; ``"mlp"``:
:math:`m(x) = b + v^\top \tanh(W^\top x + c)` with ``hidden_units`` hidden units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MEAN_KINDS", "MeanFunction"]

MEAN_KINDS = ("constant", "linear", "mlp")
_DTYPE = torch.float64


def _weight_shapes(kind: str, input_dim: int, hidden_units: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the weights of a mean function, in packing order."""
    if kind == "constant":
        return {"bias": ()}
    if kind == "linear":
        return {"weight": (input_dim,), "bias": ()}
    if kind == "mlp":
        return {
            "hidden_weight": (input_dim, hidden_units),
            "hidden_bias": (hidden_units,),
            "output_weight": (hidden_units,),
            "bias": (),
        }
    raise ValueError(f"Mean function kind must be one of {MEAN_KINDS}, got {kind!r}.")


def _mean_forward(kind: str, weights: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Mean ``(..., n)`` at encoded hyperparameters ``X (..., n, d)``."""
    if kind == "constant":
        return weights["bias"].expand(X.shape[:-1])
    if kind == "linear":
        return weights["bias"] + X @ weights["weight"]
    hidden = torch.tanh(X @ weights["hidden_weight"] + weights["hidden_bias"])
    return weights["bias"] + hidden @ weights["output_weight"]


@dataclass(frozen=True)
class MeanFunction:
    """A prior mean function of the encoded hyperparameters.

    Called on model inputs ``A (a, D)`` it uses the first ``input_dim`` columns (the encoded
    ``x``; a fidelity column after them is ignored) and returns ``(a,)`` values in the prior's
    units.

    Attributes
    ----------
    kind
        ``"constant"``, ``"linear"`` or ``"mlp"`` (see :mod:`optuna_isbo.meta`).
    input_dim
        ``d``, the number of encoded columns of ``x``.
    hidden_units
        ``H`` for ``"mlp"``, else 0.
    weights
        Name to float64 tensor, shapes as in :mod:`optuna_isbo.meta.prior_file`.
    """

    kind: str
    input_dim: int
    hidden_units: int
    weights: dict[str, torch.Tensor]

    def __call__(self, A: torch.Tensor) -> torch.Tensor:
        return _mean_forward(self.kind, self.weights, A[:, : self.input_dim].to(_DTYPE))
