"""A fine-tune that diverges stops at its last finite weights instead of exporting NaN.

Gradient ascent (EBYD's clean unlearning) has no floor; a rate too large for the
architecture sends weights to infinity, and a NaN model's held-out accuracy can pass a
stop criterion. The build must notice, keep finite weights and say why it stopped."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from firewall.errors import UserError
from offline.build import stages
from offline.build.tsbd import activeness_aware_finetune
from offline.data.tensorsets import TensorSet
from offline.model_io import export_program


def tiny_task(n: int, seed: int) -> TensorSet:
    """The label is whichever of the first three pixels is largest."""
    x = np.random.default_rng(seed).normal(size=(n, 1, 4, 4)).astype(np.float32)
    return TensorSet(x, x.reshape(n, 16)[:, :3].argmax(1))


def tiny_model() -> nn.Module:
    """A linear model that solves tiny_task, so that unlearning has something to undo."""
    linear = nn.Linear(16, 3)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[:, :3] = 10 * torch.eye(3)
        linear.bias.zero_()
    return export_program(nn.Sequential(nn.Flatten(), linear), torch.zeros(2, 1, 4, 4)).module()


def finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def run(model: nn.Module, loss_fn, lr: float = 0.1, max_steps: int = 20) -> tuple[int, str, float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return stages._run(model, optimizer, loss_fn, tiny_task(60, 0), tiny_task(30, 1), max_steps=max_steps,
                       check_every=1, done=lambda acc: False, batch_size=16, seed=0, desc="test")


def test_a_loss_that_turns_infinite_stops_the_run_at_the_weights_before_the_step_that_broke_it():
    calls = []

    def loss_fn(out, y):
        calls.append(1)
        return -F.cross_entropy(out, y) * (float("inf") if len(calls) >= 4 else 1.0)

    model = tiny_model()
    steps, stopped, acc = run(model, loss_fn)
    assert (stopped, steps) == ("divergence", 2)  # the 4th loss is at the weights after 3 steps
    assert finite(model) and 0.0 <= acc <= 1.0


def test_a_step_that_sends_weights_to_infinity_is_undone():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    steps, stopped, _ = run(model, lambda out, y: -out.sum() * 1e30, lr=1e30)
    assert (stopped, steps) == ("divergence", 0)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_an_exposure_that_diverges_keeps_finite_weights_and_says_so(monkeypatch):
    real_ce = F.cross_entropy
    calls = []

    def exploding_ce(out, y):
        calls.append(1)
        return real_ce(out, y) * (float("inf") if len(calls) >= 3 else 1.0)

    monkeypatch.setattr(stages.F, "cross_entropy", exploding_ce)
    exposed, report = stages.exposed_model(tiny_model(), tiny_task(60, 0), tiny_task(30, 1), num_classes=3,
                                           lr=1e-3, max_steps=50)
    assert report.stopped_by == "divergence" and report.steps == 1
    assert finite(exposed)


def test_an_exposure_that_collapses_onto_one_class_and_then_diverges_keeps_the_first_collapsed_weights(monkeypatch):
    """Collapsed onto one class, a model's held-out accuracy is that class's share, which can
    stay above 1/K until the run diverges; the weights kept are the first at a constant
    predictor's accuracy, not the last finite ones."""
    heldout = tiny_task(30, 1)
    largest_share = np.bincount(heldout.y).max() / len(heldout)
    assert largest_share > 1 / 3
    checked = iter([0.8, largest_share, largest_share, largest_share])
    monkeypatch.setattr(stages, "finite_accuracy", lambda model, data: next(checked))
    real_ce, calls = F.cross_entropy, []

    def exploding_ce(out, y):
        calls.append(1)
        return real_ce(out, y) * (float("inf") if len(calls) >= 5 else 1.0)

    monkeypatch.setattr(stages.F, "cross_entropy", exploding_ce)
    exposed, report = stages.exposed_model(tiny_model(), tiny_task(60, 0), heldout, num_classes=3, lr=1e-3,
                                           max_steps=50)
    assert (report.stopped_by, report.steps) == ("constant predictor", 2)
    assert report.selection["run_stopped_by"] == "divergence" and report.selection["run_steps"] == 3

    monkeypatch.undo()
    two_steps, _ = stages.exposed_model(tiny_model(), tiny_task(60, 0), heldout, num_classes=3, lr=1e-3,
                                        max_steps=2)
    assert all(torch.equal(p, q) for p, q in zip(exposed.parameters(), two_steps.parameters()))


