"""What the task tests share: the one training loop they run (inside their own ``jax.jit``)."""

import jax
import optax
import pytest


def train_steps(task, params, opt, key, num_steps):
  """``num_steps`` steps of ``opt`` on ``task``'s train batches, in one ``lax.scan``.

  Step ``t`` draws its batch and loss randomness from ``jax.random.split(key, num_steps)[t]``.

  Returns:
    ``(params, losses)``: the trained parameters and the (num_steps,) loss before each step.
  """

  def step(carry, k):
    p, s = carry
    loss, grads = jax.value_and_grad(task.loss)(p, k, task.sample_batch(k, "train"))
    updates, s = opt.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), loss

  (params, _), losses = jax.lax.scan(step, (params, opt.init(params)),
                                     jax.random.split(key, num_steps))
  return params, losses


@pytest.fixture(scope="session")
def train_loop():
  """:func:`train_steps`, for tests and fixtures to jit inside their own programs."""
  return train_steps
