"""Truncated unrolls of inner training, vectorised over particles that reset to fresh tasks.

A *particle* is one inner training: a sampled task, its parameters, the learned optimizer's
optax state and a step counter. A truncated unroll advances every particle by ``K`` inner steps
in one ``lax.scan`` (vmapped over particles) and returns the per-step normalised losses the
estimators turn into meta-losses:

.. math::
  x_{t+1} = x_t + u_\\theta(\\nabla f(x_t; \\xi_t), s_t), \\qquad
  \\ell_t = n\\big(f(x_t; \\xi_t)\\big)\\ \\text{(train)}\\quad\\text{or}\\quad
  \\ell_t = n\\big(f_{\\rm valid}(x_{t+1})\\big)\\ \\text{(valid)}

where ``n`` is the task's normaliser. When a particle's step counter reaches its horizon it is
replaced, inside the scan (``jnp.where``), by a fresh particle: a new task from
``family.sample``, ``task.init`` parameters and ``lopt.transform(θ).init`` state. Horizons are
log-uniform integers in ``[min_horizon, max_horizon]`` and, with ``stagger``, the first run of
each particle starts at a random step so particles are decorrelated.

All randomness of a particle comes from its ``run_key`` (raw ``uint32`` key data): task, initial
parameters and horizon of the next run, and every batch of the current run. Two particles with
the same ``run_key`` and step therefore see the same tasks and data (common random numbers),
which is how antithetic pairs are built. Non-finite meta-losses are replaced by the task's
``ceiling`` and counted; the run goes on until its horizon so that pairs stay in step.

References:
  Vicol, Metz & Sohl-Dickstein, "Unbiased gradient estimation in unrolled computation graphs
  with persistent evolution strategies", 2021, arXiv 2112.13835 (Sec. 3, truncated unrolls).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from learned_opt import base as lopt_base
from meta_train import errors
from meta_train import objective as objective_lib
from tasks import base as task_base

META_LOSSES = ("train", "valid")

# Values folded into a run key to derive independent streams: the next run, the new run's task,
# initial parameters and horizon, then the keys of step s at 4 + 3 s + role for the roles
# (train batch, train loss, valid). The valid key is split in two: the valid batch's key and
# the valid loss's key (the "train" meta-loss draws no valid key at all). Each group is drawn
# with one vectorised fold_in (PRNG calls dominate the per-truncation cost).
_NEXT_RUN, _TASK, _INIT, _HORIZON, _DATA = 0, 1, 2, 3, 4
_TRAIN_BATCH, _TRAIN_LOSS, _VALID = 0, 1, 2
_STEP_ROLES = 3
_VALID_BATCH, _VALID_LOSS = 0, 1
# The stream of a run's parameter scales (task augmentation): far above any step's data ids.
_SCALES = 0xFFFFFFFF
# The stream of the batches a run's final loss is recomputed on (``final_batches``).
_FINAL = 0xFFFFFFFE


def _fold_in_many(key: jax.Array, data: jax.Array) -> jax.Array:
  """``[fold_in(key, d) for d in data]`` as one vectorised PRNG call (``data`` any shape)."""
  flat = jax.vmap(lambda d: jax.random.fold_in(key, d))(data.reshape(-1))
  return flat.reshape(data.shape)


@dataclasses.dataclass(frozen=True)
class UnrollConfig:
  """Static configuration of truncated unrolls.

  Attributes:
    truncation_length: inner steps ``K`` per truncated unroll.
    min_horizon: shortest inner training (steps); must be ``>= truncation_length`` so a
      particle resets at most once per truncation.
    max_horizon: longest inner training; horizons are log-uniform integers in
      ``[min_horizon, max_horizon]`` (equal values give a fixed horizon).
    meta_loss: ``"train"``: normalised training loss at each step's parameters, or
      ``"valid"``: normalised loss on a ``"valid"`` batch after each step.
    log_meta_loss: each step's normalised loss ``ℓ̂`` becomes ``log(max(ℓ̂, 0) + ε)``
      (:func:`meta_train.objective.log_loss`).
    end_weight: ``p``: each step's meta-loss is weighted by ``(p + 1) (t/T)^p``, ``t`` the
      steps its run has done after it and ``T`` the run's horizon
      (:func:`meta_train.objective.end_weight`; ``0``: every step alike).
    final_batches: ``n > 0``: the meta-loss is the run's *final* normalised loss, recomputed
      on ``n`` fresh batches of the meta-loss split (``meta_loss``) and averaged, instead of
      the mean over its steps (VeLO's ``loss_type="last_recompute"``; Metz et al. 2022, arXiv
      2211.09760, App. C). Only an unroll that is one whole run has a final loss: full-horizon
      ES takes it, the truncated estimators refuse it. ``0``: the mean over steps.
    stagger: start each particle's first run at a random step in ``[0, horizon)``.
    horizon_aware: pass each run's horizon to the optimizer as ``num_steps`` (its horizon
      features; the optimizer must then be evaluated with ``num_steps`` too).
    param_scale: task augmentation (1 disables it): each run reparametrises every parameter
      tensor as ``p = s q`` with ``s`` log-uniform in ``[1/param_scale, param_scale]`` (per
      tensor, drawn from the run key); the optimizer sees ``q`` and ``∂L/∂q = s ∂L/∂p``, the
      losses are unchanged (Celo, arXiv 2501.12670, Sec. 4; VeLO, arXiv 2211.09760, App. C).
    loss_clip: ``c > 0``: every normalised loss is clipped at ``c`` (a non-finite one counts
      as ``c``) instead of at the task's ``ceiling`` (:func:`meta_train.objective.normalised`;
      the registered families' normalisers start a run near 1, so ``c`` is about ``c`` times
      a run's initial loss; learned_optimization clips at about 1.3). ``0``: the ceiling.
    rise_penalty: ``λ > 0``: each step's meta-loss ``ℓ̂_t`` becomes ``ℓ̂_t + λ max(0, ℓ̂_t -
      min_{s<t} ℓ̂_s)``, the minimum over the earlier steps of the same run inside this
      truncation (:func:`meta_train.objective.rise_penalty`). ``0``: none. Not with
      ``final_batches`` (it scores the final loss, not the steps).

  The meta-objective's terms apply in the order ``log_meta_loss``, ``rise_penalty``,
  ``end_weight`` (:func:`meta_train.objective.from_config`); a grouped estimator can set them
  per member family (``estimator.member_overrides``).
  """

  truncation_length: int = 20
  min_horizon: int = 100
  max_horizon: int = 100
  meta_loss: str = "train"
  log_meta_loss: bool = False
  end_weight: float = 0.0
  final_batches: int = 0
  stagger: bool = True
  horizon_aware: bool = False
  param_scale: float = 1.0
  loss_clip: float = 0.0
  rise_penalty: float = 0.0

  def __post_init__(self):
    owner = type(self).__name__
    for name in ("truncation_length", "min_horizon", "max_horizon"):
      errors.check_positive_int(owner, name, getattr(self, name))
    if self.min_horizon > self.max_horizon:
      raise errors.FieldError(owner, "min_horizon", f"must not exceed max_horizon "
                                                    f"({self.max_horizon}), got {self.min_horizon}")
    if self.truncation_length > self.min_horizon:
      raise errors.FieldError(owner, "truncation_length", f"must not exceed min_horizon "
                                                          f"({self.min_horizon}), got "
                                                          f"{self.truncation_length}")
    if not self.param_scale >= 1.0:
      raise errors.FieldError(owner, "param_scale", f"must be >= 1 (1 disables the "
                                                    f"augmentation), got {self.param_scale!r}")
    if self.meta_loss not in META_LOSSES:
      raise errors.FieldError(owner, "meta_loss", f"must be one of {list(META_LOSSES)}, "
                                                  f"got {self.meta_loss!r}")
    if not (isinstance(self.end_weight, (int, float)) and 0.0 <= self.end_weight < 1e3):
      raise errors.FieldError(owner, "end_weight", f"must be a number in [0, 1000) (0 weights "
                                                   f"every step alike), got {self.end_weight!r}")
    if (isinstance(self.final_batches, bool) or not isinstance(self.final_batches, int)
        or self.final_batches < 0):
      raise errors.FieldError(owner, "final_batches", f"must be an int >= 0 (0: the mean over "
                                                      f"steps), got {self.final_batches!r}")
    if not (isinstance(self.loss_clip, (int, float)) and not isinstance(self.loss_clip, bool)
            and 0.0 <= self.loss_clip < math.inf):
      raise errors.FieldError(owner, "loss_clip", f"must be a finite number >= 0 (0: the task's "
                                                  f"ceiling), got {self.loss_clip!r}")
    if not (isinstance(self.rise_penalty, (int, float)) and not isinstance(self.rise_penalty, bool)
            and 0.0 <= self.rise_penalty < math.inf):
      raise errors.FieldError(owner, "rise_penalty", f"must be a finite number >= 0 (0: none), "
                                                     f"got {self.rise_penalty!r}")
    if self.final_batches and self.rise_penalty:
      raise errors.FieldError(owner, "rise_penalty", "penalises rises between the steps' losses, "
                                                     "which final_batches replaces by the final "
                                                     "loss; set one of them")
    if self.final_batches and self.end_weight:
      raise errors.FieldError(owner, "end_weight", "weights the steps' losses, which "
                                                   "final_batches replaces by the final loss; "
                                                   "set one of them")


class ParticleState(NamedTuple):
  """One inner training (leading particle axis when batched).

  Attributes:
    task_params: the family's task parameters of the current run.
    params: the inner parameters.
    opt_state: the learned optimizer's optax state.
    step: int32, inner steps done in the current run.
    horizon: int32, length of the current run.
    run_key: uint32 raw key data of the current run (``jax.random.key_data``).
  """

  task_params: Any
  params: Any
  opt_state: Any
  step: jax.Array
  horizon: jax.Array
  run_key: jax.Array


class UnrollOutput(NamedTuple):
  """What one truncated unroll of one particle reports (leading particle axis when batched).

  Attributes:
    losses: (K,) normalised meta-loss of each step, non-finite values replaced by the ceiling.
    after_reset: (K,) bool, the step belongs to a run that began inside this truncation.
    nonfinite: int32, how many of the K meta-losses were non-finite.
    meta_loss: mean of ``losses``.
    reset: bool, the particle started a new run during this truncation (its state now depends
      on this unroll's θ only).
  """

  losses: jax.Array
  after_reset: jax.Array
  nonfinite: jax.Array
  meta_loss: jax.Array
  reset: jax.Array


def key_data(key: jax.Array) -> jax.Array:
  """Raw ``uint32`` data of a typed PRNG key (a raw key passes through)."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key)
  return key


def wrap_key(raw: jax.Array) -> jax.Array:
  """Typed PRNG key from raw ``uint32`` data (a typed key passes through)."""
  if jnp.issubdtype(raw.dtype, jax.dtypes.prng_key):
    return raw
  return jax.random.wrap_key_data(raw)


def sample_horizon(key: jax.Array, config: UnrollConfig) -> jax.Array:
  """Log-uniform integer horizon in ``[min_horizon, max_horizon]`` (int32)."""
  if config.min_horizon == config.max_horizon:
    return jnp.asarray(config.min_horizon, jnp.int32)
  lo, hi = jnp.log(config.min_horizon), jnp.log(config.max_horizon + 1.0)
  h = jnp.floor(jnp.exp(jax.random.uniform(key, (), minval=lo, maxval=hi)))
  return jnp.clip(h, config.min_horizon, config.max_horizon).astype(jnp.int32)


class FreshRun(NamedTuple):
  """The θ-independent part of a new run (leading particle axis when batched).

  Attributes:
    task_params: the family's task parameters of the run.
    params: the initial inner parameters.
    horizon: int32, length of the run.
    run_key: uint32 raw key data of the run.
  """

  task_params: Any
  params: Any
  horizon: jax.Array
  run_key: jax.Array


def param_scales(config: UnrollConfig, params: Any, run_key: jax.Array) -> Any:
  """Per-tensor scales ``s`` of the run ``run_key`` (``config.param_scale``), or None if 1.

  .. math::
    \\log s \\sim U(-\\log r, \\log r),\\qquad r = \\mathtt{param\\_scale}

  Returns:
    A tree shaped like ``params`` of float32 scalars (None without augmentation).
  """
  if config.param_scale == 1.0:
    return None
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(wrap_key(run_key), _SCALES), max(len(leaves), 1))
  r = math.log(config.param_scale)
  scales = [jnp.exp(jax.random.uniform(k, (), jnp.float32, -r, r)) for k in keys[:len(leaves)]]
  return jax.tree.unflatten(treedef, scales)


