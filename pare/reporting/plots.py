"""The report's figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pare.io import atomic_write  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def training_curves(histories: dict[str, dict], path: Path) -> Path:
    """Loss and accuracy per epoch, train (solid) and validation (dashed), one colour per stage."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        epochs = [e["epoch"] for e in h["epochs"]]
        color = f"C{i}"
        ax_loss.plot(epochs, [e["train_loss"] for e in h["epochs"]], color=color, label=f"{name} train")
        ax_loss.plot(epochs, [e["val_loss"] for e in h["epochs"]], "--", color=color, label=f"{name} val")
        ax_acc.plot(epochs, [e["train_accuracy"] for e in h["epochs"]], color=color, label=f"{name} train")
        ax_acc.plot(epochs, [e["val_accuracy"] for e in h["epochs"]], "--", color=color, label=f"{name} val")
        if h.get("best_epoch"):
            ax_loss.axvline(h["best_epoch"], color=color, alpha=0.3, lw=1)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    return _save(fig, path)


def roc_plot(curves: dict[str, dict[str, tuple]], path: Path) -> Path:
    """``curves``: stage -> class -> (fpr, tpr, auc). Binary tasks show one curve per stage;
    multiclass tasks show each class for the first stage and the macro AUC of the others."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for i, (stage, per_class) in enumerate(curves.items()):
        if len(per_class) == 1 or i == 0:
            for j, (cls, (fpr, tpr, auc)) in enumerate(per_class.items()):
                label = (
                    f"{stage} (AUC {auc:.3f})" if len(per_class) == 1 else f"{stage} class {cls} ({auc:.3f})"
                )
                ax.plot(fpr, tpr, color=f"C{i if len(per_class) == 1 else j}", lw=1.2, label=label)
        else:
            mean_auc = np.mean([c[2] for c in per_class.values()])
            ax.plot([], [], " ", label=f"{stage}: macro AUC {mean_auc:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split)")
    ax.legend(fontsize=6, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def confusion_plot(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    m = np.array(matrix)
    size = max(3.5, 0.45 * len(classes) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    for (r, c), v in np.ndenumerate(m):
        ax.text(
            c, r, str(v), ha="center", va="center", fontsize=7, color="white" if v > m.max() / 2 else "black"
        )
    ax.set(
        xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true", title=title
    )
    ax.set_xticklabels(classes, rotation=90 if max(map(len, classes)) > 3 else 0, fontsize=7)
    ax.set_yticklabels(classes, fontsize=7)
    return _save(fig, path)


def pareto_plot(
    points: list[tuple[str, float, float]],
    metric: str,
    path: Path,
    xlabel: str = "artifact size (bytes, log)",
    excluded: list[tuple[float, float]] = (),
) -> Path:
    """Quality against artifact size (or latency), one point per stage or trial; the
    Pareto-optimal ones joined; ``excluded`` points (outside a search's limits) in grey."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if excluded:
        ax.scatter(*zip(*excluded), color="lightgrey", zorder=1, label="outside the limits")
    for i, (name, size, value) in enumerate(points):
        ax.scatter(size, value, color=f"C{i % 10}", zorder=3)
        ax.annotate(name, (size, value), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front, best = [], -np.inf
    for _name, size, value in sorted(points, key=lambda p: (p[1], -p[2])):
        if value > best:
            front.append((size, value))
            best = value
    if len(front) > 1:
        ax.plot(*zip(*front), "-", color="grey", alpha=0.6, zorder=2, label="Pareto front")
    if len(front) > 1 or excluded:
        ax.legend(fontsize=8)
    ax.set(xscale="log", xlabel=xlabel, ylabel=metric, title=f"{metric} vs {xlabel.split(' (')[0]}")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def lr_find_plot(result: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["lrs"], result["losses"])
    if result.get("suggested_lr"):
        ax.axvline(
            result["suggested_lr"], color="C3", ls="--", label=f"suggested {result['suggested_lr']:.2e}"
        )
        ax.legend()
    ax.set(
        xscale="log",
        xlabel="learning rate",
        ylabel="training loss (smoothed)",
        title="learning-rate range test",
    )
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def sensitivity_plot(sensitivity: dict[str, dict[str, float]], path: Path) -> Path:
    """Grouped bars: per layer, the accuracy drop (points) at each bit width."""
    layers = list(sensitivity)
    widths = sorted({int(b) for v in sensitivity.values() for b in v})
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(layers) + 2), 3.8))
    step = 0.8 / len(widths)
    for j, b in enumerate(widths):
        values = [sensitivity[n].get(str(b), np.nan) for n in layers]
        ax.bar(np.arange(len(layers)) + j * step, values, width=step, label=f"{b} bits", color=f"C{j}")
    ax.set_xticks(np.arange(len(layers)) + 0.4 - step / 2)
    ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
    ax.set(ylabel="accuracy drop (points)", title="per-layer sensitivity (validation)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
