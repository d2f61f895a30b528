"""Tests of the model adapters: models written as users write them, trained through a Task."""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tasks
from tasks import adapters


def _regression_data(n=128, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
  y = (np.sin(2 * x[:, 0]) + x[:, 1] ** 2).astype(np.float32)
  return {"x": x, "y": y}


DATA = _regression_data()
mse = lambda out, batch: jnp.mean((out - batch["y"]) ** 2)


def train(train_loop, task, steps=150, lr=1e-2, seed=0):
  """Adam on ``task`` in one jitted scan; returns the full-data loss before and after."""

  @jax.jit
  def run(key):
    params = task.init(key)
    full = {k: jnp.asarray(v) for k, v in task.train.items()}
    before = task.loss(params, key, full)
    params, _ = train_loop(task, params, optax.adam(lr), key, steps)
    return before, task.loss(params, key, full), params

  return run(jax.random.key(seed))


# --- models written the way a user would ---------------------------------------------------


class NnxMLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(2, 32, rngs=rngs)
    self.out = nnx.Linear(32, 1, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.tanh(self.hidden(x)))[:, 0]


class LinenMLP(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(32)(x)))[:, 0]


# --- plain functions -----------------------------------------------------------------------


def test_linear_regression_converges_to_least_squares(train_loop):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(64, 3)).astype(np.float32)
  y = (x @ np.array([1.5, -2.0, 0.5]) + 0.3 + 0.1 * rng.normal(size=64)).astype(np.float32)
  task = tasks.from_function(
      init=lambda key: {"w": jnp.zeros(3), "b": jnp.zeros(())},
      loss=lambda p, batch: jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2),
      data={"x": x, "y": y}, name="linreg")
  assert task.name == "linreg" and task.batch_size is None
  opt = optax.adam(optax.exponential_decay(0.1, 100, 0.5))

  fit = jax.jit(lambda key: train_loop(task, task.init(key), opt, key, 1000)[0])
  params = fit(jax.random.key(0))
  design = np.concatenate([x, np.ones((64, 1), np.float32)], axis=1)
  solution, *_ = np.linalg.lstsq(design, y, rcond=None)
  np.testing.assert_allclose(params["w"], solution[:3], atol=1e-3)
  np.testing.assert_allclose(params["b"], solution[3], atol=1e-3)


def test_batches_are_drawn_from_the_right_split_inside_jit():
  train = {"x": np.arange(10, dtype=np.float32)[:, None], "y": np.arange(10, dtype=np.int32)}
  valid = {"x": 100 + np.arange(5, dtype=np.float32)[:, None], "y": np.arange(5, dtype=np.int32)}
  task = tasks.from_function(lambda k: jnp.zeros(()), lambda p, b: p, (train, valid),
                             batch_size=8)
  sample = jax.jit(task.sample_batch, static_argnums=1)
  tb, vb = sample(jax.random.key(0), "train"), sample(jax.random.key(0), "valid")
  assert tb["x"].shape == (8, 1) and tb["y"].shape == (8,) and tb["y"].dtype == jnp.int32
  np.testing.assert_array_equal(tb["x"][:, 0], tb["y"])  # rows stay aligned across keys
  assert np.all(tb["x"] < 10) and np.all(vb["x"] >= 100)
  np.testing.assert_array_equal(vb["x"][:, 0] - 100, vb["y"])
  assert not np.array_equal(sample(jax.random.key(1), "train")["y"], tb["y"])
  with pytest.raises(ValueError, match="split"):
    task.sample_batch(jax.random.key(0), "holdout")
  # A single mapping serves every split; batch_size=None gives the whole split.
  full = tasks.from_function(lambda k: jnp.zeros(()), lambda p, b: p, train)
  np.testing.assert_array_equal(full.sample_batch(jax.random.key(0), "valid")["y"], train["y"])


def test_stochastic_loss_and_normalizer():
  task = tasks.from_function(
      lambda k: jnp.ones(()), lambda p, key, b: p * jax.random.uniform(key) + jnp.sum(b["x"]),
      {"x": np.zeros((4, 1), np.float32)}, loss_takes_key=True,
      normalizer=lambda loss: loss / 2.0, ceiling=3.0)
  l1 = task.loss(jnp.ones(()), jax.random.key(0), task.sample_batch(jax.random.key(0)))
  l2 = task.loss(jnp.ones(()), jax.random.key(1), task.sample_batch(jax.random.key(0)))
  assert 0 < float(l1) < 1 and float(l1) != float(l2)
  assert float(task.normalizer(jnp.asarray(4.0))) == 2.0
  assert float(task.normalizer(jnp.asarray(40.0))) == 3.0
  assert float(task.normalizer(jnp.asarray(jnp.nan))) == 3.0


