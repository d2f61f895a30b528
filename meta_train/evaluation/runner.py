"""Evaluating optimizers on families and suites: the ``meta_train.evaluate`` API beneath
``meta-eval`` and ``meta-train``'s end-of-run evaluation."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

import tasks
from meta_train.evaluation import cache as cache_lib
from meta_train.evaluation import compare
from meta_train.evaluation import config as config_lib
from meta_train.evaluation import curves as curves_lib
from meta_train.evaluation import suites


@dataclasses.dataclass
class FamilyResult:
  """Everything measured for one (optimizer, family).

  Attributes:
    entries: one results dict per baseline (what ``eval.json`` lists).
    learned_mean: ``[steps + 1]`` mean learned curve over runs.
    tuned_mean: ``{baseline: [steps + 1]}`` mean tuned-baseline curves (first ``N`` steps).
    grid_mean: ``[L, steps + 1]`` constant-Adam grid mean curves; ``grid_lrs``: its rates.
    learned_curves: ``[tasks, seeds, steps + 1]`` raw learned curves.
    samples: diffusion samples of the learned and tuned-Adam models (or None).
    panels: one figure panel per group of runs (a mixture: one per member), each
      ``{"title", "learned", "tuned": {baseline: curve}, "grid", "grid_lrs"}``.
  """

  entries: list[dict[str, Any]]
  learned_mean: np.ndarray
  tuned_mean: dict[str, np.ndarray]
  grid_mean: np.ndarray | None
  grid_lrs: np.ndarray | None
  learned_curves: np.ndarray
  seconds: float = 0.0
  samples: dict[str, np.ndarray] | None = None
  panels: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _mean(curves: np.ndarray) -> np.ndarray:
  with np.errstate(invalid="ignore"):
    return np.nanmean(np.where(np.isfinite(curves), curves, np.nan), axis=(0, 1))


def evaluate_family(lopt, meta_params, family, family_name: str, config, *,
                    label: str, suite: str, num_steps: int | None = None,
                    baselines: Sequence[str] = config_lib.BASELINES,
                    envelope_factor: float = config_lib.MAX_SPEEDUP,
                    cache: cache_lib.CurveCache | None = None,
                    samples: bool = False, horizon_aware: bool = False) -> FamilyResult:
  """Runs the learned optimizer and the tuned baselines on a family's held-out draws.

  Args:
    lopt, meta_params: the learned optimizer (evaluated as ``lopt.transform(meta_params)``,
      the transform meta-training unrolled).
    family, family_name: the task family and its registered name (names the draws).
    config: an :class:`~meta_train.evaluation.config.EvalConfig`.
    label, suite: how the results name the optimizer and the suite.
    num_steps: run length ``N`` (default ``config.num_steps``).
    baselines: subset of ``("adam", "adam_cosine")``.
    envelope_factor: constant Adam runs ``envelope_factor * N`` steps (the speed-up cap).
    cache: baseline-curve cache (default: none).
    samples: for diffusion families, also train the first run once more with the learned
      optimizer and with tuned Adam and keep samples of both models (figures, wandb).
    horizon_aware: pass the run length ``N`` to the optimizer as ``num_steps`` (for one
      meta-trained with ``estimator.horizon_aware``: its provenance says so).

  Returns:
    A :class:`FamilyResult`.
  """
  t0 = time.perf_counter()
  n = config.num_steps if num_steps is None else num_steps
  cfg = dataclasses.replace(config, num_steps=n)
  cache = cache or cache_lib.CurveCache(None)
  tx = lopt.transform(meta_params, num_steps=n if horizon_aware else None)
  groups = suites.problems(family, family_name, cfg)
  learned_parts, metric_parts, per_baseline = [], [], {b: [] for b in baselines}
  for problem in groups:
    learned, metric = curves_lib.learned_curves(problem.family, tx, problem.task_params,
                                                problem.keys, n, problem.final_metric)
    learned_parts.append(learned)
    metric_parts.append(metric)
    for b in baselines:
      if b == "adam":
        per_baseline[b].append(compare.against_adam(learned, problem, cfg, cache, n,
                                                    envelope_factor))
      elif b == "adam_cosine":
        per_baseline[b].append(compare.against_cosine(learned, problem, cfg, cache, n))
      else:
        raise ValueError(f"unknown baseline {b!r}; valid: {', '.join(config_lib.BASELINES)}")
  learned_all = np.concatenate(learned_parts, axis=0)
  metric_all = (None if any(m is None for m in metric_parts)
                else np.concatenate(metric_parts, axis=0))
  entries, tuned_mean = [], {}
  for b in baselines:
    c = compare.concat(per_baseline[b])
    cap = envelope_factor if b == "adam" else max(config_lib.COSINE_LENGTH_FACTORS)
    entry = {"optimizer": label, "suite": suite, "family": family_name,
             "kind": suites.KINDS.get(family_name, "other"), "num_steps": n,
             "num_tasks": cfg.num_tasks, "num_seeds": cfg.num_seeds,
             "smoothing_window": cfg.window}
    entry.update(compare.aggregate(c, learned_all, cfg, metric_all, cap))
    entries.append(entry)
    tuned_mean[b] = _mean(c.tuned_curves)
  panels = []
  for i, problem in enumerate(groups):
    adam = per_baseline["adam"][i] if "adam" in per_baseline else None
    panels.append({
        "title": (f"{family_name}" if len(groups) == 1 else
                  f"{family_name}: {problem.family.name}") +
                 f" ({learned_parts[i].shape[0]}x{learned_parts[i].shape[1]} runs)",
        "learned": _mean(learned_parts[i]),
        "tuned": {b: _mean(per_baseline[b][i].tuned_curves) for b in baselines},
        "grid": None if adam is None else adam.grid_mean,
        "grid_lrs": None if adam is None else adam.learning_rates})
  grid = per_baseline["adam"][0] if "adam" in per_baseline and len(groups) == 1 else None
  drawn = None
  if samples and groups[0].final_metric is not None and "adam" in per_baseline:
    drawn = _samples(groups[0], tx, float(per_baseline["adam"][0].best_lr[0]), n)
  return FamilyResult(samples=drawn, panels=panels, entries=entries, learned_mean=_mean(learned_all),
                      tuned_mean=tuned_mean,
                      grid_mean=None if grid is None else grid.grid_mean,
                      grid_lrs=None if grid is None else grid.learning_rates,
                      learned_curves=learned_all, seconds=time.perf_counter() - t0)


def _samples(problem, tx, lr: float, n: int, num_samples: int = 256) -> dict[str, np.ndarray]:
  """Samples of the models trained (first task, first seed) by ``tx`` and by Adam at ``lr``."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  tp = jax.tree.map(lambda x: x[0], problem.task_params)
  key = problem.keys[0, 0]
  task = problem.family.task(tp)
  out = {}
  for name, opt in (("learned", tx), ("adam", optax.adam(lr))):
    params = curves_lib.trained_params(problem.family, opt, tp, key, n)
    out[name] = np.asarray(tasks.diffusion.sample(task, params, jax.random.key(1), num_samples))
  out["data"] = np.asarray(task.heldout(jax.random.key(2), num_samples))
  out["adam_learning_rate"] = np.array(lr)
  return out


def evaluate_suite(opt: suites.Optimizer, suite: str, config, *,
                   cache: cache_lib.CurveCache | None = None,
                   families: Sequence[str] | None = None, log=None) -> list[FamilyResult]:
  """Runs a named suite (or, with ``families``, those families) for one optimizer."""
  if families:
    suites.check_families(families)
    plans = [suites.FamilyPlan(f, config.num_steps, config_lib.BASELINES) for f in families]
  else:
    plans = suites.plan(suite, opt, config)
  out = []
  for p in plans:
    if log:
      log(f"meta-eval: {opt.label} on {p.family} ({suite}, {config.num_tasks} tasks x "
          f"{config.num_seeds} seeds, {p.num_steps} steps)")
    result = evaluate_family(opt.lopt, opt.meta_params, suites.build_family(p.family, opt),
                             p.family, config,
                             label=opt.label, suite=suite, num_steps=p.num_steps,
                             baselines=p.baselines, envelope_factor=p.envelope_factor,
                             cache=cache, horizon_aware=opt.horizon_aware)
    if log:
      log(f"meta-eval:   done in {result.seconds:.0f}s")
    out.append(result)
  return out
