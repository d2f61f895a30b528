"""Evaluation of a learned optimizer against Adam over a learning-rate grid on held-out tasks.

What is measured (DESIGN.md, "Evaluation"):

* per-task curves: the loss on a held-out ``"valid"`` batch after every inner step, for the
  learned optimizer and for ``optax.adam`` at every learning rate of a grid, several seeds each;
* ``win_fraction``: the fraction of (task, seed) runs where the learned optimizer's final loss
  is below that of Adam *tuned per task* (the best learning rate of the grid for that task);
* ``speedup``: VeLO's steps-to-reach measure (Metz et al. 2022, arXiv 2211.09760, Sec. 5.1):
  the number of steps the lower envelope of Adam's curves over the grid needs to reach the
  learned optimizer's final loss, divided by the learned optimizer's number of steps (> 1 means
  the learned optimizer is faster; capped at 1 / num_steps below and at ``max_speedup`` above
  when Adam never gets there);
* curves are compared after a trailing moving average over ``smoothing_window`` steps
  (default ``num_steps // 20``): minibatch noise would otherwise let the minimum over a grid of
  noisy curves "reach" a loss that no single setting holds, and a single final value decide wins;
* aggregates over runs as the median and the interquartile mean (IQM, Agarwal et al. 2021,
  arXiv 2108.13264), as Celo reports them (arXiv 2501.12670).

Everything heavy happens in one jitted program per optimizer: ``vmap`` over tasks and seeds,
``lax.scan`` over steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from learned_opt import base as lopt_base
from tasks import base as task_base


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How an evaluation is run.

  Attributes:
    num_tasks: held-out tasks sampled from the family.
    num_seeds: seeds (parameter init and data order) per task.
    num_steps: inner steps per run.
    adam_learning_rates: the grid Adam is tuned over.
    seed: the evaluation's PRNG seed (kept apart from meta-training's keys).
    max_speedup: cap on the steps-to-reach speed-up when Adam never reaches the loss.
    smoothing_window: moving-average window for comparing curves (None: num_steps // 20).
  """

  num_tasks: int = 8
  num_seeds: int = 2
  num_steps: int = 200
  adam_learning_rates: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
  seed: int = 12345
  max_speedup: float = 10.0
  smoothing_window: int | None = None

  def __post_init__(self):
    for name in ("num_tasks", "num_seeds", "num_steps"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"EvalConfig.{name} must be a positive int, got {value!r}")
    if not self.adam_learning_rates or any(lr <= 0 for lr in self.adam_learning_rates):
      raise ValueError("EvalConfig.adam_learning_rates must be a non-empty tuple of positive "
                       f"floats, got {self.adam_learning_rates!r}")


def training_curves(family: task_base.TaskFamily, tx: optax.GradientTransformation,
                    task_params: Any, keys: jax.Array, num_steps: int) -> jax.Array:
  """Trains every (task, seed) with ``tx`` and returns valid losses, shape [tasks, seeds, steps+1].

  Entry ``[..., 0]`` is the loss at initialisation, entry ``[..., t]`` the loss after ``t``
  steps. Non-finite losses are kept (the report counts them).
  """

  def one_run(tp, key):
    task = family.task(tp)
    k_init, k_valid, k_loop = jax.random.split(key, 3)
    params = task.init(k_init)
    valid_batch = task.sample_batch(k_valid, "valid")
    opt_state = tx.init(params)

    def valid_loss(p):
      return task.loss(p, k_valid, valid_batch)

    def step(carry, k):
      p, s = carry
      kb, kl = jax.random.split(k)
      batch = task.sample_batch(kb, "train")
      loss, grads = jax.value_and_grad(task.loss)(p, kl, batch)
      updates, s = tx.update(grads, s, p, loss=loss)
      p = optax.apply_updates(p, updates)
      return (p, s), valid_loss(p)

    _, losses = jax.lax.scan(step, (params, opt_state), jax.random.split(k_loop, num_steps))
    return jnp.concatenate([valid_loss(params)[None], losses])

  per_seed = jax.vmap(one_run, in_axes=(None, 0))
  return jax.jit(jax.vmap(per_seed))(task_params, keys)


def interquartile_mean(x: np.ndarray) -> float:
  """Mean of the values between the 25th and 75th percentiles (Agarwal et al. 2021)."""
  x = np.sort(np.asarray(x, np.float64).ravel())
  n = len(x)
  lo, hi = int(np.floor(0.25 * n)), int(np.ceil(0.75 * n))
  return float(np.mean(x[lo:max(hi, lo + 1)]))


def steps_to_reach(envelope: np.ndarray, target: float) -> float:
  """First step at which a (non-increasing) ``envelope`` curve is <= ``target``; inf if never."""
  hits = np.nonzero(envelope <= target)[0]
  return float(hits[0]) if len(hits) else float("inf")