@pytest.mark.parametrize("data, error, match", [
    ({"x": np.zeros((5, 2)), "y": np.zeros(4)}, ValueError, "leading dimension"),
    ({"x": np.zeros((0, 2))}, ValueError, "no examples"),
    ({"x": np.float32(1.0)}, ValueError, "scalar"),
    ({}, TypeError, "non-empty mapping"),
    (np.zeros((5, 2)), TypeError, "mapping"),
    (({"x": np.zeros(3)}, {"z": np.zeros(3)}), ValueError, "same keys"),
    (({"x": np.zeros(3)}, {"x": np.zeros((2, 1))}, {}), TypeError, r"data\[2\] \(test\)"),
    (({"x": np.zeros(3)},) * 4, TypeError, "pair or a .* triple, got 4 items"),
    (({"x": np.zeros(3)}, {"x": np.zeros(2), "y": np.zeros(3)}), ValueError, "leading"),
])
def test_bad_data_gives_clear_errors(data, error, match):
  with pytest.raises(error, match=match):
    tasks.from_function(lambda k: 0.0, lambda p, b: p, data)


def test_bad_arguments_give_clear_errors():
  with pytest.raises(ValueError, match="batch_size"):
    tasks.from_function(lambda k: 0.0, lambda p, b: p, DATA, batch_size=0)
  with pytest.raises(KeyError, match="input_key 'inputs'"):
    tasks.from_flax(LinenMLP(), DATA["x"][:1], mse, DATA, input_key="inputs")
  with pytest.raises(TypeError, match="flax linen Module"):
    tasks.from_flax(object(), None, mse, DATA)
  with pytest.raises(TypeError, match="tasks.Task"):
    tasks.as_family("not a task")


# --- flax nnx, flax linen, haiku -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["nnx_factory", "nnx_instance", "linen", "haiku"])
def test_mlp_trains_through_adapter(kind, train_loop):
  if kind == "nnx_factory":
    task = tasks.from_flax(NnxMLP, None, mse, DATA, batch_size=32)
  elif kind == "nnx_instance":
    task = tasks.from_flax(NnxMLP(nnx.Rngs(3)), None, mse, DATA, batch_size=32)
  elif kind == "linen":
    task = tasks.from_flax(LinenMLP(), DATA["x"][:1], mse, DATA, batch_size=32)
  else:
    hk = pytest.importorskip("haiku")
    net = hk.transform(lambda x: hk.nets.MLP([32, 1], activation=jnp.tanh)(x)[:, 0])
    task = tasks.from_haiku(net, DATA["x"][:1], mse, DATA, batch_size=32)
  before, after, params = train(train_loop, task)
  assert np.isfinite(before) and float(after) < 0.2 * float(before)
  assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(params))


def test_nnx_params_are_plain_dicts_and_loss_matches_the_model():
  model = NnxMLP(nnx.Rngs(0))
  task = tasks.from_flax(model, None, mse, DATA)
  params = task.init(jax.random.key(5))
  assert type(params) is dict and set(params) == {"hidden", "out"}
  assert set(params["hidden"]) == {"kernel", "bias"}
  np.testing.assert_array_equal(params["hidden"]["kernel"], model.hidden.kernel[...])
  # An instance always starts from its own parameters.
  np.testing.assert_array_equal(task.init(jax.random.key(6))["out"]["bias"],
                                params["out"]["bias"])
  direct = mse(model(jnp.asarray(DATA["x"])), DATA)
  np.testing.assert_allclose(task.loss(params, jax.random.key(0), task.train), direct, rtol=1e-6)
  with pytest.raises(ValueError, match="structure"):
    task.loss({"hidden": params["hidden"]}, jax.random.key(0), task.train)
  # A factory gives key-dependent inits of the same structure.
  fresh = tasks.from_flax(NnxMLP, None, mse, DATA)
  p1, p2 = fresh.init(jax.random.key(1)), fresh.init(jax.random.key(2))
  assert jax.tree.structure(p1) == jax.tree.structure(params)
  assert not np.array_equal(p1["hidden"]["kernel"], p2["hidden"]["kernel"])


