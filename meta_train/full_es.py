"""Antithetic evolution strategies over whole inner trainings (full-horizon ES).

Every estimate samples ``num_pairs`` fresh tasks and trains each from scratch for the whole
horizon ``T`` with ``θ + ε`` and ``θ − ε``:

.. math::
  \\hat g = \\frac1N \\sum_i \\frac{\\epsilon_i}{2\\sigma^2}
  \\Big(\\tfrac1T \\textstyle\\sum_{t<T} \\ell_t(\\theta+\\epsilon_i) -
  \\tfrac1T \\sum_{t<T} \\ell_t(\\theta-\\epsilon_i)\\Big)

Unbiased for the gradient of the smoothed full-horizon meta-loss, with no truncation at all, at
the cost of ``T`` inner steps per particle per estimate (Salimans et al. 2017, arXiv
1703.03864; Vicol et al. 2021, arXiv 2112.13835, Sec. 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from meta_train import estimator as est_lib
from meta_train import unroll as unroll_lib


class FullESState(NamedTuple):
  """State of :class:`FullES`: only a count of estimates (runs are sampled afresh)."""

  num_estimates: jax.Array


@dataclasses.dataclass(frozen=True)
class FullES(est_lib.Estimator):
  """Antithetic ES over the full horizon ``unroll.max_horizon`` (must equal ``min_horizon``).

  Attributes:
    num_pairs: antithetic pairs (fresh tasks) per estimate.
    sigma: standard deviation of the perturbation ε.
  """

  num_pairs: int = 8
  sigma: float = 0.01
  name = "full_es"

  def __post_init__(self):
    est_lib.check_pairs_sigma(self)
    if self.unroll.min_horizon != self.unroll.max_horizon:
      raise ValueError(f"FullES needs a fixed horizon (min_horizon == max_horizon), got "
                       f"[{self.unroll.min_horizon}, {self.unroll.max_horizon}]")

  @property
  def horizon(self) -> int:
    return self.unroll.max_horizon

  def _full_config(self) -> unroll_lib.UnrollConfig:
    h = self.horizon
    return dataclasses.replace(self.unroll, truncation_length=h, min_horizon=h, max_horizon=h,
                               stagger=False)

  def init(self, key: jax.Array, meta_params: Any) -> FullESState:
    del key, meta_params
    self._check_bound()
    return FullESState(jnp.zeros([], jnp.int32))

  def estimate(self, meta_params, state, key):
    """One full-horizon ES estimate; ``key`` draws the tasks and the perturbations."""
    self._check_bound()
    k_runs, k_eps = jax.random.split(unroll_lib.wrap_key(key))
    run_keys = jax.vmap(unroll_lib.key_data)(jax.random.split(k_runs, self.num_pairs))
    eps = est_lib.antithetic_perturbation(k_eps, meta_params, self.sigma, self.num_pairs)
    thetas = est_lib.perturbed_pair(meta_params, eps)
    config = self._full_config()
    # Tasks and initial points are drawn once per pair; only optimizer states depend on θ.
    runs = est_lib.repeat_pair(jax.vmap(
        lambda rk: unroll_lib.fresh_run(self.family, config, rk))(run_keys))
    particles = jax.vmap(lambda mp, run: unroll_lib.start_particle(self.lopt, mp, run))(
        thetas, runs)
    _, out = self._unroll_pairs(thetas, particles, config=config)
    pos, neg = est_lib.split_pair(out)
    per_pair = est_lib.es_grads(eps, pos.meta_loss - neg.meta_loss, self.sigma)
    grad, metrics = est_lib.combine(per_pair, jnp.mean(out.meta_loss), jnp.sum(out.nonfinite),
                                    2 * self.num_pairs * self.horizon)
    return grad, FullESState(state.num_estimates + 1), metrics
