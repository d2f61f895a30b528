"""The baselines users run, as a registry, each tuned per task over a learning-rate grid.

* ``adam``: constant-rate Adam (its ``4 N``-step grid also gives VeLO's envelope);
* ``adam_cosine``: Adam with linear warm-up and cosine decay to zero;
* ``adamw_cosine``: the same with decoupled weight decay (Loshchilov & Hutter, arXiv 1711.05101);
* ``sgd_cosine``: SGD with heavy-ball momentum 0.9, warm-up + cosine (its grid is the rate grid
  times 10: SGD's rates sit higher than Adam's);
* ``muon_cosine``: ``optax.contrib.muon`` (Newton–Schulz orthogonalised momentum on 2-D weights,
  Adam on the other leaves; Jordan et al. 2024), warm-up + cosine.

Tuning: every task gets, per measured loss (train or test), the rate of the grid with the lowest
mean final loss over its seeds. When a task's best rate sits at an edge of the grid, the grid is
extended by a half-decade in that direction and run again, until no best rate sits at an edge
(or the grid reaches the config's rate bounds): a tuned baseline must be tuned.

All rates of one (baseline, length) missing from the cache run as one jitted program (``vmap``
over rates, tasks and seeds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np
import optax

from meta_train.evaluation import cache as cache_lib
from meta_train.evaluation import curves as curves_lib
from meta_train.evaluation import measures

# One line per grid that runs (cached grids are silent); ``meta-eval`` prints them to stderr.
LOG = logging.getLogger(__name__)

# (num_steps, warmup_fraction) -> (traced learning rate -> optax transform)
Maker = Callable[[int, float], curves_lib.TransformFactory]


def warmup_cosine(num_steps: int, warmup_fraction: float) -> Callable[[Any], jnp.ndarray]:
  """The multiplier of a linear warm-up over ``warmup_fraction`` of ``num_steps``, then a cosine
  decay to 0 (Loshchilov & Hutter, arXiv 1608.03983):

  .. math::
    f(t) = \\begin{cases} (t + 1) / W & t < W \\\\
      \\tfrac12 \\big(1 + \\cos(\\pi \\tfrac{t - W}{N - W})\\big) & t \\ge W \\end{cases}

  (the first update already has a non-zero rate).
  """
  warmup = max(1, int(math.ceil(warmup_fraction * num_steps))) if warmup_fraction > 0 else 0
  decay = max(1, num_steps - warmup)

  def factor(count):
    count = jnp.asarray(count, jnp.float32)
    ramp = (count + 1.0) / max(warmup, 1)
    frac = jnp.clip((count - warmup) / decay, 0.0, 1.0)
    return jnp.where(count < warmup, ramp, 0.5 * (1.0 + jnp.cos(jnp.pi * frac)))

  return factor


def _adam(num_steps, warmup_fraction):
  del num_steps, warmup_fraction
  return optax.adam


def _cosine(scale_by: Callable[[], optax.GradientTransformation]) -> Maker:
  def maker(num_steps, warmup_fraction):
    factor = warmup_cosine(num_steps, warmup_fraction)
    return lambda lr: optax.chain(scale_by(), optax.scale_by_schedule(lambda c: -lr * factor(c)))
  return maker


ADAMW_WEIGHT_DECAY = 0.1
SGD_MOMENTUM = 0.9


def _adamw_cosine(num_steps, warmup_fraction):
  factor = warmup_cosine(num_steps, warmup_fraction)
  return lambda lr: optax.adamw(lambda c: lr * factor(c), weight_decay=ADAMW_WEIGHT_DECAY)


def _muon_cosine(num_steps, warmup_fraction):
  from optax import contrib  # pylint: disable=import-outside-toplevel
  factor = warmup_cosine(num_steps, warmup_fraction)
  return lambda lr: contrib.muon(lambda c: lr * factor(c))


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A hand-designed optimizer family tuned over a learning-rate grid.

  Attributes:
    name: registry name (``--baselines``).
    title: how reports name it.
    make: ``(num_steps, warmup_fraction) -> (lr -> transform)``.
    grid_scale: the config's rate grid (and its bounds) times this.
    scheduled: its schedule depends on the run length (so every length is its own grid).
    settings: fixed hyper-parameters (part of the cache key and the report).
  """

  name: str
  title: str
  make: Maker
  grid_scale: float = 1.0
  scheduled: bool = True
  settings: tuple[tuple[str, float], ...] = ()

  def schedule_id(self, warmup_fraction: float) -> str:
    parts = [f"{k}={v:g}" for k, v in self.settings]
    if self.scheduled:
      parts.insert(0, f"warmup={warmup_fraction:g}")
    return f"{self.name}({','.join(parts)})"


REGISTRY: dict[str, Baseline] = {b.name: b for b in (
    Baseline("adam", "tuned constant Adam", _adam, scheduled=False),
    Baseline("adam_cosine", "tuned warm-up + cosine Adam", _cosine(optax.scale_by_adam)),
    Baseline("adamw_cosine", "tuned warm-up + cosine AdamW", _adamw_cosine,
             settings=(("weight_decay", ADAMW_WEIGHT_DECAY),)),
    Baseline("sgd_cosine", "tuned warm-up + cosine SGD + momentum",
             _cosine(lambda: optax.trace(SGD_MOMENTUM)), grid_scale=10.0,
             settings=(("momentum", SGD_MOMENTUM),)),
    Baseline("muon_cosine", "tuned warm-up + cosine Muon", _muon_cosine),
)}
BASELINE_NAMES = tuple(REGISTRY)


