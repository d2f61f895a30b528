"""The family's tuned Adam: a short learning-rate sweep a learned optimizer can start from.

Before meta-training on one family, constant Adam is run over a rate grid on a few draws of
the family (tasks x seeds), exactly as ``meta-eval`` runs and tunes its ``adam`` baseline
(:func:`meta_train.evaluation.baselines.tuned_grid`: the registry's ``adam`` entry, the grid
extended by half-decades while a draw's best rate sits at an edge). The family's rate is the
one with the lowest final train loss averaged over every draw:

.. math::
  \\eta^\\star = \\arg\\min_{\\eta \\in G} \\frac{1}{TS} \\sum_{t, s} L_{t,s}(\\eta)

with :math:`L_{t,s}(\\eta)` the loss on task ``t``'s fixed train evaluation set after
``num_steps`` steps from seed ``s`` (a diverged run counts as ``+inf``). The whole table of
(rate, loss) comes back with it, for the provenance of whatever starts from it.

``optimizer.start.scheme=tuned_adam_like`` starts meta-training from it
(:func:`meta_train.runtime.run.resolve_start`): :func:`learned_opt.inits.adam_like` at
:attr:`TunedStart.learning_rate`, so that meta-training only has to improve on tuned Adam
instead of finding the family's rate; the sweep goes into the run directory's ``start.json``
and the optimizer file's provenance. Learned optimizers are measured against tuned Adam (VeLO,
arXiv 2211.09760; Celo, arXiv 2501.12670); this is that baseline as a starting point.

Example::

  start = tuned_adam(tasks.get("digits_mlp"), jax.random.key(0), num_steps=200)
  start.learning_rate      # e.g. 0.01
  start.provenance()       # {"optimizer": "adam", "learning_rate": ..., "table": [...], ...}
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np

from meta_train.evaluation import baselines as baselines_lib
from meta_train.evaluation import cache as cache_lib
from meta_train.evaluation import config as config_lib
from meta_train.evaluation import curves as curves_lib
from meta_train.evaluation import measures


@dataclasses.dataclass(frozen=True)
class TunedStart:
  """The result of :func:`tuned_adam`.

  Attributes:
    learning_rate: the rate of the grid with the lowest mean final train loss.
    table: ``((rate, mean final train loss), ...)`` for every rate run, ascending rates
      (``inf`` for a rate whose runs diverged).
    num_tasks, num_seeds, num_steps: the sweep's draws and run length.
  """

  learning_rate: float
  table: tuple[tuple[float, float], ...]
  num_tasks: int
  num_seeds: int
  num_steps: int

  def provenance(self) -> dict[str, Any]:
    """A JSON-able record of the sweep (non-finite losses as ``None``)."""
    return {"optimizer": "adam", "learning_rate": self.learning_rate,
            "table": [[r, loss if np.isfinite(loss) else None] for r, loss in self.table],
            "num_tasks": self.num_tasks, "num_seeds": self.num_seeds,
            "num_steps": self.num_steps, "measure": "mean final train loss over draws"}


def tuned_adam(family, key: jax.Array, *, num_tasks: int = 4, num_seeds: int = 2,
               num_steps: int = 200,
               learning_rates: Sequence[float] = config_lib.DEFAULT_LEARNING_RATES,
               min_learning_rate: float = 1e-6,
               max_learning_rate: float = 1.0) -> TunedStart:
  """Sweeps constant Adam's rate on draws of ``family``; returns the best and the table.

  Args:
    family: a ``tasks.TaskFamily``.
    key: the draws' key (tasks and seeds: :func:`meta_train.evaluation.curves.draw`); give
      one of meta-training's own keys, not an evaluation stream's.
    num_tasks, num_seeds: draws of the family, and seeds (init and batches) per draw.
    num_steps: steps per run; the loss is read after the last.
    learning_rates: the starting grid.
    min_learning_rate, max_learning_rate: the grid's extension stops at these.

  Returns:
    A :class:`TunedStart`.

  Raises:
    ValueError: a size that is not a positive int or a grid outside its bounds (naming it).
  """
  config = config_lib.EvalConfig(
      num_tasks=num_tasks, num_seeds=num_seeds, num_steps=num_steps,
      learning_rates=tuple(float(x) for x in learning_rates),
      min_learning_rate=min_learning_rate, max_learning_rate=max_learning_rate,
      eval_points=1)  # only the initial and the final loss are recorded
  task_params, keys = curves_lib.draw(family, key, num_tasks, num_seeds)
  problem = baselines_lib.Problem(family, f"tuned_start:{getattr(family, 'name', '')}",
                                  task_params, keys)
  runs, _ = baselines_lib.tuned_grid(problem, baselines_lib.get("adam"), num_steps, num_steps,
                                     config, cache_lib.CurveCache(None))
  finals = measures.final_loss(runs.curves["train"], config.window)  # [rates, tasks, seeds]
  draws = finals.reshape(finals.shape[0], 1, -1)  # every draw a seed of one task
  best = int(measures.tune(draws)[0])
  means = measures.clean(draws).mean(axis=(1, 2))
  rates = [float(r) for r in runs.learning_rates]
  return TunedStart(learning_rate=rates[best],
                    table=tuple((r, float(m)) for r, m in zip(rates, means)),
                    num_tasks=num_tasks, num_seeds=num_seeds, num_steps=num_steps)
