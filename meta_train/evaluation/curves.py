"""Training curves: one jitted program per (optimizer, family, length), ``vmap`` over hyper-
parameters, tasks and seeds, ``lax.scan`` over steps.

A run trains one task from one seed on ``"train"`` batches and records, every ``every`` steps
(and at initialisation), its loss on two fixed, large evaluation sets (``Task.eval_batch``):
the train split's (*train loss*: what an optimizer is for) and the test split's (*test loss*;
meta-training never reads that split). The evaluation sets and the loss's own randomness (a
diffusion loss draws noise levels) use a key of their own, fixed per (task, seed), so every
optimizer's run of one (task, seed) is measured on exactly the same examples and noise. The
batch of step ``t`` is drawn from ``fold_in(key, t)``: runs of different lengths share their
first steps' batches, so a tuned rate re-run for ``N`` steps retraces the first ``N`` steps of
its longer grid run.
"""

from __future__ import annotations

from typing import Any, Callable

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import base as task_base

SPLITS = ("train", "test")

# (hyper-parameter scalar) -> optax transform; the scalar is traced (vmapped over a grid).
TransformFactory = Callable[[jax.Array], optax.GradientTransformation]


def draw(family: task_base.TaskFamily, key: jax.Array, num_tasks: int, num_seeds: int):
  """Held-out task parameters ``[tasks]`` and run keys ``[tasks, seeds]`` from ``key``."""
  k_tasks, k_runs = jax.random.split(key)
  task_params = jax.vmap(family.sample)(jax.random.split(k_tasks, num_tasks))
  return task_params, jax.random.split(k_runs, (num_tasks, num_seeds))


def _run_keys(key):
  """``(init, loop, eval, metric)`` keys of one run."""
  k_init, k_loop, k_eval, k_metric = jax.random.split(key, 4)
  return k_init, k_loop, k_eval, k_metric


def _train_step(task, tx, k_loop):
  """One training step ``(params, state), t -> (params, state)`` on a ``"train"`` batch."""

  def step(carry, t):
    p, s = carry
    kb, kl = jax.random.split(jax.random.fold_in(k_loop, t))
    loss, grads = jax.value_and_grad(task.loss)(p, kl, task.sample_batch(kb, "train"))
    updates, s = tx.update(grads, s, p, loss=loss)
    return (optax.apply_updates(p, updates), s)

  return step


def _eval_losses(task, k_eval):
  """``params -> [len(SPLITS)]`` losses on the fixed evaluation sets."""
  batches = [task.eval_batch(split) for split in SPLITS]
  return lambda p: jnp.stack([task.loss(p, k_eval, b).astype(jnp.float32) for b in batches])


# Runs of one program trained side by side (``vmap``); the rest follow in sequence
# (``lax.map``), so memory stays bounded when a grid has many rates and the evaluation sets
# are large (a conv denoiser's 4,096 evaluation examples per run).
MAX_PARALLEL_RUNS = 32


