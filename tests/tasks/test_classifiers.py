"""Tests of the offline datasets and the MLP / conv classifier families."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from tasks import classifiers
from tasks import datasets


# ----------------------------------------------------------------------------------- datasets

@pytest.mark.parametrize("name,shape,classes,num_datasets", [
    ("digits", (8, 8, 1), 10, 1),
    ("gaussian_mixture", (16,), 5, 4),
    ("mnist1d", (40, 1), 10, 1),
])
def test_dataset_shapes_and_labels(name, shape, classes, num_datasets):
  d = datasets.load(name)
  assert d.feature_shape == shape and d.num_classes == classes
  assert d.num_datasets == num_datasets == d.valid_x.shape[0]
  assert d.train_x.dtype == jnp.float32 and d.train_y.dtype == jnp.int32
  for split in tasks.SPLITS:
    x, y = d.split(split)
    assert x.shape[:2] == y.shape and x.shape[0] == num_datasets and x.shape[2:] == shape
    for m in range(num_datasets):  # Every class occurs in every split.
      assert set(np.asarray(y[m]).tolist()) == set(range(classes))
  x = np.asarray(d.train_x).reshape(num_datasets, -1)  # Standardised with train statistics.
  np.testing.assert_allclose(x.mean(1), 0.0, atol=1e-4)
  np.testing.assert_allclose(x.std(1), 1.0, atol=1e-4)


def test_digits_is_sklearn_digits_split_without_overlap():
  d = datasets.digits()
  assert d.train_x.shape[1] + d.valid_x.shape[1] + d.test_x.shape[1] == 1797
  counts = np.bincount(np.concatenate([np.asarray(d.split(s)[1][0]) for s in tasks.SPLITS]))
  np.testing.assert_array_equal(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def test_generated_datasets_are_reproducible_and_seeded():
  a = datasets.mnist1d(num_train=64, num_valid=16)
  b = datasets.mnist1d(num_train=64, num_valid=16)
  assert a is b  # Cached per process.
  datasets.clear_cache()
  c = datasets.mnist1d(num_train=64, num_valid=16)
  assert c is not a
  np.testing.assert_array_equal(np.asarray(a.train_x), np.asarray(c.train_x))
  np.testing.assert_array_equal(np.asarray(a.valid_y), np.asarray(c.valid_y))
  other = datasets.mnist1d(num_train=64, num_valid=16, seed=1)
  assert not np.array_equal(np.asarray(a.train_x), np.asarray(other.train_x))
  g = datasets.gaussian_mixture(num_train=32, num_valid=8)
  assert not np.array_equal(np.asarray(g.train_x[0]), np.asarray(g.train_x[1]))


def test_dataset_errors():
  with pytest.raises(ValueError, match="digits, gaussian_mixture, mnist1d"):
    datasets.load("imagenet")
  with pytest.raises(ValueError, match="dim"):
    datasets.gaussian_mixture(dim=-1)
  with pytest.raises(ValueError, match="split"):
    datasets.load("digits").split("holdout")


# ----------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("cls,kwargs,match", [
    (tasks.MLPClassifierFamily, {"hidden_sizes": (32, -4)}, "hidden_sizes"),
    (tasks.MLPClassifierFamily, {"hidden_sizes": (0,)}, "hidden_sizes"),
    (tasks.MLPClassifierFamily, {"hidden_sizes": [32]}, "hidden_sizes"),
    (tasks.MLPClassifierFamily, {"batch_size": 0}, "batch_size"),
    (tasks.MLPClassifierFamily, {"init_scale": (0.0, 1.0)}, "init_scale"),
    (tasks.MLPClassifierFamily, {"init_scale": (2.0, 1.0)}, "init_scale"),
    (tasks.MLPClassifierFamily, {"label_noise": (0.0, 1.0)}, "label_noise"),
    (tasks.MLPClassifierFamily, {"activations": ("relu", "sigmoidish")}, "activations"),
    (tasks.MLPClassifierFamily, {"activations": ()}, "activations"),
    (tasks.MLPClassifierFamily, {"dataset": "cifar"}, "dataset"),
    (tasks.MLPClassifierFamily, {"suggested_lr": -1.0}, "suggested_lr"),
    (tasks.ConvClassifierFamily, {"channels": (8, -16)}, "channels"),
    (tasks.ConvClassifierFamily, {"channels": ()}, "channels"),
    (tasks.ConvClassifierFamily, {"kernel_size": 0}, "kernel_size"),
    (tasks.ConvClassifierFamily, {"stride": -1}, "stride"),
    (tasks.ConvClassifierFamily, {"dataset": "gaussian_mixture"}, "channel-last"),
])
def test_invalid_config_raises(cls, kwargs, match):
  with pytest.raises(ValueError, match=match):
    cls(**kwargs)


def test_registered_families_and_param_shapes():
  shapes = {}
  for name in ("digits_mlp", "digits_conv", "gaussian_mixture_mlp", "mnist1d_mlp",
               "mnist1d_conv"):
    family = tasks.get(name)
    assert family.name == name
    params = jax.eval_shape(lambda f=family: f.task(f.sample(jax.random.key(0))).init(
        jax.random.key(1)))
    shapes[name] = jax.tree.map(lambda s: s.shape, params)
  assert shapes["digits_mlp"] == {"dense_0": {"w": (64, 32), "b": (32,)},
                                  "dense_1": {"w": (32, 10), "b": (10,)}}
  assert shapes["digits_conv"] == {"conv_0": {"w": (3, 3, 1, 8), "b": (8,)},
                                   "conv_1": {"w": (3, 3, 8, 16), "b": (16,)},
                                   "head": {"w": (16, 10), "b": (10,)}}
  assert shapes["gaussian_mixture_mlp"]["dense_2"] == {"w": (32, 5), "b": (5,)}
  assert shapes["mnist1d_mlp"]["dense_0"] == {"w": (40, 64), "b": (64,)}
  assert shapes["mnist1d_conv"]["conv_0"] == {"w": (5, 1, 16), "b": (16,)}


# ------------------------------------------------------------------------------ task sampling

def test_sampled_task_params_lie_in_their_ranges():
  family = tasks.get("gaussian_mixture_mlp")
  tps = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 256))
  assert {k: v.shape for k, v in tps.items()} == {
      "init_scale": (256,), "activation": (256,), "label_noise": (256,), "dataset": (256,)}
  assert ((tps["init_scale"] >= 0.5) & (tps["init_scale"] <= 2.0)).all()
  assert ((tps["label_noise"] >= 0.0) & (tps["label_noise"] <= 0.2)).all()
  assert set(np.asarray(tps["activation"]).tolist()) == {0, 1, 2, 3}
  assert set(np.asarray(tps["dataset"]).tolist()) == {0, 1, 2, 3}


def _task(family, **overrides):
  tp = {"init_scale": jnp.float32(1.0), "activation": jnp.int32(0),
        "label_noise": jnp.float32(0.0), "dataset": jnp.int32(0)}
  tp.update({k: jnp.asarray(v, tp[k].dtype) for k, v in overrides.items()})
  return family.task(tp)


def test_label_noise_flips_exactly_to_other_classes_and_spares_valid():
  family = tasks.MLPClassifierFamily(dataset="gaussian_mixture", batch_size=4096)
  key = jax.random.key(3)
  clean = _task(family, dataset=2).sample_batch(key, "train")
  noisy = _task(family, dataset=2, label_noise=0.3).sample_batch(key, "train")
  np.testing.assert_array_equal(clean["x"], noisy["x"])  # Same examples...
  flipped = np.asarray(clean["y"] != noisy["y"])  # ...some labels moved to another class.
  assert abs(flipped.mean() - 0.3) < 0.03
  assert ((np.asarray(noisy["y"]) >= 0) & (np.asarray(noisy["y"]) < 5)).all()
  d = family.data  # Clean batches hold the dataset's own labels for these examples.
  x_all, y_all = np.asarray(d.train_x[2]), np.asarray(d.train_y[2])
  row = {tuple(x): y for x, y in zip(x_all[:, :4].tolist(), y_all)}
  assert [row[tuple(x)] for x in np.asarray(clean["x"])[:50, :4].tolist()] == (
      np.asarray(clean["y"])[:50].tolist())
  valid = _task(family, dataset=2, label_noise=0.3).sample_batch(key, "valid")
  valid_rows = {tuple(x): y for x, y in zip(np.asarray(d.valid_x[2])[:, :4].tolist(),
                                            np.asarray(d.valid_y[2]))}
  assert [valid_rows[tuple(x)] for x in np.asarray(valid["x"])[:, :4].tolist()] == (
      np.asarray(valid["y"]).tolist())


def test_activation_switch_matches_fixed_activation():
  switched = tasks.get("digits_mlp")
  key = jax.random.key(0)
  params = _task(switched).init(key)
  x = _task(switched).sample_batch(key, "valid")["x"]
  logits = jax.jit(lambda i: _task(switched, activation=i).logits(params, x))
  for index, name in enumerate(switched.activations):
    fixed = tasks.MLPClassifierFamily(dataset="digits", hidden_sizes=(32,), activations=(name,))
    h = jnp.asarray(x).reshape(x.shape[0], -1) @ params["dense_0"]["w"] + params["dense_0"]["b"]
    expected = classifiers.ACTIVATIONS[name](h) @ params["dense_1"]["w"] + params["dense_1"]["b"]
    np.testing.assert_allclose(logits(index), expected, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(_task(fixed).logits(params, x), expected, rtol=1e-5, atol=1e-5)
  assert switched.activations == ("relu", "tanh", "gelu", "swish")


def test_init_scale_sets_weight_std():
  family = tasks.MLPClassifierFamily(dataset="mnist1d", hidden_sizes=(256,))
  params = _task(family, init_scale=1.5).init(jax.random.key(0))
  w = np.asarray(params["dense_0"]["w"])
  assert abs(w.std() * math.sqrt(40) / 1.5 - 1.0) < 0.05
  np.testing.assert_array_equal(params["dense_0"]["b"], 0.0)


def test_normalizer_is_loss_over_log_num_classes():
  family = tasks.get("gaussian_mixture_mlp")
  task = _task(family)
  zeros = jax.tree.map(jnp.zeros_like, task.init(jax.random.key(0)))
  batch = task.sample_batch(jax.random.key(1), "train")
  loss = task.loss(zeros, jax.random.key(2), batch)  # Uniform prediction: log 5.
  np.testing.assert_allclose(loss, math.log(5), rtol=1e-6)
  np.testing.assert_allclose(task.normalizer(loss), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(task.normalizer(jnp.array([jnp.nan, jnp.inf, 1e9, -3.0])),
                                [10.0, 10.0, 10.0, 0.0])


def test_adam_trains_digits_mlp_to_high_valid_accuracy(train_loop):
  family = tasks.get("digits_mlp")
  task = _task(family, init_scale=1.0, activation=1)
  opt = optax.adam(family.suggested_lr)

  @jax.jit
  def train(key):
    params, _ = train_loop(task, task.init(key), opt, key, 150)
    d = family.data
    return classifiers.ClassifierTask.accuracy(task, params, {"x": d.valid_x[0],
                                                             "y": d.valid_y[0]})

  assert float(train(jax.random.key(0))) > 0.9