def test_a_fine_tune_that_does_not_diverge_runs_its_whole_budget():
    model = tiny_model()
    exposed, report = stages.exposed_model(model, tiny_task(60, 0), tiny_task(30, 1), num_classes=3,
                                           lr=1e-3, max_steps=5)
    assert (report.stopped_by, report.steps) == ("budget", 5)
    assert stages.weight_change(exposed, model) > 0


def test_an_auxiliary_rate_that_diverges_never_counts_as_recovered():
    _, report = stages.auxiliary_model(tiny_model(), tiny_task(60, 0), tiny_task(30, 1), num_classes=3,
                                       lrs=(1e30, 1e-3), epochs=2, min_epoch_steps=3)
    runs = {run["lr"]: run for run in report.selection["search"]}
    assert runs[1e30]["diverged"] and not runs[1e30]["recovered"]
    assert report.lr == 1e-3


def _search(monkeypatch, drops: dict[float, list[float]]) -> tuple[float, list[float]]:
    """The auxiliary's rate search over fine-tunes whose held-out accuracy, epoch by epoch,
    lies the given amounts below M's; returns (the rate kept, the rates tried)."""
    def fine_tune(model, train, heldout, lr, *args):
        start = stages.accuracy(model, heldout.x, heldout.y)
        trajectory = [start, *(start - drop for drop in drops[lr])]
        return model, stages.StageReport("sgd-nesterov", lr, "test", "budget", 10, trajectory[-1]), trajectory

    monkeypatch.setattr(stages, "_auxiliary_at", fine_tune)
    _, report = stages.auxiliary_model(tiny_model(), tiny_task(60, 0), tiny_task(30, 1), num_classes=3,
                                       lrs=tuple(drops))
    return report.lr, [run["lr"] for run in report.selection["search"]]


def test_the_auxiliary_keeps_the_largest_rate_that_shook_the_task_and_recovered(monkeypatch):
    """A rate that never dips leaves M's backdoor in M'; one that dips and recovers has shaken it loose."""
    lr, tried = _search(monkeypatch, {0.1: [0.3, 0.3], 0.07: [0.3, 0.1], 0.05: [0.2, 0.0], 0.03: [0.0, 0.0]})
    assert lr == 0.07 and tried == [0.1, 0.07]  # the search stops at the first that does both


def test_when_no_rate_dips_and_recovers_the_auxiliary_takes_the_largest_that_ends_near_m(monkeypatch):
    lr, tried = _search(monkeypatch, {0.1: [0.3, 0.3], 0.07: [0.3, 0.2], 0.03: [0.02, 0.02]})
    assert lr == 0.07 and tried == [0.1, 0.07, 0.03]  # every rate tried; 0.03 never left the task


def test_tsbd_fine_tuning_that_diverges_returns_finite_weights_and_the_steps_it_kept():
    model = tiny_model()
    trajectory, taken = activeness_aware_finetune(model, tiny_task(60, 0), tiny_task(30, 1), steps=20,
                                                  check_every=5, lr=1e30)
    assert taken < 20 and finite(model)
    assert len(trajectory) >= 2


def test_a_model_whose_loss_is_never_finite_is_refused_with_a_clear_error():
    with pytest.raises(UserError, match="not finite before any fine-tuning"):
        run(tiny_model(), lambda out, y: out.sum() * float("inf"))