def even_batches(num_runs: int, max_parallel: int) -> tuple[int, int]:
  """``(batch, padded)``: the fewest groups of at most ``max_parallel`` runs, all of one size
  ``batch``, covering ``num_runs`` (``padded = batch * groups >= num_runs``).

  One size, so the program holds one copy of the training loop: ``lax.map``'s remainder group
  would compile a second one (on CPU the compile is most of an evaluation's time).
  """
  groups = -(-num_runs // max_parallel)
  batch = -(-num_runs // groups)
  return batch, batch * groups


def _map_runs(one_run, args, num_runs: int, max_parallel: int = MAX_PARALLEL_RUNS):
  """``one_run(*a)`` for every run of ``args`` (leading axis ``num_runs``), jitted, at most
  ``max_parallel`` side by side, in groups of one size (the last padded with copies of run 0,
  whose results are dropped)."""
  batch, padded = even_batches(num_runs, max_parallel)
  if padded > num_runs:
    fill = np.zeros(padded - num_runs, np.int32)
    args = jax.tree.map(lambda x: jnp.concatenate([x, x[fill]]), args)
  out = jax.jit(lambda a: jax.lax.map(lambda x: one_run(*x), a, batch_size=batch))(args)
  return jax.tree.map(lambda x: x[:num_runs], out)


def _flat_runs(hparams, task_params, keys):
  """Every (hyper-parameter, task, seed) as one leading axis of ``H * T * S`` runs."""
  h, (t, s) = hparams.shape[0], keys.shape
  run = np.arange(h * t * s)
  task = (run // s) % t
  return (hparams[run // (t * s)], jax.tree.map(lambda x: x[task], task_params),
          keys.reshape(t * s)[run % (t * s)])


def training_curves(family: task_base.TaskFamily, make_tx: TransformFactory,
                    hparams: jax.Array, task_params: Any, keys: jax.Array, num_steps: int,
                    every: int, max_parallel: int = MAX_PARALLEL_RUNS) -> dict[str, np.ndarray]:
  """Train- and test-loss curves of every (hyper-parameter, task, seed), in one jitted program.

  Args:
    family: the task family.
    make_tx: builds the optimizer from one (traced) hyper-parameter.
    hparams: ``[H]`` hyper-parameters (e.g. learning rates; a dummy for a learned optimizer).
    task_params: ``[tasks]`` task parameters (:func:`draw`).
    keys: ``[tasks, seeds]`` run keys.
    num_steps: steps per run (a multiple of ``every``).
    every: steps between recorded points.
    max_parallel: runs trained side by side (``vmap``); groups of them run in sequence.

  Returns:
    ``{split: [H, tasks, seeds, num_steps // every + 1]}`` for each of :data:`SPLITS` (point
    ``i``: after ``i * every`` steps). Non-finite losses are kept.
  """
  if num_steps % every:
    raise ValueError(f"num_steps {num_steps} must be a multiple of every={every}")
  points = num_steps // every

  def one_run(h, tp, key):
    task = family.task(tp)
    tx = make_tx(h)
    k_init, k_loop, k_eval, _ = _run_keys(key)
    params = task.init(k_init)
    measure = _eval_losses(task, k_eval)
    step = _train_step(task, tx, k_loop)

    def chunk(carry, i):
      carry = jax.lax.fori_loop(i * every, (i + 1) * every, lambda t, c: step(c, t), carry)
      return carry, measure(carry[0])

    _, losses = jax.lax.scan(chunk, (params, tx.init(params)), jnp.arange(points))
    return jnp.concatenate([measure(params)[None], losses]).T  # [splits, points + 1]

  hparams = jnp.asarray(hparams, jnp.float32)
  shape = (hparams.shape[0],) + tuple(keys.shape)
  curves = np.asarray(_map_runs(one_run, _flat_runs(hparams, task_params, keys),
                                int(np.prod(shape)), max_parallel))
  curves = curves.reshape(shape + curves.shape[1:])
  return {split: curves[..., i, :] for i, split in enumerate(SPLITS)}


def learned_curves(family: task_base.TaskFamily, tx: optax.GradientTransformation,
                   task_params: Any, keys: jax.Array, num_steps: int,
                   every: int) -> dict[str, np.ndarray]:
  """:func:`training_curves` of one optimizer: ``{split: [tasks, seeds, points]}``."""
  curves = training_curves(family, lambda _: tx, jnp.zeros((1,)), task_params, keys,
                           num_steps, every)
  return {split: c[0] for split, c in curves.items()}


def trained_params(family: task_base.TaskFamily, tx: optax.GradientTransformation,
                   task_params: Any, key: jax.Array, num_steps: int):
  """Parameters after ``num_steps`` steps of one run (the batches of :func:`training_curves`)."""
  return jax.jit(lambda tp, k: trained_params_fn(family.task(tp), tx, k, num_steps))(
      task_params, key)


def final_metrics(family: task_base.TaskFamily, make_tx: TransformFactory, hparams: jax.Array,
                  task_params: Any, keys: jax.Array, num_steps: int,
                  metric: Callable) -> np.ndarray:
  """A sample metric of every (task, seed) run after exactly ``num_steps`` steps.

  Each task trains at its own hyper-parameter (its tuned rate), so a baseline's metric is read
  at the same step count as the learned optimizer's, whatever length its grid ran.

  Args:
    family, make_tx, task_params, keys: as in :func:`training_curves`.
    hparams: ``[tasks]`` one hyper-parameter per task.
    num_steps: steps before the metric is read.
    metric: ``(task, params, key) -> scalar``.

  Returns:
    ``[tasks, seeds]``.
  """

  def one_run(h, tp, key):
    task = family.task(tp)
    _, _, _, k_metric = _run_keys(key)
    params = trained_params_fn(task, make_tx(h), key, num_steps)
    return jnp.asarray(metric(task, params, k_metric), jnp.float32)

  hparams = jnp.asarray(hparams, jnp.float32)
  t, s = keys.shape
  flat = (jnp.repeat(hparams, s), jax.tree.map(lambda x: jnp.repeat(x, s, axis=0), task_params),
          keys.reshape(t * s))
  return np.asarray(_map_runs(one_run, flat, t * s)).reshape(t, s)


def trained_params_fn(task, tx, key, num_steps: int):
  """The traceable core of :func:`trained_params` for one built task."""
  k_init, k_loop, _, _ = _run_keys(key)
  params = task.init(k_init)
  step = _train_step(task, tx, k_loop)
  params, _ = jax.lax.fori_loop(0, num_steps, lambda t, c: step(c, t), (params, tx.init(params)))
  return params


def seconds_per_step(family: task_base.TaskFamily, tx: optax.GradientTransformation,
                     task_params: Any, key: jax.Array, num_steps: int = 50,
                     repeats: int = 3) -> float:
  """Wall-clock seconds of one training step (model forward and backward included) of the
  first task, inside one jitted loop; the best of ``repeats`` timings after compiling."""
  tp = jax.tree.map(lambda x: x[0], task_params)
  run = jax.jit(lambda tp, k: jax.tree.leaves(
      trained_params_fn(family.task(tp), tx, k, num_steps)))
  jax.block_until_ready(run(tp, key))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(run(tp, key))
    best = min(best, time.perf_counter() - t0)
  return best / num_steps
