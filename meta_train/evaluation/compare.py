"""One learned optimizer against the tuned baselines on one family's held-out runs.

For every (task, seed) run: the learned optimizer's final loss ``L`` at ``N = num_steps``, and

* ``adam``: constant-rate Adam, each rate run for ``4 N`` steps; tuned at step ``N`` (win if
  ``L`` is below the tuned final loss); the steps-to-reach speed-up is read on the lower envelope
  of the (extended) grid over the ``4 N`` steps, capped at 4 (VeLO, arXiv 2211.09760, Fig. 1);
* ``adam_cosine``: warm-up + cosine Adam tuned at each length ``N x {1, 1.5, 2, 3, 4}``; win if
  ``L`` is below the tuned 1x final loss; speed-up: the first step of the tuned 1x curve that
  reaches ``L`` over ``N`` (< 1), else the shortest length whose tuned final loss reaches it
  (lengths are run only while some run still needs them), else 4.

Aggregates over runs: win fraction, median and IQM of the speed-ups, 95 % bootstrap intervals
of the win fraction and of the median speed-up, the median final-loss ratio (learned / tuned
baseline) and diverged runs (non-finite, or above 10x the initial loss).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from meta_train.evaluation import baselines as baselines_lib
from meta_train.evaluation import config as config_lib
from meta_train.evaluation import measures


@dataclasses.dataclass
class Comparison:
  """Per-run numbers and curves of one (learned optimizer, group of runs, baseline).

  Attributes:
    baseline: ``"adam"`` or ``"adam_cosine"``.
    learned_final: ``[tasks, seeds]``.
    baseline_final: ``[tasks, seeds]`` tuned baseline's final loss at ``N``.
    speedup: ``[tasks, seeds]``.
    best_lr: ``[tasks]`` tuned learning rate.
    learning_rates: ``[L]`` the grid as extended.
    grid_mean: ``[L, steps + 1]`` mean curve (over runs) at each rate, for figures.
    tuned_mean: ``[steps + 1]`` mean curve of the tuned baseline.
    tuned_curves: ``[tasks, seeds, steps + 1]`` tuned baseline curves (up to ``N``).
    baseline_diverged: ``[tasks, seeds]`` of the tuned baseline.
    baseline_metric: ``[tasks, seeds]`` tuned baseline's final sample metric, or None.
    lengths_run: length factors actually run (cosine).
  """

  baseline: str
  learned_final: np.ndarray
  baseline_final: np.ndarray
  speedup: np.ndarray
  best_lr: np.ndarray
  learning_rates: np.ndarray
  grid_mean: np.ndarray
  tuned_curves: np.ndarray
  baseline_diverged: np.ndarray
  baseline_metric: np.ndarray | None
  lengths_run: tuple[float, ...] = (1.0,)


def _mean_curves(curves: np.ndarray) -> np.ndarray:
  with np.errstate(invalid="ignore"):
    return np.nanmean(np.where(np.isfinite(curves), curves, np.nan), axis=(-3, -2))


def against_adam(learned: np.ndarray, problem, config, cache, num_steps: int,
                 envelope_factor: float = config_lib.MAX_SPEEDUP) -> Comparison:
  """``learned``: ``[tasks, seeds, N + 1]`` curves; constant Adam run ``envelope_factor N``."""
  n = num_steps
  length = int(round(envelope_factor * n))
  runs, best = baselines_lib.tuned_grid(problem, "constant", length, n, config, cache)
  learned_final = measures.final_loss(learned, config.window)
  finals = measures.final_loss(runs.curves, config.window, n)
  tuned_final = measures.pick(finals, best)
  envelope = measures.lower_envelope(runs.curves, config.window)
  speedup = measures.speedup_constant(learned_final, envelope, n, envelope_factor)
  tuned = measures.pick(runs.curves, best)
  return Comparison(
      baseline="adam", learned_final=learned_final, baseline_final=tuned_final,
      speedup=speedup, best_lr=runs.learning_rates[best], learning_rates=runs.learning_rates,
      grid_mean=_mean_curves(runs.curves[..., :n + 1]), tuned_curves=tuned[..., :n + 1],
      baseline_diverged=measures.diverged(tuned[..., :n + 1]),
      baseline_metric=None if runs.metric is None else measures.pick(runs.metric, best))


def against_cosine(learned: np.ndarray, problem, config, cache, num_steps: int,
                   factors: Sequence[float] = config_lib.COSINE_LENGTH_FACTORS) -> Comparison:
  """``learned``: ``[tasks, seeds, N + 1]``; cosine Adam tuned at each length factor."""
  n = num_steps
  cap = max(factors)
  learned_final = measures.final_loss(learned, config.window)
  runs, best = baselines_lib.tuned_grid(problem, "cosine", n, n, config, cache)
  tuned = measures.pick(runs.curves, best)
  tuned_final = measures.final_loss(tuned, config.window)
  first_curve = measures.smooth(measures.clean(tuned), config.window)
  length_finals = {1.0: tuned_final}
  ran = [1.0]
  # Longer runs only while some run of the learned optimizer is not yet reached.
  unreached = ~(first_curve <= learned_final[..., None]).any(axis=-1)
  for f in sorted(factors):
    if f <= 1.0 or not unreached.any():
      continue
    length = int(round(f * n))
    runs_f, best_f = baselines_lib.tuned_grid(problem, "cosine", length, length, config, cache)
    length_finals[f] = measures.final_loss(measures.pick(runs_f.curves, best_f), config.window)
    unreached &= ~(length_finals[f] <= learned_final)
    ran.append(f)
  for f in factors:  # lengths not needed by any run: no run can be reached there first
    length_finals.setdefault(f, np.full(learned_final.shape, np.inf))
  speedup = measures.speedup_by_length(learned_final, first_curve, length_finals, n, cap)
  return Comparison(
      baseline="adam_cosine", learned_final=learned_final, baseline_final=tuned_final,
      speedup=speedup, best_lr=runs.learning_rates[best], learning_rates=runs.learning_rates,
      grid_mean=_mean_curves(runs.curves), tuned_curves=tuned,
      baseline_diverged=measures.diverged(tuned),
      baseline_metric=None if runs.metric is None else measures.pick(runs.metric, best),
      lengths_run=tuple(ran))


def concat(parts: Sequence[Comparison]) -> Comparison:
  """Joins the comparisons of several groups of runs (a mixture's members) along tasks."""
  if len(parts) == 1:
    return parts[0]
  cat = lambda name: np.concatenate([getattr(p, name) for p in parts], axis=0)
  metric = None
  if all(p.baseline_metric is not None for p in parts):
    metric = cat("baseline_metric")
  return Comparison(
      baseline=parts[0].baseline, learned_final=cat("learned_final"),
      baseline_final=cat("baseline_final"), speedup=cat("speedup"), best_lr=cat("best_lr"),
      learning_rates=np.unique(np.concatenate([p.learning_rates for p in parts])),
      grid_mean=parts[0].grid_mean, tuned_curves=cat("tuned_curves"),
      baseline_diverged=cat("baseline_diverged"), baseline_metric=metric,
      lengths_run=tuple(sorted(set().union(*[p.lengths_run for p in parts]))))


def aggregate(c: Comparison, learned_curves: np.ndarray, config,
              learned_metric: np.ndarray | None = None,
              cap: float = config_lib.MAX_SPEEDUP) -> dict[str, Any]:
  """The report's numbers for one comparison (JSON-serialisable)."""
  wins = (c.learned_final < c.baseline_final).astype(np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = c.learned_final / c.baseline_final
  ratio = np.where(np.isnan(ratio), np.inf, ratio)
  seed = config.seed
  out = {
      "baseline": c.baseline,
      "num_runs": int(wins.size),
      "win_fraction": float(wins.mean()),
      "win_fraction_ci": list(measures.bootstrap_ci(wins, np.mean, config.bootstrap_samples,
                                                    seed)),
      "speedup_median": float(np.median(c.speedup)),
      "speedup_median_ci": list(measures.bootstrap_ci(c.speedup, np.median,
                                                      config.bootstrap_samples, seed)),
      "speedup_iqm": measures.interquartile_mean(c.speedup),
      "speedup_cap": float(cap),
      "speedup_capped_runs": int(np.sum(c.speedup >= cap)),
      "final_loss_ratio_median": float(np.median(ratio)),
      "final_loss_learned_median": float(np.median(c.learned_final)),
      "final_loss_baseline_median": float(np.median(c.baseline_final)),
      "diverged_runs": int(measures.diverged(learned_curves).sum()),
      "diverged_runs_baseline": int(c.baseline_diverged.sum()),
      "learning_rates": [float(x) for x in c.learning_rates],
      "best_learning_rate_per_task": [float(x) for x in c.best_lr],
      "cosine_lengths_run": list(c.lengths_run) if c.baseline == "adam_cosine" else None,
      "speedup_per_run": c.speedup.tolist(),
      "final_loss_learned": c.learned_final.tolist(),
      "final_loss_baseline": c.baseline_final.tolist(),
  }
  if learned_metric is not None and c.baseline_metric is not None:
    out["energy_distance_learned_median"] = float(np.median(learned_metric))
    out["energy_distance_baseline_median"] = float(np.median(c.baseline_metric))
  return out
