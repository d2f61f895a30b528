"""The baselines users run, each tuned per task: constant-rate Adam and warm-up + cosine Adam.

Tuning: every task gets the learning rate of the grid with the lowest mean final loss over its
seeds. When a task's best rate sits at an edge of the grid, the grid is extended by a
half-decade in that direction and run again, until no best rate sits at an edge (or the grid
reaches ``max_learning_rate`` / ``min_learning_rate``): a tuned baseline must be tuned.

All learning rates of one (schedule, length) missing from the cache run as one jitted program
(``vmap`` over rates, tasks and seeds).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from meta_train.evaluation import cache as cache_lib
from meta_train.evaluation import curves as curves_lib
from meta_train.evaluation import measures


@dataclasses.dataclass
class GridRuns:
  """Runs of one schedule and length over a learning-rate grid.

  Attributes:
    learning_rates: ``[L]`` ascending.
    curves: ``[L, tasks, seeds, steps + 1]``.
    metric: ``[L, tasks, seeds]`` final sample metric, or None.
  """

  learning_rates: np.ndarray
  curves: np.ndarray
  metric: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class Problem:
  """What baseline runs are keyed by: a family and its held-out draws.

  Attributes:
    family: the task family object.
    family_id: its registered name plus configuration (a string; part of the cache key).
    task_params: ``[tasks]`` task parameters.
    keys: ``[tasks, seeds]`` run keys.
    final_metric: optional ``(task, params, key) -> scalar`` (diffusion: energy distance).
  """

  family: Any
  family_id: str
  task_params: Any
  keys: Any
  final_metric: Callable | None = None

  @property
  def draws(self) -> str:
    return cache_lib.fingerprint(self.task_params, self.keys)


def half_decade(lr: float, direction: int) -> float:
  """The next point of the half-decade lattice (1e-1, 3.16e-1, 1, ...) above (``direction=1``)
  or below (``-1``) ``lr``; grid values such as 3e-4 count as their lattice point 10^-3.5."""
  return float(f"{10 ** (round(2 * math.log10(lr)) / 2 + 0.5 * direction):.6g}")


def run_grid(problem: Problem, schedule: str, num_steps: int, learning_rates, cache,
             warmup_fraction: float) -> GridRuns:
  """Curves of ``schedule`` Adam (``"constant"`` or ``"cosine"``) at each learning rate.

  Cached rates are read; the missing ones run in one program and are stored.
  """
  lrs = sorted(float(x) for x in learning_rates)
  schedule_id = schedule if schedule == "constant" else f"cosine(warmup={warmup_fraction:g})"
  keys = {lr: cache_lib.entry_key(family=problem.family_id, draws=problem.draws,
                                  num_steps=num_steps, schedule=schedule_id, learning_rate=lr,
                                  with_metric=problem.final_metric is not None)
          for lr in lrs}
  found = {lr: cache.get(keys[lr]) for lr in lrs}
  missing = [lr for lr in lrs if found[lr] is None]
  if missing:
    make = (curves_lib.constant_adam if schedule == "constant"
            else curves_lib.cosine_adam(num_steps, warmup_fraction))
    curves, metric = curves_lib.training_curves(problem.family, make, np.array(missing),
                                                problem.task_params, problem.keys, num_steps,
                                                problem.final_metric)
    for i, lr in enumerate(missing):
      arrays = {"curves": curves[i]}
      if metric is not None:
        arrays["metric"] = metric[i]
      cache.put(keys[lr], arrays)
      found[lr] = arrays
  metric = None
  if problem.final_metric is not None:
    metric = np.stack([found[lr]["metric"] for lr in lrs])
  return GridRuns(np.array(lrs), np.stack([found[lr]["curves"] for lr in lrs]), metric)


def tuned_grid(problem: Problem, schedule: str, num_steps: int, tune_step: int, config,
               cache) -> tuple[GridRuns, np.ndarray]:
  """Runs the grid, extended at its edges until every task's best rate is interior.

  Args:
    problem: family and draws.
    schedule: ``"constant"`` or ``"cosine"``.
    num_steps: run length.
    tune_step: the step whose (smoothed) loss is tuned for (``num_steps`` for cosine; ``N``
      inside constant Adam's longer runs).
    config: the :class:`~meta_train.evaluation.config.EvalConfig`.
    cache: a :class:`~meta_train.evaluation.cache.CurveCache`.

  Returns:
    ``(runs, best)``: the grid's runs and the best rate's index per task.
  """
  lrs = sorted(float(x) for x in config.learning_rates)
  while True:
    runs = run_grid(problem, schedule, num_steps, lrs, cache, config.warmup_fraction)
    finals = measures.final_loss(runs.curves, config.window, tune_step)
    best = measures.tune(finals)
    extra = []
    if np.any(best == len(lrs) - 1) and lrs[-1] < config.max_learning_rate:
      extra.append(min(half_decade(lrs[-1], 1), config.max_learning_rate))
    if np.any(best == 0) and lrs[0] > config.min_learning_rate:
      extra.append(max(half_decade(lrs[0], -1), config.min_learning_rate))
    if not extra:
      return runs, best
    lrs = sorted(lrs + extra)
