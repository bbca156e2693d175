"""The run's figures: pre-training loss, fine-tune loss and accuracy (train and validation), confusion matrix."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save_png(fig, path: Path, dpi: int = 120) -> None:
    """`fig` as a PNG at `path`, drawn in memory and written atomically (a full disk leaves the previous figure, not
    half of one), then closed."""
    from stvit.training.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getbuffer()))


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    save_png(fig, path)


def plot_curves(records: list[dict], out_dir: Path) -> list[Path]:
    """From log.jsonl records: pretrain_loss.png, finetune_loss.png, finetune_accuracy.png (those with data)."""
    written = []
    pre = [r for r in records if r["stage"] == "pretrain"]
    if pre:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["epoch"] for r in pre], [r["loss"] for r in pre], marker="o")
        ax.set(xlabel="epoch", ylabel="normalized-pixel MSE (removed patches)", title="pre-training (MAE)")
        _save(fig, out_dir / "pretrain_loss.png")
        written.append(out_dir / "pretrain_loss.png")
    ft = [r for r in records if r["stage"] == "finetune"]
    if ft:
        ep = [r["epoch"] for r in ft]
        for key, label, fname in (("loss", "cross-entropy", "finetune_loss.png"),
                                  ("acc", "accuracy", "finetune_accuracy.png")):
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.plot(ep, [r[f"train_{key}"] for r in ft], marker="o", label="train")
            ax.plot(ep, [r[f"val_{key}"] for r in ft], marker="o", label="validation")
            if any(f"test_{key}" in r for r in ft):  # only with --select-on-test
                ax.plot(ep, [r.get(f"test_{key}") for r in ft], marker="x", label="test (leaks)")
            ax.set(xlabel="epoch", ylabel=label, title=f"fine-tuning {label}")
            ax.legend()
            _save(fig, out_dir / fname)
            written.append(out_dir / fname)
    return written


def plot_confusion(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    ax.imshow(cm, cmap="Blues")
    n = len(class_names)
    ax.set_xticks(range(n), class_names)
    ax.set_yticks(range(n), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    peak = max(max(row) for row in cm) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color="white" if cm[i][j] > peak / 2 else "black")
    _save(fig, path)
    return path


def plot_cv_accuracy(model: Sequence[float], baseline: Sequence[float] | None, path: Path, title: str) -> Path:
    """Per-fold test accuracy of the model (and the baseline) as paired bars, each mean as a dashed line."""
    k = len(model)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * k + 2), 3.5))
    width = 0.4 if baseline is not None else 0.6
    series = [("model", model, "C0")] + ([("baseline", baseline, "C1")] if baseline is not None else [])
    for i, (name, values, color) in enumerate(series):
        x = [f + 1 + (i - (len(series) - 1) / 2) * width for f in range(k)]
        ax.bar(x, values, width, color=color, label=f"{name} (mean {sum(values) / k:.3f})")
        ax.axhline(sum(values) / k, color=color, linestyle="--", linewidth=1)
    ax.set_xticks(range(1, k + 1))
    low = min(min(model), min(baseline) if baseline is not None else 1.0)
    ax.set(xlabel="fold", ylabel="test accuracy", title=title, ylim=(max(0.0, low - 0.1), 1.12))
    ax.set_yticks([t for t in ax.get_yticks() if t <= 1.0 + 1e-9])  # the room above 1 is for the legend
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    _save(fig, path)
    return path
