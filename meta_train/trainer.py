"""The outer (meta) training loop: estimate the meta-gradient, apply an optax step, repeat.

.. math::
  \\hat g_k, e_{k+1} = \\mathrm{estimate}(\\theta_k, e_k, \\kappa_k), \\qquad
  \\theta_{k+1} = \\theta_k + \\mathrm{outer}(\\hat g_k)

:class:`MetaTrainer` jits ``steps_per_dispatch`` outer steps into one ``lax.scan`` and returns
their metrics; it never logs. Its state is a pytree of plain arrays (keys as raw ``uint32``
data), so an orbax checkpoint of it resumes bit-exactly.

Example::

  lopt = learned_opt.SGDMomentum()
  estimator = make_estimator("pes", lopt, tasks.get("quadratic"), num_pairs=4)
  trainer = MetaTrainer(estimator)
  state = trainer.init(jax.random.key(0))
  for _ in range(100):
    state, metrics = trainer.step(state)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from meta_train import unroll as unroll_lib
from meta_train.estimators import estimator as est_lib
from meta_train.runtime import sharding as sharding_lib

def default_outer_optimizer() -> optax.GradientTransformation:
  """``optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))``."""
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))


class MetaTrainerState(NamedTuple):
  """Everything needed to resume meta-training bit-exactly (a pytree of plain arrays).

  Attributes:
    meta_params: the learned optimizer's meta-parameters θ.
    outer_opt_state: the outer optimizer's state.
    estimator_state: the estimator's state (particles, PES accumulators, ...).
    step: int32 scalar, outer steps done.
    key: uint32 raw key data of the outer PRNG stream.
  """

  meta_params: Any
  outer_opt_state: Any
  estimator_state: Any
  step: jax.Array
  key: jax.Array


class MetaTrainer:
  """Meta-trains an estimator's learned optimizer with an optax outer optimizer.

  Args:
    estimator: a :class:`~meta_train.estimators.estimator.GradientEstimator` built for the learned
      optimizer and task family to meta-train (e.g. from
      :func:`meta_train.estimators.registry.make_estimator`); the trainer uses its ``lopt``.
    outer_optimizer: optax transformation applied to the meta-gradient; default
      :func:`default_outer_optimizer`.
    steps_per_dispatch: outer steps run by one call of :meth:`step` (one ``lax.scan``).
    mesh: optional device mesh (:func:`meta_train.runtime.sharding.make_mesh`): the particles are
      sharded over it and the mean over particles becomes a collective.
    start: ``key -> meta_params``, where meta-training starts (e.g. a start of
      :mod:`learned_opt.inits` bound to the optimizer); default ``lopt.init``.
  """

  def __init__(self, estimator: est_lib.GradientEstimator, outer_optimizer=None,
               steps_per_dispatch: int = 1, mesh=None, start=None):
    if not isinstance(steps_per_dispatch, int) or steps_per_dispatch <= 0:
      raise ValueError(f"steps_per_dispatch must be a positive int, got {steps_per_dispatch!r}")
    self.estimator = estimator
    self.outer_optimizer = (default_outer_optimizer() if outer_optimizer is None
                            else outer_optimizer)
    self.steps_per_dispatch = steps_per_dispatch
    self.start = start
    self._init = jax.jit(self._init_impl)
    self._step = jax.jit(self._step_impl)
    # --- sharding hook (meta_train/runtime/sharding.py): particles split over `mesh` ---
    self.mesh, self.shardings = mesh, None
    if mesh is not None:
      self._init, self._step, self.shardings = sharding_lib.jit_trainer(self, mesh)
    # --- end sharding hook ---

  @property
  def lopt(self):
    """The learned optimizer being meta-trained (the estimator's)."""
    return self.estimator.lopt

  @property
  def family(self):
    """The task family inner trainings are drawn from (the estimator's)."""
    return self.estimator.family

  def init(self, key: jax.Array, meta_params: Any = None) -> MetaTrainerState:
    """Initial state from ``key`` (typed or raw); ``meta_params`` default the trainer's start
    (``lopt.init`` unless one was given)."""
    return self._init(unroll_lib.key_data(key), meta_params)

  def _init_impl(self, key, meta_params):
    k_theta, k_est, k_outer = jax.random.split(unroll_lib.wrap_key(key), 3)
    if meta_params is None:
      meta_params = (self.start or self.lopt.init)(k_theta)
    return MetaTrainerState(
        meta_params=meta_params,
        outer_opt_state=self.outer_optimizer.init(meta_params),
        estimator_state=self.estimator.init(k_est, meta_params),
        step=jnp.zeros([], jnp.int32),
        key=unroll_lib.key_data(k_outer))

  def outer_step(self, state: MetaTrainerState) -> tuple[MetaTrainerState, dict]:
    """One (unjitted) outer step: estimate, guard, outer update."""
    key, k_est = jax.random.split(unroll_lib.wrap_key(state.key))
    grad, est_state, metrics = self.estimator.estimate(state.meta_params, state.estimator_state,
                                                       k_est)
    updates, opt_state = self.outer_optimizer.update(grad, state.outer_opt_state,
                                                     state.meta_params)
    new_params = optax.apply_updates(state.meta_params, updates)
    # θ never becomes non-finite: keep the old value of any entry the step would break.
    new_params = jax.tree.map(lambda n, o: jnp.where(jnp.isfinite(n), n, o), new_params,
                              state.meta_params)
    new_state = MetaTrainerState(meta_params=new_params, outer_opt_state=opt_state,
                                 estimator_state=est_state, step=state.step + 1,
                                 key=unroll_lib.key_data(key))
    return new_state, metrics

  def step(self, state: MetaTrainerState) -> tuple[MetaTrainerState, dict[str, jax.Array]]:
    """Runs ``steps_per_dispatch`` outer steps (jitted, one ``lax.scan``).

    Returns:
      ``(state, metrics)``: metrics are scalar arrays averaged over the dispatch, except the
      counts (:data:`meta_train.estimators.estimator.COUNT_METRICS`), which are summed over it.
    """
    return self._step(state)

  def _step_impl(self, state):
    state, metrics = jax.lax.scan(lambda s, _: self.outer_step(s), state, None,
                                  length=self.steps_per_dispatch)
    out = {}
    for name, values in metrics.items():
      if name in est_lib.COUNT_METRICS:
        out[name] = jnp.sum(values)
      else:
        out[name] = jnp.mean(values.astype(jnp.float32))
    return state, out
