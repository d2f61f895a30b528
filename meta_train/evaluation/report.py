"""``eval.json`` and ``eval.md``: the results of an evaluation, and the headline table."""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

from meta_train.evaluation import baselines as baselines_lib


def slug(label: str) -> str:
  """A file-name-safe form of an optimizer label."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_") or "optimizer"


def format_speedup(value: float | None, cap: float, censored: bool = False) -> str:
  """``"1.23x"``, or ``"≥ 4x"`` when the value is censored at the cap (some run was never
  reached within the baseline's runs); a run reached exactly at the cap prints ``"4.00x"``."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "–"
  if censored and value >= cap:
    return f"≥ {cap:g}x"
  return f"{value:.2f}x"


def format_ci(ci: Sequence[float], fmt) -> str:
  return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def _pct(x):
  return "–" if x is None else f"{100 * x:.0f}%"


def wins_cell(r: dict[str, Any], tag: str) -> str:
  """``"67% [48%, 85%]"`` of ``win_fraction{tag}`` and its interval, or ``"–"``."""
  if r.get(f"win_fraction{tag}") is None:
    return "–"
  return f"{_pct(r[f'win_fraction{tag}'])} {format_ci(r[f'win_fraction{tag}_ci'], _pct)}"


def speedup_cell(r: dict[str, Any], name: str, cap_key: str, missing: str = "") -> str:
  """``"1.37x [1.22x, 1.51x]"`` of ``{name}_median`` and its interval (``"≥ 4x"`` where runs
  were never reached), or ``missing``."""
  if r.get(f"{name}_median") is None:
    return missing
  cap = r.get(cap_key, 4.0)
  censored = r.get(f"{name}_unreached_runs", 0) > 0
  sp = lambda x: format_speedup(x, cap, censored)
  return f"{sp(r[f'{name}_median'])} {format_ci(r[f'{name}_median_ci'], sp)}"


def _num(r: dict[str, Any], key: str) -> str:
  v = r.get(key)
  return "–" if v is None else f"{v:.3g}"


def headline_rows(results: Sequence[dict[str, Any]]) -> list[list[str]]:
  """One row per result (see :data:`HEADER`)."""
  rows = []
  for r in results:
    calibration = r.get("role") == "calibration"
    ed = ""
    if "energy_distance_learned_median" in r:
      g = lambda x: "–" if x is None else f"{x:.3g}"
      ed = g(r["energy_distance_learned_median"])
      if "energy_distance_baseline_median" in r:
        ed += f" / {g(r['energy_distance_baseline_median'])}"
    wall = r.get("wallclock_speedup_median")
    rows.append([
        f"`{r['optimizer']}`" if not calibration else f"↳ {r['optimizer']}",
        r["suite"], r["family"], r["baseline"], str(r["num_steps"]),
        f"{r['num_tasks']}x{r['num_seeds']}",
        wins_cell(r, ""), wins_cell(r, "_test"),
        speedup_cell(r, "speedup", "speedup_cap"),
        format_speedup(r["speedup_iqm"], r.get("speedup_cap", 4.0),
                       r.get("speedup_unreached_runs", 0) > 0),
        speedup_cell(r, "steps_to_reach", "steps_to_reach_cap"),
        _num(r, "final_loss_ratio_median"), _num(r, "final_loss_ratio_test_median"),
        "" if wall is None else f"{wall:.2f}x",
        f"{r['diverged_runs']}/{r['num_runs']}", ed,
    ])
  return rows


HEADER = ["optimizer", "suite", "family", "vs", "steps", "tasks x seeds",
          "train-loss wins [95% CI]", "test-loss wins [95% CI]",
          "speed-up median [95% CI]", "speed-up IQM", "steps-to-reach vs cosine [95% CI]",
          "train-loss ratio", "test-loss ratio", "wall-clock speed-up", "diverged",
          "energy distance (optimizer / baseline)"]
TEXT_COLUMNS = (0, 2, 3, 6, 7, 8, 10, 11, 14)


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
  rows = [[HEADER[i] for i in TEXT_COLUMNS]] + [[row[i].strip("`") for i in TEXT_COLUMNS]
                                               for row in headline_rows(results)]
  widths = [max(len(r[j]) for r in rows) for j in range(len(TEXT_COLUMNS))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def measures_note(results: Sequence[dict[str, Any]]) -> str:
  """How every number of the table is defined (with the settings of these results)."""
  names = sorted({r["baseline"] for r in results} | {
      r["optimizer"][len("tuned "):] for r in results if r.get("role") == "calibration"})
  titles = "; ".join(f"`{n}`: {baselines_lib.REGISTRY[n].title}" for n in names
                     if n in baselines_lib.REGISTRY)
  draws = sorted({r.get("draws", "dev") for r in results})
  return f"""\
Measures, per (task, seed) run on held-out draws (stream: {", ".join(draws)}). Losses are
measured on fixed evaluation sets: **train loss** (the headline: at least 1,024 clean examples of
the train split, or all of it) and **test loss** (the `test` split, which meta-training never
reads), at evenly spaced steps. Baselines ({titles}) are tuned per task and per measured loss
over 1e-4 ... 1e-1 (SGD: x10), extended by half-decades while a task's best train-loss rate
sits at an edge (the test loss is tuned on that grid). *Wins*: the row's final
loss below the tuned baseline's at the same step count. *Speed-up*: VeLO's steps-to-reach
(Metz et al. 2022, arXiv 2211.09760, Fig. 1; learned_optimization `baselines/normalizers.py`):
per task, each rate of constant Adam's grid (run 4x as long) is averaged over the task's seeds,
then the minimum over rates and the running minimum over steps give the envelope; a run's
speed-up is the (linearly interpolated) step at which the envelope reaches its final loss,
divided by its steps; "≥ 4x": some run never reached. *Calibration rows* (↳) score each tuned
baseline by the same measures, so tuned constant Adam's own speed-up says where 1x sits.
*Steps-to-reach vs cosine*: the length (x{{1, 1.5, 2, 3, 4}}, tuned per length) at which tuned
warm-up + cosine Adam reaches the loss, log-linear between the two lengths that bracket it.
Brackets: 95 % task-level bootstrap intervals (tasks resampled, then seeds within them).
Ratios: the row's final loss / the tuned baseline's (medians). *Wall-clock speed-up*: the
speed-up times Adam's time per step over the row's (one jitted training step, model included).
Diverged: non-finite or above 10x the initial loss. Energy distance: samples after exactly the
same number of steps for every optimizer.
"""


# Significant digits of the numbers in eval.json (the losses are float32: ~7 digits at most).
JSON_DIGITS = 6


def _rounded(value: Any) -> Any:
  """``value`` with every float rounded to :data:`JSON_DIGITS` significant digits."""
  if isinstance(value, float):
    return float(f"{value:.{JSON_DIGITS}g}") if math.isfinite(value) else value
  if isinstance(value, dict):
    return {k: _rounded(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_rounded(v) for v in value]
  return value


def json_text(document: Any) -> str:
  """``document`` as indented JSON whose floats have :data:`JSON_DIGITS` significant digits
  and whose lists of plain values (numbers, strings, nulls) sit on one line, so a report's
  per-run arrays stay readable and small."""

  def dump(value: Any, depth: int) -> str:
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
      items = [f"{inner}{json.dumps(k)}: {dump(v, depth + 1)}" for k, v in value.items()]
      return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
      return "[\n" + ",\n".join(inner + dump(v, depth + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)

  return dump(_rounded(document), 0) + "\n"


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
    f.write(json_text({"meta": meta, "results": list(results)}))
  os.replace(tmp, paths["json"])
  lines = ["# meta-eval report", ""]
  if meta.get("command"):
    lines += [f"Command: `{meta['command']}`", ""]
  lines += [markdown_table(results), measures_note(results)]
  if any(r.get("suite") == "long_horizon" for r in results):
    lines += ["Long horizon: the bar is no diverged run; the speed-up column is capped at 1 "
              "(constant Adam runs as long as the learned optimizer).", ""]
  if figures:
    lines += ["## Figures", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                   for p in figures] + [""]
  tmp = paths["md"] + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write("\n".join(lines))
  os.replace(tmp, paths["md"])
  return paths


def read_results(path: str) -> list[dict[str, Any]]:
  """The ``results`` list of an ``eval.json`` file."""
  with open(path, encoding="utf-8") as f:
    return json.load(f)["results"]
