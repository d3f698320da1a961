from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from issgd_data import N_CLASSES, N_FEATURES, skewed_data  # noqa: E402  (tests/ helper)
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from optuna_isbo.issgd import ISSGD, gradient_norm_scores, sample_by_score, variance_reduction


def _per_sample_gradients(model: nn.Linear, x: Tensor, y: Tensor) -> Tensor:
    """Shape (n, P): flattened gradient of every sample's cross-entropy w.r.t. (W, bias)."""
    delta = torch.softmax(model(x).detach(), dim=1) - F.one_hot(y, N_CLASSES).float()
    return torch.cat([(delta[:, :, None] * x[:, None, :]).flatten(1), delta], dim=1)


# --------------------------------------------------------------------------------- scoring


def test_closed_form_cross_entropy_score_equals_autograd() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(64, 7, generator=generator)
    targets = torch.randint(7, (64,), generator=generator)
    closed_form = gradient_norm_scores(logits, targets)
    expected = torch.stack(
        [
            torch.autograd.grad(F.cross_entropy(z[None], t[None]), z)[0].norm()
            for z, t in zip(logits.clone().requires_grad_(True), targets, strict=True)
        ]
    )
    torch.testing.assert_close(closed_form, expected)
    generic = gradient_norm_scores(
        logits, targets, lambda z, t: F.cross_entropy(z, t, reduction="none")
    )
    torch.testing.assert_close(generic, expected)


def test_scores_in_float32_under_autocast() -> None:
    x, y, model = skewed_data(32, seed=1)
    issgd = ISSGD(model, TensorDataset(x, y), batch_size=4, super_batch_size=8)
    reference = issgd.scores(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
        scores = issgd.scores(x, y)
    assert scores.dtype == torch.float32
    # bfloat16 keeps 8 significant bits: logits off by ~|z| 2^-8 <= 0.1 move a softmax by
    # at most that much per entry, so the score moves by well under 0.2.
    torch.testing.assert_close(scores, reference, atol=0.2, rtol=0.0)


def test_scoring_uses_eval_mode_and_keeps_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(N_FEATURES, 16), nn.BatchNorm1d(16), nn.Dropout(0.5), nn.Linear(16, N_CLASSES)
    )
    model[1].eval()  # a frozen BatchNorm must stay frozen after scoring
    model[0].train()
    x = torch.randn(100, N_FEATURES)
    y = torch.randint(N_CLASSES, (100,))
    running_mean = model[1].running_mean.clone()
    issgd = ISSGD(model, TensorDataset(x, y), batch_size=10, super_batch_size=50)
    first, second = issgd.scores(x, y), issgd.scores(x, y)
    torch.testing.assert_close(first, second)  # dropout off while scoring
    model_eval = copy.deepcopy(model).eval()
    torch.testing.assert_close(first, gradient_norm_scores(model_eval(x), y))
    assert model[0].training and model[2].training and not model[1].training
    model[1].train()
    issgd.scores(x, y)
    torch.testing.assert_close(model[1].running_mean, running_mean)
    assert model[1].training


# ---------------------------------------------------------------------- sampling, weights


def test_importance_estimator_is_unbiased() -> None:
    x, y, model = skewed_data(40, seed=2)
    grads = _per_sample_gradients(model, x, y)
    scores = gradient_norm_scores(model(x), y)
    n_draws, b = 20_000, 4
    generator = torch.Generator().manual_seed(0)
    estimates = torch.empty(n_draws, grads.shape[1], dtype=torch.float64)
    for k in range(n_draws):
        positions, weights = sample_by_score(scores, b, generator)
        estimates[k] = (weights[:, None].double() * grads[positions].double()).mean(0)
    target = grads.double().mean(0)
    standard_error = estimates.std(0) / math.sqrt(n_draws)
    # Each coordinate of the average is approximately normal around its mean; with P = 18
    # coordinates, P(any |z| > 5) < 18 * 6e-7, so a failure means a real bias.
    z = (estimates.mean(0) - target) / standard_error
    assert z.abs().max() < 5.0


