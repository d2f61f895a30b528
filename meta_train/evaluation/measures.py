"""The numbers of an evaluation, from curves: pure numpy functions, one per measure.

Curves are arrays whose last axis is the step (entry 0: the loss at initialisation, entry t:
the loss after t steps). Every comparison uses curves smoothed over time by a trailing moving
average (minibatch noise would otherwise let the minimum over a grid of noisy curves "reach" a
loss no single setting holds): a run's *final loss* is its smoothed curve's last value.

References:
  Metz et al. 2022, "VeLO", arXiv 2211.09760, Fig. 1 (steps-to-reach speed-up).
  Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice", arXiv 2108.13264
  (interquartile mean, bootstrap intervals).
"""

from __future__ import annotations

import numpy as np

DIVERGENCE_FACTOR = 10.0


def clean(curves: np.ndarray) -> np.ndarray:
  """Non-finite losses become ``+inf`` (they never win nor reach anything)."""
  curves = np.asarray(curves, np.float64)
  return np.where(np.isfinite(curves), curves, np.inf)


def smooth(curves: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average over the last axis.

  .. math::
    \\bar{x}_t = \\frac{1}{\\min(t + 1, w)} \\sum_{s = \\max(0, t - w + 1)}^{t} x_s

  Args:
    curves: ``[..., steps + 1]``.
    window: ``w``; 1 returns the curves unchanged.

  Returns:
    The smoothed curves, same shape. An infinite value stays in the average for ``w`` steps.
  """
  curves = np.asarray(curves, np.float64)
  if window <= 1:
    return curves
  out = np.empty_like(curves)
  n = curves.shape[-1]
  for t in range(n):  # explicit: cumulative sums would turn inf - inf into nan
    out[..., t] = curves[..., max(0, t - window + 1):t + 1].mean(axis=-1)
  return out


def final_loss(curves: np.ndarray, window: int, step: int | None = None) -> np.ndarray:
  """Each curve smoothed over time, then read at ``step`` (default: its last entry).

  Args:
    curves: ``[..., steps + 1]``, one curve per run.
    window: moving-average window.
    step: the step read (``None``: the last).

  Returns:
    ``[...]``: one final loss per run (``+inf`` for runs with a non-finite loss in the window).
  """
  curves = clean(curves)
  step = curves.shape[-1] - 1 if step is None else step
  lo = max(0, step - window + 1)
  return curves[..., lo:step + 1].mean(axis=-1)


def tune(finals: np.ndarray) -> np.ndarray:
  """Index of the best learning rate per task: lowest mean final loss over seeds.

  Args:
    finals: ``[lrs, tasks, seeds]`` final losses.

  Returns:
    ``[tasks]`` integer indices into the first axis.
  """
  finals = clean(finals)
  with np.errstate(invalid="ignore"):
    return np.argmin(finals.mean(axis=2), axis=0)


def pick(values: np.ndarray, index: np.ndarray) -> np.ndarray:
  """``values[index[t], t, ...]`` for every task ``t`` (``values``: ``[lrs, tasks, ...]``)."""
  idx = np.asarray(index).reshape((1, -1) + (1,) * (values.ndim - 2))
  return np.take_along_axis(values, idx, axis=0)[0]


def interquartile_mean(x: np.ndarray) -> float:
  """Mean of the middle 50 % of the values (Agarwal et al. 2021, arXiv 2108.13264, Sec. 4)."""
  x = np.sort(np.asarray(x, np.float64).ravel())
  n = len(x)
  lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
  return float(np.mean(x[lo:max(hi, lo + 1)]))


def first_reach(curve: np.ndarray, target: float) -> float:
  """First index at which ``curve <= target``; ``inf`` if never."""
  hits = np.nonzero(np.asarray(curve) <= target)[0]
  return float(hits[0]) if len(hits) else float("inf")


def lower_envelope(curves: np.ndarray, window: int) -> np.ndarray:
  """Running minimum over steps of the minimum over a grid of smoothed curves.

  .. math:: E_t = \\min_{s \\le t} \\min_{\\eta} \\bar{x}^{\\eta}_s

  Args:
    curves: ``[lrs, ..., steps + 1]``.
    window: moving-average window.

  Returns:
    ``[..., steps + 1]``.
  """
  return np.minimum.accumulate(np.min(smooth(clean(curves), window), axis=0), axis=-1)


def speedup_constant(learned_final: np.ndarray, envelope: np.ndarray, num_steps: int,
                     cap: float) -> np.ndarray:
  """Steps-to-reach speed-up against the envelope of a constant-rate grid (VeLO, Fig. 1).

  .. math:: s = \\min\\Big(\\frac{\\min\\{t : E_t \\le L_{\\mathrm{learned}}\\}}{N}, c\\Big)

  Args:
    learned_final: ``[tasks, seeds]`` final losses of the learned optimizer.
    envelope: ``[tasks, seeds, >= cap * N + 1]`` lower envelope of the grid's curves.
    num_steps: ``N``.
    cap: ``c``; a loss the envelope never reaches gives ``c`` (reported as "≥ c").

  Returns:
    ``[tasks, seeds]`` speed-ups.
  """
  out = np.empty(learned_final.shape)
  for idx in np.ndindex(*learned_final.shape):
    reach = first_reach(envelope[idx], learned_final[idx])
    out[idx] = min(max(reach, 1.0) / num_steps, cap)
  return out


def speedup_by_length(learned_final: np.ndarray, first_curve: np.ndarray,
                      length_finals: dict[float, np.ndarray], num_steps: int,
                      cap: float) -> np.ndarray:
  """Steps-to-reach speed-up against a baseline that must know its run length (cosine Adam).

  The shortest length factor ``f`` whose tuned final loss reaches the learned optimizer's gives
  ``f``; within the 1x run, the first step ``t`` its (tuned, smoothed) curve reaches it gives
  ``t / N`` (< 1); never: ``cap``.

  Args:
    learned_final: ``[tasks, seeds]``.
    first_curve: ``[tasks, seeds, N + 1]`` smoothed curve of the tuned 1x run.
    length_finals: ``{factor: [tasks, seeds]}`` tuned final losses at each length (1.0 included).
    num_steps: ``N``.
    cap: value when no length reaches it.

  Returns:
    ``[tasks, seeds]`` speed-ups.
  """
  out = np.empty(learned_final.shape)
  factors = sorted(length_finals)
  for idx in np.ndindex(*learned_final.shape):
    target = learned_final[idx]
    value = cap
    reach = first_reach(first_curve[idx], target)
    if np.isfinite(reach):
      value = max(reach, 1.0) / num_steps
    else:
      for f in factors:
        if f > 1.0 and length_finals[f][idx] <= target:
          value = min(f, cap)
          break
    out[idx] = value
  return out


def diverged(curves: np.ndarray, factor: float = DIVERGENCE_FACTOR) -> np.ndarray:
  """Runs with a non-finite loss, or a loss above ``factor`` times its initial value.

  Args:
    curves: ``[..., steps + 1]`` raw curves.
    factor: divergence threshold relative to ``|loss_0|``.

  Returns:
    ``[...]`` booleans.
  """
  curves = np.asarray(curves, np.float64)
  nonfinite = ~np.isfinite(curves).all(axis=-1)
  with np.errstate(invalid="ignore"):
    above = (np.where(np.isfinite(curves), curves, -np.inf)
             > factor * np.abs(curves[..., :1])).any(axis=-1)
  return nonfinite | above


def bootstrap_ci(values: np.ndarray, statistic, num_samples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
  """Percentile bootstrap interval of ``statistic`` over runs (resampled with replacement).

  Args:
    values: per-run values (any shape; flattened: one entry per (task, seed) run).
    statistic: maps a 1-D array to a float (e.g. ``np.mean``, ``np.median``).
    num_samples: bootstrap resamples.
    seed: numpy seed (the interval is deterministic).
    level: coverage.

  Returns:
    ``(low, high)``.
  """
  x = np.asarray(values, np.float64).ravel()
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(x), size=(num_samples, len(x)))
  stats = np.array([statistic(x[i]) for i in idx])
  alpha = (1 - level) / 2
  return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
