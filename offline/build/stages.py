"""The three fine-tunes of M: backdoor expert B, exposed model E, auxiliary M'.

Budgets are counted in optimizer steps and stopped by a criterion on held-out clean
data, never by epochs: with 200 clean samples an epoch is two steps and a fixed
epoch budget unlearns nothing. Triggered data is never looked at.

The models are unlifted torch.export graphs. The expert keeps M's batch-norm
statistics frozen: its small Adam steps should move the task, not re-estimate the
features the backdoor lives in. The auxiliary and the exposure take SGD steps and
need train-mode batch norm: with frozen statistics a trained network is so sharp that
SGD at 0.01 diverges (measured on digits: the loss went from 0.03 to infinity in four
steps, and an exposure run that way destroyed the backdoor along with the task).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from offline.build.divergence import DivergenceGuard, finite_accuracy, weights_copy
from offline.data.tensorsets import TensorSet
from offline.graph_mode import set_batchnorm_training
from offline.training import accuracy, batches, forward


@dataclass
class StageReport:
    """What a stage did and why it stopped, recorded in the manifest."""

    optimizer: str
    lr: float
    criterion: str
    stopped_by: str
    steps: int
    heldout_clean_accuracy: float
    selection: dict | None = None  # how the learning rate or the kept weights were chosen, with the evidence

    def to_json(self) -> dict:
        return asdict(self)


class FirstReached:
    """The first checked weights that meet a weaker criterion than the run's, for a run
    that ends (by divergence or its budget) without meeting its own."""

    def __init__(self, model: nn.Module, meets: Callable[[float], bool]):
        self.model, self.meets = model, meets
        self._state: dict[str, torch.Tensor] | None = None
        self.steps, self.accuracy = 0, float("nan")

    def check(self, steps: int, accuracy: float) -> None:
        if self._state is None and self.meets(accuracy):
            self._state = weights_copy(self.model)
            self.steps, self.accuracy = steps, accuracy

    def restore(self) -> bool:
        """Back to those weights, if any check met the criterion."""
        if self._state is not None:
            self.model.load_state_dict(self._state)
        return self._state is not None


def _run(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, train: TensorSet, heldout: TensorSet,
         *, max_steps: int, check_every: int, done, batch_size: int, seed: int, desc: str,
         schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
         batchnorm_training: bool = False, give_up=None,
         trajectory: list[float] | None = None, fallback: FirstReached | None = None) -> tuple[int, str, float]:
    """Step until `done(heldout_accuracy)`, `give_up()`, divergence or the budget; returns (steps,
    stopped_by, accuracy). Every held-out accuracy checked is appended to `trajectory`, and
    offered to `fallback`.

    The model is always left with eval-mode batch norm, as it will be exported.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    stream = batches(train.x, train.y, min(batch_size, len(train)), rng)
    trajectory = [] if trajectory is None else trajectory
    acc = accuracy(model, heldout.x, heldout.y)
    trajectory.append(acc)
    if done(acc):
        return 0, "criterion", acc
    if fallback is not None:
        fallback.check(0, acc)
    try:
        set_batchnorm_training(model, batchnorm_training)
        guard = DivergenceGuard(model)
        with tqdm(total=max_steps, desc=desc, unit="step", disable=None) as bar:
            for step in range(1, max_steps + 1):
                inputs, labels = next(stream)
                loss = loss_fn(model(inputs), labels)
                if not guard.keep(loss, step - 1):
                    return _diverged(model, guard, heldout, trajectory)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if not guard.weights_finite():
                    return _diverged(model, guard, heldout, trajectory)
                if schedule is not None:
                    schedule.step()
                bar.update()
                if step % check_every == 0 or step == max_steps:
                    set_batchnorm_training(model, False)
                    acc = finite_accuracy(model, heldout)
                    if acc is None:
                        return _diverged(model, guard, heldout, trajectory)
                    trajectory.append(acc)
                    bar.set_postfix(heldout_acc=f"{acc:.3f}", refresh=False)
                    if done(acc):
                        return step, "criterion", acc
                    if fallback is not None:
                        fallback.check(step, acc)
                    if give_up is not None and give_up():
                        return step, "gave up", acc
                    set_batchnorm_training(model, batchnorm_training)
        return max_steps, "budget", acc
    finally:
        set_batchnorm_training(model, False)


def _diverged(model: nn.Module, guard: DivergenceGuard, heldout: TensorSet,
              trajectory: list[float]) -> tuple[int, str, float]:
    steps = guard.restore()
    set_batchnorm_training(model, False)
    acc = accuracy(model, heldout.x, heldout.y)
    trajectory.append(acc)
    return steps, "divergence", acc


