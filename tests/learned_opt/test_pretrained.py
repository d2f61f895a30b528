"""The pretrained optimizers shipped inside the package."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt


def test_default_is_shipped_and_listed():
  assert "default" in learned_opt.list_pretrained()


def test_pretrained_is_a_working_optax_optimizer():
  tx = learned_opt.pretrained()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  # A 2-d quadratic: the shipped optimizer must make progress without help.
  target = jnp.array([1.0, -2.0])
  loss = lambda p: 0.5 * jnp.sum((p["x"] - target) ** 2)
  params = {"x": jnp.zeros(2)}
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    value, grads = jax.value_and_grad(loss)(params)
    updates, state = tx.update(grads, state, params, loss=value)
    return optax.apply_updates(params, updates), state

  for _ in range(200):
    params, state = step(params, state)
  assert np.isfinite(float(loss(params)))
  assert float(loss(params)) < 0.5 * float(loss({"x": jnp.zeros(2)}))


def test_pretrained_file_says_how_it_was_made():
  info = learned_opt.provenance(learned_opt.pretrained_path("default"))
  assert info["producer"] == "meta-train"
  assert info["outer_step"] > 0
  assert info["config"]["optimizer"]["name"] == learned_opt.load_pretrained()[0].name


def test_unknown_name_lists_shipped_ones():
  with pytest.raises(ValueError, match="default"):
    learned_opt.pretrained("no-such-optimizer")
