"""Antithetic evolution strategies over whole inner trainings (full-horizon ES).

Every estimate samples ``num_pairs`` fresh tasks and trains each from scratch for the whole
horizon ``T`` with ``θ + ε`` and ``θ − ε``:

.. math::
  \\hat g = \\frac1N \\sum_i \\frac{\\epsilon_i}{2\\sigma^2}
  \\Big(\\tfrac1T \\textstyle\\sum_{t<T} \\ell_t(\\theta+\\epsilon_i) -
  \\tfrac1T \\sum_{t<T} \\ell_t(\\theta-\\epsilon_i)\\Big)

Unbiased for the gradient of the smoothed full-horizon meta-loss, with no truncation at all, at
the cost of ``T`` inner steps per particle per estimate (Salimans et al. 2017, arXiv
1703.03864; Vicol et al. 2021, arXiv 2112.13835, Sec. 2). The per-pair gradient is truncated
ES's (:func:`meta_train.estimators.truncated_es.es_pair_grads`) over the whole horizon.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax

from meta_train import errors
from meta_train import unroll as unroll_lib
from meta_train.estimators import antithetic
from meta_train.estimators.truncated_es import es_pair_grads


class FullESState(NamedTuple):
  """State of :class:`FullES`: empty (every estimate samples fresh runs)."""


@dataclasses.dataclass(frozen=True)
class FullES(antithetic.AntitheticEstimator):
  """Antithetic ES over whole inner trainings of a fixed horizon.

  The horizon is ``unroll.max_horizon``, which must equal ``unroll.min_horizon``.
  Every pair runs one whole inner training from its first step, so ``truncation_length`` and
  ``stagger`` are not its settings (:attr:`unused_unroll_fields`: giving them is refused; the
  unroll holds the horizon and ``False``). Other fields: those of
  :class:`~meta_train.estimators.antithetic.AntitheticEstimator`.
  """

  name: ClassVar[str] = "full_es"
  unused_unroll_fields: ClassVar[tuple[str, ...]] = ("truncation_length", "stagger")

  @classmethod
  def unroll_config(cls, **fields) -> unroll_lib.UnrollConfig:
    """One truncation of the whole horizon (``min_horizon``), never staggered."""
    horizon = fields.get("min_horizon", unroll_lib.UnrollConfig.min_horizon)
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 1:
      horizon = 1  # the UnrollConfig's own check names min_horizon
    return unroll_lib.UnrollConfig(**fields, truncation_length=horizon, stagger=False)

  def __post_init__(self):
    super().__post_init__()
    if self.unroll.min_horizon != self.unroll.max_horizon:
      raise errors.FieldError(type(self).__name__, "min_horizon",
                              f"full_es unrolls one fixed horizon: must equal max_horizon "
                              f"({self.unroll.max_horizon}), got {self.unroll.min_horizon}")

  @property
  def horizon(self) -> int:
    return self.unroll.max_horizon

  @property
  def pair_unroll(self) -> unroll_lib.UnrollConfig:
    """One truncation of the whole horizon, from step 0."""
    h = self.horizon
    return dataclasses.replace(self.unroll, truncation_length=h, min_horizon=h, max_horizon=h,
                               stagger=False)

  def init(self, key: jax.Array, meta_params: Any) -> FullESState:
    del key, meta_params
    return FullESState()

  def pair_particles(self, meta_params, state, key):
    """``key`` draws the pairs' tasks and ε; optimizer states are initialised with ``θ ± ε``."""
    del state
    k_runs, k_eps = jax.random.split(unroll_lib.wrap_key(key))
    run_keys = jax.vmap(unroll_lib.key_data)(jax.random.split(k_runs, self.num_pairs))
    eps = self.perturbation(k_eps, meta_params)
    config = self.pair_unroll
    # Tasks and initial points are drawn once per pair; only optimizer states depend on θ.
    runs = antithetic.repeat_pair(jax.vmap(
        lambda rk: unroll_lib.fresh_run(self.family, config, rk))(run_keys))
    particles = jax.vmap(lambda mp, run: unroll_lib.start_particle(self.lopt, mp, run))(
        antithetic.perturbed_pair(meta_params, eps), runs)
    return eps, particles

  def pair_update(self, eps, state, particles, pos, neg):
    del particles
    return es_pair_grads(eps, pos.meta_loss, neg.meta_loss, self.sigma, self.sign_delta), state