def smooth(curves: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average over the last axis (the first ``window - 1`` entries average
  over what exists so far); ``window = 1`` returns the curves unchanged."""
  if window <= 1:
    return curves
  csum = np.cumsum(curves, axis=-1)
  out = csum.copy()
  out[..., window:] = csum[..., window:] - csum[..., :-window]
  counts = np.minimum(np.arange(1, curves.shape[-1] + 1), window)
  return out / counts


def summarize(learned: np.ndarray, adam: np.ndarray, learning_rates: Sequence[float],
              max_speedup: float = 10.0, smoothing_window: int | None = None) -> dict[str, Any]:
  """Turns curves into the report's numbers.

  Args:
    learned: valid losses of the learned optimizer, ``[tasks, seeds, steps+1]``.
    adam: valid losses of Adam, ``[lrs, tasks, seeds, steps+1]``.
    learning_rates: Adam's grid, matching ``adam``'s first axis.
    max_speedup: cap when Adam never reaches the learned optimizer's final loss.
    smoothing_window: trailing moving-average window applied to every curve before comparing;
      default ``max(1, num_steps // 20)``.

  Returns:
    A JSON-serialisable dict with per-run and aggregate numbers.
  """
  learned = np.asarray(learned, np.float64)
  adam = np.asarray(adam, np.float64)
  num_steps = learned.shape[-1] - 1
  window = max(1, num_steps // 20) if smoothing_window is None else int(smoothing_window)
  clean = lambda x: smooth(np.where(np.isfinite(x), x, np.inf), window)
  final_learned = clean(learned[..., -1])  # [tasks, seeds]
  final_adam = clean(adam[..., -1])  # [lrs, tasks, seeds]
  # Adam tuned per task: the learning rate with the best mean final loss over seeds.
  best_lr_index = np.argmin(final_adam.mean(axis=2), axis=0)  # [tasks]
  tuned_final = np.take_along_axis(final_adam, best_lr_index[None, :, None], 0)[0]
  wins = final_learned < tuned_final
  # Lower envelope of Adam over the grid (per task and seed), running minimum over steps.
  envelope = np.minimum.accumulate(np.min(clean(adam), axis=0), axis=-1)
  speedups = np.empty(final_learned.shape)
  for idx in np.ndindex(*final_learned.shape):
    reach = steps_to_reach(envelope[idx], final_learned[idx])
    speedups[idx] = min(max(reach, 1.0) / num_steps, max_speedup)
  return {
      "num_steps": num_steps,
      "smoothing_window": window,
      "adam_learning_rates": list(map(float, learning_rates)),
      "adam_best_learning_rate_per_task": [float(learning_rates[i]) for i in best_lr_index],
      "final_loss_learned": final_learned.tolist(),
      "final_loss_adam_tuned": tuned_final.tolist(),
      "win_fraction": float(np.mean(wins)),
      "speedup_per_run": speedups.tolist(),
      "speedup_median": float(np.median(speedups)),
      "speedup_iqm": interquartile_mean(speedups),
      "nonfinite_runs_learned": int(np.sum(~np.isfinite(learned).all(axis=-1))),
      "nonfinite_runs_adam": int(np.sum(~np.isfinite(adam).all(axis=-1))),
  }


def evaluate(lopt: lopt_base.LearnedOptimizer, meta_params: Any, family: task_base.TaskFamily,
             config: EvalConfig = EvalConfig()) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Trains held-out tasks with the learned optimizer and with Adam over a grid.

  Returns:
    ``(summary, curves)``: the :func:`summarize` dict (plus the family's name) and the raw
    curves ``{"learned": [tasks, seeds, steps+1], "adam": [lrs, tasks, seeds, steps+1]}``.
  """
  key = jax.random.key(config.seed)
  k_tasks, k_runs = jax.random.split(key)
  task_params = jax.vmap(family.sample)(jax.random.split(k_tasks, config.num_tasks))
  run_keys = jax.random.split(k_runs, (config.num_tasks, config.num_seeds))
  # Same transform as during meta-training (the unrolls do not pass num_steps), so horizon
  # features that were never trained cannot change the optimizer's behaviour at evaluation.
  learned = training_curves(family, lopt.transform(meta_params), task_params, run_keys,
                            config.num_steps)
  adam = np.stack([
      np.asarray(training_curves(family, optax.adam(lr), task_params, run_keys, config.num_steps))
      for lr in config.adam_learning_rates
  ])
  learned = np.asarray(learned)
  summary = summarize(learned, adam, config.adam_learning_rates, config.max_speedup,
                      config.smoothing_window)
  summary["family"] = getattr(family, "name", type(family).__name__)
  summary["optimizer"] = lopt.name
  return summary, {"learned": learned, "adam": adam}


def plot_curves(curves: dict[str, np.ndarray], summary: dict[str, Any], path: str) -> None:
  """Writes a PNG: mean valid loss over seeds, one panel per task (up to 8), Adam grid in grey."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  learned, adam = curves["learned"], curves["adam"]
  num_tasks = min(learned.shape[0], 8)
  cols = min(num_tasks, 4)
  rows = int(np.ceil(num_tasks / cols))
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  lrs = summary["adam_learning_rates"]
  for t in range(num_tasks):
    ax = axes[t // cols][t % cols]
    for i, lr in enumerate(lrs):
      shade = 0.3 + 0.5 * i / max(len(lrs) - 1, 1)
      ax.plot(np.nanmean(adam[i, t], axis=0), color=str(shade), lw=0.8,
              label=f"Adam {lr:g}" if t == 0 else None)
    ax.plot(np.nanmean(learned[t], axis=0), color="tab:red", lw=1.8,
            label="learned" if t == 0 else None)
    if np.all(np.isfinite(learned[t])) and np.nanmin(learned[t]) > 0 and np.nanmin(adam[:, t]) > 0:
      ax.set_yscale("log")
    ax.set_title(f"task {t}", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
  for t in range(num_tasks, rows * cols):
    axes[t // cols][t % cols].axis("off")
  axes[0][0].set_ylabel("valid loss")
  fig.legend(loc="lower center", ncol=min(len(lrs) + 1, 8), fontsize=7, frameon=False)
  fig.suptitle(f"{summary.get('optimizer', 'learned')} vs Adam grid on {summary.get('family')}: "
               f"wins {summary['win_fraction']:.0%}, speed-up median "
               f"{summary['speedup_median']:.2f}x, IQM {summary['speedup_iqm']:.2f}x", fontsize=9)
  fig.tight_layout(rect=(0, 0.06, 1, 0.95))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(summary: dict[str, Any], curves: dict[str, np.ndarray], out_dir: str,
                 stem: str = "eval") -> dict[str, str]:
  """Writes ``{stem}.json`` (summary + mean curves), ``{stem}.png`` and ``{stem}.md`` to out_dir.

  Returns:
    The paths written, keyed by kind.
  """
  os.makedirs(out_dir, exist_ok=True)
  paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("json", "png", "md")}
  data = dict(summary)
  data["mean_curve_learned"] = np.nanmean(curves["learned"], axis=(0, 1)).tolist()
  data["mean_curve_adam"] = np.nanmean(curves["adam"], axis=(1, 2)).tolist()
  tmp = paths["json"] + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=1, allow_nan=True)
  os.replace(tmp, paths["json"])
  plot_curves(curves, summary, paths["png"])
  with open(paths["md"], "w") as f:
    f.write(markdown_table(summary))
  return paths


def markdown_table(summary: dict[str, Any]) -> str:
  """A short Markdown report of a summary (what the README's results table is made from)."""
  lines = [
      f"# {summary.get('optimizer', 'learned')} vs Adam on {summary.get('family')}",
      "",
      f"{len(summary['final_loss_learned'])} held-out tasks x "
      f"{len(summary['final_loss_learned'][0])} seeds, {summary['num_steps']} steps; Adam tuned "
      f"per task over {summary['adam_learning_rates']}; curves compared after a "
      f"{summary['smoothing_window']}-step moving average.",
      "",
      "| measure | value |",
      "|---|---|",
      f"| runs where learned beats tuned Adam | {summary['win_fraction']:.0%} |",
      f"| steps-to-reach speed-up, median | {summary['speedup_median']:.2f}x |",
      f"| steps-to-reach speed-up, IQM | {summary['speedup_iqm']:.2f}x |",
      f"| mean final loss, learned | {np.mean(summary['final_loss_learned']):.4g} |",
      f"| mean final loss, tuned Adam | {np.mean(summary['final_loss_adam_tuned']):.4g} |",
      f"| non-finite runs (learned / Adam) | {summary['nonfinite_runs_learned']} / "
      f"{summary['nonfinite_runs_adam']} |",
      "",
  ]
  return "\n".join(lines)


def evaluate_and_report(lopt: lopt_base.LearnedOptimizer, meta_params: Any,
                        family: task_base.TaskFamily, out_dir: str,
                        config: EvalConfig = EvalConfig()) -> dict[str, Any]:
  """Runs :func:`evaluate` and :func:`write_report`; returns the summary (with file paths)."""
  summary, curves = evaluate(lopt, meta_params, family, config)
  summary["files"] = write_report(summary, curves, out_dir)
  return summary
