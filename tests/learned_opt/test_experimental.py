"""Experimental pieces (:mod:`learned_opt.experimental`): importable, tested, not exported."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import experimental
from learned_opt import inits
from learned_opt import testing
from learned_opt.experimental import NormalizeStep
from learned_opt.mlp import MLPOptimizer
from learned_opt.schedule import LearnedSchedule


def test_not_exported_nor_in_presets():
  assert "NormalizeStep" not in learned_opt.__all__
  assert learned_opt.registry()["normalize_step"] is NormalizeStep  # old files name it
  from meta_train.config import schema  # pylint: disable=import-outside-toplevel
  for preset in schema.PRESETS.values():
    assert preset.optimizer.name not in experimental.NAMES


def test_each_tensor_gets_rms_lambda_and_nan_stays_in_its_entry():
  tx = NormalizeStep(learning_rate=0.1).scale_by({})
  u = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([1.0, jnp.nan, 1.0]),
       "h": jnp.ones((2,), jnp.bfloat16), "i": jnp.arange(2)}
  out, _ = tx.update(u, tx.init(u))
  np.testing.assert_allclose(out["a"], 0.1 * np.array([3.0, -4.0]) / math.sqrt(12.5), rtol=1e-6)
  # The nan entry counts as zero in the mean square: mean (1 + 0 + 1)/3.
  np.testing.assert_allclose(out["b"], [0.1 / math.sqrt(2 / 3), np.nan, 0.1 / math.sqrt(2 / 3)],
                             rtol=1e-6)
  assert out["h"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(out["i"], [0, 1])
  with pytest.raises(ValueError, match="learning_rate must be > 0"):
    NormalizeStep(learning_rate=0.0)
  with pytest.raises(ValueError, match="meta_params must be"):
    NormalizeStep().scale_by({"w": jnp.ones(1)})


def _celo2(decay):
  """The normalised rule times a schedule, started as a decaying Adam-like step: the rule's
  Adam-like start without decay, the schedule's unit 0 carrying t/T to s with weight -k."""
  rule = MLPOptimizer(hidden_sizes=(8, 8), time_scales=(1.0, 10.0), step_mult=1.0)
  sched = LearnedSchedule(hidden_size=4, time_scales=(1.0, 10.0), loss_decays=(0.5, 0.9))
  lopt = learned_opt.chain(rule, NormalizeStep(learning_rate=5e-3), sched)
  theta = inits.adam_like(lopt, jax.random.key(3))
  w0 = theta["schedule"]["w0"].at[:, 0].set(0.0).at[2, 0].set(1.0)  # t/T follows 2 time feats
  w1 = theta["schedule"]["w1"].at[0, 0].set(-decay)
  theta["schedule"] = dict(theta["schedule"], w0=w0, w1=w1)
  return lopt, theta


def test_normalised_rule_times_schedule_steps_at_rms_lambda_exp_schedule():
  lopt, theta = _celo2(3.0)
  tx = lopt.transform(theta, num_steps=5)
  params = {"w": jax.random.normal(jax.random.key(0), (5, 4)), "s": jnp.asarray(0.3)}
  state = tx.init(params)
  for t in range(3):  # every tensor's step has RMS λ exp(-3 t/5)
    grads = jax.tree.map(lambda p, t=t: 0.1 * p + 0.01 * (t + 1), params)
    u, state = tx.update(grads, state, params, loss=2.0 - 0.1 * t)
    for x in jax.tree.leaves(u):
      np.testing.assert_allclose(np.sqrt(np.mean(np.square(x))), 5e-3 * math.exp(-0.6 * t),
                                 rtol=1e-5)


def test_chain_with_normalisation_passes_the_conformance_checks():
  lopt, theta = _celo2(1.0)
  testing.check_learned_optimizer(lopt, theta)
