"""One learned optimizer against the tuned baselines on held-out runs: per-run numbers, then the
report's aggregates.

For every (task, seed) run, on each measured loss (``train``: the headline; ``test``):

* every baseline is tuned per task at ``N = num_steps`` steps (:mod:`.baselines`); the learned
  optimizer *wins* against it when its final loss is below the tuned baseline's;
* the *speed-up* is VeLO's steps-to-reach against the envelope of constant-rate Adam's grid run
  ``4 N`` steps (:func:`~.measures.seed_mean_envelope`, :func:`~.measures.speedup_envelope`),
  capped at 4; the same measure scores every tuned baseline itself (the *calibration rows*), so
  the learned optimizer's number is read against tuned Adam's own;
* against ``adam_cosine`` also its own steps-to-reach: the tuned ``1x`` curve inside ``N``
  steps, else the length ``N x {1, 1.5, 2, 3, 4}`` (tuned per length) at which it reaches the
  loss, interpolated log-linearly between the two bracketing lengths
  (:func:`~.measures.speedup_by_length`); lengths run only while some run needs them;
* for families with a sample metric (diffusion: energy distance), the metric of every optimizer
  after exactly ``N`` steps (a baseline at its tuned rate).

Aggregates: win fraction, median and IQM of speed-ups, the median final-loss ratio (learned /
tuned baseline; a ratio whose sides both diverged is ``inf``), diverged runs (non-finite, or
above 10x the initial loss), each with a 95 % task-level bootstrap interval.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from meta_train.evaluation import baselines as baselines_lib
from meta_train.evaluation import config as config_lib
from meta_train.evaluation import curves as curves_lib
from meta_train.evaluation import measures

SPLITS = curves_lib.SPLITS
LEARNED = "learned"

# A table of per-run arrays, every one ``[tasks, ...]``: ``"{subject}/{split}/{measure}"``.
RunTable = dict[str, np.ndarray]


def _mean_curve(curves: np.ndarray, axes=(0, 1)) -> np.ndarray:
  """Mean over ``axes`` (the runs), ignoring non-finite values (all-non-finite: nan)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(np.where(np.isfinite(curves), curves, np.nan), axis=axes)


def envelope(problem, config, cache, cap: float):
  """Constant Adam's grid run ``cap * N`` steps: ``(steps, {split: [tasks, points]}, runs,
  best)`` with VeLO's seed-mean envelope per split and the rates tuned at ``N``."""
  adam = baselines_lib.get("adam")
  runs, best = baselines_lib.tuned_grid(problem, adam, config.length(cap), config.num_steps,
                                        config, cache)
  env = {s: measures.seed_mean_envelope(c, config.window) for s, c in runs.curves.items()}
  return runs.steps, env, runs, best


def _tuned(runs, best, config) -> dict[str, Any]:
  """A tuned baseline's per-split curves (up to ``N``), finals and rates."""
  point = config.num_steps // config.every
  out = {"learning_rates": runs.learning_rates}
  for split, c in runs.curves.items():
    c = c[..., :point + 1]
    tuned = measures.pick(c, best[split])
    out[split] = {"curves": tuned, "final": measures.final_loss(tuned, config.window),
                  "best_lr": runs.learning_rates[best[split]], "grid_mean": _mean_curve(c, (1, 2))}
  return out