def test_issgd_steps_are_unbiased_end_to_end() -> None:
    x, y, model = skewed_data(30, seed=3)
    # threshold 0: the first step is uniform (tau starts at 0), every later one by importance
    issgd = ISSGD(
        model, TensorDataset(x, y), batch_size=2, super_batch_size=6, tau_threshold=0.0, seed=0
    )
    n_steps = 4_000
    estimates = torch.empty(n_steps, N_CLASSES * (N_FEATURES + 1), dtype=torch.float64)
    for k, (inputs, targets, weights) in enumerate(issgd.batches(n_steps + 1)):
        model.zero_grad()
        issgd.weighted_loss(model(inputs), targets, weights).backward()
        if k > 0:
            estimates[k - 1] = torch.cat([model.weight.grad.flatten(), model.bias.grad]).double()
    assert issgd.stats["is_steps"] == n_steps
    target = _per_sample_gradients(model, x, y).double().mean(0)
    # Two-stage sampling (uniform super-batch, then by score) is unbiased for the dataset mean;
    # same 5-standard-error bound as above over 18 coordinates.
    z = (estimates.mean(0) - target) / (estimates.std(0) / math.sqrt(n_steps))
    assert z.abs().max() < 5.0


def test_variance_reduction_matches_tau() -> None:
    x, y, model = skewed_data(200, seed=4)
    grads = _per_sample_gradients(model, x, y).double()
    scores = gradient_norm_scores(model(x), y)
    target = grads.mean(0)
    n_draws = 40_000
    generator = torch.Generator().manual_seed(1)
    uniform = grads[torch.randint(len(grads), (n_draws,), generator=generator)]
    positions, weights = sample_by_score(scores, n_draws, generator)
    importance = weights[:, None].double() * grads[positions]
    var_uniform = ((uniform - target) ** 2).sum(1)
    var_importance = ((importance - target) ** 2).sum(1)
    measured_ratio = var_uniform.mean() / var_importance.mean()
    tau = variance_reduction(scores)
    assert var_importance.mean() < var_uniform.mean()
    assert tau > 1.5  # the data are skewed enough for the test to mean something
    # With ||G_i|| = c s_i: E_u||G - Gbar||^2 = c^2 mean(s^2) - |Gbar|^2 and
    # E_p||wG - Gbar||^2 = c^2 mean(s)^2 - |Gbar|^2, whose ratio is tau^2 up to the |Gbar|^2
    # terms. Tolerance = the relative effect of |Gbar|^2 on the ratio plus four Monte Carlo
    # standard errors of the two means.
    bias = float(target.pow(2).sum() / var_importance.mean())
    mc = 4 * math.sqrt(
        (
            var_uniform.var() / var_uniform.mean() ** 2
            + var_importance.var() / var_importance.mean() ** 2
        )
        / n_draws
    )
    assert abs(float(measured_ratio) / tau**2 - 1) < bias + mc
    assert bias + mc < 0.15  # and the tolerance is tight


def test_variance_reduction_of_equal_scores_is_one() -> None:
    assert variance_reduction(torch.full((10,), 0.3)) == pytest.approx(1.0)
    assert variance_reduction(torch.tensor([1.0, 0.0, 0.0, 0.0])) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- the switch


