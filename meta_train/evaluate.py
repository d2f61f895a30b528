"""The evaluation API: learned optimizers against the tuned Adam baselines users run.

This module gathers the public names of :mod:`meta_train.evaluation` (where each concept has
its module) and holds the two entry points drivers call:

* :func:`evaluate_and_report`: ``meta-train``'s end-of-run evaluation, the
  ``in_distribution`` suite of ``meta-eval`` on the run's own family;
* :func:`summarize`: the headline numbers of given curves against constant-rate Adam (every
  curve smoothed over *time*, then read at its last step, per (task, seed) run).

See ``docs/architecture.md`` ("Evaluation") and ``meta-eval --help``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from meta_train.evaluation import cache as cache_lib
from meta_train.evaluation import figures
from meta_train.evaluation import measures
from meta_train.evaluation import report
from meta_train.evaluation import suites
from meta_train.evaluation.baselines import (REGISTRY, Baseline, GridRuns, Problem, half_decade,
                                             run_grid, tuned_grid, warmup_cosine)
from meta_train.evaluation.cache import CurveCache, default_dir
from meta_train.evaluation.compare import calibration_entries, group_runs, learned_entries
from meta_train.evaluation.config import (BASELINES, COSINE_LENGTH_FACTORS,
                                          DEFAULT_LEARNING_RATES, DRAWS, MAX_SPEEDUP, SUITES,
                                          EvalConfig)
from meta_train.evaluation.curves import draw, final_metrics, learned_curves, training_curves
from meta_train.evaluation.measures import (bootstrap_ci, diverged, final_loss, first_reach,
                                            interquartile_mean, reach_step, seed_mean_envelope,
                                            smooth, speedup_by_length, speedup_envelope)
from meta_train.evaluation.runner import FamilyResult, evaluate_family, evaluate_suite
from meta_train.evaluation.suites import EvalError, Optimizer, load_optimizer, plan


def summarize(learned: np.ndarray, adam: np.ndarray, learning_rates: Sequence[float],
              max_speedup: float = MAX_SPEEDUP, smoothing_window: int = 1,
              steps: np.ndarray | None = None) -> dict[str, Any]:
  """Win fraction and VeLO speed-up of given curves against constant-rate Adam.

  Each curve is smoothed (trailing moving average over points) and read at its last point
  ``N``, per (task, seed) run; Adam is tuned per task (lowest mean final loss over seeds); the
  speed-up is read on the seed-mean envelope of Adam's grid (:func:`seed_mean_envelope`).

  Args:
    learned: ``[tasks, seeds, points]`` the learned optimizer's losses.
    adam: ``[lrs, tasks, seeds, >= points]`` Adam's (longer runs give speed-ups above 1).
    learning_rates: Adam's grid (``adam``'s first axis).
    max_speedup: cap when the envelope never reaches the learned optimizer's final loss.
    smoothing_window: moving-average window in points.
    steps: the step of each of Adam's points (default: point ``i`` is step ``i``).

  Returns:
    A JSON-serialisable dict.
  """
  learned = np.asarray(learned, np.float64)
  adam = np.asarray(adam, np.float64)
  p = learned.shape[-1] - 1
  steps = np.arange(adam.shape[-1]) if steps is None else np.asarray(steps)
  n = int(steps[p])
  window = int(smoothing_window)
  final_learned = final_loss(learned, window)
  finals = final_loss(adam, window, p)
  best = measures.tune(finals)
  tuned_final = measures.pick(finals, best)
  speedups, reached = speedup_envelope(final_learned, seed_mean_envelope(adam, window), steps,
                                       n, max_speedup)
  return {
      "num_steps": n,
      "smoothing_window": window,
      "adam_learning_rates": [float(x) for x in learning_rates],
      "adam_best_learning_rate_per_task": [float(learning_rates[i]) for i in best],
      "final_loss_learned": final_learned.tolist(),
      "final_loss_adam_tuned": tuned_final.tolist(),
      "win_fraction": float(np.mean(final_learned < tuned_final)),
      "speedup_per_run": speedups.tolist(),
      "speedup_reached": reached.tolist(),
      "speedup_median": float(np.median(speedups)),
      "speedup_iqm": interquartile_mean(speedups),
      "diverged_runs": int(diverged(learned).sum()),
  }


def evaluate_and_report(lopt, meta_params, family, out_dir: str,
                        config: EvalConfig = EvalConfig(), *,
                        label: str | None = None,
                        cache_dir: str | None = None,
                        horizon_aware: bool = False,
                        family_name: str | None = None) -> dict[str, Any]:
  """The ``in_distribution`` suite on ``family`` (a run's own family): writes the report.

  Writes ``out_dir/eval.json``, ``eval.md`` and ``eval_curves.png`` (the same report
  ``meta-eval`` writes) and returns flat headline numbers for logging
  (``"{baseline}/{measure}"``) plus ``"files"``.

  Args:
    lopt, meta_params: the learned optimizer.
    family: the task family it was meta-trained on.
    out_dir: report directory.
    config: an :class:`EvalConfig`.
    label: the optimizer's name in the report (default: ``out_dir``'s base name).
    cache_dir: baseline cache directory (default :func:`default_dir`).
    horizon_aware: evaluate with ``num_steps`` = the run length (``estimator.horizon_aware``).
    family_name: names the draws and the report's family (default: ``family.name``);
      ``meta-train`` passes its ``task.family``, so ``meta-eval``'s ``in_distribution`` suite
      of the same seed and stream draws the same tasks (an import path included).
  """
  name = family_name or getattr(family, "name", type(family).__name__)
  label = label or os.path.basename(os.path.abspath(out_dir))
  result = evaluate_family(lopt, meta_params, family, name, config, label=label,
                           suite="in_distribution", horizon_aware=horizon_aware,
                           cache=CurveCache(cache_dir or default_dir()))
  os.makedirs(out_dir, exist_ok=True)
  fig = figures.curves_figure([result], os.path.join(out_dir, "eval_curves.png"),
                              f"{label}: in_distribution")
  meta = {"command": None, "config": _asdict(config), "seconds": round(result.seconds, 1)}
  paths = report.write(out_dir, result.entries, meta, [fig])
  summary: dict[str, Any] = {}
  for e in result.entries:
    if e.get("role") != "learned":
      continue
    for k in ("win_fraction", "win_fraction_test", "speedup_median", "speedup_iqm",
              "final_loss_ratio_median", "diverged_runs"):
      summary[f"{e['baseline']}/{k}"] = e[k]
  summary["files"] = {"json": paths["json"], "md": paths["md"], "png": fig}
  return summary


def _asdict(config) -> dict[str, Any]:
  import dataclasses  # pylint: disable=import-outside-toplevel
  return dataclasses.asdict(config)


__all__ = [
    "BASELINES", "COSINE_LENGTH_FACTORS", "DEFAULT_LEARNING_RATES", "DRAWS", "MAX_SPEEDUP",
    "REGISTRY", "SUITES", "Baseline", "CurveCache", "EvalConfig", "EvalError", "FamilyResult",
    "GridRuns", "Optimizer", "Problem", "bootstrap_ci", "cache_lib", "calibration_entries",
    "default_dir", "diverged", "draw", "evaluate_and_report", "evaluate_family",
    "evaluate_suite", "figures", "final_loss", "final_metrics", "first_reach", "group_runs",
    "half_decade", "interquartile_mean", "learned_curves", "learned_entries", "load_optimizer",
    "measures", "plan", "reach_step", "report", "run_grid", "seed_mean_envelope", "smooth",
    "speedup_by_length", "speedup_envelope", "suites", "summarize", "training_curves",
    "tuned_grid", "warmup_cosine",
]
