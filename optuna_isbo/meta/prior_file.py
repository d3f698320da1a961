r"""What a GP prior holds, its JSON file format, and the checks of every field on load.

:class:`PriorRecord` is the data of a prior and its (de)serialization;
:class:`~optuna_isbo.meta.GPPrior` adds what the sampler does with it.

**File format** (:meth:`PriorRecord.save`, :meth:`PriorRecord.load`): one JSON object, no pickle::

    {
      "format": "optuna-isbo-gp-prior",
      "version": 1,
      "search_space": {"<name>": <optuna distribution JSON object>, ...},
      "fidelity_param": "<name>" | null,
      "target_fidelity": <number> | null,
      "output_transform": {"y_shift": <number>, "y_scale": <positive number>},
      "kernel": {"lengthscales": [<positive>, ... (one per encoded column of x)],
                 "outputscale": <positive>, "noise": <positive>,
                 "fidelity_beta": <positive>, "fidelity_exponent": <positive>,
                 "noise_slope": <non-negative>, "heteroscedastic": <bool>},
      "mean_function": {"kind": "constant" | "linear" | "mlp", "input_dim": <int>,
                        "hidden_units": <int, 0 unless "mlp">,
                        "weights": {"<name>": <number or (nested) list of numbers>, ...}},
      "fit": {"objective": "<objective>", "n_studies": <int>, "n_points": <int>,
              "loss": <number>, "study_names": ["<name>", ...]}
    }

Distributions are written with :func:`optuna.distributions.distribution_to_json`. The mean
weights are ``bias ()`` (all kinds), ``weight (d,)`` (linear), and ``hidden_weight (d, H)``,
``hidden_bias (H,)``, ``output_weight (H,)`` (mlp), ``d`` the number of encoded columns of
``x`` and ``H`` the hidden units. Every field is checked on load (known keys only, types,
shapes, finite numbers, positivity, and the ranges that :func:`~optuna_isbo.meta.fit_prior`
produces: ``|y_shift| <= 1e12 y_scale``, mean weights in ``[-20, 20]``, each kernel
hyperparameter within the bounds of the fit); any violation raises :class:`ValueError` naming
the field.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
    json_to_distribution,
)

from optuna_isbo.meta.mean import MEAN_KINDS, MeanFunction, _weight_shapes
from optuna_isbo.model import (
    _LOG_BETA_BOUNDS,
    _LOG_EXPONENT_BOUNDS,
    _LOG_LENGTHSCALE_BOUNDS,
    _LOG_NOISE_BOUNDS,
    _LOG_NOISE_SLOPE_BOUNDS,
    _LOG_OUTPUTSCALE_BOUNDS,
    GPParams,
)
from optuna_isbo.search_space import SearchSpace

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "OBJECTIVES", "PriorRecord"]

FORMAT_NAME = "optuna-isbo-gp-prior"
FORMAT_VERSION = 1
OBJECTIVES = ("marginal_likelihood", "empirical_kl")
_MAX_FILE_BYTES = 64 * 2**20
_WEIGHT_BOUND = 20.0
"""Bound on every mean weight, in the prior's (standardized) units: the box of the fit."""
_MAX_SHIFT_IN_SCALES = 1e12
"""Bound on ``|y_shift| / y_scale``: the fit's pooled mean is at most ``1 / 1e-12`` of its
standard deviation (values closer together get the scale of their magnitude)."""
_KERNEL_RANGES: dict[str, tuple[float, float]] = {
    "lengthscales": (math.exp(_LOG_LENGTHSCALE_BOUNDS[0]), math.exp(_LOG_LENGTHSCALE_BOUNDS[1])),
    "outputscale": (math.exp(_LOG_OUTPUTSCALE_BOUNDS[0]), math.exp(_LOG_OUTPUTSCALE_BOUNDS[1])),
    "noise": (math.exp(_LOG_NOISE_BOUNDS[0]), math.exp(_LOG_NOISE_BOUNDS[1])),
    "fidelity_beta": (math.exp(_LOG_BETA_BOUNDS[0]), math.exp(_LOG_BETA_BOUNDS[1])),
    "fidelity_exponent": (math.exp(_LOG_EXPONENT_BOUNDS[0]), math.exp(_LOG_EXPONENT_BOUNDS[1])),
    "noise_slope": (0.0, math.exp(_LOG_NOISE_SLOPE_BOUNDS[1])),  # 0: homoscedastic
}
"""The range of each kernel hyperparameter: the bounds of the fit (those of
:mod:`optuna_isbo.model`)."""
_RANGE_SLACK = 1e-9
"""Relative slack of the range checks: ``exp`` of a bound may round either way."""
_DTYPE = torch.float64

