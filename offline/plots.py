"""PNG plots: ROC curves, BaDExpert's joint-confidence plane and the suspected target's reversed
trigger for `offline evaluate --plots`, and the AUROC map of the detection matrix beside
docs/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from firewall.rules.badexpert import triangle_statistic  # noqa: E402
from firewall.thresholds import Thresholds  # noqa: E402
from offline.build.reversed_trigger import ReversedTrigger  # noqa: E402
from offline.metrics import auroc  # noqa: E402


def _roc_axes(ax, clean: np.ndarray, backdoor: np.ndarray, label: str) -> None:
    labels = np.r_[np.zeros(len(clean)), np.ones(len(backdoor))]
    fpr, tpr, _ = roc_curve(labels, np.r_[clean, backdoor])
    ax.plot(fpr, tpr, label=f"{label} (AUROC {auroc(clean, backdoor):.3f})")


def _finish_roc(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-positive rate (clean rejected)",
           ylabel="true-positive rate (backdoor rejected)", title=title)
    ax.axvline(0.01, color="grey", lw=0.8, ls="--")
    ax.legend(loc="lower right", fontsize=8)


def _reversed_trigger(out: Path, trigger: ReversedTrigger) -> Path:
    """What the build found the backdoor responds to: the mask, the pattern, and the two together
    as the trigger stamps them on an input (on black)."""
    def image(array: np.ndarray) -> np.ndarray:
        return array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    panels = [("mask", trigger.mask), ("pattern", image(trigger.pattern)),
              ("mask x pattern", image(trigger.mask * trigger.pattern))]
    for ax, (title, picture) in zip(axes, panels):
        ax.imshow(picture, **({"cmap": "gray", "vmin": 0.0, "vmax": 1.0} if picture.ndim == 2 else {}))
        ax.set(title=title, xticks=[], yticks=[])
    fig.suptitle(f"reversed trigger of the suspected target, class {trigger.target} "
                 f"(mask L1 {trigger.mask.sum():.1f} pixels)")
    fig.savefig(out / "reversed_trigger.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out / "reversed_trigger.png"


def write_plots(out: Path, clean: dict[str, np.ndarray], backdoor: dict[str, np.ndarray] | None,
                thresholds: Thresholds, joint: tuple | None, trigger: ReversedTrigger | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [_reversed_trigger(out, trigger)] if trigger is not None else []
    if backdoor is not None and all(len(v) for v in backdoor.values()):
        fig, ax = plt.subplots(figsize=(6, 5))
        for rule in clean:
            _roc_axes(ax, clean[rule], backdoor[rule], rule)
        _finish_roc(ax, "ROC, all rules")
        fig.savefig(out / "roc.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(out / "roc.png")
        for rule in clean:
            fig, ax = plt.subplots(figsize=(5, 4.5))
            _roc_axes(ax, clean[rule], backdoor[rule], rule)
            _finish_roc(ax, f"ROC, {rule}")
            fig.savefig(out / f"roc_{rule}.png", dpi=110, bbox_inches="tight")
            plt.close(fig)
            written.append(out / f"roc_{rule}.png")
    if joint is not None:
        (b_clean, a_clean), (b_bd, a_bd) = joint
        fig, ax = plt.subplots(figsize=(5.5, 5))
        grid = np.linspace(0, 1, 201)
        bb, aa = np.meshgrid(grid, grid)
        level = -thresholds.rules["badexpert"].threshold  # reject where -t > threshold, i.e. t < level
        ax.contourf(bb, aa, triangle_statistic(bb, aa) < level, levels=[0.5, 1], colors=["#f4cccc"], alpha=0.6)
        ax.scatter(b_clean, a_clean, s=6, alpha=0.5, label=f"clean ({len(b_clean)})", color="#1f77b4")
        ax.scatter(b_bd, a_bd, s=6, alpha=0.5, label=f"backdoor ({len(b_bd)})", color="#d62728")
        ax.set(xlabel="expert confidence b = softmax(B(x))[ŷ]", ylabel="auxiliary confidence a = softmax(M'(x))[ŷ]",
               xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="BaDExpert joint-confidence plane (shaded: rejected)")
        ax.legend(loc="upper right", fontsize=8)
        fig.savefig(out / "joint_confidence.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(out / "joint_confidence.png")
    return written


def auroc_map(cells: list[str], rules: list[str], values: np.ndarray, path: Path) -> Path:
    """A cells x rules heatmap of AUROC (NaN where not measured): the matrix at a glance,
    where a weak attack shows as a red row and a blind rule as a red column."""
    fig, ax = plt.subplots(figsize=(1.2 * len(rules) + 3.5, 0.32 * len(cells) + 1.5))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    for (row, col), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(col, row, f"{value:.3f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(rules)), rules, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(cells)), cells, fontsize=8)
    ax.set_title("AUROC, clean test inputs against triggered ones (below 0.5 shown as 0.5)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def build_comparison(cells: list[str], default: np.ndarray, variant: np.ndarray, variant_name: str,
                     target: float, path: Path) -> Path:
    """Each attack cell's firewall AUROC with the default build and with another, joined by a
    line: which cells the change moves, which way, and where they land against the target."""
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(cells) + 1.6))
    rows = np.arange(len(cells))
    ax.hlines(rows, np.minimum(default, variant), np.maximum(default, variant), color="0.7", lw=2)
    ax.scatter(default, rows, color="tab:blue", zorder=3, label="default build")
    ax.scatter(variant, rows, color="tab:orange", marker="D", zorder=3, label=variant_name)
    ax.axvline(target, color="tab:red", ls="--", lw=1, label=f"per-attack target {target}")
    ax.set_yticks(rows, cells, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("firewall AUROC, mean over seeds")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