EXPERT_LRS = (1e-3, 3e-4, 3e-3, 1e-4)  # tried in this order: the usual winner first
EXPERT_CHECK_EVERY = 5  # steps between held-out checks; a run that meets the criterion within one has overshot


def weight_change(model: nn.Module, reference: nn.Module) -> float:
    """L2 distance between two copies' parameters."""
    with torch.no_grad():
        return float(sum(((a - b) ** 2).sum() for a, b in zip(model.parameters(), reference.parameters())) ** 0.5)


def answers_alike(model: nn.Module, heldout: TensorSet) -> bool:
    """Whether the network gives every held-out input the same logits. A learning rate too
    large can kill every unit before the classifier layer, and the held-out accuracy then
    falls to the share of the one class left, which looks like a forgotten task but is not:
    such an expert holds no backdoor either (measured: shapes/VGG at width 8, lowfreq seed
    1, no rate reached the criterion and Adam 3e-3, the lowest accuracy at 0.08, had B's
    32 features at zero on every input; the expert posterior scored 0.500)."""
    logits = forward(model, heldout.x)
    return bool(np.abs(logits - logits[:1]).max() <= 1e-6 * (1 + np.abs(logits).max()))


def _expert_at(model: nn.Module, train: TensorSet, heldout: TensorSet, num_classes: int, lr: float,
               target_accuracy: float, max_steps: int, check_every: int, batch_size: int, seed: int,
               give_up_above: float) -> tuple[nn.Module, StageReport, float]:
    expert = copy.deepcopy(model)
    shifted = TensorSet(train.x, (train.y + 1) % num_classes)
    optimizer = torch.optim.Adam(expert.parameters(), lr=lr)
    steps, stopped, acc = _run(expert, optimizer, F.cross_entropy, shifted, heldout, max_steps=max_steps,
                               check_every=check_every, done=lambda a: a <= target_accuracy,
                               batch_size=batch_size, seed=seed, desc=f"backdoor expert (Adam {lr:g})",
                               give_up=lambda: weight_change(expert, model) > give_up_above)
    report = StageReport("adam", lr, f"heldout_clean_accuracy <= {target_accuracy}", stopped, steps, acc)
    return expert, report, weight_change(expert, model)


def _met_at_first_check(stopped_by: str, steps: int, check_every: int = EXPERT_CHECK_EVERY) -> bool:
    """Whether a run met its criterion at the first check, somewhere inside one check's steps."""
    return stopped_by == "criterion" and steps <= check_every


def _preference(run: dict) -> tuple[int, float]:
    """Where a learning rate's run ranks for the expert, lower first: a collapse the criterion saw
    happen, by weight change; a collapse already there at the first check, by weight change; no
    collapse, by held-out accuracy; last, a network that answers every input alike."""
    if run["constant_output"]:
        return 3, 0.0
    if run["stopped_by"] != "criterion":
        return 2, run["heldout_clean_accuracy"]
    return (1 if run["met_at_first_check"] else 0), run["weight_change"]


def expert_chosen_as_builds_now_do(report: dict) -> bool:
    """Whether a manifest's expert report was chosen by this rule: builds before the first-check rule
    recorded no `met_at_first_check`, and those that took a collapse at their first check may have
    passed over a rate that this rule prefers (--reuse-models must not keep such an expert)."""
    search = (report.get("selection") or {}).get("search") or []
    if all("met_at_first_check" in run for run in search):
        return True
    return not _met_at_first_check(report.get("stopped_by", ""), report.get("steps", 0))


