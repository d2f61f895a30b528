"""The one evaluation config (``meta-eval`` and ``meta-train``'s end-of-run evaluation).

This module imports no jax, so the run config (``meta_train.config``) can use
:class:`EvalConfig` as its ``eval`` field cheaply.
"""

from __future__ import annotations

import dataclasses
import math

SUITES = ("in_distribution", "out_of_distribution", "long_horizon")
# The baselines of a report unless ``--baselines`` names others (see evaluation/baselines.py).
BASELINES = ("adam", "adam_cosine", "adamw_cosine", "sgd_cosine", "muon_cosine")
# Two disjoint streams of held-out draws: ``dev`` for recipe work, ``report`` for the committed
# reports and the README only.
DRAWS = ("dev", "report")
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
    draws: which held-out stream: ``"dev"`` (recipe work tunes on it) or ``"report"`` (committed
      reports and the README only).
    eval_points: losses are recorded at about this many evenly spaced steps of ``num_steps``
      (every :attr:`every` steps, a divisor of ``num_steps``), on fixed evaluation sets.
    smoothing_window: trailing moving average over recorded points before comparing (1: none;
      the fixed evaluation sets carry no minibatch noise). ``None``, which configs written
      before the fixed evaluation sets hold (it meant ``num_steps // 20`` steps of per-step
      minibatch losses), reads as 1.
    bootstrap_samples: resamples of the tasks for the 95 % intervals.
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
  draws: str = _f("dev", help="held-out stream: dev (recipe work) or report (committed reports)")
  eval_points: int = _f(25, help="recorded points per run of num_steps steps")
  smoothing_window: int | None = _f(1, help="moving-average window over recorded points "
                                             "(1: none)")
  bootstrap_samples: int = _f(2000, help="bootstrap resamples (of tasks) for the 95% intervals")

  def __post_init__(self):
    for name in ("num_tasks", "num_seeds", "num_steps", "bootstrap_samples", "eval_points",
                 "smoothing_window"):
      value = getattr(self, name)
      if name == "smoothing_window" and value is None:
        continue
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
    if self.draws not in DRAWS:
      raise ValueError(f"EvalConfig.draws must be one of {DRAWS}, got {self.draws!r}")

  @property
  def window(self) -> int:
    """The moving-average window over recorded points."""
    return 1 if self.smoothing_window is None else self.smoothing_window

  @property
  def every(self) -> int:
    """Steps between recorded points: the largest divisor of ``num_steps`` not above
    ``num_steps / eval_points`` (so step ``num_steps``, and ``4 num_steps``, are recorded)."""
    n = self.num_steps
    top = max(1, n // self.eval_points)
    return max(d for d in range(1, top + 1) if n % d == 0)

  def length(self, factor: float) -> int:
    """``factor * num_steps`` rounded to a multiple of :attr:`every`."""
    e = self.every
    return max(e, int(round(factor * self.num_steps / e)) * e)
