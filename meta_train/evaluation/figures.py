"""Report figures: one panel per family (learned, tuned baselines, the grid in grey) and a
speed-up strip plot per suite."""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np

from meta_train.evaluation import measures

COLORS = {"learned": "tab:red", "adam": "tab:blue", "adam_cosine": "tab:green",
          "adamw_cosine": "tab:olive", "sgd_cosine": "tab:brown", "muon_cosine": "tab:purple"}


def _plt():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


# Figures are committed with their reports: saved at this resolution, as palette PNGs.
DPI = 80
PALETTE_COLORS = 64


def to_palette_png(png: bytes, colors: int = PALETTE_COLORS) -> bytes:
  """An RGB(A) PNG re-encoded with a palette of at most ``colors`` colours (a line plot's few
  colours survive; the file is about a third of the size)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel  (matplotlib's dependency)
  image = Image.open(io.BytesIO(png)).convert("RGB")
  out = io.BytesIO()
  image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
  return out.getvalue()


def save_png(fig, path: str) -> None:
  """Writes ``fig`` to ``path`` as a small palette PNG (:func:`to_palette_png`)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=DPI)
  with open(path, "wb") as f:
    f.write(to_palette_png(buf.getvalue()))


def curves_figure(results, path: str, title: str) -> str:
  """One panel per family (a mixture: per member): mean train loss over runs of the learned
  optimizer, the tuned baselines and constant Adam's grid in grey; log scale when every value
  is positive and they span more than a factor 5.

  Args:
    results: :class:`~meta_train.evaluation.runner.FamilyResult` s.
    path: PNG path.
    title: figure title.

  Returns:
    ``path``.
  """
  plt = _plt()
  panels = [p for r in results for p in r.panels]
  n = max(len(panels), 1)
  cols = min(n, 3)
  rows = int(np.ceil(n / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(max(4.4 * cols, 6.5), 3.3 * rows + 0.6),
                           squeeze=False)
  for i, p in enumerate(panels):
    ax = axes[i // cols][i % cols]
    values = [p["learned"]]
    x = p["steps"]
    if p["grid"] is not None:
      for j, _ in enumerate(p["grid_lrs"]):
        ax.plot(x, p["grid"][j], color="0.78", lw=0.7,
                label="Adam grid" if (i == 0 and j == 0) else None)
        values.append(p["grid"][j])
    for b, curve in p["tuned"].items():
      ax.plot(x, curve, color=COLORS.get(b, "k"), lw=1.2, label=f"tuned {b}" if i == 0 else None)
      values.append(curve)
    ax.plot(x, p["learned"], color=COLORS["learned"], lw=1.8,
            label="learned" if i == 0 else None)
    allv = np.concatenate([np.ravel(v) for v in values])
    allv = allv[np.isfinite(allv)]
    if len(allv) and allv.min() > 0 and allv.max() / allv.min() > 5:
      ax.set_yscale("log")
    ax.set_title(p["title"], fontsize=8)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("train loss", fontsize=8)
  for i in range(len(panels), rows * cols):
    axes[i // cols][i % cols].axis("off")
  fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout(rect=(0, 0.08, 1, 0.94))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_png(fig, path)
  plt.close(fig)
  return path


def speedup_strip(entries: Sequence[dict], path: str, title: str) -> str:
  """Strip plot of per-run speed-ups: one column per (family, baseline), median marked."""
  plt = _plt()
  entries = list(entries)
  fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(entries) + 1.5), 3.4))
  rng = np.random.default_rng(0)
  for i, e in enumerate(entries):
    y = np.ravel(e["speedup_per_run"])
    x = i + rng.uniform(-0.18, 0.18, size=len(y))
    ax.scatter(x, y, s=10, alpha=0.6, color=COLORS.get(e["baseline"], "k"))
    ax.hlines(e["speedup_median"], i - 0.3, i + 0.3, color="k", lw=2)
  ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
  cap = max([e.get("speedup_cap", 4.0) for e in entries] or [4.0])
  ax.axhline(cap, color="0.8", lw=0.8, ls=":")
  ax.set_xticks(range(len(entries)))
  ax.set_xticklabels([f"{e['family']}\n{e['baseline']}" for e in entries], fontsize=7,
                     rotation=30, ha="right")
  ax.set_ylabel("steps-to-reach speed-up", fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path


def samples_figure(samples: dict, path: str, title: str) -> str:
  """Samples of the model trained by the learned optimizer and by tuned Adam, side by side
  (2-D points as scatter plots; 64-d samples as 8x8 images), and held-out data."""
  plt = _plt()
  names = [("learned", "learned optimizer"), ("adam", "tuned Adam"), ("data", "held-out data")]
  dim = samples["learned"].shape[-1]
  fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.4))
  for ax, (k, name) in zip(axes, names):
    x = np.asarray(samples[k])
    if dim == 2:
      ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.6, color=COLORS.get(k, "k"))
      ax.set_aspect("equal", adjustable="datalim")
    else:
      side = int(round(np.sqrt(dim)))
      grid = x[:16].reshape(4, 4, side, side).transpose(0, 2, 1, 3).reshape(4 * side, 4 * side)
      ax.imshow(grid, cmap="gray")
      ax.axis("off")
    ax.set_title(name, fontsize=9)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  save_png(fig, path)
  plt.close(fig)
  return path


def meta_loss_figure(runs: dict, path: str, title: str, window: int = 10) -> str:
  """Meta-loss against outer steps (logged points, faint; trailing mean of ``window`` logged
  points, solid), one line per run, with the meta-gradient norm below.

  Args:
    runs: ``{label: records}``, records as ``metrics.jsonl`` holds them (``step``,
      ``meta_loss``, ``grad_norm``).
    path: the PNG to write.
    title: the figure's title.
    window: logged points averaged by the solid line.

  Returns:
    ``path``.
  """
  plt = _plt()
  fig, (ax, ax_g) = plt.subplots(2, 1, figsize=(7.0, 5.0), sharex=True,
                                 gridspec_kw={"height_ratios": (2, 1)})
  for i, (label, records) in enumerate(runs.items()):
    rows = [r for r in records if "meta_loss" in r and "step" in r]
    if not rows:
      continue
    color = f"C{i % 10}"
    steps = np.array([r["step"] for r in rows], np.float64)
    loss = np.array([r["meta_loss"] for r in rows], np.float64)
    ax.plot(steps, loss, color=color, alpha=0.25, lw=0.8)
    ax.plot(steps, measures.smooth(loss, window), color=color, lw=1.6, label=label)
    norms = np.array([r.get("grad_norm", np.nan) for r in rows], np.float64)
    ax_g.plot(steps, measures.smooth(norms, window), color=color, lw=1.2)
  ax.set_ylabel("meta-loss", fontsize=8)
  ax_g.set_ylabel("meta-gradient norm", fontsize=8)
  ax_g.set_yscale("log")
  ax_g.set_xlabel("outer step", fontsize=8)
  ax.legend(fontsize=7, frameon=False)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  save_png(fig, path)
  plt.close(fig)
  return path
