"""The three splits and the fixed evaluation batches of every task family.

* ``"train"`` is what it was before ``"test"`` existed (recomputed from the old formulas, or
  fingerprints taken from the old generators), ``"test"`` is disjoint from train and valid;
* ``Task.eval_batch`` is fixed, clean, of the stated size and vmaps over ``task_params``;
* no meta-training code path (any estimator, either meta-loss) reads the ``"test"`` split.
"""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import learned_opt
import tasks
from meta_train.estimators import grouped
from meta_train.estimators import registry
from meta_train.trainer import MetaTrainer
from tasks import datasets
from tasks import language_model as lm
from tasks import text
from tasks.diffusion import data as diffusion_data
from tasks.diffusion import family as diffusion_family


def test_splits_and_check_split():
  assert tasks.SPLITS == ("train", "valid", "test")
  for split in tasks.SPLITS:
    tasks.base.check_split(split)
  with pytest.raises(ValueError, match="'holdout'"):
    tasks.base.check_split("holdout")


# ------------------------------------------------------------------------ classifier datasets

def _rows(x):
  """Each example of ``x`` (one dataset's ``(N, ...)``) as bytes."""
  x = np.ascontiguousarray(np.asarray(x)).reshape(x.shape[0], -1)
  return [r.tobytes() for r in x]


@pytest.mark.parametrize("name", datasets.names())
def test_dataset_splits_are_pairwise_disjoint(name):
  d = datasets.load(name)
  for m in range(d.num_datasets):
    rows = {s: _rows(d.split(s)[0][m]) for s in tasks.SPLITS}
    for s, r in rows.items():
      assert len(set(r)) == len(r), f"{name}[{m}] {s} repeats an example"
    assert not set(rows["train"]) & set(rows["valid"])
    assert not set(rows["train"]) & set(rows["test"])
    assert not set(rows["valid"]) & set(rows["test"])