def _scaled(params: Any, scales: Any, inverse: bool = False) -> Any:
  """``s q`` (or ``p / s``) leafwise; identity when ``scales`` is None."""
  if scales is None:
    return params
  op = (lambda p, s: p / s) if inverse else (lambda p, s: p * s)
  return jax.tree.map(lambda p, s: op(p, s.astype(p.dtype)), params, scales)


def fresh_run(family: task_base.TaskFamily, config: UnrollConfig,
              run_key: jax.Array) -> FreshRun:
  """Task, initial parameters and horizon of the run ``run_key`` (raw data of one key).

  With ``config.param_scale > 1`` the parameters are the augmented ``q = p / s``
  (:func:`param_scales`).
  """
  k_task, k_init, k_h = _fold_in_many(wrap_key(run_key),
                                      jnp.asarray([_TASK, _INIT, _HORIZON], jnp.uint32))
  task_params = family.sample(k_task)
  params = family.task(task_params).init(k_init)
  params = _scaled(params, param_scales(config, params, run_key), inverse=True)
  return FreshRun(task_params=task_params, params=params, horizon=sample_horizon(k_h, config),
                  run_key=key_data(wrap_key(run_key)))


def start_particle(lopt: lopt_base.LearnedOptimizer, meta_params: Any,
                   run: FreshRun) -> ParticleState:
  """The particle at step 0 of ``run`` (its optimizer state initialised with ``meta_params``)."""
  return ParticleState(task_params=run.task_params, params=run.params,
                       opt_state=lopt.transform(meta_params).init(run.params),
                       step=jnp.zeros([], jnp.int32), horizon=run.horizon, run_key=run.run_key)


