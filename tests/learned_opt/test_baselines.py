"""Adam and SGDMomentum match optax's own optimizers step for step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt


def _problem():
  params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "b": (jnp.asarray([0.1, -0.2, 0.3]),
                                                               jnp.asarray(0.5))}
  target = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)

  def loss(p):
    return sum(jnp.sum((x - t) ** 2 * (1 + i)) for i, (x, t) in
               enumerate(zip(jax.tree.leaves(p), jax.tree.leaves(target))))

  return params, loss


def _run(tx, steps=5):
  """Updates of ``steps`` steps of ``tx`` on a small weighted quadratic."""
  params, loss = _problem()
  state = tx.init(params)
  out = []
  for _ in range(steps):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(updates)
  return out


@pytest.mark.parametrize("lr,b1,b2,eps", [(1e-3, 0.9, 0.999, 1e-8), (0.1, 0.5, 0.99, 1e-6)])
def test_adam_matches_optax_adam(lr, b1, b2, eps):
  lopt = learned_opt.Adam(initial_learning_rate=lr, b1=b1, b2=b2, eps=eps)
  mp = lopt.init(jax.random.key(0))
  ours = _run(lopt.transform(mp))
  # exp(log(lr)) is lr up to float32 rounding; give optax that same float32 value.
  ref = _run(optax.adam(float(jnp.exp(mp["log_lr"])), b1=b1, b2=b2, eps=eps))
  for u, r in zip(ours, ref):
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(r)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_momentum_matches_optax_sgd(momentum):
  lopt = learned_opt.SGDMomentum(initial_learning_rate=0.05, initial_momentum=momentum)
  mp = lopt.init(jax.random.key(0))
  ours = _run(lopt.transform(mp))
  ref = _run(optax.sgd(float(jnp.exp(mp["log_lr"])), momentum=momentum or None, nesterov=False))
  for u, r in zip(ours, ref):
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(r)):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_learned_momentum_uses_sigmoid_of_logit():
  lopt = learned_opt.SGDMomentum(initial_learning_rate=1.0, learn_momentum=True)
  mp = {"log_lr": jnp.asarray(0.0), "logit_momentum": jnp.asarray(0.0)}  # beta = 0.5
  tx = lopt.transform(mp)
  p = {"x": jnp.asarray([1.0])}
  s = tx.init(p)
  u1, s = tx.update({"x": jnp.asarray([1.0])}, s, p)
  u2, s = tx.update({"x": jnp.asarray([1.0])}, s, p)
  np.testing.assert_allclose(u1["x"], [-1.0])
  np.testing.assert_allclose(u2["x"], [-1.5])


def test_meta_gradient_wrt_log_lr_is_exact_for_one_sgd_step():
  # One step x1 = x0 - exp(l) g on f(x) = ½ x²: f(x1) = ½ x0² (1 - e^l)², d/dl = -x0² (1-e^l) e^l.
  lopt = learned_opt.SGDMomentum(initial_momentum=0.0)

  def meta_loss(log_lr):
    tx = lopt.transform({"log_lr": log_lr, "logit_momentum": jnp.asarray(0.0)})
    x = {"x": jnp.asarray(2.0)}
    u, _ = tx.update(x, tx.init(x), x)  # grad of ½x² is x
    return 0.5 * optax.apply_updates(x, u)["x"] ** 2

  l = jnp.log(0.1)
  np.testing.assert_allclose(jax.grad(meta_loss)(l), -4.0 * 0.9 * 0.1, rtol=1e-6)


@pytest.mark.parametrize("cls", [learned_opt.Adam, learned_opt.SGDMomentum])
def test_tuple_params_keep_structure(cls):
  # Regression: per-leaf results used to be unpacked with an `is_leaf=tuple` test, which
  # confused a params tree made of 2- or 3-tuples with the per-leaf result tuples.
  lopt = cls()
  tx = lopt.transform(lopt.init(jax.random.key(0)))
  for params in [(jnp.ones(2), jnp.ones(3)), (jnp.ones(2), jnp.ones(3), jnp.ones(4))]:
    updates, state = tx.update(params, tx.init(params), params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, params)


@pytest.mark.parametrize("cls", [learned_opt.Adam, learned_opt.SGDMomentum])
def test_state_tree_mismatch_raises(cls):
  lopt = cls()
  tx = lopt.transform(lopt.init(jax.random.key(0)))
  state = tx.init({"a": jnp.ones(2)})
  with pytest.raises(ValueError, match="does not match the optimizer state"):
    tx.update({"b": jnp.ones(2)}, state)
  with pytest.raises(ValueError, match="does not match the params"):
    tx.update({"a": jnp.ones(2)}, state, {"a": jnp.ones(2), "c": jnp.ones(1)})