def group_runs(learned: dict[str, np.ndarray], learned_metric: np.ndarray | None, problem,
               config, cache, baseline_names: Sequence[str], cap: float,
               cosine_factors: Sequence[float] = config_lib.COSINE_LENGTH_FACTORS,
               ) -> tuple[RunTable, dict[str, Any]]:
  """Every per-run number of one group of runs (one family, or one member of a mixture).

  Args:
    learned: ``{split: [tasks, seeds, points]}`` the learned optimizer's curves.
    learned_metric: ``[tasks, seeds]`` its sample metric after ``N`` steps, or None.
    problem: the group's :class:`~.baselines.Problem`.
    config: the :class:`~.config.EvalConfig` with ``num_steps = N``.
    cache: a :class:`~.cache.CurveCache`.
    baseline_names: registered baselines to tune and compare with.
    cap: constant Adam runs ``cap * N`` steps; speed-ups are capped there.
    cosine_factors: ``adam_cosine``'s run lengths, as multiples of ``N``.

  Returns:
    ``(table, curves)``: the :data:`RunTable` and, for figures, ``{subject: {split: mean
    curve}}`` plus ``"grid"``, ``"grid_lrs"`` (constant Adam's rates at ``N``), ``"steps"``.
  """
  n = config.num_steps
  steps, env, adam_runs, adam_best = envelope(problem, config, cache, cap)
  table: RunTable = {}
  means: dict[str, Any] = {"steps": steps[:n // config.every + 1]}
  subjects = {LEARNED: {s: {"curves": c, "final": measures.final_loss(c, config.window)}
                        for s, c in learned.items()}}
  lrs = {}
  for name in baseline_names:
    b = baselines_lib.get(name)
    if name == "adam":
      runs, best = adam_runs, adam_best
    else:
      runs, best = baselines_lib.tuned_grid(problem, b, n, n, config, cache)
    subjects[name] = _tuned(runs, best, config)
    lrs[name] = runs.learning_rates
    if name == "adam_cosine":
      cos_best = best
  for subject, data in subjects.items():
    means[subject] = {}
    for split in SPLITS:
      final = data[split]["final"]
      speed, reached = measures.speedup_envelope(final, env[split], steps, n, cap)
      table[f"{subject}/{split}/final"] = final
      table[f"{subject}/{split}/speedup"] = speed
      table[f"{subject}/{split}/reached"] = reached
      means[subject][split] = _mean_curve(data[split]["curves"])
      if subject != LEARNED:
        table[f"{subject}/{split}/best_lr"] = data[split]["best_lr"]
    table[f"{subject}/diverged"] = measures.diverged(data["train"]["curves"])
  if "adam" in subjects:
    means["grid"] = subjects["adam"]["train"]["grid_mean"]
    means["grid_lrs"] = lrs["adam"]
  if "adam_cosine" in subjects:
    speed, reached = cosine_steps_to_reach(
        table[f"{LEARNED}/train/final"], subjects["adam_cosine"]["train"]["curves"],
        cos_best["train"], lrs["adam_cosine"], means["steps"], problem, config, cache,
        cosine_factors)
    table["adam_cosine/train/steps_to_reach"] = speed
    table["adam_cosine/train/steps_to_reach_reached"] = reached
  if problem.final_metric is not None and learned_metric is not None:
    table[f"{LEARNED}/metric"] = np.asarray(learned_metric, np.float64)
    for name in baseline_names:
      b = baselines_lib.get(name)
      table[f"{name}/metric"] = curves_lib.final_metrics(
          problem.family, b.make(n, config.warmup_fraction),
          table[f"{name}/train/best_lr"], problem.task_params, problem.keys, n,
          problem.final_metric).astype(np.float64)
  return table, means


def cosine_steps_to_reach(targets: np.ndarray, first_curve: np.ndarray, best: np.ndarray,
                          rates: np.ndarray, steps: np.ndarray, problem, config, cache,
                          factors: Sequence[float]):
  """``adam_cosine``'s own steps-to-reach of ``targets`` (``[tasks, seeds]`` train losses):
  longer tuned runs only while some target is not yet reached, each tuned over the 1x run's
  best rates (indices ``best`` into its grid ``rates``) and their neighbours in that grid,
  extended at an edge."""
  cos = baselines_lib.get("adam_cosine")
  n = config.num_steps
  cap = max(factors)
  length_finals = {1.0: measures.final_loss(first_curve, config.window)}
  unreached = ~(measures.clean(first_curve) <= targets[..., None]).any(axis=-1)
  grid = baselines_lib.neighbourhood(best, rates)
  for f in sorted(factors):
    if f <= 1.0 or not unreached.any():
      continue
    length = config.length(f)
    runs, best = baselines_lib.tuned_grid(problem, cos, length, length, config, cache, grid)
    final = measures.pick(measures.final_loss(runs.curves["train"], config.window),
                          best["train"])
    length_finals[length / n] = final
    unreached &= ~(final <= targets)
  return measures.speedup_by_length(targets, first_curve, steps, length_finals, n, cap)


def concat(tables: Sequence[RunTable]) -> RunTable:
  """Joins the tables of several groups of runs (a mixture's members) along tasks."""
  keys = [k for k in tables[0] if all(k in t for t in tables)]
  return {k: np.concatenate([t[k] for t in tables], axis=0) for k in keys}


def _speedup_fields(table: RunTable, subject: str, config, cap: float) -> dict[str, Any]:
  out = {}
  for split in SPLITS:
    sp = table[f"{subject}/{split}/speedup"]
    tag = "" if split == "train" else "_test"
    out.update({
        f"speedup{tag}_median": float(np.median(sp)),
        f"speedup{tag}_median_ci": list(measures.bootstrap_ci(
            sp, np.median, config.bootstrap_samples, config.seed)),
        f"speedup{tag}_iqm": measures.interquartile_mean(sp),
        f"speedup{tag}_unreached_runs": int((~table[f"{subject}/{split}/reached"]).sum()),
        f"speedup{tag}_per_run": sp.tolist(),
    })
  out["speedup_cap"] = float(cap)
  return out


def _metric_fields(table: RunTable, subject: str, other: str | None) -> dict[str, Any]:
  """Median sample metric of the row's optimizer (``learned``) and of ``other`` (``baseline``),
  over the runs whose sampler stayed finite; how many did not is reported."""
  out = {}
  for name, who in (("learned", subject), ("baseline", other)):
    if who is None or f"{who}/metric" not in table:
      continue
    m = table[f"{who}/metric"]
    ok = np.isfinite(m)
    out[f"energy_distance_{name}_median"] = float(np.median(m[ok])) if ok.any() else None
    out[f"energy_distance_{name}_nonfinite_runs"] = int((~ok).sum())
  return out


def learned_entries(table: RunTable, baseline_names: Sequence[str], config,
                    cap: float) -> list[dict[str, Any]]:
  """The learned optimizer against each tuned baseline (one results dict each)."""
  out = []
  speed = _speedup_fields(table, LEARNED, config, cap)
  for b in baseline_names:
    e: dict[str, Any] = {"role": "learned", "baseline": b,
                         "num_runs": int(table[f"{LEARNED}/train/final"].size)}
    for split in SPLITS:
      tag = "" if split == "train" else "_test"
      mine, theirs = table[f"{LEARNED}/{split}/final"], table[f"{b}/{split}/final"]
      wins = (mine < theirs).astype(np.float64)
      e.update({
          f"win_fraction{tag}": float(wins.mean()),
          f"win_fraction{tag}_ci": list(measures.bootstrap_ci(
              wins, np.mean, config.bootstrap_samples, config.seed)),
          f"final_loss_ratio{tag}_median": float(np.median(measures.ratio(mine, theirs))),
          f"final_loss{tag}_learned_median": float(np.median(mine)),
          f"final_loss{tag}_baseline_median": float(np.median(theirs)),
          f"final_loss{tag}_learned": mine.tolist(),
          f"final_loss{tag}_baseline": theirs.tolist(),
          f"best_learning_rate{tag}_per_task": [float(x) for x in table[f"{b}/{split}/best_lr"]],
      })
    e.update(speed)
    if f"{b}/train/steps_to_reach" in table:
      sp = table[f"{b}/train/steps_to_reach"]
      e.update({
          "steps_to_reach_median": float(np.median(sp)),
          "steps_to_reach_median_ci": list(measures.bootstrap_ci(
              sp, np.median, config.bootstrap_samples, config.seed)),
          "steps_to_reach_unreached_runs": int((~table[f"{b}/train/steps_to_reach_reached"]).sum()),
          "steps_to_reach_cap": float(max(config_lib.COSINE_LENGTH_FACTORS)),
          "steps_to_reach_per_run": sp.tolist(),
      })
    e["diverged_runs"] = int(table[f"{LEARNED}/diverged"].sum())
    e["diverged_runs_baseline"] = int(table[f"{b}/diverged"].sum())
    e.update(_metric_fields(table, LEARNED, b))
    out.append(e)
  return out


def calibration_entries(table: RunTable, baseline_names: Sequence[str], config,
                        cap: float) -> list[dict[str, Any]]:
  """Every tuned baseline scored by the same measures (against tuned constant Adam)."""
  out = []
  for b in baseline_names:
    e: dict[str, Any] = {"subject": b, "role": "calibration", "baseline": "adam",
                         "num_runs": int(table[f"{b}/train/final"].size)}
    for split in SPLITS:
      tag = "" if split == "train" else "_test"
      mine = table[f"{b}/{split}/final"]
      e[f"final_loss{tag}_learned_median"] = float(np.median(mine))
      e[f"final_loss{tag}_learned"] = mine.tolist()
      if b != "adam" and "adam/train/final" in table:
        theirs = table[f"adam/{split}/final"]
        wins = (mine < theirs).astype(np.float64)
        e[f"win_fraction{tag}"] = float(wins.mean())
        e[f"win_fraction{tag}_ci"] = list(measures.bootstrap_ci(
            wins, np.mean, config.bootstrap_samples, config.seed))
        e[f"final_loss_ratio{tag}_median"] = float(np.median(measures.ratio(mine, theirs)))
        e[f"final_loss{tag}_baseline_median"] = float(np.median(theirs))
        e[f"final_loss{tag}_baseline"] = theirs.tolist()
    e.update(_speedup_fields(table, b, config, cap))
    e["diverged_runs"] = int(table[f"{b}/diverged"].sum())
    e.update(_metric_fields(table, b, None))
    out.append(e)
  return out