def backdoor_expert(model: nn.Module, train: TensorSet, heldout: TensorSet, num_classes: int, *,
                    lrs: tuple[float, ...] = EXPERT_LRS, target_accuracy: float = 0.05, max_steps: int = 3000,
                    check_every: int = EXPERT_CHECK_EVERY, batch_size: int = 64,
                    seed: int = 0) -> tuple[nn.Module, StageReport]:
    """BaDExpert's B: fine-tune on y -> (y+1) mod K until held-out clean accuracy collapses.

    The learning rate is chosen on clean data: among the rates that collapse held-out
    accuracy, the one whose expert moved least from M. The backdoor is a separate,
    sturdier shortcut; the less the weights move to forget the task, the more of it
    survives (measured on shapes/badnets: Adam 1e-4 needed 2,665 steps, moved 2.3 and
    kept nothing, AUROC of b alone 0.30; 1e-3 needed 130 steps, moved 1.6, AUROC 0.75).
    A run is abandoned once it has moved further than the best finished one, and a run
    that leaves B answering every input alike is never chosen (`answers_alike`).

    A rate that meets the criterion at its first check has overshot: the collapse happened
    somewhere inside one check's handful of large steps, which the criterion cannot tell
    apart, and its small weight change says nothing about what it kept. Such a run is taken
    only when no rate meets the criterion later (measured on shapes/MobileNet BadNets seed
    1: Adam 3e-3 met it at step 5 with the smallest change, 1.70, and turned the BaDExpert
    rule's AUROC to 0.30; Adam 1e-3 met it at step 60, change 1.92, rule 0.94).
    """
    runs: list[tuple[dict, nn.Module, StageReport]] = []  # (its search entry, B, its report), in the order tried
    for lr in lrs:
        resolved = [entry["weight_change"] for entry, _, _ in runs if _preference(entry)[0] == 0]
        expert, report, change = _expert_at(model, train, heldout, num_classes, lr, target_accuracy, max_steps,
                                             check_every, batch_size, seed,
                                             give_up_above=min(resolved, default=float("inf")))
        runs.append(({"lr": lr, "steps": report.steps, "stopped_by": report.stopped_by,
                      "heldout_clean_accuracy": report.heldout_clean_accuracy, "weight_change": change,
                      "constant_output": answers_alike(expert, heldout),
                      "met_at_first_check": _met_at_first_check(report.stopped_by, report.steps, check_every)},
                     expert, report))
    chosen, expert, report = min(runs, key=lambda run: _preference(run[0]))  # the first tried among equals
    if chosen["constant_output"]:
        print("warning: every learning rate tried for the backdoor expert left it answering every input alike; "
              "the BaDExpert rules and the expert posterior will not separate anything", file=sys.stderr)
    report.selection = {"criterion": "smallest weight change among the rates that collapse held-out accuracy after "
                                     "their first check, else among those that collapse it at the first check, else "
                                     "the lowest held-out accuracy; a run with constant_output only if every run has "
                                     "it",
                        "search": [entry for entry, _, _ in runs]}
    return expert, report