def get(name: str) -> Baseline:
  """The registered baseline ``name``; ``ValueError`` naming the valid ones."""
  if name not in REGISTRY:
    raise ValueError(f"unknown baseline {name!r}; valid: {', '.join(REGISTRY)}")
  return REGISTRY[name]


@dataclasses.dataclass
class GridRuns:
  """Runs of one baseline and length over a learning-rate grid.

  Attributes:
    learning_rates: ``[L]`` ascending.
    curves: ``{split: [L, tasks, seeds, points]}``.
    steps: ``[points]`` the step of each point.
  """

  learning_rates: np.ndarray
  curves: dict[str, np.ndarray]
  steps: np.ndarray


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


@contextlib.contextmanager
def progress(problem: Problem, what: str):
  """Logs ``meta-eval:     <family>: <what> ...`` as the work of the block starts and the same
  line with ``in <seconds>s`` when it ends: one grid of the digit denoiser runs for half an hour
  on a CPU."""
  line = f"meta-eval:     {problem.family_id.split(':')[0]}: {what}"
  LOG.info("%s ...", line)
  started = time.perf_counter()
  yield
  LOG.info("%s in %.0fs", line, time.perf_counter() - started)


def run_grid(problem: Problem, baseline: Baseline, num_steps: int, learning_rates, cache,
             config) -> GridRuns:
  """Curves of ``baseline`` at each learning rate; cached rates are read, the missing ones run
  in one program and are stored."""
  lrs = sorted(float(x) for x in learning_rates)
  every = config.every
  keys = {lr: cache_lib.entry_key(family=problem.family_id, draws=problem.draws,
                                  num_steps=num_steps, every=every,
                                  schedule=baseline.schedule_id(config.warmup_fraction),
                                  learning_rate=lr)
          for lr in lrs}
  found = {lr: cache.get(keys[lr]) for lr in lrs}
  missing = [lr for lr in lrs if found[lr] is None]
  if missing:
    with progress(problem, f"{baseline.name}, {num_steps} steps, {len(missing)} rate(s) x "
                           f"{int(np.prod(problem.keys.shape))} runs"):
      make = baseline.make(num_steps, config.warmup_fraction)
      curves = curves_lib.training_curves(problem.family, make, np.array(missing),
                                          problem.task_params, problem.keys, num_steps, every)
    for i, lr in enumerate(missing):
      arrays = {split: c[i] for split, c in curves.items()}
      cache.put(keys[lr], arrays)
      found[lr] = arrays
  stacked = {split: np.stack([found[lr][split] for lr in lrs]) for split in curves_lib.SPLITS}
  steps = np.arange(num_steps // every + 1) * every
  return GridRuns(np.array(lrs), stacked, steps)


def tuned_grid(problem: Problem, baseline: Baseline, num_steps: int, tune_step: int, config,
               cache, learning_rates=None) -> tuple[GridRuns, dict[str, np.ndarray]]:
  """Runs the grid, extended at its edges until every task's best train-loss rate is interior.

  The test loss is tuned over the same grid (its best rate may sit at an edge: a test loss
  that training only worsens would otherwise chase the grid down to ``min_learning_rate``).

  Args:
    problem: family and draws.
    baseline: a registered :class:`Baseline`.
    num_steps: run length.
    tune_step: the step whose loss is tuned for (``num_steps`` for scheduled baselines; ``N``
      inside constant Adam's longer runs).
    config: the :class:`~meta_train.evaluation.config.EvalConfig`.
    cache: a :class:`~meta_train.evaluation.cache.CurveCache`.
    learning_rates: the starting grid (default: the config's, times ``grid_scale``).

  Returns:
    ``(runs, best)``: the grid's runs and ``{split: [tasks]}`` best-rate indices.
  """
  scale = baseline.grid_scale
  lo, hi = config.min_learning_rate * scale, config.max_learning_rate * scale
  if learning_rates is None:
    learning_rates = [x * scale for x in config.learning_rates]
  lrs = sorted({float(f"{x:.6g}") for x in learning_rates})
  point = tune_step // config.every
  while True:
    runs = run_grid(problem, baseline, num_steps, lrs, cache, config)
    best = {split: measures.tune(measures.final_loss(c, config.window, point))
            for split, c in runs.curves.items()}
    extra = []
    if np.any(best["train"] == len(lrs) - 1) and lrs[-1] < hi:
      extra.append(min(half_decade(lrs[-1], 1), hi))
    if np.any(best["train"] == 0) and lrs[0] > lo:
      extra.append(max(half_decade(lrs[0], -1), lo))
    if not extra:
      return runs, best
    lrs = sorted(lrs + extra)


def neighbourhood(best: np.ndarray, grid: np.ndarray) -> list[float]:
  """The rates of ``grid`` at the ``best`` indices and their neighbours in the grid (a longer
  run's grid: its best rate sits near the shorter run's)."""
  grid = np.asarray(grid, np.float64)
  idx = {j for i in np.asarray(best).ravel() for j in (i - 1, i, i + 1) if 0 <= j < len(grid)}
  return sorted(float(grid[j]) for j in idx)