_R = TypeVar("_R", bound="PriorRecord")


@dataclass(frozen=True)
class PriorRecord:
    """The fields of a GP prior, checked on construction, and their JSON file format.

    The base of :class:`~optuna_isbo.meta.GPPrior`, which documents the attributes and the
    ranges checked.
    """

    distributions: dict[str, BaseDistribution]
    fidelity_param: str | None
    target_fidelity: float | None
    params: GPParams
    heteroscedastic: bool
    mean_function: MeanFunction
    y_shift: float
    y_scale: float
    fit_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_ranges(
            self.y_shift, self.y_scale, self.params, self.mean_function.weights, in_file=False
        )

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON-compatible representation described in the module docstring."""
        p = self.params
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "search_space": {
                name: json.loads(distribution_to_json(dist))
                for name, dist in sorted(self.distributions.items())
            },
            "fidelity_param": self.fidelity_param,
            "target_fidelity": self.target_fidelity,
            "output_transform": {"y_shift": self.y_shift, "y_scale": self.y_scale},
            "kernel": {
                "lengthscales": p.lengthscales.tolist(),
                "outputscale": float(p.outputscale),
                "noise": float(p.noise),
                "fidelity_beta": float(p.fidelity_beta),
                "fidelity_exponent": float(p.fidelity_exponent),
                "noise_slope": float(p.noise_slope),
                "heteroscedastic": self.heteroscedastic,
            },
            "mean_function": {
                "kind": self.mean_function.kind,
                "input_dim": self.mean_function.input_dim,
                "hidden_units": self.mean_function.hidden_units,
                "weights": {k: v.tolist() for k, v in self.mean_function.weights.items()},
            },
            "fit": dict(self.fit_info),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the prior as JSON (format in the module docstring)."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Build a prior from its JSON representation, validating every field.

        Raises
        ------
        ValueError
            If a key is missing or unknown, or a value has the wrong type, shape or range.
        """
        return _prior_from_dict(cls, data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Self:
        """Read a prior written by :meth:`save`.

        The file is parsed as JSON only (never unpickled or evaluated) and validated field by
        field, so a malformed or hostile file raises :class:`ValueError` instead of being used.
        Files over 64 MiB are refused.
        """
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE_BYTES + 1)
        if len(raw) > _MAX_FILE_BYTES:
            raise ValueError(f"GP prior file {os.fspath(path)!r} is larger than 64 MiB.")
        try:
            text = raw.decode("utf-8")
            data = json.loads(text, parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise ValueError(
                f"GP prior file {os.fspath(path)!r} is not valid JSON: {err}"
            ) from None
        return _prior_from_dict(cls, data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not allowed")


# ---------------------------------------------------------------------------------------------
# Validation of the JSON representation
# ---------------------------------------------------------------------------------------------


def _require_keys(obj: Any, keys: Iterable[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"GP prior: {where} must be a JSON object, got {type(obj).__name__}.")
    expected = set(keys)
    missing = sorted(expected - obj.keys())
    unknown = sorted(str(k) for k in obj.keys() - expected)
    if missing or unknown:
        raise ValueError(f"GP prior: {where} has missing keys {missing} / unknown keys {unknown}.")
    return obj


def _number(value: Any, where: str, *, positive: bool = False, nonneg: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"GP prior: {where} must be a number, got {type(value).__name__}.")
    try:
        x = float(value)
    except OverflowError:
        raise ValueError(
            f"GP prior: {where} must be a finite number, got an integer too large for a float "
            "(beyond +-1.8e308)."
        ) from None
    if not math.isfinite(x):
        raise ValueError(f"GP prior: {where} must be finite, got {x}.")
    if positive and not x > 0:
        raise ValueError(f"GP prior: {where} must be positive, got {x}.")
    if nonneg and not x >= 0:
        raise ValueError(f"GP prior: {where} must be non-negative, got {x}.")
    return x


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"GP prior: {where} must be a string, got {type(value).__name__}.")
    return value


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"GP prior: {where} must be an integer >= {minimum}, got {value!r}.")
    return value


def _array(value: Any, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """A float64 tensor of exactly ``shape`` from nested lists of finite numbers."""

    def walk(v: Any, dims: tuple[int, ...], path: str) -> Any:
        if not dims:
            return _number(v, path)
        if not isinstance(v, list) or len(v) != dims[0]:
            got = f"a list of length {len(v)}" if isinstance(v, list) else type(v).__name__
            raise ValueError(f"GP prior: {path} must be a list of length {dims[0]}, got {got}.")
        return [walk(item, dims[1:], f"{path}[{i}]") for i, item in enumerate(v)]

    return torch.tensor(walk(value, shape, where), dtype=_DTYPE).reshape(shape)


_DISTRIBUTION_ATTRIBUTES = {
    "FloatDistribution": {"low", "high", "log", "step"},
    "IntDistribution": {"low", "high", "log", "step"},
    "CategoricalDistribution": {"choices"},
}


def _distribution(name: str, obj: Any) -> BaseDistribution:
    where = f"search_space[{name!r}]"
    obj = _require_keys(obj, ("name", "attributes"), where)
    kind = _string(obj["name"], f"{where}.name")
    if kind not in _DISTRIBUTION_ATTRIBUTES:
        raise ValueError(f"GP prior: {where} has unsupported distribution {kind!r}.")
    attrs = obj["attributes"]
    if not isinstance(attrs, dict) or not set(attrs) <= _DISTRIBUTION_ATTRIBUTES[kind]:
        raise ValueError(f"GP prior: {where} has invalid attributes {attrs!r}.")
    if kind == "CategoricalDistribution":
        choices = attrs.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"GP prior: {where} choices must be a non-empty list.")
        for choice in choices:
            if not (choice is None or isinstance(choice, bool | int | float | str)):
                raise ValueError(f"GP prior: {where} has a non-scalar choice {choice!r}.")
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError(f"GP prior: {where} has a non-finite choice.")
    else:
        for key in ("low", "high"):
            _number(attrs.get(key), f"{where}.{key}")
        if attrs.get("step") is not None:
            _number(attrs["step"], f"{where}.step", positive=True)
        if not isinstance(attrs.get("log", False), bool):
            raise ValueError(f"GP prior: {where}.log must be a boolean.")
    try:
        with warnings.catch_warnings():
            # Optuna warns when it adjusts a range to fit the step; the check below reports it.
            warnings.simplefilter("ignore", UserWarning)
            dist = json_to_distribution(json.dumps(obj))
    except Exception as err:  # the distribution's own checks (low <= high, ...)
        raise ValueError(f"GP prior: {where} is not a valid distribution: {err}") from None
    if not isinstance(dist, FloatDistribution | IntDistribution | CategoricalDistribution):
        raise ValueError(f"GP prior: {where} has unsupported distribution {dist!r}.")
    # A file written by GPPrior.save holds distributions exactly as Optuna built them; one that
    # Optuna would adjust (a high not on the step grid, a fractional integer bound) is not.
    if kind != "CategoricalDistribution":
        adjusted = sorted(key for key, value in attrs.items() if getattr(dist, key) != value)
        if adjusted:
            raise ValueError(
                f"GP prior: {where} is not a valid distribution: Optuna would change its "
                f"{adjusted} to give {dist!r}."
            )
    return dist


def _out_of_range(values: Any, low: float, high: float) -> tuple[tuple[int, ...], float] | None:
    """Index and value of the first element of ``values`` outside ``[low, high]`` (NaN
    included), up to a relative slack; ``None`` if all are inside."""
    t = torch.as_tensor(values).detach().to(device="cpu", dtype=_DTYPE)
    lo = low - _RANGE_SLACK * abs(low)
    hi = high + _RANGE_SLACK * abs(high)
    bad = ~((t >= lo) & (t <= hi))
    if not bool(bad.any()):
        return None
    index = tuple(int(i) for i in bad.nonzero()[0]) if t.ndim else ()
    return index, float(t[index])


def _check_ranges(
    y_shift: float,
    y_scale: float,
    params: GPParams,
    weights: dict[str, torch.Tensor],
    *,
    in_file: bool,
) -> None:
    """Raise :class:`ValueError` unless every number is in the range that
    :func:`~optuna_isbo.meta.fit_prior` produces; the message names the field (as in the file,
    or as an attribute) and the range.
    """

    def name(section: str, key: str, index: tuple[int, ...] = ()) -> str:
        if in_file:
            return f"{section}.{key}" + "".join(f"[{i}]" for i in index)
        where = {"output_transform": key, "kernel": f"params.{key}"}.get(
            section, f"mean_function.weights[{key!r}]"
        )
        return where + (f"[{', '.join(map(str, index))}]" if index else "")

    y_shift, y_scale = float(y_shift), float(y_scale)
    if not (math.isfinite(y_scale) and y_scale > 0):
        raise ValueError(
            f"GP prior: {name('output_transform', 'y_scale')} must be finite and positive, "
            f"got {y_scale:.6g}."
        )
    if not (math.isfinite(y_shift) and abs(y_shift) <= _MAX_SHIFT_IN_SCALES * y_scale):
        raise ValueError(
            f"GP prior: {name('output_transform', 'y_shift')} must lie in [-1e12 * y_scale, "
            f"1e12 * y_scale] = [{-_MAX_SHIFT_IN_SCALES * y_scale:.6g}, "
            f"{_MAX_SHIFT_IN_SCALES * y_scale:.6g}] (the pooled mean of the fitted values is "
            f"within 1e12 of their standard deviations), got {y_shift:.6g} with y_scale = "
            f"{y_scale:.6g}."
        )
    for key, (low, high) in _KERNEL_RANGES.items():
        found = _out_of_range(getattr(params, key), low, high)
        if found is not None:
            raise ValueError(
                f"GP prior: {name('kernel', key, found[0])} must lie in [{low:.6g}, "
                f"{high:.6g}] (the bounds of the fit), got {found[1]:.6g}."
            )
    for key, value in weights.items():
        found = _out_of_range(value, -_WEIGHT_BOUND, _WEIGHT_BOUND)
        if found is not None:
            raise ValueError(
                f"GP prior: {name('mean_function.weights', key, found[0])} must lie in "
                f"[{-_WEIGHT_BOUND:g}, {_WEIGHT_BOUND:g}] (the bounds of the fit, in standard "
                f"deviations of the objective), got {found[1]:.6g}."
            )


def _prior_from_dict(cls: type[_R], data: Any) -> _R:
    data = _require_keys(
        data,
        (
            "format",
            "version",
            "search_space",
            "fidelity_param",
            "target_fidelity",
            "output_transform",
            "kernel",
            "mean_function",
            "fit",
        ),
        "the top level",
    )
    if _string(data["format"], "format") != FORMAT_NAME:
        raise ValueError(f"GP prior: format must be {FORMAT_NAME!r}, got {data['format']!r}.")
    if isinstance(data["version"], bool) or data["version"] != FORMAT_VERSION:
        raise ValueError(
            f"GP prior: unsupported version {data['version']!r} (this reader reads "
            f"{FORMAT_VERSION})."
        )
    if not isinstance(data["search_space"], dict) or not data["search_space"]:
        raise ValueError("GP prior: search_space must be a non-empty JSON object.")
    for name in data["search_space"]:
        _string(name, f"search_space name {name!r}")
    distributions = {name: _distribution(name, obj) for name, obj in data["search_space"].items()}
    fidelity_param = data["fidelity_param"]
    if fidelity_param is not None:
        _string(fidelity_param, "fidelity_param")
    if fidelity_param is not None and fidelity_param not in distributions:
        raise ValueError(
            f"GP prior: fidelity_param {fidelity_param!r} is not in the search space."
        )
    target = data["target_fidelity"]
    target = None if target is None else _number(target, "target_fidelity", positive=True)
    try:
        space = SearchSpace(distributions, fidelity_param, target)
    except ValueError as err:
        raise ValueError(f"GP prior: invalid search space: {err}") from None
    if space.fidelity_param != fidelity_param:
        raise ValueError(
            f"GP prior: fidelity_param {fidelity_param!r} is not a usable fidelity axis."
        )

    out = _require_keys(data["output_transform"], ("y_shift", "y_scale"), "output_transform")
    y_shift = _number(out["y_shift"], "output_transform.y_shift")
    y_scale = _number(out["y_scale"], "output_transform.y_scale", positive=True)

    kern = _require_keys(
        data["kernel"],
        (
            "lengthscales",
            "outputscale",
            "noise",
            "fidelity_beta",
            "fidelity_exponent",
            "noise_slope",
            "heteroscedastic",
        ),
        "kernel",
    )
    lengthscales = _array(kern["lengthscales"], (space.dim,), "kernel.lengthscales")
    if not bool((lengthscales > 0).all()):
        raise ValueError("GP prior: kernel.lengthscales must be positive.")
    if not isinstance(kern["heteroscedastic"], bool):
        raise ValueError("GP prior: kernel.heteroscedastic must be a boolean.")

    def scalar(key: str, *, nonneg: bool = False) -> torch.Tensor:
        value = _number(kern[key], f"kernel.{key}", positive=not nonneg, nonneg=nonneg)
        return torch.tensor(value, dtype=_DTYPE)

    params = GPParams(
        lengthscales=lengthscales,
        outputscale=scalar("outputscale"),
        noise=scalar("noise"),
        mean=torch.zeros((), dtype=_DTYPE),
        fidelity_beta=scalar("fidelity_beta"),
        fidelity_exponent=scalar("fidelity_exponent"),
        noise_slope=scalar("noise_slope", nonneg=True),
    )

    mf = _require_keys(
        data["mean_function"], ("kind", "input_dim", "hidden_units", "weights"), "mean_function"
    )
    kind = _string(mf["kind"], "mean_function.kind")
    if kind not in MEAN_KINDS:
        raise ValueError(
            f"GP prior: mean_function.kind must be one of {MEAN_KINDS}, got {kind!r}."
        )
    input_dim = _integer(mf["input_dim"], "mean_function.input_dim", 0)
    if input_dim != space.dim:
        raise ValueError(
            f"GP prior: mean_function.input_dim is {input_dim} but the search space encodes to "
            f"{space.dim} columns."
        )
    hidden = _integer(mf["hidden_units"], "mean_function.hidden_units", 1 if kind == "mlp" else 0)
    if kind != "mlp" and hidden != 0:
        raise ValueError("GP prior: mean_function.hidden_units must be 0 unless kind is 'mlp'.")
    if hidden > 4096:
        raise ValueError("GP prior: mean_function.hidden_units must be at most 4096.")
    shapes = _weight_shapes(kind, input_dim, hidden)
    raw_weights = _require_keys(mf["weights"], shapes, "mean_function.weights")
    weights = {
        name: _array(raw_weights[name], shape, f"mean_function.weights.{name}")
        for name, shape in shapes.items()
    }

    fit = _require_keys(
        data["fit"], ("objective", "n_studies", "n_points", "loss", "study_names"), "fit"
    )
    if _string(fit["objective"], "fit.objective") not in OBJECTIVES:
        raise ValueError(f"GP prior: fit.objective must be one of {OBJECTIVES}.")
    names = fit["study_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("GP prior: fit.study_names must be a list of strings.")
    fit_info = {
        "objective": fit["objective"],
        "n_studies": _integer(fit["n_studies"], "fit.n_studies", 0),
        "n_points": _integer(fit["n_points"], "fit.n_points", 0),
        "loss": _number(fit["loss"], "fit.loss"),
        "study_names": list(names),
    }
    _check_ranges(y_shift, y_scale, params, weights, in_file=True)
    return cls(
        distributions=distributions,
        fidelity_param=fidelity_param,
        target_fidelity=None if fidelity_param is None else float(space.target_fidelity),
        params=params,
        heteroscedastic=kern["heteroscedastic"] and fidelity_param is not None,
        mean_function=MeanFunction(kind, input_dim, hidden, weights),
        y_shift=y_shift,
        y_scale=y_scale,
        fit_info=fit_info,
    )