def fresh_particle(lopt: lopt_base.LearnedOptimizer, family: task_base.TaskFamily,
                   config: UnrollConfig, meta_params: Any, run_key: jax.Array) -> ParticleState:
  """A particle at step 0 of a new run drawn from ``run_key`` (raw data of one key).

  Args:
    lopt: the learned optimizer.
    family: the task family.
    config: the unroll configuration (for the horizon).
    meta_params: meta-parameters used to initialise the optimizer state.
    run_key: uint32 raw key data identifying the run.

  Returns:
    An unbatched :class:`ParticleState`.
  """
  return start_particle(lopt, meta_params, fresh_run(family, config, run_key))


def next_run_key(run_key: jax.Array) -> jax.Array:
  """Raw key data of the run that follows the run ``run_key``."""
  return key_data(jax.random.fold_in(wrap_key(run_key), _NEXT_RUN))


def init_particles(lopt: lopt_base.LearnedOptimizer, family: task_base.TaskFamily,
                   config: UnrollConfig, meta_params: Any, key: jax.Array,
                   num_particles: int) -> ParticleState:
  """``num_particles`` independent particles, staggered if ``config.stagger``.

  Args:
    lopt: the learned optimizer.
    family: the task family.
    config: the unroll configuration.
    meta_params: meta-parameters (shared) used to initialise optimizer states.
    key: a PRNG key (typed or raw).
    num_particles: how many particles.

  Returns:
    A :class:`ParticleState` with a leading axis of size ``num_particles``.
  """
  k_runs, k_offset = jax.random.split(wrap_key(key))
  run_keys = jax.vmap(key_data)(jax.random.split(k_runs, num_particles))
  particles = jax.vmap(lambda rk: fresh_particle(lopt, family, config, meta_params, rk))(run_keys)
  if config.stagger:
    offsets = jax.random.randint(k_offset, (num_particles,), 0, particles.horizon)
    particles = particles._replace(step=offsets.astype(jnp.int32))
  return particles


