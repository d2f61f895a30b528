"""The one evaluation config (``meta-eval`` and ``meta-train``'s end-of-run evaluation).

This module imports no jax, so the run config (``meta_train.config``) can use
:class:`EvalConfig` as its ``eval`` field cheaply.
"""

from __future__ import annotations

import dataclasses
import math

SUITES = ("in_distribution", "out_of_distribution", "long_horizon")
BASELINES = ("adam", "adam_cosine")
# The 7-point grid every baseline is tuned over (per task); extended by half-decades at an edge.
DEFAULT_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
# Cosine Adam is run (and tuned) at these multiples of ``num_steps`` (steps-to-reach speed-up).
COSINE_LENGTH_FACTORS = (1.0, 1.5, 2.0, 3.0, 4.0)
# Constant Adam runs this many times ``num_steps``: speed-ups up to this value are measured.
MAX_SPEEDUP = 4.0


def _f(default, *, help: str):  # pylint: disable=redefined-builtin
  return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How held-out runs are drawn, how long they last and how baselines are tuned.

  Attributes:
    enabled: whether ``meta-train`` evaluates at the end of the run (its ``in_distribution``
      suite); ``meta-eval`` ignores it.
    num_tasks: held-out tasks drawn per family.
    num_seeds: seeds (initialisation and data order) per task.
    num_steps: inner steps of the learned optimizer's runs (``N``).
    learning_rates: the grid every baseline is tuned over, per task.
    max_learning_rate: the grid is extended by half-decades up to this rate when a task's best
      rate sits at the top edge.
    min_learning_rate: ... and down to this rate at the bottom edge.
    warmup_fraction: linear warm-up of ``adam_cosine``, as a fraction of its run.
    seed: root of the evaluation's PRNG stream (folded with a tag of its own, so task and seed
      draws are disjoint from meta-training's, whatever its seed).
    smoothing_window: trailing moving average applied to every curve before comparing
      (``None``: ``max(1, num_steps // 20)``).
    bootstrap_samples: resamples of the runs for the 95 % intervals.
  """

  enabled: bool = _f(False, help="evaluate (in-distribution suite) at the end of meta-train")
  num_tasks: int = _f(16, help="held-out tasks per family")
  num_seeds: int = _f(3, help="seeds per held-out task")
  num_steps: int = _f(200, help="inner steps per evaluation run")
  learning_rates: tuple[float, ...] = _f(DEFAULT_LEARNING_RATES,
                                         help="Adam grid tuned per task (extended at edges)")
  max_learning_rate: float = _f(1.0, help="grid extension stops at this rate (upwards)")
  min_learning_rate: float = _f(1e-6, help="grid extension stops at this rate (downwards)")
  warmup_fraction: float = _f(0.05, help="linear warm-up of adam_cosine (fraction of steps)")
  seed: int = _f(0, help="root seed of the held-out task and seed draws")
  smoothing_window: int | None = _f(None, help="moving-average window (None: num_steps // 20)")
  bootstrap_samples: int = _f(2000, help="bootstrap resamples for the 95% intervals")

  def __post_init__(self):
    for name in ("num_tasks", "num_seeds", "num_steps", "bootstrap_samples"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"EvalConfig.{name} must be a positive int, got {value!r}")
    lrs = self.learning_rates
    if (not isinstance(lrs, tuple) or not lrs
        or not all(isinstance(x, (int, float)) and x > 0 and math.isfinite(x) for x in lrs)):
      raise ValueError("EvalConfig.learning_rates must be a non-empty tuple of positive floats, "
                       f"got {lrs!r}")
    if not 0 < self.min_learning_rate <= min(lrs) or not max(lrs) <= self.max_learning_rate:
      raise ValueError("EvalConfig needs min_learning_rate <= min(learning_rates) and "
                       f"max(learning_rates) <= max_learning_rate, got {self.min_learning_rate!r}"
                       f", {lrs!r}, {self.max_learning_rate!r}")
    if not 0 <= self.warmup_fraction < 1:
      raise ValueError(f"EvalConfig.warmup_fraction must be in [0, 1), got "
                       f"{self.warmup_fraction!r}")
    if self.smoothing_window is not None and (
        isinstance(self.smoothing_window, bool) or not isinstance(self.smoothing_window, int)
        or self.smoothing_window <= 0):
      raise ValueError(f"EvalConfig.smoothing_window must be None or a positive int, got "
                       f"{self.smoothing_window!r}")

  @property
  def window(self) -> int:
    """The moving-average window actually used."""
    if self.smoothing_window is not None:
      return self.smoothing_window
    return max(1, self.num_steps // 20)
