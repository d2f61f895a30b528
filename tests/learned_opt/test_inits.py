"""Starts of :mod:`learned_opt.inits`: the Adam-like start of an MLP rule."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
from learned_opt import inits
from learned_opt import testing
from learned_opt.mlp import MLPOptimizer, TensorFeatures


_sha = testing.tree_digest


# sha256 of MLPOptimizer(init_scheme="adam", **config).init(key(11)) with the code before starts
# were functions (format v1), and of the LeCun init: adam_like must give the same bytes.
_OLD = [
    (dict(hidden_sizes=(16, 16)), {},
     "115e40eb6ef67b851419fbcb6fcd127095d61870ce123bbdd6fe301808990d98"),
    (dict(hidden_sizes=(16, 16)), dict(decay=3.0),
     "af04e836d9b95df6116e070f64ed66c4dc1f98297a81f8ae31d6bbd9315587ea"),
    (dict(hidden_sizes=(16, 16), exp_mult=1.0), dict(decay=3.0),
     "15b44f68c1b90e4ba3a1466f72b4a4a7c5f4d8518408f54ba0893c908e8b89a9"),
    (dict(hidden_sizes=(8,)), dict(learning_rate=0.02),
     "a7a992796ed92544a24093987c658598152166013ab68c4bcec3879f04f0e827"),
    (dict(hidden_sizes=(8, 4, 5), tensor=TensorFeatures()), dict(decay=0.5),
     "7f09318d6882931940036adc2a4d2fd4d1a806013404046e6ea76382af9e0ba6"),
]


@pytest.mark.parametrize("config, start, digest", _OLD)
def test_adam_like_gives_the_old_init_scheme_bytes(config, start, digest):
  assert _sha(inits.adam_like(MLPOptimizer(**config), jax.random.key(11), **start)) == digest


def test_lecun_init_unchanged():
  assert _sha(MLPOptimizer().init(jax.random.key(11))) == (
      "0a5074bddf8105c01dcb34548c4d17dc2db757b060eb210b09e0b47df99779fd")


def test_adam_like_matches_a_hand_built_network():
  # F = 6 features (grad, param, m, v, 1/sqrt v, m/sqrt v), S = 1 + 2 step features; three
  # hidden units, all used by the start, so every weight is set by hand.
  lopt = MLPOptimizer(hidden_sizes=(3,), momentum_decays=(0.9,), rms_decays=(0.95,),
                      time_scales=(1.0,), exp_mult=0.5, step_mult=1e-3)
  theta = inits.adam_like(lopt, jax.random.key(0), learning_rate=0.02, decay=2.0)
  w0 = np.zeros((9, 3), np.float32)
  w0[5, 0], w0[5, 1], w0[7, 2] = 1.0, -1.0, 1.0  # ratio pair; t/T is feature 6 + 1
  w1 = np.array([[-20.0, 0.0], [20.0, 0.0], [0.0, -4.0]], np.float32)  # λ/b, -k/a
  expected = {"w0": w0, "b0": np.zeros(3), "w1": w1, "b1": np.zeros(2)}
  assert set(theta) == set(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(theta[k], v, err_msg=k)


def _descend(tx, f, x, n):
  """``n`` steps of ``tx`` on ``f`` from ``x`` (one jitted scan); returns the final ``x``."""

  def body(carry, _):
    x, s = carry
    u, s = tx.update(jax.grad(f)(x), s, x)
    return (x + u, s), None

  return jax.jit(lambda x: jax.lax.scan(body, (x, tx.init(x)), None, length=n)[0][0])(x)


def test_adam_like_first_step_is_adams():
  lopt = MLPOptimizer(hidden_sizes=(8, 8))
  tx = lopt.transform(inits.adam_like(lopt, jax.random.key(0), learning_rate=0.01))
  p = jnp.array([1.0, -2.0, 0.5, 3.0])
  g = jnp.array([0.3, -2.0, 0.05, 5.0])
  u, _ = tx.update(g, tx.init(p), p)
  adam = optax.adam(0.01)
  u_adam, _ = adam.update(g, adam.init(p), p)
  np.testing.assert_allclose(u_adam, -0.01 * np.sign(g), rtol=1e-5)
  np.testing.assert_allclose(u, u_adam, rtol=1e-3)


def test_adam_like_step_is_normalised_momentum_ratio():
  lopt = MLPOptimizer(hidden_sizes=(8, 4, 6))
  tx = lopt.transform(inits.adam_like(lopt, jax.random.key(1), learning_rate=0.02))
  p = jnp.zeros((5,))
  gs = [jnp.array([1.0, -2.0, 0.5, 3.0, -0.1]), jnp.array([-0.5, -1.0, 0.5, 2.0, 0.3])]
  state = tx.init(p)
  m, v = jnp.zeros(5), jnp.zeros(5)
  for g in gs:
    u, state = tx.update(g, state, p)
    m, v = 0.9 * m + 0.1 * g, 0.95 * v + 0.05 * g * g
  r = m / jnp.sqrt(v + lopt.rsqrt_eps)
  np.testing.assert_allclose(u, -0.02 * r / jnp.sqrt(jnp.mean(r * r)), rtol=1e-3)


def test_adam_like_descends_like_adam_where_random_init_does_not():
  h = jnp.array([0.1, 1.0, 10.0, 100.0])
  quad = lambda x: 0.5 * jnp.sum(h * x * x)
  rosen = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
  x0, r0 = jnp.array([1.0, -2.0, 0.5, 3.0]), jnp.array([-1.0, 1.0])
  lopt = MLPOptimizer(hidden_sizes=(16, 16))
  tx = lopt.transform(inits.adam_like(lopt, jax.random.key(0), learning_rate=0.01))
  # Adam at the same rate: quadratic 33.5 -> 0.19 in 300 steps.
  assert float(quad(_descend(tx, quad, x0, 300))) < float(quad(_descend(optax.adam(0.01), quad,
                                                                         x0, 300)))
  # Rosenbrock 4 -> about 0.02 (the step is RMS-normalised over the 2-entry tensor, so it does
  # not shrink near the optimum the way Adam's does).
  assert float(rosen(_descend(tx, rosen, r0, 2000))) < 0.05
  assert float(rosen(_descend(lopt.transform(lopt.init(jax.random.key(0))), rosen, r0,
                              2000))) > 1.0


def test_adam_like_decay_follows_the_run_fraction_only_with_num_steps():
  lopt = MLPOptimizer(hidden_sizes=(8, 8))
  theta = inits.adam_like(lopt, jax.random.key(0), learning_rate=0.01, decay=2.0)
  p, g = jnp.zeros((3,)), jnp.array([1.0, -2.0, 0.5])

  def steps(num_steps, n):
    tx = lopt.transform(theta, num_steps=num_steps)
    state, out = tx.init(p), []
    for _ in range(n):
      u, state = tx.update(g, state, p)
      out.append(u)
    return out

  decayed, plain = steps(10, 6), steps(None, 6)
  for t in range(6):  # constant gradient: r̃ = sign(g), step t sees t/T = t/10
    np.testing.assert_allclose(decayed[t], -0.01 * np.exp(-2.0 * t / 10) * np.sign(g), rtol=1e-3)
    np.testing.assert_allclose(plain[t], -0.01 * np.sign(g), rtol=1e-3)


def test_adam_like_of_a_chain_starts_its_rule():
  rule = MLPOptimizer(hidden_sizes=(8,))
  lopt = learned_opt.chain(rule, learned_opt.LearnedSchedule(hidden_size=3))
  theta = inits.adam_like(lopt, jax.random.key(2), decay=1.0)
  want = inits.adam_like(rule, jax.random.key(2), decay=1.0)
  assert _sha(theta["mlp"]) == _sha(want)
  assert _sha(theta["schedule"]) == _sha(lopt.init(jax.random.key(2))["schedule"])


def test_adam_like_errors():
  lopt = MLPOptimizer(hidden_sizes=(8, 8))
  with pytest.raises(ValueError, match="learning_rate must be > 0, got 0.0"):
    inits.adam_like(lopt, jax.random.key(0), learning_rate=0.0)
  with pytest.raises(ValueError, match=r"decay must be >= 0, got -1.0"):
    inits.adam_like(lopt, jax.random.key(0), decay=-1.0)
  with pytest.raises(ValueError, match=r"each of width >= 2, got hidden_sizes=\(8, 1\)"):
    inits.adam_like(MLPOptimizer(hidden_sizes=(8, 1)), jax.random.key(0))
  with pytest.raises(ValueError, match=r"width >= 3 \(decay > 0\), got hidden_sizes=\(8, 2\)"):
    inits.adam_like(MLPOptimizer(hidden_sizes=(8, 2)), jax.random.key(0), decay=1.0)
  with pytest.raises(ValueError, match="adam_like starts an MLPOptimizer .* got Adam"):
    inits.adam_like(learned_opt.Adam(), jax.random.key(0))
