"""The fixed warm-up + cosine decay piece (:mod:`learned_opt.cosine_decay`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import learned_opt
from learned_opt import inits
from learned_opt.cosine_decay import CosineDecay, cosine_factor


def _factors(num_steps, warmup=0.0, final=0.0, steps=None):
  return [float(cosine_factor(t, num_steps, warmup, final)) for t in range(steps or num_steps)]


def test_factor_by_hand():
  # T = 4, no warm-up: (1 + cos(π t / 4)) / 2.
  np.testing.assert_allclose(_factors(4), [1.0, (1 + math.sqrt(0.5)) / 2, 0.5,
                                           (1 - math.sqrt(0.5)) / 2], rtol=1e-6, atol=1e-7)
  # T = 8, warm-up 0.25 (W = 2): ramp 1/2, 2/2, then the cosine over the remaining 6 steps.
  np.testing.assert_allclose(_factors(8, warmup=0.25),
                             [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)],
                             rtol=1e-6, atol=1e-7)
  # final_fraction φ: φ + (1 - φ) times the cosine; it ends at φ after the run.
  np.testing.assert_allclose(_factors(4, final=0.1, steps=5),
                             [0.1 + 0.9 * f for f in _factors(4, steps=5)], rtol=1e-6)
  assert float(cosine_factor(4, 4, 0.0, 0.1)) == pytest.approx(0.1)


def test_factor_is_cosine_adams_schedule():
  """With no final fraction it is the multiplier of meta-eval's tuned cosine baselines."""
  from meta_train.evaluation.baselines import warmup_cosine
  for n, w in ((200, 0.05), (37, 0.0), (10, 0.3)):
    np.testing.assert_allclose(_factors(n, warmup=w), [float(warmup_cosine(n, w)(t))
                                                       for t in range(n)], rtol=1e-6, atol=1e-7)


def test_rule_then_decay_scales_the_rules_steps():
  rule = learned_opt.MLPOptimizer(hidden_sizes=(4,), horizon_aware=True)
  lopt = learned_opt.chain(rule, CosineDecay(final_fraction=0.2))
  assert lopt.horizon_aware  # the chain is given the run's length at use
  theta = inits.adam_like(lopt, jax.random.key(1), learning_rate=1e-2)
  theta["cosine_decay"] = {"log_scale": jnp.asarray(math.log(3.0), jnp.float32)}
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "n": jnp.arange(2)}
  tx, ref = lopt.transform(theta, num_steps=5), rule.transform(theta["mlp"], num_steps=5)
  s, r = tx.init(params), ref.init(params)
  for t in range(6):
    g = {"w": jnp.cos(params["w"] * (t + 1)), "n": jnp.arange(2)}
    u, s = tx.update(g, s, params)
    v, r = ref.update(g, r, params)
    want = 3.0 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * min(t / 5, 1.0))))
    np.testing.assert_allclose(u["w"], want * v["w"], rtol=1e-5)
    np.testing.assert_array_equal(u["n"], g["n"])  # integer leaves pass


def test_traced_horizon_under_vmap_and_dtype():
  lopt = CosineDecay()
  theta = lopt.init(jax.random.key(0))

  def first_two(horizon):
    tx = lopt.scale_by(theta, num_steps=horizon)
    s = tx.init({"w": jnp.ones(2)})
    _, s = tx.update({"w": jnp.ones(2)}, s)
    return tx.update({"w": jnp.ones(2)}, s)[0]["w"][0]

  out = jax.jit(jax.vmap(first_two))(jnp.array([2, 4]))
  np.testing.assert_allclose(out, [0.5, (1 + math.sqrt(0.5)) / 2], rtol=1e-6)
  tx = lopt.scale_by(theta, num_steps=3)
  half = tx.update({"w": jnp.ones(2, jnp.bfloat16)}, tx.init({"w": jnp.ones(2)}))[0]
  assert half["w"].dtype == jnp.bfloat16


def test_errors_and_round_trip(tmp_path):
  lopt = learned_opt.chain(learned_opt.MLPOptimizer(hidden_sizes=(4,), horizon_aware=True),
                           CosineDecay(warmup_fraction=0.1, final_fraction=0.05))
  theta = lopt.init(jax.random.key(0))
  # Without the run's length there is nothing to decay over: the factor is e^β at every step.
  theta["cosine_decay"]["log_scale"] = jnp.asarray(math.log(2.0), jnp.float32)
  tx, ref = lopt.transform(theta), lopt.parts[0].transform(theta["mlp"])
  p = {"w": jnp.linspace(0.5, 1.5, 3)}
  s, r = tx.init(p), ref.init(p)
  for _ in range(3):
    u, s = tx.update(p, s, p)
    v, r = ref.update(p, r, p)
    np.testing.assert_allclose(u["w"], 2.0 * v["w"], rtol=1e-6)
  theta["cosine_decay"]["log_scale"] = jnp.zeros([], jnp.float32)
  for kwargs, match in (({"warmup_fraction": 1.0}, "warmup_fraction"),
                        ({"warmup_fraction": True}, "warmup_fraction"),
                        ({"final_fraction": -0.1}, "final_fraction"),
                        ({"final_fraction": float("nan")}, "final_fraction")):
    with pytest.raises(ValueError, match=match):
      CosineDecay(**kwargs)
  with pytest.raises(ValueError, match="cosine_decay"):
    CosineDecay().scale_by({"log_scale": jnp.zeros(2)}, num_steps=3)
  path = tmp_path / "opt.safetensors"
  learned_opt.save(path, lopt, theta)
  loaded, theta2 = learned_opt.load(path)[:2]
  assert loaded == lopt
  np.testing.assert_array_equal(theta2["cosine_decay"]["log_scale"], 0.0)
