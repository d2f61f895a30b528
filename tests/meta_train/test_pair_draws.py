"""Antithetic estimators draw each truncation's randomness once per pair: same bits as per particle."""

import jax
import numpy as np

import learned_opt
from meta_train import estimator as est_lib
from meta_train import trainer as trainer_lib
from tasks.quadratic import QuadraticFamily

FAMILY = QuadraticFamily(dim=3)
LOPT = learned_opt.SGDMomentum()
THETA = LOPT.init(jax.random.key(0))


def test_pair_draws_match_per_particle_draws():
  # Horizons 4..6 with K = 4: most particles reset inside the truncation (fresh runs are used).
  est = trainer_lib.make_estimator("pes", lopt=LOPT, family=FAMILY, num_particles=6,
                                   truncation=4, horizon=(4, 6), meta_loss="valid")
  state = est.init(jax.random.key(1), THETA)
  eps = est_lib.antithetic_perturbation(jax.random.key(2), THETA, 0.1, est.num_pairs)
  thetas = est_lib.perturbed_pair(THETA, eps)

  @jax.jit
  def both(ps):
    return est._unroll_pairs(thetas, ps), est._unroll_many(thetas, ps, True)

  ps = state.particles
  resets = 0
  for _ in range(3):
    (paired, out), (single, out_single) = both(ps)
    for a, b in zip(jax.tree.leaves((paired, out)), jax.tree.leaves((single, out_single))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resets += int(np.sum(out.reset))
    ps = paired
  assert resets > 0