def _select(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class TruncationDraws(NamedTuple):
  """All randomness of one truncated unroll of a particle (leading particle axis when batched).

  It depends only on the particle's run (task, run key, step, horizon), not on θ nor on the
  inner parameters, so the two members of an antithetic pair can share one draw.

  Attributes:
    fresh: the run a reset inside this truncation would start.
    data: per-step ``(train_batch, loss_key, valid_batch, valid_key)`` with a leading ``K``
      axis: the current run's before the reset, the fresh run's from it on.
  """

  fresh: FreshRun
  data: Any


def draw_truncation(family: task_base.TaskFamily, config: UnrollConfig, particle: ParticleState,
                    num_steps: int | None = None) -> TruncationDraws:
  """Draws the :class:`TruncationDraws` of ``particle``'s next ``num_steps`` (default ``K``).

  Only ``task_params``, ``step``, ``horizon`` and ``run_key`` of ``particle`` are read: particles
  on the same run at the same step get bit-identical draws.
  """
  num_steps = config.truncation_length if num_steps is None else num_steps
  # At most one reset per truncation (min_horizon >= K): its fresh run is drawn once here.
  fresh = fresh_run(family, config, next_run_key(particle.run_key))
  index = jnp.arange(num_steps, dtype=jnp.int32)
  until_reset = particle.horizon - particle.step
  after_reset = index >= until_reset
  # Vectorised over steps, for the current run and for the run that follows a reset, so the
  # scan body holds no PRNG.
  cur_data = _step_data(family, config, particle.task_params, particle.run_key,
                        particle.step + index)
  fresh_data = _step_data(family, config, fresh.task_params, fresh.run_key,
                          jnp.maximum(index - until_reset, 0))
  data = jax.tree.map(
      lambda f, c: jnp.where(after_reset.reshape((-1,) + (1,) * (c.ndim - 1)), f, c),
      fresh_data, cur_data)
  return TruncationDraws(fresh=fresh, data=data)


def unroll(lopt: lopt_base.LearnedOptimizer, family: task_base.TaskFamily, config: UnrollConfig,
           meta_params: Any, particle: ParticleState, num_steps: int | None = None,
           draws: TruncationDraws | None = None) -> tuple[ParticleState, UnrollOutput]:
  """Advances one particle by ``num_steps`` (default ``K``) inner steps with ``lopt.transform(θ)``.

  Differentiable in ``meta_params`` (TBPTT differentiates it; ES only evaluates it). Vmap it
  over particles (and over ``meta_params`` for perturbed estimators).

  Speed notes: the batches and keys of all ``K`` steps (of the current run and of the run a
  reset would start) are drawn before the scan (:func:`draw_truncation`), vectorised, so the
  scan body holds no PRNG; antithetic estimators draw them once per pair and pass ``draws``.
  The reset is a ``jnp.where`` on (params, optimizer state) at the top of the step that starts
  the fresh run, which lets XLA update the loop carry in place; task parameters are not
  carried but selected per step from the two runs' (loop-invariant) values.

  Args:
    lopt: the learned optimizer.
    family: the task family.
    config: the unroll configuration.
    meta_params: meta-parameters θ of the optimizer applied during this unroll.
    particle: an unbatched :class:`ParticleState`.
    num_steps: scan length; defaults to ``config.truncation_length``.
    draws: ``draw_truncation(family, config, particle, num_steps)`` if already computed (e.g.
      shared by an antithetic pair); drawn here when ``None``.

  Returns:
    ``(new_particle, output)`` with ``output`` an :class:`UnrollOutput`.
  """
  num_steps = config.truncation_length if num_steps is None else num_steps
  if draws is None:
    draws = draw_truncation(family, config, particle, num_steps)
  tx = lopt.transform(meta_params)
  fresh = start_particle(lopt, meta_params, draws.fresh)
  data = draws.data
  # The reset index is known up front: scan step `until_reset` is step 0 of the fresh run.
  index = jnp.arange(num_steps, dtype=jnp.int32)
  until_reset = particle.horizon - particle.step
  after_reset = index >= until_reset
  inner = (particle.params, particle.opt_state)
  fresh_inner = (fresh.params, fresh.opt_state)

  # Each step's context for the meta-objective's terms: does a run start here, and the
  # fraction t/T of its run done after it.
  done = jnp.where(after_reset, index - until_reset, particle.step + index) + 1
  fraction = done / jnp.where(after_reset, fresh.horizon, particle.horizon)
  contexts = objective_lib.StepContext(index == until_reset, fraction)
  objective = objective_lib.from_config(config)

  def body(carry, xs):
    (batch, k_loss, valid_batch, k_valid), context, is_fresh = xs
    start_fresh = context.run_start
    carry, terms = carry
    # The run that ended at the previous step is replaced by the fresh run before this step.
    params, opt_state = _select(start_fresh, fresh_inner, carry)
    # Task parameters are loop invariants (not carried): selecting them here lets XLA fuse the
    # select into their consumers instead of writing a new carry every step.
    task_params = _select(is_fresh, fresh.task_params, particle.task_params)
    task = family.task(task_params)
    scales = param_scales(config, params,
                          jnp.where(is_fresh, fresh.run_key, particle.run_key))
    loss_fn = lambda q, k, b: task.loss(_scaled(q, scales), k, b)
    loss, grads = jax.value_and_grad(loss_fn)(params, wrap_key(k_loss), batch)
    step_tx = tx
    if config.horizon_aware:  # the current run's length, traced (per particle under vmap)
      step_tx = lopt.transform(
          meta_params, num_steps=jnp.where(is_fresh, fresh.horizon, particle.horizon))
    updates, opt_state = step_tx.update(grads, opt_state, params, loss=loss)
    new_params = optax.apply_updates(params, updates)
    if config.meta_loss == "train":
      raw = loss
    else:
      raw = loss_fn(new_params, wrap_key(k_valid), valid_batch)
    norm, bad = objective_lib.normalised(task, raw, config.loss_clip)
    norm, terms = objective.apply(norm, terms, context)
    return ((new_params, opt_state), terms), (norm, bad)

  ((params, opt_state), _), (losses, nonfinite) = jax.lax.scan(
      body, (inner, objective.init()), (data, contexts, after_reset), length=num_steps)
  # A run ending at the last step is replaced after the scan.
  final_params = params
  params, opt_state = _select(until_reset == num_steps, fresh_inner, (params, opt_state))
  reset = until_reset <= num_steps
  task_params = _select(reset, fresh.task_params, particle.task_params)
  new_particle = ParticleState(
      task_params=task_params, params=params, opt_state=opt_state,
      step=jnp.where(reset, num_steps - until_reset, particle.step + num_steps).astype(jnp.int32),
      horizon=jnp.where(reset, fresh.horizon, particle.horizon),
      run_key=jnp.where(reset, fresh.run_key, particle.run_key))
  meta_loss, nonfinite = jnp.mean(losses), jnp.sum(nonfinite)
  if config.final_batches:  # the run's last parameters (read before a reset replaces them)
    final, bad = final_loss(family, config, particle.task_params, particle.run_key,
                            final_params)
    meta_loss, nonfinite = final, nonfinite + bad
  out = UnrollOutput(losses=losses, after_reset=after_reset, nonfinite=nonfinite,
                     meta_loss=meta_loss, reset=reset)
  return new_particle, out


def final_loss(family: task_base.TaskFamily, config: UnrollConfig, task_params: Any,
               run_key: jax.Array, params: Any) -> tuple[jax.Array, jax.Array]:
  """The run's final meta-loss, recomputed on ``config.final_batches`` fresh batches.

  .. math::
    \\hat L = \\frac{1}{n} \\sum_{i=1}^{n} \\hat\\ell(θ_T;\\ b_i),\\qquad b_i \\sim
    \\text{split } \\mathtt{meta\\_loss}

  with ``ℓ̂`` the task's normalised loss (non-finite: its ceiling), each batch and loss key
  drawn from the run key's own stream; ``log_meta_loss`` takes the log of ``L̂``.

  Returns:
    ``(L̂, number of non-finite batch losses)``.
  """
  task = family.task(task_params)
  scales = param_scales(config, params, run_key)
  keys = jax.random.split(jax.random.fold_in(wrap_key(run_key), _FINAL), config.final_batches)

  def one(k):
    k_batch, k_loss = jax.random.split(k)
    return objective_lib.normalised(task, task.loss(_scaled(params, scales), k_loss,
                                                    task.sample_batch(k_batch, config.meta_loss)),
                                    config.loss_clip)

  norms, bad = jax.vmap(one)(keys)
  value = jnp.mean(norms)
  return (objective_lib.safe_log(value) if config.log_meta_loss else value), jnp.sum(bad)


def _step_data(family: task_base.TaskFamily, config: UnrollConfig, task_params: Any,
               run_key: jax.Array, steps: jax.Array) -> tuple[Any, jax.Array, Any, jax.Array]:
  """Batches and keys of the run (``task_params``, ``run_key``) at inner ``steps`` (vectorised).

  Every step has its own streams: the train batch, the train loss's key and, for the
  ``"valid"`` meta-loss, the valid batch and the valid loss's key, all independent.

  Returns:
    ``(train_batches, loss_keys, valid_batches, valid_keys)`` with a leading ``len(steps)``
    axis; keys as raw data. The valid entries are ``None`` for the ``"train"`` meta-loss.
  """
  task = family.task(task_params)
  roles = _VALID if config.meta_loss == "train" else _STEP_ROLES
  ids = (_DATA + _STEP_ROLES * steps.astype(jnp.uint32)[:, None]
         + jnp.arange(roles, dtype=jnp.uint32))
  keys = _fold_in_many(wrap_key(run_key), ids)

  def one(k):
    batch = task.sample_batch(k[_TRAIN_BATCH], "train")
    loss_key = key_data(k[_TRAIN_LOSS])
    if config.meta_loss == "train":
      return batch, loss_key, None, None
    valid = jax.random.split(k[_VALID])
    valid_batch = task.sample_batch(valid[_VALID_BATCH], "valid")
    return batch, loss_key, valid_batch, key_data(valid[_VALID_LOSS])

  return jax.vmap(one)(keys)
