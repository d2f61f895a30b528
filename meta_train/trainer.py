"""The outer (meta) training loop: estimate the meta-gradient, apply an optax step, repeat.

.. math::
  \\hat g_k, e_{k+1} = \\mathrm{estimate}(\\theta_k, e_k, \\kappa_k), \\qquad
  \\theta_{k+1} = \\theta_k + \\mathrm{outer}(\\hat g_k)

:class:`MetaTrainer` jits ``steps_per_dispatch`` outer steps into one ``lax.scan`` and returns
their metrics; it never logs. Its state is a pytree of plain arrays (keys as raw ``uint32``
data), so an orbax checkpoint of it resumes bit-exactly.

Example::

  lopt = learned_opt.SGDMomentum()
  trainer = MetaTrainer(lopt, tasks.get("quadratic"), make_estimator("pes", num_pairs=4))
  state = trainer.init(jax.random.key(0))
  for _ in range(100):
    state, metrics = trainer.step(state)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from meta_train import estimator as est_lib
from meta_train import sharding as sharding_lib
from meta_train import unroll as unroll_lib
from meta_train.full_es import FullES
from meta_train.pes import PES
from meta_train.tbptt import TBPTT
from meta_train.truncated_es import TruncatedES

ESTIMATORS = {"tbptt": TBPTT, "es": TruncatedES, "pes": PES, "full_es": FullES}
_ANTITHETIC = ("es", "pes", "full_es")
_COUNT_METRICS = ("inner_steps", "nonfinite", "nonfinite_loss", "nonfinite_grad")


def make_estimator(name: str, *, lopt=None, family=None, num_particles: int | None = None,
                   num_pairs: int | None = None, truncation: int | None = None,
                   truncation_length: int | None = None, horizon: int | tuple[int, int] = 100,
                   sigma: float = 0.01, meta_loss: str = "train",
                   stagger: bool = True) -> est_lib.Estimator:
  """Builds a gradient estimator by name.

  Args:
    name: ``"tbptt"`` (truncated backprop), ``"es"`` (antithetic truncated ES), ``"pes"``
      (persistent ES) or ``"full_es"`` (antithetic ES over the whole horizon).
    lopt: optional learned optimizer (otherwise bound by :class:`MetaTrainer`).
    family: optional task family (otherwise bound by :class:`MetaTrainer`).
    num_particles: inner trainings per estimate; must be even for the antithetic estimators
      (``es``, ``pes``, ``full_es``), where it means ``2 * num_pairs``. Default 8.
    num_pairs: alternative to ``num_particles`` for antithetic estimators.
    truncation: inner steps per truncated unroll (alias ``truncation_length``); default
      ``min(20, horizon)``; ignored by ``full_es``, which unrolls the whole horizon.
    truncation_length: alias of ``truncation``.
    horizon: steps of one inner training: an int (fixed) or ``(min, max)`` (log-uniform).
    sigma: perturbation standard deviation of the ES estimators.
    meta_loss: ``"train"`` or ``"valid"`` (see :class:`~meta_train.unroll.UnrollConfig`).
    stagger: randomise the starting step of each particle's first run.

  Returns:
    An estimator (frozen dataclass) with ``init`` and ``estimate``.

  Raises:
    ValueError: unknown name (listing the known ones) or invalid values.
  """
  if name not in ESTIMATORS:
    raise ValueError(f"Unknown estimator {name!r}; known estimators: {', '.join(ESTIMATORS)}")
  if truncation is not None and truncation_length is not None and truncation != truncation_length:
    raise ValueError(f"truncation ({truncation}) and truncation_length ({truncation_length}) "
                     "disagree; pass one of them")
  if isinstance(horizon, (tuple, list)):
    if len(horizon) != 2:
      raise ValueError(f"horizon must be an int or a (min, max) pair, got {horizon!r}")
    min_h, max_h = horizon
  else:
    min_h = max_h = horizon
  if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in (min_h, max_h)):
    raise ValueError(f"horizon must be positive ints, got {horizon!r}")
  k = truncation if truncation is not None else truncation_length
  if name == "full_es":
    if min_h != max_h:
      raise ValueError(f"full_es needs a fixed int horizon, got {horizon!r}")
    k = max_h
  elif k is None:
    k = min(20, min_h)
  config = unroll_lib.UnrollConfig(truncation_length=k, min_horizon=min_h, max_horizon=max_h,
                                   meta_loss=meta_loss, stagger=stagger)
  if name in _ANTITHETIC:
    if num_pairs is not None and num_particles is not None and num_particles != 2 * num_pairs:
      raise ValueError(f"num_particles ({num_particles}) must equal 2 * num_pairs ({num_pairs})")
    if num_pairs is None:
      n = 8 if num_particles is None else num_particles
      if not isinstance(n, int) or n <= 0 or n % 2:
        raise ValueError(f"estimator {name!r} is antithetic: num_particles must be a positive "
                         f"even int, got {n!r}")
      num_pairs = n // 2
    return ESTIMATORS[name](lopt=lopt, family=family, unroll=config, num_pairs=num_pairs,
                            sigma=sigma)
  if num_pairs is not None:
    raise ValueError("tbptt is not antithetic: pass num_particles, not num_pairs")
  return TBPTT(lopt=lopt, family=family, unroll=config,
               num_particles=8 if num_particles is None else num_particles)


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
  """Meta-trains ``lopt`` on ``family`` with ``estimator`` and an optax outer optimizer.

  Args:
    lopt: a :class:`learned_opt.LearnedOptimizer`.
    family: a :class:`tasks.TaskFamily`.
    estimator: an estimator from :func:`make_estimator` (bound to ``lopt``/``family`` here).
    outer_optimizer: optax transformation applied to the meta-gradient; default
      :func:`default_outer_optimizer`.
    steps_per_dispatch: outer steps run by one call of :meth:`step` (one ``lax.scan``).
    mesh: optional device mesh (:func:`meta_train.sharding.make_mesh`): the particles are
      sharded over it and the mean over particles becomes a collective.
  """

  def __init__(self, lopt, family, estimator, outer_optimizer=None, steps_per_dispatch: int = 1,
               mesh=None):
    if not isinstance(steps_per_dispatch, int) or steps_per_dispatch <= 0:
      raise ValueError(f"steps_per_dispatch must be a positive int, got {steps_per_dispatch!r}")
    self.lopt = lopt
    self.family = family
    self.estimator = estimator.bind(lopt, family)
    self.outer_optimizer = (default_outer_optimizer() if outer_optimizer is None
                            else outer_optimizer)
    self.steps_per_dispatch = steps_per_dispatch
    self._init = jax.jit(self._init_impl)
    self._step = jax.jit(self._step_impl)
    # --- sharding hook (meta_train/sharding.py): particles split over `mesh` ---
    self.mesh, self.shardings = mesh, None
    if mesh is not None:
      self._init, self._step, self.shardings = sharding_lib.jit_trainer(self, mesh)
    # --- end sharding hook ---

  def init(self, key: jax.Array, meta_params: Any = None) -> MetaTrainerState:
    """Initial state from ``key`` (typed or raw); ``meta_params`` default ``lopt.init``."""
    return self._init(unroll_lib.key_data(key), meta_params)

  def _init_impl(self, key, meta_params):
    k_theta, k_est, k_outer = jax.random.split(unroll_lib.wrap_key(key), 3)
    if meta_params is None:
      meta_params = self.lopt.init(k_theta)
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
      counts ``inner_steps``, ``nonfinite``, ``nonfinite_loss``, ``nonfinite_grad``, which are
      summed over it.
    """
    return self._step(state)

  def _step_impl(self, state):
    state, metrics = jax.lax.scan(lambda s, _: self.outer_step(s), state, None,
                                  length=self.steps_per_dispatch)
    out = {}
    for name, values in metrics.items():
      if name in _COUNT_METRICS:
        out[name] = jnp.sum(values)
      else:
        out[name] = jnp.mean(values.astype(jnp.float32))
    return state, out
