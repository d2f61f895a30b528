"""Tests of the mixture family: member selection, exact delegation, zero gradients elsewhere."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from tasks.mixture import DEFAULT_MEMBERS

MEMBERS = ("quadratic", "gaussian_mixture_mlp")


@pytest.fixture(scope="module")
def family():
  return tasks.mixture_of(MEMBERS)


def _with_index(tp, index):
  return {"index": jnp.asarray(index, jnp.int32), "params": tp["params"]}


def test_sample_structure(family):
  tp = family.sample(jax.random.key(0))
  assert tp["index"].dtype == jnp.int32 and tp["index"].shape == ()
  assert isinstance(tp["params"], tuple) and len(tp["params"]) == 2
  for member, member_tp in zip(family.families, tp["params"]):
    expected = jax.eval_shape(member.sample, jax.random.key(0))
    assert jax.tree.structure(expected) == jax.tree.structure(member_tp)
  params = jax.eval_shape(lambda: family.task(tp).init(jax.random.key(1)))
  assert isinstance(params, tuple) and len(params) == 2
  assert set(params[1]) == {"dense_0", "dense_1", "dense_2"}


def test_default_mixture_is_registered():
  default = tasks.get("mixture")
  assert [f.name for f in default.families] == list(DEFAULT_MEMBERS)
  assert default.suggested_lr == min(f.suggested_lr for f in default.families)


def test_weights_control_member_frequency():
  keys = jax.random.split(jax.random.key(0), 4000)
  def indices(weights):
    f = tasks.mixture_of(MEMBERS, weights=weights)
    return np.asarray(jax.jit(jax.vmap(lambda k: f.sample(k)["index"]))(keys))
  assert (indices((0.0, 2.0)) == 1).all()
  assert abs(indices((1.0, 3.0)).mean() - 0.75) < 0.03
  assert abs(indices(None).mean() - 0.5) < 0.03


@pytest.mark.parametrize("index", [0, 1])
def test_loss_normalizer_and_grad_delegate_to_selected_member(family, index):
  tp = _with_index(family.sample(jax.random.key(0)), index)
  key = jax.random.key(5)

  @jax.jit
  def run(tp):
    task = family.task(tp)
    params = task.init(key)
    batch = task.sample_batch(key, "train")
    loss, grads = jax.value_and_grad(task.loss)(params, key, batch)
    member = family.families[index].task(tp["params"][index])
    member_key = jax.random.split(key, 2)[index]
    member_loss, member_grad = jax.value_and_grad(member.loss)(params[index], member_key,
                                                               batch[index])
    return (loss, grads, task.normalizer(loss), task.normalizer(jnp.nan), member_loss,
            member_grad, member.normalizer(member_loss))

  loss, grads, norm, norm_nan, member_loss, member_grad, member_norm = run(tp)
  np.testing.assert_allclose(loss, member_loss, rtol=1e-6)
  chex.assert_trees_all_close(grads[index], member_grad, rtol=1e-5, atol=1e-7)
  for g in jax.tree.leaves(grads[1 - index]):  # Unselected member: exactly zero gradient.
    np.testing.assert_array_equal(g, 0.0)
  np.testing.assert_allclose(norm, member_norm, rtol=1e-6)
  assert float(norm_nan) == family.task(tp).ceiling == 10.0


def test_member_batches_and_params_follow_their_families(family):
  @jax.jit
  def both(key):
    tp = family.sample(key)
    task = family.task(tp)
    keys = jax.random.split(key, 2)
    members = [f.task(t) for f, t in zip(family.families, tp["params"])]
    mixed = (task.init(key), task.sample_batch(key, "valid"))
    direct = (tuple(m.init(k) for m, k in zip(members, keys)),
              tuple(m.sample_batch(k, "valid") for m, k in zip(members, keys)))
    return mixed, direct
  mixed, direct = both(jax.random.key(2))
  chex.assert_trees_all_equal(mixed, direct)


def test_adam_under_vmap_trains_only_the_selected_members(family, train_loop):
  tps = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 2))
  tps = {"index": jnp.array([0, 1], jnp.int32), "params": tps["params"]}
  opt = optax.adam(family.suggested_lr)

  @jax.jit
  @jax.vmap
  def train(tp, key):
    task = family.task(tp)
    p0 = task.init(key)
    eval_batch = task.sample_batch(key, "valid")
    p, _ = train_loop(task, p0, opt, key, 10)
    return p0, p, task.loss(p0, key, eval_batch), task.loss(p, key, eval_batch)

  p0, p, loss0, loss1 = train(tps, jax.random.split(jax.random.key(1), 2))
  assert (loss1 < loss0).all()
  for task_i, unselected in [(0, 1), (1, 0)]:
    moved = [not np.array_equal(a[task_i], b[task_i])
             for a, b in zip(jax.tree.leaves(p0[task_i]), jax.tree.leaves(p[task_i]))]
    assert all(moved)
    for a, b in zip(jax.tree.leaves(p0[unselected]), jax.tree.leaves(p[unselected])):
      np.testing.assert_array_equal(a[task_i], b[task_i])


@pytest.mark.parametrize("kwargs,error", [
    ({"members": ()}, ValueError),
    ({"members": ["quadratic"]}, ValueError),
    ({"members": ("quadratic", "nope")}, tasks.UnknownFamilyError),
    ({"members": ("quadratic", 3)}, ValueError),
    ({"members": MEMBERS, "weights": (1.0,)}, ValueError),
    ({"members": MEMBERS, "weights": (1.0, -1.0)}, ValueError),
    ({"members": MEMBERS, "weights": (0.0, 0.0)}, ValueError),
])
def test_invalid_mixture_raises(kwargs, error):
  with pytest.raises(error):
    tasks.MixtureFamily(**kwargs)