def test_nnx_with_lists_of_layers_and_dropout():

  class Deep(nnx.Module):

    def __init__(self, rngs):
      self.layers = nnx.List([nnx.Linear(2 if i == 0 else 8, 8, rngs=rngs) for i in range(11)])
      self.drop = nnx.Dropout(0.5, rngs=rngs)
      self.out = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
      for layer in self.layers:
        x = nnx.relu(layer(x))
      return self.out(self.drop(x))[:, 0]

  task = tasks.from_flax(lambda rngs: Deep(rngs), None, mse, DATA)
  params = task.init(jax.random.key(0))
  assert sorted(params["layers"]) == list(range(11))  # keys 0..10 in numeric, not string, order
  loss = jax.jit(task.loss)
  l1, l2 = loss(params, jax.random.key(1), task.train), loss(params, jax.random.key(2), task.train)
  assert np.isfinite(l1) and float(l1) != float(l2)  # dropout driven by the loss key
  # The parameter leaves map back to the right layers: zeroing layer 10 changes the loss.
  zeroed = jax.tree.map(lambda x: x, params)
  zeroed["layers"][10] = jax.tree.map(jnp.zeros_like, params["layers"][10])
  assert float(loss(zeroed, jax.random.key(1), task.train)) != float(l1)


def test_linen_loss_matches_apply_and_rejects_batch_stats():
  module = LinenMLP()
  task = tasks.from_flax(module, DATA["x"][:1], mse, DATA)
  params = task.init(jax.random.key(0))
  np.testing.assert_allclose(
      task.loss(params, jax.random.key(1), task.train),
      mse(module.apply({"params": params}, jnp.asarray(DATA["x"])), DATA), rtol=1e-6)

  class WithBatchNorm(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.BatchNorm(use_running_average=False)(nn.Dense(1)(x))[:, 0]

  with pytest.raises(ValueError, match="batch_stats"):
    tasks.from_flax(WithBatchNorm(), DATA["x"][:1], mse, DATA)


def test_haiku_variants_and_errors(monkeypatch):
  hk = pytest.importorskip("haiku")
  f = lambda x: hk.Linear(1)(x)[:, 0]
  no_rng = tasks.from_haiku(hk.without_apply_rng(hk.transform(f)), DATA["x"][:1], mse, DATA)
  params = no_rng.init(jax.random.key(0))
  np.testing.assert_allclose(
      no_rng.loss(params, jax.random.key(1), no_rng.train),
      mse(hk.without_apply_rng(hk.transform(f)).apply(params, jnp.asarray(DATA["x"])), DATA),
      rtol=1e-6)
  with pytest.raises(ValueError, match="transform_with_state"):
    tasks.from_haiku(hk.transform_with_state(f), DATA["x"][:1], mse, DATA)
  with pytest.raises(TypeError, match="hk.Transformed"):
    tasks.from_haiku(f, DATA["x"][:1], mse, DATA)
  monkeypatch.setitem(sys.modules, "haiku", None)
  with pytest.raises(ImportError, match=r"pip install learned_opt\[haiku\]"):
    tasks.from_haiku(None, None, mse, DATA)


def test_as_family_is_vmappable():
  task = tasks.from_flax(NnxMLP, None, mse, DATA, batch_size=16, name="user_mlp")
  family = tasks.as_family(task)
  assert isinstance(family, tasks.TaskFamily) and family.name == "user_mlp"
  assert tasks.as_family(task, name="other").name == "other"
  tps = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 3))
  assert tps["task_id"].shape == (3,)

  def run(tp, key):
    t = family.task(tp)
    params = t.init(key)
    return t.loss(params, key, t.sample_batch(key, "train"))

  losses = jax.jit(jax.vmap(run))(tps, jax.random.split(jax.random.key(1), 3))
  assert losses.shape == (3,) and np.all(np.isfinite(losses))
  assert len(set(np.asarray(losses).tolist())) == 3
  assert family.task(family.sample(jax.random.key(5))) is task
  assert isinstance(family, adapters.SingleTaskFamily)
