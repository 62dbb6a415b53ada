"""Learning curves and selection montages (matplotlib, headless)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from activeseg.rundir.curves import Curve


def plot_curves(
    curves: Sequence[Curve],
    out_png: Path,
    full_data: float | None = None,
    title: str = "Learning curve",
    full_data_label: str = "full data",
    cost: str | None = None,
) -> Path:
    """Mean foreground Dice against labelled units (or a recorded ``cost``); the full-data bound dashed."""
    crowded = len(curves) > 4  # many curves: the legend goes beside the plot, not over it
    fig, ax = plt.subplots(figsize=(10 if crowded else 7, 4.5), dpi=120)
    for curve in curves:
        ax.plot(curve.budget(cost), curve.mean_dice, marker="o", label=curve.label)
    if full_data is not None:
        ax.axhline(full_data, color="black", linestyle="--", label=f"{full_data_label}: {full_data:.3f}")
    kinds = sorted({f"{curve.unit}s" for curve in curves}) or ["volumes"]
    ax.set_xlabel(f"labelled {cost.replace('_', ' ')} (cost)" if cost else f"labelled {' / '.join(kinds)}")
    ax.set_ylabel("mean foreground Dice (test split)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if crowded:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    else:
        ax.legend(loc="lower right")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def plot_montage(
    rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    out_png: Path,
    title: str,
    uncertainty_name: str = "uncertainty",
) -> Path:
    """One row per case: (case id, image_D_H_W, prediction_D_H_W, uncertainty_D_H_W, truth_D_H_W), mid slice each."""
    columns = ("image", "prediction", uncertainty_name, "ground truth")
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.4 * len(rows)), dpi=110, squeeze=False)
    for axis_row, (case_id, image, prediction, uncertainty, truth) in zip(axes, rows, strict=True):
        mid = image.shape[0] // 2
        panels = (
            (image[mid], "gray", None),
            (prediction[mid], "viridis", (0, 2)),
            (uncertainty[mid], "magma", None),
            (truth[mid], "viridis", (0, 2)),
        )
        for ax, (panel, cmap, limits) in zip(axis_row, panels, strict=True):
            vmin, vmax = limits if limits else (None, None)
            ax.imshow(np.rot90(panel), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axis_row[0].set_ylabel(case_id, fontsize=8)
    for ax, name in zip(axes[0], columns, strict=True):
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def band_png(
    bands: Mapping[str, Mapping[str, Any]],
    full_data: Mapping[str, float] | None,
    title: str,
    xlabel: str = "labelled volumes",
    x_scale: float = 1.0,
    linestyles: Mapping[str, str] | None = None,
    legend_beside: bool = False,
) -> bytes:
    """Mean learning curves with their confidence bands (``bench.stats.Band`` as dicts: n_labelled, mean, low,
    high, n), and the full-data bound (mean and CI) if given, as PNG bytes.

    ``x_scale`` divides the budget axis (e.g. 1e6 for millions of voxels); ``linestyles`` maps a curve's name to a
    line style.
    """
    fig, ax = plt.subplots(figsize=(8.5, 5) if legend_beside else (7.5, 4.8), dpi=120)
    palette = plt.get_cmap("tab10" if len(bands) <= 10 else "tab20").colors  # type: ignore[attr-defined]
    for index, (name, band) in enumerate(bands.items()):
        budget = [v / x_scale for v in band["n_labelled"]] if x_scale != 1.0 else band["n_labelled"]
        style: dict[str, Any] = {"linestyle": linestyles[name]} if linestyles else {}
        style["color"] = palette[index % len(palette)]  # distinct colours for up to 20 curves
        (line,) = ax.plot(budget, band["mean"], marker="o", label=f"{name} (n={band['n']})", **style)
        ax.fill_between(budget, band["low"], band["high"], color=line.get_color(), alpha=0.12 if linestyles else 0.15)
    if full_data:
        ax.axhline(full_data["mean"], color="black", linestyle="--", label=f"full data: {full_data['mean']:.3f}")
        ax.axhspan(full_data["low"], full_data["high"], color="black", alpha=0.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean foreground Dice (test split)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend_beside:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    else:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()