def test_digits_train_is_the_old_split_and_valid_test_halve_the_old_valid():
  """Before: 1,500 train and 297 valid images of one seeded shuffle, standardised on train."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  bunch = load_digits()
  x = np.asarray(bunch.images, np.float64).reshape(-1, 8, 8, 1) / 16.0
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], np.asarray(bunch.target)[perm]
  train = x[:1500]
  mean, std = train.mean(), train.std() + 1e-6
  old_valid = x[1500:]
  d = datasets.digits()
  np.testing.assert_array_equal(d.train_x[0], ((train - mean) / std).astype(np.float32))
  np.testing.assert_array_equal(d.train_y[0], y[:1500])
  np.testing.assert_array_equal(d.valid_x[0], ((old_valid[:148] - mean) / std).astype(np.float32))
  np.testing.assert_array_equal(d.test_x[0], ((old_valid[148:] - mean) / std).astype(np.float32))
  np.testing.assert_array_equal(d.valid_y[0], y[1500:1648])
  np.testing.assert_array_equal(d.test_y[0], y[1648:])


def _fingerprint(x, y):
  x = np.asarray(x, np.float64).ravel()
  w = (np.arange(x.size) % 7) - 3.0
  picks = x[np.linspace(0, x.size - 1, 5).astype(np.int64)]
  return (float(x @ w), float(x @ x), [float(v) for v in picks],
          hashlib.sha256(np.asarray(y, np.int32).tobytes()).hexdigest())


# Taken from the single-stream generators before the test split existed (commit 79ceeb9).
_OLD_FINGERPRINTS = {
    ("gaussian_mixture", "train"): (
        382.6954080062296, 131071.77423318339,
        [-2.3927993774414062, -1.8744232654571533, -1.3205177783966064, 1.7717474699020386,
         -1.4294898509979248],
        "6c3869c4f38ef9fdba86edb928ea7594004580ce8c1eec5a3d94d73b628b3baa"),
    ("gaussian_mixture", "valid"): (
        -118.63119671083223, 32539.284840737902,
        [-0.23216581344604492, 0.9715364575386047, -0.8583159446716309, -2.046922206878662,
         -0.2715730369091034],
        "50731314728102295231846f7c7b46d3fcad6819be150f21f47dff93f2839051"),
    ("mnist1d", "train"): (
        -157.84555222533527, 159999.3478691858,
        [0.7332603931427002, 0.06848515570163727, -0.13771456480026245, -0.29736995697021484,
         -0.44243237376213074],
        "74093b857ce2948a31aa611e857c2b14e1ad9a76fcf78aa703f006c7ee545729"),
    ("mnist1d", "valid"): (
        326.9076065514364, 39475.121093701804,
        [0.05764935538172722, 0.2355950027704239, -0.36433812975883484, 0.08459683507680893,
         -0.47605109214782715],
        "92b191b21e846050a89cbbca4298c6c237326defef0b90fb34628d1dc1e809fe"),
}


@pytest.mark.parametrize("name,split", sorted(_OLD_FINGERPRINTS))
def test_generated_train_and_valid_are_unchanged(name, split):
  weighted, squares, picks, labels = _fingerprint(*datasets.load(name).split(split))
  old = _OLD_FINGERPRINTS[(name, split)]
  assert labels == old[3]
  np.testing.assert_allclose([weighted, squares], old[:2], rtol=1e-9, atol=1e-6)
  np.testing.assert_allclose(picks, old[2], rtol=0, atol=0)


@pytest.mark.parametrize("loader", [datasets.gaussian_mixture, datasets.mnist1d])
def test_generated_test_split_is_an_independent_stream(loader):
  a, b = loader(num_train=64, num_valid=16, num_test=8), loader(num_train=64, num_valid=16,
                                                                num_test=32)
  for split in ("train", "valid"):  # The test stream never moves the train/valid stream.
    for x, y in zip(a.split(split), b.split(split)):
      np.testing.assert_array_equal(x, y)
  datasets.clear_cache()
  again = loader(num_train=64, num_valid=16, num_test=8)
  np.testing.assert_array_equal(a.test_x, again.test_x)  # Reproducible...
  np.testing.assert_array_equal(a.test_y, again.test_y)
  other = loader(num_train=64, num_valid=16, num_test=8, seed=1)
  assert not np.array_equal(np.asarray(a.test_x), np.asarray(other.test_x))  # ...per seed.
  assert a.test_x.shape[2:] == a.feature_shape


def test_dataset_split_sizes_and_errors():
  sizes = {n: tuple(datasets.load(n).split(s)[0].shape[1] for s in tasks.SPLITS)
           for n in datasets.names()}
  assert sizes == {"digits": (1500, 148, 149), "gaussian_mixture": (2048, 512, 1024),
                   "mnist1d": (4000, 1000, 1024)}
  with pytest.raises(ValueError, match="num_test"):
    datasets.digits(num_valid=148, num_test=0)
  with pytest.raises(ValueError, match="num_test"):
    datasets.gaussian_mixture(num_test=0)
  with pytest.raises(ValueError, match="'holdout'"):
    datasets.load("digits").split("holdout")


# ----------------------------------------------------------------------------- language model

def test_corpus_splits_partition_the_corpus_with_an_unchanged_train():
  ids = text.corpus_ids()
  n, held = len(ids), int(round(len(ids) * 0.1))
  train, valid, test = lm.corpus_splits(0.1)
  np.testing.assert_array_equal(train, ids[:n - held])  # The old train split.
  np.testing.assert_array_equal(valid, ids[n - held:n - held + held // 2])
  np.testing.assert_array_equal(test, ids[n - held + held // 2:])
  assert len(valid) == held // 2 and len(train) + len(valid) + len(test) == n


def test_lm_batches_of_each_split_lie_in_that_split():
  family = tasks.get("lm_transformer_tiny")
  task = family.task({"init_scale": jnp.float32(1.0), "token_noise": jnp.float32(0.0)})
  texts = dict(zip(tasks.SPLITS, map(text.decode, lm.corpus_splits(family.valid_fraction))))
  for split in tasks.SPLITS:
    batch = jax.jit(task.sample_batch, static_argnums=1)(jax.random.key(3), split)
    for inputs, targets in zip(np.asarray(batch["inputs"]), np.asarray(batch["targets"])):
      window = text.decode(inputs) + text.decode(targets[-1:])
      assert window in texts[split], split


# -------------------------------------------------------------------------------- diffusion

def test_diffusion_digits_train_unchanged_and_old_valid_halved():
  from sklearn import datasets as sk  # pylint: disable=g-import-not-at-top
  images = sk.load_digits().data.astype(np.float32) / 8.0 - 1.0
  images = images[np.random.default_rng(0).permutation(images.shape[0])]
  train, valid, test = diffusion_data.digits()
  np.testing.assert_array_equal(train, images[297:])
  np.testing.assert_array_equal(valid, images[:148])
  np.testing.assert_array_equal(test, images[148:297])
  rows = {"train": _rows(train), "valid": _rows(valid), "test": _rows(test)}
  assert not set(rows["test"]) & (set(rows["train"]) | set(rows["valid"]))
  assert not set(rows["train"]) & set(rows["valid"])


def test_toy_streams_train_and_valid_unchanged_test_independent():
  family = tasks.get("diffusion_toy2d")
  task = family.task(family.task_params(dataset="two_moons"))
  key = jax.random.key(5)
  batches = {s: np.asarray(task.sample_batch(key, s)["x0"]) for s in tasks.SPLITS}
  index = jnp.int32(diffusion_data.TOY_DATASETS.index("two_moons"))
  old_train = 0.5 * diffusion_data.sample_toy(index, key, 128)
  old_valid = 0.5 * diffusion_data.sample_toy(index, jax.random.fold_in(key, 0x5EED), 128)
  np.testing.assert_array_equal(batches["train"], old_train)
  np.testing.assert_array_equal(batches["valid"], old_valid)
  rows = {s: set(_rows(b)) for s, b in batches.items()}
  assert not rows["test"] & (rows["train"] | rows["valid"])
  np.testing.assert_array_equal(task.heldout(key, 128, "test"), batches["test"][:128])


# ------------------------------------------------------------------------- quadratic, adapters

def test_quadratic_test_batches_are_exact():
  family = tasks.get("quadratic")
  task = family.task(family.sample(jax.random.key(0)))
  np.testing.assert_array_equal(task.sample_batch(jax.random.key(1), "test")["xi"], np.zeros(10))
  assert np.any(task.sample_batch(jax.random.key(1), "train")["xi"] != 0)


def _rows_data(offset, n):
  return {"x": offset + np.arange(n, dtype=np.float32)[:, None],
          "y": np.arange(n, dtype=np.int32)}


def test_adapter_data_forms():
  train, valid, test = _rows_data(0, 10), _rows_data(100, 5), _rows_data(200, 3)
  init, loss = lambda k: jnp.zeros(()), lambda p, b: p

  def draws(task):
    return {s: np.asarray(task.sample_batch(jax.random.key(0), s)["x"]) for s in tasks.SPLITS}

  triple = draws(tasks.from_function(init, loss, (train, valid, test), batch_size=16))
  assert triple["train"].max() < 10 and (triple["valid"] // 100 == 1).all()
  assert (triple["test"] // 100 == 2).all()
  pair = draws(tasks.from_function(init, loss, (train, valid), batch_size=16))
  np.testing.assert_array_equal(pair["test"], pair["valid"])  # test draws from valid
  single = tasks.from_function(init, loss, train)
  for split in tasks.SPLITS:
    np.testing.assert_array_equal(single.eval_batch(split)["x"], train["x"])
  with pytest.raises(TypeError, match="triple, got 4 items"):
    tasks.from_function(init, loss, (train, valid, test, test))
  with pytest.raises(ValueError, match="train and test data must have the same keys"):
    tasks.from_function(init, loss, (train, valid, {"x": test["x"]}))


def test_adapter_eval_batch_is_the_first_rows():
  big, small = _rows_data(0, 3000), _rows_data(5000, 7)
  task = tasks.from_function(lambda k: jnp.zeros(()), lambda p, b: p, (big, small, small),
                             batch_size=4)
  np.testing.assert_array_equal(task.eval_batch("train")["x"], big["x"][:1024])
  np.testing.assert_array_equal(task.eval_batch("test")["y"], small["y"])
  family = tasks.as_family(task)
  assert family.task(family.sample(jax.random.key(0))).eval_batch("valid")["x"].shape == (7, 1)


def test_base_eval_batch_default_is_a_key_zero_batch():

  class Noisy(tasks.Task):
    def init(self, key):
      return jnp.zeros(())

    def loss(self, params, key, batch):
      return params + batch

    def sample_batch(self, key, split="train"):
      tasks.base.check_split(split)
      return jax.random.normal(key, ()) + tasks.SPLITS.index(split)

  task = Noisy()
  for split in tasks.SPLITS:
    assert float(task.eval_batch(split)) == float(task.sample_batch(jax.random.key(0), split))
  with pytest.raises(ValueError, match="split"):
    task.eval_batch("holdout")


# ---------------------------------------------------------------------------------- eval_batch

# Examples per eval batch for train / valid / test, and the leading size of each batch leaf.
_EVAL_SIZES = {
    "digits_mlp": (1024, 148, 149), "digits_conv": (1024, 148, 149),
    "gaussian_mixture_mlp": (1024, 512, 1024), "mnist1d_mlp": (1024, 1000, 1024),
    "mnist1d_conv": (1024, 1000, 1024),
    "lm_transformer_tiny": (64, 64, 64), "lm_transformer_small": (64, 64, 64),
    "quadratic": (10, 10, 10),
    "diffusion_toy2d": (4096, 4096, 4096), "diffusion_digits": (4096, 592, 596),
}


def _leading(batch):
  return {leaf.shape[0] for leaf in jax.tree.leaves(batch)}


def test_every_family_has_stated_eval_sizes():
  assert set(_EVAL_SIZES) | {"mixture"} == set(tasks.family_names())


@pytest.mark.parametrize("name", tasks.family_names())
def test_eval_batch_vmaps_is_fixed_and_has_a_finite_loss(name):
  family = tasks.get(name)
  tps = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 3))

  @jax.jit
  def run(tps, keys):
    def one(tp, k):
      task = family.task(tp)
      params = task.init(k)
      out = {}
      for split in tasks.SPLITS:
        batch = task.eval_batch(split)
        out[split] = (task.loss(params, jax.random.key(7), batch), batch)
      return out
    return jax.vmap(one)(tps, keys)

  out = run(tps, jax.random.split(jax.random.key(1), 3))
  jax.tree.map(np.testing.assert_array_equal, out, run(tps, jax.random.split(jax.random.key(1), 3)))
  eager_tasks = [family.task(jax.tree.map(lambda x, j=j: x[j], tps)) for j in range(3)]
  for i, split in enumerate(tasks.SPLITS):
    loss, batch = out[split]
    assert np.all(np.isfinite(loss)), (name, split)
    # Under jit and vmap each task gets the batch it has outside them (no key, no noise; the
    # toys' points are computed in float32 and may move by an ulp between programs).
    for j, task in enumerate(eager_tasks):
      jax.tree.map(lambda b, e, j=j: np.testing.assert_allclose(b[j], e, rtol=1e-6, atol=1e-6),
                   batch, task.eval_batch(split))
    eager = eager_tasks[0].eval_batch(split)
    sizes = _leading(eager)
    if name == "mixture":
      members = eager_tasks[0].tasks
      assert [_leading(b) for b in eager] == [_leading(m.eval_batch(split)) for m in members]
    else:
      assert sizes == {_EVAL_SIZES[name][i]}, (name, split)
    assert sum(leaf.nbytes for leaf in jax.tree.leaves(eager)) < 4 * 2**20


def test_classifier_eval_batch_is_clean_and_the_first_examples():
  family = tasks.get("gaussian_mixture_mlp")
  tp = dict(family.sample(jax.random.key(0)), label_noise=jnp.float32(0.9),
            dataset=jnp.int32(2))
  task = family.task(tp)
  d = family.data
  for split in tasks.SPLITS:
    x, y = d.split(split)
    batch = task.eval_batch(split)
    np.testing.assert_array_equal(batch["x"], x[2, :1024])
    np.testing.assert_array_equal(batch["y"], y[2, :1024])  # no label flips
  # The same task's training batches do flip labels: most disagree with the dataset's.
  label_of = dict(zip(_rows(d.train_x[2]), np.asarray(d.train_y[2])))
  noisy = task.sample_batch(jax.random.key(1), "train")
  true = np.array([label_of[r] for r in _rows(noisy["x"])])
  assert np.mean(true != np.asarray(noisy["y"])) > 0.7


def test_lm_eval_batch_windows_are_clean_and_spread():
  family = tasks.get("lm_transformer_tiny")
  task = family.task({"init_scale": jnp.float32(1.0), "token_noise": jnp.float32(1.0)})
  for split, ids in zip(tasks.SPLITS, lm.corpus_splits(family.valid_fraction)):
    batch = task.eval_batch(split)
    offsets = lm.eval_offsets(len(ids), family.seq_len)
    assert offsets[0] == 0 and offsets[-1] == len(ids) - family.seq_len - 1
    assert np.all(np.diff(offsets) > family.seq_len)  # distinct, non-overlapping windows
    windows = ids[offsets[:, None] + np.arange(family.seq_len + 1)]
    np.testing.assert_array_equal(batch["inputs"], windows[:, :-1])  # no token noise
    np.testing.assert_array_equal(batch["targets"], windows[:, 1:])
    assert batch["targets"].size >= tasks.EVAL_SIZE
  assert lm.eval_offsets(10_000, 1).shape == (1024,)  # >= 1,024 predicted tokens


def test_diffusion_eval_batch_repeats_fixed_examples():
  family = tasks.get("diffusion_digits")
  task = family.task(family.task_params())
  levels = diffusion_family.EVAL_NOISE_LEVELS
  assert levels == 4
  for split, images in zip(tasks.SPLITS, diffusion_data.digits()):
    x0 = np.asarray(task.eval_batch(split)["x0"])
    n = min(1024, len(images))
    np.testing.assert_array_equal(x0, np.tile(images[:n], (levels, 1)))
  toy = tasks.get("diffusion_toy2d")
  toy_task = toy.task(toy.task_params(dataset="rings"))
  x0 = np.asarray(toy_task.eval_batch("test")["x0"]).reshape(levels, 1024, 2)
  np.testing.assert_array_equal(x0[0], x0[3])
  np.testing.assert_array_equal(x0[0], toy_task.heldout(jax.random.key(0), 1024, "test"))


# ----------------------------------------------------------- meta-training never reads "test"

@dataclasses.dataclass(frozen=True, eq=False)
class _RecordingTask(tasks.Task):
  """Delegates to ``inner`` and records (at trace time) every split a batch is drawn from."""

  inner: tasks.Task
  log: list

  @property
  def ceiling(self):
    return self.inner.ceiling

  def init(self, key):
    return self.inner.init(key)

  def loss(self, params, key, batch):
    return self.inner.loss(params, key, batch)

  def sample_batch(self, key, split="train"):
    self.log.append(("sample_batch", split))
    return self.inner.sample_batch(key, split)

  def eval_batch(self, split):
    self.log.append(("eval_batch", split))
    return self.inner.eval_batch(split)

  def normalizer(self, loss):
    return self.inner.normalizer(loss)


@dataclasses.dataclass(frozen=True, eq=False)
class _RecordingFamily(tasks.TaskFamily):
  inner: tasks.TaskFamily
  log: list
  name: str = "recording"

  def sample(self, key):
    return self.inner.sample(key)

  def task(self, task_params):
    return _RecordingTask(self.inner.task(task_params), self.log)


_UNROLL = {"truncation_length": 3, "min_horizon": 6, "max_horizon": 6}
_COUNTS = {"tbptt": {"num_particles": 2}, "es": {"num_pairs": 1}, "pes": {"num_pairs": 1},
           "full_es": {"num_pairs": 1}}


@pytest.mark.parametrize("meta_loss", ["train", "valid"])
@pytest.mark.parametrize("name", [*registry.ESTIMATORS, "grouped"])
def test_meta_training_never_reads_the_test_split(name, meta_loss):
  log = []
  lopt = learned_opt.SGDMomentum(initial_learning_rate=0.01, initial_momentum=0.0)
  if name == "grouped":
    family = tasks.mixture_of([_RecordingFamily(tasks.QuadraticFamily(dim=2), log),
                               _RecordingFamily(tasks.QuadraticFamily(dim=3), log)])
    est = grouped.grouped_estimator("pes", lopt, family, member_pairs=(1, 1), meta_loss=meta_loss,
                                    **_UNROLL)
  else:
    family = _RecordingFamily(tasks.QuadraticFamily(dim=4), log)
    unroll = {k: v for k, v in _UNROLL.items() if k in registry.estimator_fields(name)}
    est = registry.make_estimator(name, lopt, family, meta_loss=meta_loss, **unroll,
                                  **_COUNTS[name])
  # The splits are recorded when the programs are traced: tracing init and a dispatch of two
  # outer steps (jax.eval_shape, nothing compiled or run) covers every path they take.
  trainer = MetaTrainer(est, optax.adam(1e-3), steps_per_dispatch=2)
  state = jax.eval_shape(trainer._init_impl, jax.random.key_data(jax.random.key(0)), None)
  _, metrics = jax.eval_shape(trainer._step_impl, state)
  assert metrics["meta_loss"].shape == ()
  # The recorder sees what meta-training reads: train batches, valid ones for the valid
  # meta-loss, never a test batch and never an evaluation batch.
  expected = {("sample_batch", "train")}
  if meta_loss == "valid":
    expected.add(("sample_batch", "valid"))
  assert set(log) == expected
