"""Evaluating optimizers on families and suites: the ``meta_train.evaluate`` API beneath
``meta-eval`` and ``meta-train``'s end-of-run evaluation."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

import tasks
from meta_train.evaluation import baselines as baselines_lib
from meta_train.evaluation import cache as cache_lib
from meta_train.evaluation import compare
from meta_train.evaluation import config as config_lib
from meta_train.evaluation import curves as curves_lib
from meta_train.evaluation import suites


@dataclasses.dataclass
class FamilyResult:
  """Everything measured for one (optimizer, family).

  Attributes:
    entries: the results dicts ``eval.json`` lists: the learned optimizer against each tuned
      baseline (``role="learned"``), then each tuned baseline's calibration row
      (``role="calibration"``, ``optimizer="tuned NAME"``).
    steps: ``[points]`` the step of each recorded point (up to ``N``).
    learned_mean: ``[points]`` mean learned train-loss curve over runs.
    tuned_mean: ``{baseline: [points]}`` mean tuned-baseline train-loss curves.
    learned_curves: ``[tasks, seeds, points]`` raw learned train-loss curves.
    seconds: wall time of the evaluation.
    seconds_per_step: ``{"learned": s, "adam": s}`` one training step's wall time.
    samples: diffusion samples of the learned and tuned-Adam models (or None).
    panels: one figure panel per group of runs (a mixture: one per member), each
      ``{"title", "steps", "learned", "tuned": {baseline: curve}, "grid", "grid_lrs"}``.
  """

  entries: list[dict[str, Any]]
  steps: np.ndarray
  learned_mean: np.ndarray
  tuned_mean: dict[str, np.ndarray]
  learned_curves: np.ndarray
  seconds: float = 0.0
  seconds_per_step: dict[str, float] = dataclasses.field(default_factory=dict)
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
                    samples: bool = False, horizon_aware: bool = False,
                    wallclock: bool = True) -> FamilyResult:
  """Runs the learned optimizer and the tuned baselines on a family's held-out draws.

  Args:
    lopt, meta_params: the learned optimizer (evaluated as ``lopt.transform(meta_params)``,
      the transform meta-training unrolled).
    family, family_name: the task family and its registered name (names the draws).
    config: an :class:`~meta_train.evaluation.config.EvalConfig`.
    label, suite: how the results name the optimizer and the suite.
    num_steps: run length ``N`` (default ``config.num_steps``).
    baselines: registered baselines (:mod:`~meta_train.evaluation.baselines`); ``adam`` is
      always run, as its grid gives the envelope every speed-up is read on.
    envelope_factor: constant Adam runs ``envelope_factor * N`` steps (the speed-up cap).
    cache: baseline-curve cache (default: none).
    samples: for diffusion families, also train the first run once more with the learned
      optimizer and with tuned Adam and keep samples of both models (figures, wandb).
    horizon_aware: pass the run length ``N`` to the optimizer as ``num_steps``.
    wallclock: time one training step of the learned optimizer and of Adam.

  Returns:
    A :class:`FamilyResult`.
  """
  t0 = time.perf_counter()
  n = config.num_steps if num_steps is None else num_steps
  cfg = dataclasses.replace(config, num_steps=n)
  for b in baselines:
    baselines_lib.get(b)  # a clear error before any compute
  cache = cache or cache_lib.CurveCache(None)
  tx = lopt.transform(meta_params, num_steps=n if horizon_aware else None)
  groups = suites.problems(family, family_name, cfg)
  tables, panels, learned_parts = [], [], []
  for problem in groups:
    with baselines_lib.progress(problem, f"{label}'s {int(np.prod(problem.keys.shape))} runs "
                                         f"of {n} steps"):
      learned = curves_lib.learned_curves(problem.family, tx, problem.task_params, problem.keys,
                                          n, cfg.every)
    metric = None
    if problem.final_metric is not None:
      tasks_n = learned["train"].shape[0]
      metric = curves_lib.final_metrics(problem.family, lambda _: tx, np.zeros(tasks_n),
                                        problem.task_params, problem.keys, n,
                                        problem.final_metric)
    table, means = compare.group_runs(learned, metric, problem, cfg, cache, baselines,
                                      envelope_factor)
    tables.append(table)
    learned_parts.append(learned["train"])
    shape = learned["train"].shape
    panels.append({
        "title": (family_name if len(groups) == 1 else f"{family_name}: {problem.family.name}")
                 + f" ({shape[0]}x{shape[1]} runs)",
        "steps": means["steps"], "learned": means[compare.LEARNED]["train"],
        "tuned": {b: means[b]["train"] for b in baselines},
        "grid": means.get("grid"), "grid_lrs": means.get("grid_lrs")})
  table = compare.concat(tables)
  common = {"suite": suite, "family": family_name,
            "kind": suites.KINDS.get(family_name, "other"), "num_steps": n,
            "num_tasks": cfg.num_tasks, "num_seeds": cfg.num_seeds, "draws": cfg.draws,
            "eval_every": cfg.every, "smoothing_window": cfg.window}
  timing = {}
  if wallclock:
    import optax  # pylint: disable=import-outside-toplevel
    g = groups[0]
    timing = {name: curves_lib.seconds_per_step(g.family, t, g.task_params, g.keys[0, 0])
              for name, t in ((compare.LEARNED, tx), ("adam", optax.adam(1e-3)))}
  entries = []
  for e in compare.learned_entries(table, baselines, cfg, envelope_factor):
    e = {"optimizer": label, **common, **e}
    if timing:
      ratio = timing["adam"] / timing[compare.LEARNED]
      e.update({"seconds_per_step_learned": timing[compare.LEARNED],
                "seconds_per_step_adam": timing["adam"],
                "wallclock_speedup_median": e["speedup_median"] * ratio})
    entries.append(e)
  for e in compare.calibration_entries(table, baselines, cfg, envelope_factor):
    entries.append({"optimizer": f"tuned {e.pop('subject')}", "reference": label, **common, **e})
  drawn = None
  if samples and groups[0].final_metric is not None:
    lr = float(table["adam/train/best_lr"][0])
    drawn = _samples(groups[0], tx, lr, n)
  learned_all = np.concatenate(learned_parts, axis=0)
  return FamilyResult(entries=entries, steps=panels[0]["steps"], learned_mean=_mean(learned_all),
                      tuned_mean={b: _mean_of_panels(panels, b) for b in baselines},
                      learned_curves=learned_all, seconds=time.perf_counter() - t0,
                      seconds_per_step=timing, samples=drawn, panels=panels)


def _mean_of_panels(panels, baseline: str) -> np.ndarray:
  """The tuned baseline's mean curve: the mean of the groups' mean curves."""
  return np.nanmean(np.stack([p["tuned"][baseline] for p in panels]), axis=0)


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
  out["data"] = np.asarray(task.heldout(jax.random.key(2), num_samples, "test"))
  out["adam_learning_rate"] = np.array(lr)
  return out


def evaluate_suite(opt: suites.Optimizer, suite: str, config, *,
                   cache: cache_lib.CurveCache | None = None,
                   families: Sequence[str] | None = None,
                   baselines: Sequence[str] = config_lib.BASELINES, log=None,
                   samples: bool = False) -> list[FamilyResult]:
  """Runs a named suite (or, with ``families``, those families) for one optimizer."""
  if families:
    suites.check_families(families)
    plans = [suites.FamilyPlan(f, config.num_steps, tuple(baselines)) for f in families]
  else:
    plans = suites.plan(suite, opt, config, baselines)
  out = []
  for p in plans:
    if log:
      log(f"meta-eval: {opt.label} on {p.family} ({suite}, {config.num_tasks} tasks x "
          f"{config.num_seeds} seeds, {p.num_steps} steps)")
    result = evaluate_family(opt.lopt, opt.meta_params, suites.build_family(p.family, opt),
                             p.family, config,
                             label=opt.label, suite=suite, num_steps=p.num_steps,
                             baselines=p.baselines, envelope_factor=p.envelope_factor,
                             cache=cache, horizon_aware=opt.horizon_aware, samples=samples)
    if log:
      log(f"meta-eval:   done in {result.seconds:.0f}s")
    out.append(result)
  return out
