"""The numbers of an evaluation, from curves: pure numpy functions, one per measure.

Curves are arrays whose last axis is the recorded point: a loss measured on a fixed, large
evaluation set (the train split's, or the test split's) at steps ``0, e, 2e, ...`` (entry 0:
at initialisation). A run's *final loss* is its curve read at step ``N``, after an optional
trailing moving average over points (``window``; 1: none, the default, as the fixed sets
carry no minibatch noise).

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


def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``a / b`` per run; ``inf`` where both sides diverged (``nan / nan``, ``inf / inf``): a run
  whose sides both failed is not a tie."""
  with np.errstate(divide="ignore", invalid="ignore"):
    r = np.asarray(a, np.float64) / np.asarray(b, np.float64)
  return np.where(np.isnan(r), np.inf, r)


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


def reach_step(curve: np.ndarray, steps: np.ndarray, target: float) -> float:
  """The step at which a recorded curve first reaches ``target``, linearly interpolated.

  With ``i`` the first point with ``curve[i] <= target`` (recorded at ``steps[i]``):

  .. math::
    s^* = s_{i-1} + (s_i - s_{i-1}) \\frac{x_{i-1} - L}{x_{i-1} - x_i}

  (``s^* = steps[0]`` if the first point already reaches it; ``inf`` if no point does).

  Args:
    curve: ``[P]`` values at the recorded steps (non-finite values never reach).
    steps: ``[P]`` ascending steps.
    target: ``L``.

  Returns:
    The interpolated step, or ``inf``.
  """
  curve = clean(curve)
  i = first_reach(curve, target)
  if not np.isfinite(i):
    return float("inf")
  i = int(i)
  if i == 0:
    return float(steps[0])
  x0, x1 = curve[i - 1], curve[i]
  s0, s1 = float(steps[i - 1]), float(steps[i])
  if not np.isfinite(x0) or x0 == x1:
    return s1
  return s0 + (s1 - s0) * float((x0 - target) / (x0 - x1))


def seed_mean_envelope(curves: np.ndarray, window: int = 1) -> np.ndarray:
  """VeLO's envelope of a learning-rate grid, per task.

  Each rate's smoothed curve is averaged over the task's seeds, the minimum is taken over
  rates, then the running minimum over steps (Metz et al. 2022, arXiv 2211.09760, Fig. 1; the
  speed-up normaliser of learned_optimization's ``baselines/normalizers.py``):

  .. math:: E_t = \\min_{s \\le t} \\min_{\\eta} \\tfrac{1}{S} \\sum_{k=1}^{S} \\bar{x}^{\\eta, k}_s

  A rate with a diverged seed has a mean of ``inf`` where that seed is non-finite, so one
  lucky seed cannot carry a rate.

  Args:
    curves: ``[lrs, tasks, seeds, points]``.
    window: moving-average window in points.

  Returns:
    ``[tasks, points]``.
  """
  mean = smooth(clean(curves), window).mean(axis=2)
  return np.minimum.accumulate(np.min(mean, axis=0), axis=-1)


def speedup_envelope(finals: np.ndarray, envelope: np.ndarray, steps: np.ndarray,
                     num_steps: int, cap: float) -> tuple[np.ndarray, np.ndarray]:
  """Steps-to-reach speed-up of runs against their task's envelope (VeLO, Fig. 1).

  .. math:: s = \\min\\big(t^*(L) / N,\\ c\\big)

  where ``t^*(L)`` is the (interpolated, :func:`reach_step`) step at which the envelope first
  reaches the run's final loss ``L``.

  Args:
    finals: ``[tasks, seeds]`` final losses at step ``N``.
    envelope: ``[tasks, points]`` (:func:`seed_mean_envelope`), recorded at ``steps``.
    steps: ``[points]``, up to at least ``cap * N``.
    num_steps: ``N``.
    cap: ``c``.

  Returns:
    ``(speedup, reached)``, each ``[tasks, seeds]``: the speed-up (``c`` when never reached)
    and whether the envelope reached the loss (a run reached exactly at ``c N`` is reached).
  """
  finals = np.asarray(finals, np.float64)
  out = np.empty(finals.shape)
  reached = np.zeros(finals.shape, bool)
  for t, s in np.ndindex(*finals.shape):
    step = reach_step(envelope[t], steps, finals[t, s]) if np.isfinite(finals[t, s]) else np.inf
    reached[t, s] = step <= cap * num_steps
    out[t, s] = min(step / num_steps, cap)
  return out, reached


