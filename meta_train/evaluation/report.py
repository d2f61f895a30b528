"""``eval.json`` and ``eval.md``: the results of an evaluation, and the headline table."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

BASELINE_TITLES = {"adam": "tuned Adam", "adam_cosine": "tuned warm-up + cosine Adam"}


def format_speedup(value: float, cap: float) -> str:
  """``"1.23x"``, or ``"≥ 4x"`` at the cap (the baseline never got there within its runs)."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  if value >= cap:
    return f"≥ {cap:g}x"
  return f"{value:.2f}x"


def format_ci(ci: Sequence[float], fmt) -> str:
  return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def headline_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
  """One row per result: optimizer, suite, family, baseline, steps, runs, wins, speed-ups, ..."""
  rows = []
  for r in results:
    cap = r.get("speedup_cap", 4.0)
    pct = lambda x: f"{100 * x:.0f}%"
    sp = lambda x, cap=cap: format_speedup(x, cap)
    diverged = f"{r['diverged_runs']}/{r['num_runs']}"
    ed = ""
    if "energy_distance_learned_median" in r:
      ed = (f"{r['energy_distance_learned_median']:.3g} / "
            f"{r['energy_distance_baseline_median']:.3g}")
    rows.append([
        f"`{r['optimizer']}`", r["suite"], r["family"], r["baseline"], str(r["num_steps"]),
        f"{r['num_tasks']}x{r['num_seeds']}",
        f"{pct(r['win_fraction'])} {format_ci(r['win_fraction_ci'], pct)}",
        f"{sp(r['speedup_median'])} {format_ci(r['speedup_median_ci'], sp)}",
        sp(r["speedup_iqm"]),
        f"{r['final_loss_ratio_median']:.3g}",
        diverged, ed,
    ])
  return rows


HEADER = ["optimizer", "suite", "family", "baseline", "steps", "tasks x seeds",
          "wins [95% CI]", "speed-up median [95% CI]", "speed-up IQM",
          "final-loss ratio (median)", "diverged", "energy distance (learned / baseline)"]


def markdown_table(results: Sequence[dict[str, Any]], header: Sequence[str] = HEADER) -> str:
  """The headline table in Markdown (columns with no value anywhere are dropped)."""
  rows = headline_rows(results)
  keep = [i for i in range(len(header)) if any(row[i] for row in rows)] or list(range(len(header)))
  lines = ["| " + " | ".join(header[i] for i in keep) + " |",
           "|" + "|".join("---" for _ in keep) + "|"]
  lines += ["| " + " | ".join(row[i] for i in keep) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def text_table(results: Sequence[dict[str, Any]]) -> str:
  """The headline table as aligned plain text (what ``meta-eval`` prints)."""
  cols = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
  rows = [[HEADER[i] for i in cols]] + [[row[i].strip("`") for i in cols]
                                        for row in headline_rows(results)]
  widths = [max(len(r[j]) for r in rows) for j in range(len(cols))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


MEASURES_NOTE = """\
Measures, per (task, seed) run on held-out draws, after a trailing moving average of the
curves (window: `num_steps // 20`): *wins* — the learned optimizer's final loss below the tuned
baseline's at the same step count; *speed-up* against `adam` — steps the lower envelope of the
constant-rate grid (run 4x as long) needs to reach the learned optimizer's final loss, divided
by its steps (VeLO, arXiv 2211.09760, Fig. 1); against `adam_cosine` — the shortest length
(x{1, 1.5, 2, 3, 4}) whose tuned run reaches it (inside the 1x run, the first step that does);
"≥ 4x": never reached. Baselines are tuned per task over 1e-4 ... 1e-1, extended by
half-decades at an edge. Brackets: 95 % bootstrap intervals over runs. Final-loss ratio:
learned / tuned baseline. Diverged: non-finite or above 10x the initial loss.
"""


def write(out_dir: str, results: Sequence[dict[str, Any]], meta: dict[str, Any],
          figures: Sequence[str] = ()) -> dict[str, str]:
  """Writes ``eval.json`` (``{"meta": ..., "results": [...]}``) and ``eval.md``.

  Returns:
    ``{"json": path, "md": path}``.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, "eval.json"), "md": os.path.join(out_dir, "eval.md")}
  tmp = paths["json"] + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"meta": meta, "results": list(results)}, f, indent=1)
    f.write("\n")
  os.replace(tmp, paths["json"])
  lines = ["# meta-eval report", ""]
  if meta.get("command"):
    lines += [f"Command: `{meta['command']}`", ""]
  lines += [markdown_table(results), MEASURES_NOTE]
  for r in results:
    if r.get("suite") == "long_horizon":
      lines += ["Long horizon: the bar is no diverged run; the speed-up column is capped at 1 "
                "(constant Adam runs as long as the learned optimizer).", ""]
      break
  if figures:
    lines += ["## Figures", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                   for p in figures] + [""]
  with open(paths["md"], "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  return paths


def read_results(path: str) -> list[dict[str, Any]]:
  """The ``results`` list of an ``eval.json`` file."""
  with open(path, encoding="utf-8") as f:
    return json.load(f)["results"]