def test_explicit_tau_threshold_switches_importance_sampling_on_and_off() -> None:
    # The reference implementation's rule, the default before the fidelity switch: IS on while
    # tau > (B + 3b) / (3b), from the first step, with no warm-up.
    x, y, model = skewed_data(400, seed=5)
    b, big_b = 8, 16
    reference_threshold = (big_b + 3 * b) / (3 * b)
    issgd = ISSGD(
        model,
        TensorDataset(x, y),
        batch_size=b,
        super_batch_size=big_b,
        tau_threshold=reference_threshold,
        seed=0,
    )
    assert issgd.tau == 0.0 and not issgd.is_active
    assert issgd.tau_threshold == reference_threshold
    assert issgd.stats["switch"] == "threshold"
    tau_before, is_steps_before, n_steps = 0.0, 0, 60
    for inputs, targets, weights in issgd.batches(n_steps):
        is_step = issgd.stats["is_steps"] == is_steps_before + 1
        assert is_step == (tau_before > issgd.tau_threshold)
        logits = model(inputs)
        issgd.weighted_loss(logits, targets, weights)
        if is_step:
            assert not torch.equal(weights, torch.ones(b))
            assert issgd.tau != tau_before  # updated from the super-batch scores
        else:
            assert torch.equal(weights, torch.ones(b))
            scores = gradient_norm_scores(logits, targets)
            expected = 0.9 * tau_before + 0.1 * variance_reduction(scores)
            assert issgd.tau == pytest.approx(expected)
        tau_before, is_steps_before = issgd.tau, issgd.stats["is_steps"]
    assert 0 < issgd.stats["is_steps"] < n_steps
    assert issgd.stats["samples_scored"] == big_b * issgd.stats["is_steps"]


def test_equal_batch_sizes_are_uniform_sgd() -> None:
    x, y, model = skewed_data(200, seed=7)
    issgd = ISSGD(
        model, TensorDataset(x, y), batch_size=8, super_batch_size=8, tau_threshold=0.0, seed=0
    )
    reference = torch.Generator().manual_seed(0)
    for inputs, targets, weights in issgd.batches(30):
        issgd.weighted_loss(model(inputs), targets, weights)
        indices = torch.randint(len(x), (8,), generator=reference)
        assert torch.equal(inputs, x[indices]) and torch.equal(targets, y[indices])
        assert torch.equal(weights, torch.ones(8))
    assert issgd.tau > issgd.tau_threshold and not issgd.is_active
    assert issgd.stats["is_steps"] == 0 and issgd.stats["samples_scored"] == 0


# --------------------------------------------------------------------------- degenerate


@pytest.mark.parametrize("corruption", [0.0, float("nan"), float("inf"), -1.0])
def test_unusable_scores_fall_back_to_uniform_with_warning(corruption: float) -> None:
    x, y, model = skewed_data(100, seed=8)
    corrupt = {"on": False}

    def loss_fn(logits: Tensor, targets: Tensor) -> Tensor:
        losses = F.cross_entropy(logits, targets, reduction="none")
        return losses * corruption if corrupt["on"] else losses

    issgd = ISSGD(
        model,
        TensorDataset(x, y),
        batch_size=4,
        super_batch_size=20,
        loss_fn=loss_fn,
        score="loss",
        tau_threshold=1.0,
        seed=0,
    )
    batches = issgd.batches(30)
    for inputs, targets, weights in batches:
        issgd.weighted_loss(model(inputs), targets, weights)
        if issgd.is_active:
            break
    assert issgd.is_active
    corrupt["on"] = True
    with pytest.warns(RuntimeWarning, match="falls back to uniform"):
        inputs, targets, weights = next(batches)
    assert torch.equal(weights, torch.ones(4))
    assert issgd.stats["fallback_steps"] == 1 and issgd.stats["is_steps"] == 0


def test_sample_by_score_rejects_unusable_scores() -> None:
    for bad in ([0.0, 0.0], [1.0, float("nan")], [1.0, -0.5]):
        with pytest.raises(ValueError, match="scores"):
            sample_by_score(torch.tensor(bad), 2)


# ------------------------------------------------------------------- data, determinism


class _ListDataset(Dataset[tuple[Tensor, int]]):
    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.x[index], int(self.y[index])