def exposed_model(model: nn.Module, train: TensorSet, heldout: TensorSet, num_classes: int, *,
                  lr: float = 0.01, max_steps: int = 2000, check_every: int = 1, batch_size: int = 64,
                  seed: int = 0) -> tuple[nn.Module, StageReport]:
    """EBYD's clean unlearning: gradient ascent on clean cross-entropy until accuracy is at chance.

    A network can collapse instead, sending every input to one class, and then its
    held-out accuracy is that class's share of the held-out set, which may sit just above
    1/K for ever while the logits grow until the run diverges. Measured on a small ViT
    (digits, blend): at step 6 every input went to the attack's target, held-out accuracy
    0.102 against a criterion of 0.1, exposed-margin AUROC 0.974; the run went on to
    diverge at step 49, by then collapsed onto another class, AUROC 0.011. So a run that
    never reaches 1/K keeps the first weights no better than a constant predictor (held-out
    accuracy at most the held-out set's largest class share) when it has them.
    """
    exposed = copy.deepcopy(model)
    chance = 1.0 / num_classes
    constant = float(np.bincount(heldout.y, minlength=num_classes).max() / len(heldout))
    fallback = FirstReached(exposed, lambda a: a <= constant)
    optimizer = torch.optim.SGD(exposed.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps, stopped, acc = _run(exposed, optimizer, lambda out, y: -F.cross_entropy(out, y), train, heldout,
                               max_steps=max_steps, check_every=check_every, done=lambda a: a <= chance,
                               batch_size=batch_size, seed=seed, desc="exposed model", batchnorm_training=True,
                               fallback=fallback)
    criterion = f"heldout_clean_accuracy <= {chance:.3g} (chance)"
    if stopped == "criterion" or not fallback.restore():
        return exposed, StageReport("sgd", lr, criterion, stopped, steps, acc)
    kept = {"criterion": f"run ended by {stopped} after {steps} steps without reaching chance: the first weights "
                         f"whose held-out accuracy was at most {constant:.3g}, the held-out set's largest class share",
            "run_stopped_by": stopped, "run_steps": steps}
    return exposed, StageReport("sgd", lr, criterion, "constant predictor", fallback.steps, fallback.accuracy, kept)


AUXILIARY_LRS = (0.1, 0.07, 0.05, 0.03, 0.01)
# A rate shook M when held-out accuracy fell more than AUXILIARY_MARGIN below M's, and
# recovered when it ended within it; AUXILIARY_WIDE_MARGIN is the recovery accepted when
# no rate does both.
AUXILIARY_MARGIN = 0.15
AUXILIARY_WIDE_MARGIN = 0.25


def _auxiliary_at(model: nn.Module, train: TensorSet, heldout: TensorSet, lr: float, epochs: int,
                  min_epoch_steps: int, batch_size: int, seed: int) -> tuple[nn.Module, StageReport, list[float]]:
    auxiliary = copy.deepcopy(model)
    epoch_steps = max(min_epoch_steps, len(train) // batch_size)
    total = epochs * epoch_steps
    optimizer = torch.optim.SGD(auxiliary.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m * epoch_steps for m in (2, 4, 6, 8)], 0.1)
    trajectory: list[float] = []
    steps, stopped, acc = _run(auxiliary, optimizer, F.cross_entropy, train, heldout, max_steps=total,
                               check_every=epoch_steps, done=lambda a: False, batch_size=batch_size,
                               seed=seed, desc=f"auxiliary model (SGD {lr:g})", schedule=schedule,
                               batchnorm_training=True, trajectory=trajectory)
    report = StageReport("sgd-nesterov", lr, f"{epochs} epochs of {epoch_steps} steps", stopped, steps, acc)
    return auxiliary, report, trajectory


def auxiliary_model(model: nn.Module, train: TensorSet, heldout: TensorSet, num_classes: int, *,
                    lrs: tuple[float, ...] = AUXILIARY_LRS, margin: float = AUXILIARY_MARGIN,
                    wide_margin: float = AUXILIARY_WIDE_MARGIN, epochs: int = 10, min_epoch_steps: int = 20,
                    batch_size: int = 64, seed: int = 0) -> tuple[nn.Module, StageReport]:
    """BaDExpert's M': clean fine-tuning with a large learning rate (SGD, nesterov).

    The schedule keeps the paper's shape (10 epochs, lr x0.1 at epochs 2, 4, 6, 8) but an
    "epoch" is at least `min_epoch_steps` steps so that small clean sets still move M.
    The rate is chosen on clean data, largest first: the largest rate whose held-out
    accuracy dips more than `margin` below M's and ends within `margin` of it (it shook
    the task loose and recovered); if none does, the largest that ends within
    `wide_margin`; if none, the one that ends highest. The dip is what unlearns the
    backdoor: on the digits ViT every rate from 0.05 up dips and cannot recover within the
    schedule, and the largest rate ending within 15 points (the criterion until session
    24) was 0.03, which barely moved M (held-out 1.00 -> 0.98) and kept the backdoor (M'
    gave triggered inputs' target 0.96 on average), so the rule rested on the expert alone
    (docs/METHODS.md, "The fine-tuned auxiliary on the ViT"). The larger the rate, the more
    of the backdoor is shaken loose; M' only has to keep enough of the task that clean
    inputs' `a` stays high (shapes/lowfreq: SGD 0.1 ended 12 points down, left the target
    2% and gave AUROC 0.98 where 0.03 left it 41% and gave 0.73).
    """
    start = accuracy(model, heldout.x, heldout.y)
    runs = []
    for lr in sorted(lrs, reverse=True):
        auxiliary, report, trajectory = _auxiliary_at(model, train, heldout, lr, epochs, min_epoch_steps,
                                                      batch_size, seed)
        diverged = report.stopped_by == "divergence"
        evidence = {"lr": lr, "trajectory": [round(a, 4) for a in trajectory], "dip": min(trajectory),
                    "final": trajectory[-1], "diverged": diverged, "dipped": min(trajectory) < start - margin,
                    "recovered": not diverged and trajectory[-1] >= start - margin}
        runs.append((auxiliary, report, evidence))
        if evidence["dipped"] and evidence["recovered"]:
            break  # rates are tried largest first: the first that does both is the largest that does
    shook = [run for run in runs if run[2]["dipped"] and run[2]["recovered"]]
    within_wide = [run for run in runs if not run[2]["diverged"] and run[2]["final"] >= start - wide_margin]
    auxiliary, report, _ = (shook or within_wide or [max(runs, key=lambda run: run[2]["final"])])[0]
    report.selection = {"criterion": f"largest rate whose held-out accuracy dips more than {margin} below M's "
                                     f"({start:.4f}) and ends within {margin} of it; if none, the largest ending "
                                     f"within {wide_margin}", "search": [run[2] for run in runs]}
    return auxiliary, report