def speedup_by_length(finals: np.ndarray, first_curve: np.ndarray, steps: np.ndarray,
                      length_finals: dict[float, np.ndarray], num_steps: int,
                      cap: float) -> tuple[np.ndarray, np.ndarray]:
  """Steps-to-reach speed-up against a baseline that must know its run length (cosine Adam).

  Inside the tuned 1x run, the interpolated step at which its curve reaches the loss ``L``
  gives ``t^* / N`` (< 1). Beyond it, the tuned final loss ``F(f)`` of each length factor
  ``f`` is interpolated linearly in ``log f`` between the two run lengths ``f_a < f_b`` that
  bracket ``L`` (``F(f_a) > L >= F(f_b)``):

  .. math::
    \\log f^* = \\log f_a + \\frac{F(f_a) - L}{F(f_a) - F(f_b)} (\\log f_b - \\log f_a)

  and no length reaching it gives the cap. No rounding up to the next rung.

  Args:
    finals: ``[tasks, seeds]`` losses ``L`` to reach.
    first_curve: ``[tasks, seeds, points]`` the tuned 1x run's curve at ``steps``.
    steps: ``[points]`` up to ``N``.
    length_finals: ``{f: [tasks, seeds]}`` tuned final losses at each length factor (1.0
      included; ``inf`` where a length was not run).
    num_steps: ``N``.
    cap: value when no length reaches it.

  Returns:
    ``(speedup, reached)``, each ``[tasks, seeds]``.
  """
  finals = np.asarray(finals, np.float64)
  out = np.full(finals.shape, float(cap))
  reached = np.zeros(finals.shape, bool)
  factors = sorted(length_finals)
  for idx in np.ndindex(*finals.shape):
    target = finals[idx]
    if not np.isfinite(target):
      continue
    step = reach_step(first_curve[idx], steps, target)
    if np.isfinite(step):
      out[idx], reached[idx] = step / num_steps, True
      continue
    for fa, fb in zip(factors, factors[1:]):
      la, lb = float(length_finals[fa][idx]), float(length_finals[fb][idx])
      if lb <= target < la or (lb <= target and not np.isfinite(la)):
        w = 1.0 if not np.isfinite(la) else (la - target) / (la - lb)
        out[idx] = min(float(np.exp(np.log(fa) + w * (np.log(fb) - np.log(fa)))), cap)
        reached[idx] = True
        break
  return out, reached


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
  """Percentile interval of ``statistic`` under a task-level (hierarchical) bootstrap.

  Seeds of one task share the task and its tuned baseline, so they are not independent runs.
  Each resample draws ``T`` tasks with replacement, then, within each drawn task, ``S`` of its
  seeds with replacement (the two-stage bootstrap of clustered data; Davison & Hinkley 1997,
  Sec. 3.8), and evaluates ``statistic`` on the ``T x S`` drawn runs.

  Args:
    values: ``[tasks, seeds]`` per-run values (a 1-D array is one seed per task).
    statistic: maps a 1-D array to a float (e.g. ``np.mean``, ``np.median``).
    num_samples: bootstrap resamples.
    seed: numpy seed (the interval is deterministic).
    level: coverage.

  Returns:
    ``(low, high)``.
  """
  x = np.asarray(values, np.float64)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2:
    raise ValueError(f"bootstrap_ci needs [tasks, seeds] values, got shape {x.shape}")
  t, s = x.shape
  rng = np.random.default_rng(seed)
  tasks = rng.integers(0, t, size=(num_samples, t, 1))
  seeds = rng.integers(0, s, size=(num_samples, t, s))
  drawn = x[tasks, seeds].reshape(num_samples, -1)
  stats = np.array([statistic(row) for row in drawn])
  alpha = (1 - level) / 2
  return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))