def _run(model: nn.Module, dataset: Dataset, seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    issgd = ISSGD(model, dataset, batch_size=4, super_batch_size=16, tau_threshold=1.0, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = []
    for inputs, targets, weights in issgd.batches(25):
        optimizer.zero_grad()
        issgd.weighted_loss(model(inputs), targets, weights).backward()
        optimizer.step()
        out.append((inputs, targets, weights))
    assert issgd.stats["is_steps"] > 0
    return out


def test_determinism_under_seed_and_generic_dataset_path() -> None:
    x, y, model = skewed_data(100, seed=10)
    first = _run(copy.deepcopy(model), TensorDataset(x, y), seed=3)
    second = _run(copy.deepcopy(model), TensorDataset(x, y), seed=3)
    generic = _run(copy.deepcopy(model), _ListDataset(x, y), seed=3)
    other = _run(copy.deepcopy(model), TensorDataset(x, y), seed=4)
    for a, b, c in zip(first, second, generic, strict=True):
        for ta, tb, tc in zip(a, b, c, strict=True):
            assert torch.equal(ta, tb) and torch.equal(ta, tc)
    assert any(not torch.equal(a[0], d[0]) for a, d in zip(first, other, strict=True))


def test_report_writes_user_attrs_to_a_real_study() -> None:
    x, y, model = skewed_data(100, seed=11)

    def objective(trial: optuna.Trial) -> float:
        issgd = ISSGD(model, TensorDataset(x, y), batch_size=4, super_batch_size=16, seed=0)
        for inputs, targets, weights in issgd.batches(12):
            issgd.weighted_loss(model(inputs), targets, weights).backward()
        issgd.report(trial)
        return 0.0

    study = optuna.create_study()
    study.optimize(objective, n_trials=1)
    attrs = study.trials[0].user_attrs
    assert isinstance(attrs["isbo:cost"], float) and attrs["isbo:cost"] > 0
    assert attrs["isbo:steps"] == 12
    assert attrs["isbo:super_batch_size"] == 16 and attrs["isbo:batch_size"] == 4
    parts = attrs["isbo:scoring_seconds"] + attrs["isbo:sampling_seconds"]
    assert attrs["isbo:cost"] == pytest.approx(parts + attrs["isbo:training_seconds"])
    assert "isbo:cost_seconds" not in attrs


def test_training_seconds_count_the_loop_body() -> None:
    x, y, model = skewed_data(50, seed=12)
    issgd = ISSGD(model, TensorDataset(x, y), batch_size=4, super_batch_size=4)
    for _ in issgd.batches(3):
        time.sleep(0.02)
    assert issgd.stats["training_seconds"] >= 0.06
    assert issgd.stats["cost_seconds"] >= issgd.stats["training_seconds"]


# ----------------------------------------------------------------------------- bad input


def _args(**overrides: object) -> dict[str, object]:
    x, y, model = skewed_data(20, seed=13)
    args: dict[str, object] = dict(
        model=model, dataset=TensorDataset(x, y), batch_size=4, super_batch_size=8
    )
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"super_batch_size": 3}, "super_batch_size"),
        ({"super_batch_size": 21}, "super_batch_size"),
        ({"dataset": TensorDataset(torch.zeros(0, 5), torch.zeros(0))}, "dataset"),
        ({"dataset": TensorDataset(torch.zeros(20, 5))}, "dataset"),
        ({"score": "variance"}, "score"),
        ({"tau_threshold": float("nan")}, "tau_threshold"),
        ({"momentum": 1.0}, "momentum"),
        ({"forward_batch_size": 0}, "forward_batch_size"),
        ({"loss_fn": 3}, "loss_fn"),
        ({"model": lambda x: x}, "model"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(
    overrides: dict[str, object], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        ISSGD(**_args(**overrides))  # type: ignore[arg-type]


def test_loss_fn_with_wrong_shape_raises() -> None:
    args = _args(loss_fn=lambda z, t: F.cross_entropy(z, t), tau_threshold=0.0)
    issgd = ISSGD(**args)  # type: ignore[arg-type]
    inputs, targets, weights = next(issgd.batches(1))
    with pytest.raises(ValueError, match="loss_fn"):
        issgd.weighted_loss(args["model"](inputs), targets, weights)  # type: ignore[operator]
    with pytest.raises(ValueError, match="loss_fn"):
        issgd.scores(inputs, targets)
    with pytest.raises(ValueError, match="n_steps"):
        issgd.batches(-1)


# ------------------------------------------------------------- shapes of logits and targets


class _PerPositionModel(nn.Module):
    """Logits of shape (n, 3, 2): per-position outputs, not one row of classes per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 6)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x).view(-1, N_CLASSES, 2)


class _OneLogitModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(N_FEATURES, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x)[:, 0]


@pytest.mark.parametrize(
    ("model", "shape"),
    [(_PerPositionModel(), r"\(20, 3, 2\)"), (_OneLogitModel(), r"\(20,\)")],
    ids=["3d", "1d"],
)
def test_cross_entropy_scoring_rejects_logits_that_are_not_n_by_c(
    model: nn.Module, shape: str
) -> None:
    x, y, _ = skewed_data(20, seed=20)
    issgd = ISSGD(
        model, TensorDataset(x, y), batch_size=4, super_batch_size=8, forward_batch_size=20
    )
    with pytest.raises(ValueError, match=r"logits of shape \(n, C\), got shape " + shape):
        issgd.scores(x, y)
    with pytest.raises(ValueError, match=r"\(n, C\).*" + shape):
        gradient_norm_scores(model(x), y)
    inputs, targets, weights = next(issgd.batches(1))
    with pytest.raises(ValueError, match=r"\(n, C\)"):
        issgd.weighted_loss(model(inputs), targets, weights)


def test_custom_loss_scores_one_logit_per_sample() -> None:
    generator = torch.Generator().manual_seed(21)
    logits = torch.randn(16, generator=generator)
    targets = (torch.rand(16, generator=generator) < 0.5).float()

    def bce(z: Tensor, t: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(z, t, reduction="none")

    # d/dz BCE(z, t) = sigmoid(z) - t
    expected = (torch.sigmoid(logits) - targets).abs()
    torch.testing.assert_close(gradient_norm_scores(logits, targets, bce), expected)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.tensor([0, 1, -1, 2]), r"\[0, 3\).*got target -1"),
        (torch.tensor([0, 1, 3, 2]), r"\[0, 3\).*got target 3"),
        (torch.tensor([[0], [1], [2], [0]]), r"targets of shape \(4,\).*got targets of shape"),
        (torch.tensor([0.0, 1.0, 2.0, 0.0]), r"probabilities of the logits' shape \(4, 3\)"),
        (torch.tensor([True, False, True, False]), "bool"),
    ],
    ids=["minus-one", "too-large", "column", "float-indices", "bool"],
)
def test_cross_entropy_rejects_bad_targets(targets: Tensor, match: str) -> None:
    logits = torch.randn(4, N_CLASSES)
    with pytest.raises(ValueError, match=match):
        gradient_norm_scores(logits, targets)
    model = nn.Linear(N_FEATURES, N_CLASSES)
    issgd = ISSGD(
        model,
        TensorDataset(torch.randn(8, N_FEATURES), torch.zeros(8, dtype=torch.long)),
        batch_size=4,
        super_batch_size=4,
    )
    with pytest.raises(ValueError, match=match):
        issgd.weighted_loss(logits, targets, torch.ones(4))
    with pytest.raises(ValueError, match=match):
        issgd.scores(torch.randn(4, N_FEATURES), targets)


def test_float_targets_of_a_square_batch_are_not_taken_for_probabilities() -> None:
    # n == C: (n,) float targets would broadcast against (n, C) logits without the check.
    with pytest.raises(ValueError, match="probabilities"):
        gradient_norm_scores(torch.randn(3, 3), torch.tensor([0.0, 1.0, 2.0]))
    probabilities = torch.softmax(torch.randn(3, 3), dim=1)
    logits = torch.randn(3, 3)
    expected = (torch.softmax(logits, dim=1) - probabilities).norm(dim=1)
    torch.testing.assert_close(gradient_norm_scores(logits, probabilities), expected)


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (torch.zeros(20, 1, dtype=torch.long), r"one integer class index.*\(1,\)"),
        (torch.zeros(20), r"probabilities.*\(\)"),
        (torch.zeros(20, dtype=torch.bool), "bool"),
    ],
    ids=["column", "float", "bool"],
)
def test_dataset_targets_unfit_for_cross_entropy_raise_up_front(
    targets: Tensor, match: str
) -> None:
    x, _, model = skewed_data(20, seed=22)
    with pytest.raises(ValueError, match=match):
        ISSGD(model, TensorDataset(x, targets), batch_size=4, super_batch_size=8)
    # A custom loss decides for itself what targets it takes.
    ISSGD(
        model,
        TensorDataset(x, targets),
        batch_size=4,
        super_batch_size=8,
        loss_fn=lambda z, t: z.sum(1) * 0,
    )


def test_int32_targets_give_the_int64_loss() -> None:
    x, y, model = skewed_data(20, seed=23)
    issgd = ISSGD(model, TensorDataset(x, y.int()), batch_size=4, super_batch_size=8)
    weights = torch.ones(20)
    torch.testing.assert_close(
        issgd.weighted_loss(model(x), y.int(), weights), F.cross_entropy(model(x), y)
    )


def test_model_returning_a_tuple_raises() -> None:
    class TupleModel(nn.Linear):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
            return super().forward(x), x

    x, y, _ = skewed_data(20, seed=24)
    issgd = ISSGD(TupleModel(N_FEATURES, N_CLASSES), TensorDataset(x, y), **_sizes())
    with pytest.raises(ValueError, match="tensor of logits, got tuple"):
        issgd.scores(x, y)


def test_rows_of_logits_must_match_targets() -> None:
    x, y, model = skewed_data(20, seed=25)
    issgd = ISSGD(model, TensorDataset(x, y), **_sizes(), loss_fn=_per_sample_ce)
    with pytest.raises(ValueError, match=r"shape \(19, 3\) and targets shape \(20,\)"):
        issgd.weighted_loss(model(x)[:19], y, torch.ones(20))
    with pytest.raises(ValueError, match=r"weights must have shape \(20,\)"):
        issgd.weighted_loss(model(x), y, torch.ones(20, 1))


def _per_sample_ce(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits, targets, reduction="none")


def _sizes() -> dict[str, int]:
    return {"batch_size": 4, "super_batch_size": 8}


# --------------------------------------------------------------------------- ignore_index


def test_ignored_targets_score_zero_and_match_torch() -> None:
    generator = torch.Generator().manual_seed(26)
    logits = 3.0 * torch.randn(12, N_CLASSES, generator=generator)
    targets = torch.randint(N_CLASSES, (12,), generator=generator)
    targets[::3] = -100
    scores = gradient_norm_scores(logits, targets)
    z = logits.clone().requires_grad_(True)
    losses = F.cross_entropy(z, targets, reduction="none")  # torch's default ignore_index
    (grad,) = torch.autograd.grad(losses.sum(), z)
    torch.testing.assert_close(scores, grad.norm(dim=1))
    assert torch.equal(scores[::3], torch.zeros(4)) and bool((scores[1::3] > 0).all())
    # Another ignore index, here a valid class, is ignored the same way.
    custom = gradient_norm_scores(logits, targets.clamp(min=0), ignore_index=0)
    assert bool((custom[targets.clamp(min=0) == 0] == 0).all())


def test_issgd_with_ignored_targets_never_draws_them_by_importance() -> None:
    x, y, model = skewed_data(60, seed=27)
    y = y.clone()
    y[:30] = -100
    issgd = ISSGD(
        model, TensorDataset(x, y), batch_size=4, super_batch_size=16, tau_threshold=1.0, seed=0
    )
    seen_ignored_uniform = False
    for inputs, targets, weights in issgd.batches(40):
        is_step = not torch.equal(weights, torch.ones(4))
        loss = issgd.weighted_loss(model(inputs), targets, weights)
        losses = F.cross_entropy(model(inputs), targets, reduction="none")
        # ignored samples count as zeros in the mean, in both kinds of step
        torch.testing.assert_close(loss, (weights * losses).mean())
        assert torch.isfinite(loss)
        if is_step:
            assert bool((targets != -100).all())
        else:
            seen_ignored_uniform |= bool((targets == -100).any())
    assert issgd.stats["is_steps"] > 0 and seen_ignored_uniform


def test_all_ignored_super_batch_falls_back_without_crashing() -> None:
    x, y, model = skewed_data(40, seed=28)
    issgd = ISSGD(
        model,
        TensorDataset(x, torch.full_like(y, 7)),
        batch_size=4,
        super_batch_size=8,
        tau_threshold=0.0,
        ignore_index=7,
        seed=0,
    )
    issgd.callback.switch._tau = 1.0  # importance sampling on from the first step
    with pytest.warns(RuntimeWarning, match="falls back to uniform"):
        inputs, targets, weights = next(issgd.batches(1))
    assert float(issgd.weighted_loss(model(inputs), targets, weights).detach()) == 0.0
    assert issgd.stats["fallback_steps"] == 1


# ------------------------------------------------------------------------- dataset items


class _ItemDataset(Dataset[Any]):
    def __init__(self, make: Callable[[int], Any], n: int = 20) -> None:
        self.make, self.n = make, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        return self.make(index)


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        (TensorDataset(torch.zeros(20, 5)), r"\(input, target\) pairs.*exactly two.*got 1"),
        (
            TensorDataset(torch.zeros(20, 5), torch.zeros(20, dtype=torch.long), torch.zeros(20)),
            r"\(input, target\) pairs.*exactly two.*got 3",
        ),
        (
            _ItemDataset(lambda i: torch.zeros(5)),
            r"\(input, target\) pairs.*item 0 is a single Tensor of shape \(5,\)",
        ),
        (
            _ItemDataset(lambda i: (torch.zeros(5), 0, 1.0)),
            r"\(input, target\) pairs.*item 0 is a tuple of 3 elements",
        ),
        (
            _ItemDataset(lambda i: {"image": torch.zeros(5), "label": 0}),
            r"\(input, target\) pairs.*dict with keys \['image', 'label'\]",
        ),
    ],
    ids=["tensor-1", "tensor-3", "single", "triple", "dict"],
)
def test_items_that_are_not_pairs_raise_at_construction(dataset: Dataset, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ISSGD(nn.Linear(5, N_CLASSES), dataset, **_sizes())


def test_items_that_are_not_pairs_raise_when_drawn() -> None:
    dataset = _ItemDataset(lambda i: (torch.zeros(5), 0) if i == 0 else (torch.zeros(5), 0, 1))
    issgd = ISSGD(nn.Linear(5, N_CLASSES), dataset, **_sizes(), seed=0)
    with pytest.raises(ValueError, match=r"item \d+ is a tuple of 3 elements"):
        next(issgd.batches(1))


def test_items_of_unequal_or_unconvertible_parts_raise() -> None:
    ragged = _ItemDataset(lambda i: (torch.zeros(5 + i % 2), 0))
    issgd = ISSGD(nn.Linear(5, N_CLASSES), ragged, **_sizes(), seed=0)
    with pytest.raises(ValueError, match=r"inputs of one shape.*\(5,\), \(6,\)"):
        next(issgd.batches(1))
    text = _ItemDataset(lambda i: ("a picture", 0))
    issgd = ISSGD(nn.Linear(5, N_CLASSES), text, **_sizes(), seed=0)
    with pytest.raises(ValueError, match=r"input of dataset item \d+ \(str\) cannot be converted"):
        next(issgd.batches(1))


def test_list_items_are_pairs_too() -> None:
    x, y, model = skewed_data(20, seed=29)
    issgd = ISSGD(model, _ItemDataset(lambda i: [x[i], int(y[i])]), **_sizes(), seed=0)
    reference = ISSGD(model, TensorDataset(x, y), **_sizes(), seed=0)
    for a, b in zip(issgd.batches(3), reference.batches(3), strict=True):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a, b, strict=True))


def test_a_data_loader_or_iterable_dataset_is_a_type_error() -> None:
    x, y, model = skewed_data(20, seed=30)
    loader = torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.raises(TypeError, match=r"got a DataLoader; pass its dataset \(loader.dataset\)"):
        ISSGD(model, loader, **_sizes())  # type: ignore[arg-type]

    class Stream(torch.utils.data.IterableDataset[tuple[Tensor, Tensor]]):
        def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
            return iter(zip(x, y, strict=True))

        def __len__(self) -> int:
            return len(x)

    with pytest.raises(TypeError, match="IterableDataset"):
        ISSGD(model, Stream(), **_sizes())


# --------------------------------------------------------------------- integral arguments


def test_numpy_integers_are_accepted_as_sizes_and_seed() -> None:
    x, y, model = skewed_data(20, seed=31)
    issgd = ISSGD(
        model,
        TensorDataset(x, y),
        batch_size=np.int64(4),  # type: ignore[arg-type]
        super_batch_size=np.int32(8),  # type: ignore[arg-type]
        forward_batch_size=np.uint16(4),  # type: ignore[arg-type]
        tau_threshold=np.float32(1.0),  # type: ignore[arg-type]
        momentum=np.float64(0.5),  # type: ignore[arg-type]
        seed=np.uint32(3),  # type: ignore[arg-type]
        ignore_index=np.int8(-100),  # type: ignore[arg-type]
    )
    reference = ISSGD(
        model,
        TensorDataset(x, y),
        batch_size=4,
        super_batch_size=8,
        forward_batch_size=4,
        tau_threshold=1.0,
        momentum=0.5,
        seed=3,
    )
    assert issgd.stats == reference.stats
    # Plain Python numbers, no NumPy scalars; the switch and its latest rule are named by str.
    stats = issgd.stats
    assert {k for k, v in stats.items() if type(v) is str} == {"switch", "switch_rule"}
    assert all(type(v) in (int, float) for k, v in stats.items() if type(v) is not str)
    first = list(issgd.batches(np.int64(5)))  # type: ignore[arg-type]
    second = list(reference.batches(5))
    assert len(first) == 5
    for a, b in zip(first, second, strict=True):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"batch_size": True}, "batch_size must be an integer >= 1, got the bool"),
        ({"batch_size": np.float64(4.0)}, "batch_size must be an integer"),
        ({"batch_size": "4"}, "batch_size must be an integer"),
        ({"super_batch_size": np.bool_(True)}, "super_batch_size must be an integer"),
        ({"forward_batch_size": 2.0}, "forward_batch_size must be an integer"),
        ({"seed": True}, "seed must be an integer, got the bool"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": 2**64}, r"seed must lie in \[-2\*\*63, 2\*\*64\)"),
        ({"ignore_index": -1.0}, "ignore_index must be an integer"),
        ({"momentum": "0.9"}, "momentum must be a real number"),
        ({"tau_threshold": True}, "tau_threshold must be a real number"),
    ],
)
def test_non_integral_arguments_raise_clearly(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ISSGD(**_args(**overrides))  # type: ignore[arg-type]


def test_n_steps_must_be_integral() -> None:
    issgd = ISSGD(**_args())  # type: ignore[arg-type]
    for bad in (2.0, True):
        with pytest.raises(ValueError, match="n_steps"):
            issgd.batches(bad)  # type: ignore[arg-type]
