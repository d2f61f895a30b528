"""Training curves: one jitted program per (optimizer, family, length), ``vmap`` over hyper-
parameters, tasks and seeds, ``lax.scan`` over steps.

A run trains one task from one seed and records the loss on a fixed held-out ``"valid"`` batch
after every step. The valid batch and the valid loss use separate PRNG keys (a task whose loss
is stochastic, e.g. diffusion, must not correlate its noise with the batch's).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import base as task_base

# (hyper-parameter scalar) -> optax transform; the scalar is traced (vmapped over a grid).
TransformFactory = Callable[[jax.Array], optax.GradientTransformation]


def draw(family: task_base.TaskFamily, key: jax.Array, num_tasks: int, num_seeds: int):
  """Held-out task parameters ``[tasks]`` and run keys ``[tasks, seeds]`` from ``key``."""
  k_tasks, k_runs = jax.random.split(key)
  task_params = jax.vmap(family.sample)(jax.random.split(k_tasks, num_tasks))
  return task_params, jax.random.split(k_runs, (num_tasks, num_seeds))


def constant_adam(lr: jax.Array) -> optax.GradientTransformation:
  """``optax.adam`` at (traced) learning rate ``lr``."""
  return optax.adam(lr)


def cosine_adam(num_steps: int, warmup_fraction: float) -> TransformFactory:
  """Adam with linear warm-up over ``warmup_fraction`` of ``num_steps``, then cosine decay to 0.

  .. math::
    \\eta_t = \\eta \\cdot \\begin{cases} (t + 1) / W & t < W \\\\
      \\tfrac12 \\big(1 + \\cos(\\pi \\tfrac{t - W}{N - W})\\big) & t \\ge W \\end{cases}

  (the first update already has a non-zero rate).
  """
  warmup = max(1, int(math.ceil(warmup_fraction * num_steps))) if warmup_fraction > 0 else 0
  decay = max(1, num_steps - warmup)

  def factor(count):
    count = jnp.asarray(count, jnp.float32)
    ramp = (count + 1.0) / max(warmup, 1)
    frac = jnp.clip((count - warmup) / decay, 0.0, 1.0)
    cos = 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(count < warmup, ramp, cos)

  def make(lr):
    return optax.chain(optax.scale_by_adam(),
                       optax.scale_by_schedule(lambda c: -lr * factor(c)))

  return make


def training_curves(family: task_base.TaskFamily, make_tx: TransformFactory,
                    hparams: jax.Array, task_params: Any, keys: jax.Array, num_steps: int,
                    final_metric: Callable | None = None):
  """Valid-loss curves of every (hyper-parameter, task, seed), in one jitted program.

  Args:
    family: the task family.
    make_tx: builds the optimizer from one (traced) hyper-parameter.
    hparams: ``[H]`` hyper-parameters (e.g. learning rates; a dummy for a learned optimizer).
    task_params: ``[tasks]`` task parameters (:func:`draw`).
    keys: ``[tasks, seeds]`` run keys.
    num_steps: steps per run.
    final_metric: optional ``(task, params, key) -> scalar`` measured after the last step.

  Returns:
    ``curves`` ``[H, tasks, seeds, num_steps + 1]`` (``[..., 0]``: at initialisation), and
    ``metric`` ``[H, tasks, seeds]`` (or None). Non-finite losses are kept.
  """

  def one_run(h, tp, key):
    task = family.task(tp)
    tx = make_tx(h)
    k_init, k_batch, k_loss, k_loop, k_metric = jax.random.split(key, 5)
    params = task.init(k_init)
    valid_batch = task.sample_batch(k_batch, "valid")
    valid_loss = lambda p: task.loss(p, k_loss, valid_batch).astype(jnp.float32)

    def step(carry, k):
      p, s = carry
      kb, kl = jax.random.split(k)
      batch = task.sample_batch(kb, "train")
      loss, grads = jax.value_and_grad(task.loss)(p, kl, batch)
      updates, s = tx.update(grads, s, p, loss=loss)
      p = optax.apply_updates(p, updates)
      return (p, s), valid_loss(p)

    (params_end, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                           jax.random.split(k_loop, num_steps))
    curve = jnp.concatenate([valid_loss(params)[None], losses])
    metric = (jnp.zeros((), jnp.float32) if final_metric is None
              else jnp.asarray(final_metric(task, params_end, k_metric), jnp.float32))
    return curve, metric

  runs = jax.vmap(jax.vmap(jax.vmap(one_run, (None, None, 0)), (None, 0, 0)), (0, None, None))
  curves, metric = jax.jit(runs)(jnp.asarray(hparams, jnp.float32), task_params, keys)
  curves = np.asarray(curves)
  return curves, (None if final_metric is None else np.asarray(metric))


def learned_curves(family: task_base.TaskFamily, tx: optax.GradientTransformation,
                   task_params: Any, keys: jax.Array, num_steps: int,
                   final_metric: Callable | None = None):
  """:func:`training_curves` of one optimizer: ``[tasks, seeds, steps + 1]`` (and metric)."""
  curves, metric = training_curves(family, lambda _: tx, jnp.zeros((1,)), task_params, keys,
                                   num_steps, final_metric)
  return curves[0], (None if metric is None else metric[0])


def trained_params(family: task_base.TaskFamily, tx: optax.GradientTransformation,
                   task_params: Any, key: jax.Array, num_steps: int):
  """Parameters after ``num_steps`` steps of one run (same keys as :func:`training_curves`)."""

  def run(tp, key):
    task = family.task(tp)
    k_init, _, _, k_loop, _ = jax.random.split(key, 5)
    params = task.init(k_init)

    def step(carry, k):
      p, s = carry
      kb, kl = jax.random.split(k)
      loss, grads = jax.value_and_grad(task.loss)(p, kl, task.sample_batch(kb, "train"))
      updates, s = tx.update(grads, s, p, loss=loss)  # as in training_curves
      return (optax.apply_updates(p, updates), s), None

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)),
                                  jax.random.split(k_loop, num_steps))
    return params

  return jax.jit(run)(task_params, key)
