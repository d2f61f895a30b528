"""Antithetic estimators draw each truncation's randomness once per pair: same bits as per particle."""

import chex
import jax
import numpy as np

import learned_opt
from meta_train import unroll as unroll_lib
from meta_train.estimators import antithetic
from meta_train.estimators import registry
from tasks.quadratic import QuadraticFamily

FAMILY = QuadraticFamily(dim=3)
LOPT = learned_opt.SGDMomentum()
THETA = LOPT.init(jax.random.key(0))


def test_pair_draws_match_per_particle_draws():
  # Horizons 4..6 with K = 4: most particles reset inside the truncation (fresh runs are used).
  est = registry.make_estimator("pes", LOPT, FAMILY, num_pairs=3, truncation_length=4,
                                min_horizon=4, max_horizon=6, meta_loss="valid")
  state = est.init(jax.random.key(1), THETA)
  eps = antithetic.antithetic_perturbation(jax.random.key(2), THETA, 0.1, est.num_pairs)
  thetas = antithetic.perturbed_pair(THETA, eps)

  def per_particle(mp, ps):  # each particle draws its own randomness
    return unroll_lib.unroll(LOPT, FAMILY, est.unroll, mp, ps)

  @jax.jit
  def both(ps):
    return est.unroll_pairs(THETA, eps, ps), jax.vmap(per_particle)(thetas, ps)

  ps = state.particles
  resets = 0
  for _ in range(3):
    (paired, out), (single, out_single) = both(ps)
    chex.assert_trees_all_equal((paired, out), (single, out_single))
    resets += int(np.sum(out.reset))
    ps = paired
  assert resets > 0
