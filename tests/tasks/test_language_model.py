"""Tests of the bundled grammar corpus and the transformer language-model families."""

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from tasks import language_model as lm
from tasks import text

LOG_V = math.log(text.VOCAB_SIZE)
# sha256 of tasks/data/grammar_corpus.txt: regenerate with `python -m tasks.text` and update
# this pin only when the grammar is changed on purpose.
_PINNED_SHA256 = "baf4bed488843ccc4ce6d492e16e9ff9144018e735bb0ffbd7cc44a00ce220b6"


@pytest.fixture(scope="module")
def family():
  return tasks.get("lm_transformer_tiny")


@pytest.fixture(scope="module")
def task(family):
  return family.task(family.sample(jax.random.key(0)))


def _tp(init_scale, token_noise):
  return {"init_scale": jnp.asarray(init_scale, jnp.float32),
          "token_noise": jnp.asarray(token_noise, jnp.float32)}


@pytest.fixture(scope="module")
def probe(family):
  """One jitted program: init, a train and a valid batch, the loss and its gradient."""

  def run(tp, key):
    t = family.task(tp)
    k_init, k_batch = jax.random.split(key)
    params = t.init(k_init)
    train, valid = t.sample_batch(k_batch, "train"), t.sample_batch(k_batch, "valid")
    loss, grads = jax.value_and_grad(t.loss)(params, key, train)
    return {"params": params, "train": train, "valid": valid, "loss": loss, "grads": grads}

  return jax.jit(run), jax.jit(jax.vmap(run))


@pytest.fixture(scope="module")
def tp0(family):
  return family.sample(jax.random.key(0))


# --- corpus -------------------------------------------------------------------------------


def test_corpus_is_deterministic_and_matches_bundled_file():
  generated = text.generate_corpus()
  assert generated == text.generate_corpus(text.DEFAULT_SEED, text.DEFAULT_NUM_CHARS)
  assert generated == text.load_corpus()
  other = text.generate_corpus(seed=1, num_chars=2000)
  assert len(other) >= 2000 and other != generated[:len(other)]


def test_corpus_is_pinned():
  digest = hashlib.sha256(text.CORPUS_FILE.read_bytes()).hexdigest()
  assert digest == _PINNED_SHA256


def test_corpus_size_vocab_and_round_trip():
  corpus = text.load_corpus()
  assert 100_000 <= len(corpus.encode("utf-8")) <= 200_000
  assert set(corpus) <= set(text.VOCAB)
  assert len(set(text.VOCAB)) == text.VOCAB_SIZE == 60
  ids = text.corpus_ids()
  assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < text.VOCAB_SIZE
  assert text.decode(ids[:500]) == corpus[:500]
  # English-like: sentences start with a capital and end with punctuation, words are spaced.
  first = corpus.split("\n")[0]
  assert first[0].isupper() and first[-1] in ".!?\""
  assert 3.0 < len(corpus) / corpus.count(" ") < 8.0


def test_encode_rejects_unknown_characters():
  with pytest.raises(ValueError, match="not in the fixed vocabulary"):
    text.encode("caf\u00e9")
  with pytest.raises(ValueError, match="num_chars"):
    text.generate_corpus(num_chars=0)


# --- the family ---------------------------------------------------------------------------


def test_registered_families():
  assert {"lm_transformer_tiny", "lm_transformer_small"} <= set(tasks.family_names())
  tiny, small = tasks.get("lm_transformer_tiny"), tasks.get("lm_transformer_small")
  assert (tiny.num_layers, tiny.width, tiny.positions) == (1, 32, "learned")
  assert (small.num_layers, small.width, small.positions) == (2, 64, "sinusoidal")


def test_init_batch_and_loss_are_finite(probe, tp0):
  out = probe[0](tp0, jax.random.key(1))
  params = out["params"]
  assert params["embed"]["tokens"].shape == (text.VOCAB_SIZE, 32)
  assert params["embed"]["positions"].shape == (32, 32)
  assert params["block_0"]["attn"]["qkv"].shape == (32, 96)
  assert "block_1" not in params
  batch = out["train"]
  assert batch["inputs"].shape == batch["targets"].shape == (16, 32)
  assert batch["inputs"].dtype == jnp.int32
  assert out["loss"].shape == () and np.isfinite(out["loss"])
  grads = out["grads"]
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in jax.tree.leaves(grads))


def test_vmap_over_four_tasks_matches_unbatched(family, probe):
  tps = jax.vmap(family.sample)(jax.random.split(jax.random.key(4), 4))
  keys = jax.random.split(jax.random.key(5), 4)
  out = probe[1](tps, keys)
  assert out["loss"].shape == (4,) and np.all(np.isfinite(out["loss"]))
  assert len(set(np.asarray(tps["init_scale"]).tolist())) == 4
  # Different tasks start from differently scaled weights.
  w_norms = np.linalg.norm(np.asarray(out["params"]["block_0"]["mlp"]["w1"]).reshape(4, -1),
                           axis=1)
  np.testing.assert_allclose(w_norms / np.asarray(tps["init_scale"]), w_norms[0] /
                             float(tps["init_scale"][0]), rtol=0.05)
  # Task 2 run alone gives the same numbers.
  single = probe[0](jax.tree.map(lambda x: x[2], tps), keys[2])
  np.testing.assert_array_equal(single["train"]["inputs"], out["train"]["inputs"][2])
  np.testing.assert_allclose(single["params"]["head"]["w"], out["params"]["head"]["w"][2],
                             rtol=1e-6)
  np.testing.assert_allclose(single["loss"], out["loss"][2], rtol=1e-5)
  # Initial loss of every task is close to a uniform prediction's, log(vocab_size).
  np.testing.assert_allclose(out["loss"], LOG_V, atol=0.1)
  t = family.task(jax.tree.map(lambda x: x[0], tps))
  np.testing.assert_allclose(t.normalizer(out["loss"][0]), out["loss"][0] / LOG_V, rtol=1e-6)


def test_normalizer_clips_and_maps_non_finite(task):
  assert float(task.normalizer(jnp.asarray(LOG_V))) == pytest.approx(1.0)
  assert float(task.normalizer(jnp.nan)) == task.ceiling
  assert float(task.normalizer(jnp.inf)) == task.ceiling
  assert float(task.normalizer(jnp.asarray(1e6))) == task.ceiling
  assert float(task.normalizer(jnp.asarray(-1.0))) == 0.0


def test_adam_reduces_loss_well_below_log_vocab(family, train_loop):
  t = family.task(_tp(1.0, 0.02))
  opt = optax.adam(1e-2)

  @jax.jit
  def train(key):
    params, losses = train_loop(t, t.init(key), opt, key, 100)
    valid = jax.vmap(lambda k: t.loss(params, k, t.sample_batch(k, "valid")))(
        jax.random.split(jax.random.key(99), 4))
    return losses, jnp.mean(valid)

  losses, valid = train(jax.random.key(8))
  assert losses[0] == pytest.approx(LOG_V, abs=0.15)
  assert float(jnp.mean(losses[-10:])) < 0.7 * LOG_V
  assert float(valid) < 0.7 * LOG_V


def test_valid_split_is_the_held_out_tail(family, probe, task):
  train_ids, valid_ids, test_ids = lm.corpus_splits(family.valid_fraction)
  n = len(text.corpus_ids())
  assert len(valid_ids) + len(test_ids) == round(0.1 * n)
  assert len(train_ids) + len(valid_ids) + len(test_ids) == n
  train_text, valid_text = text.decode(train_ids), text.decode(valid_ids)
  out = probe[0](_tp(1.0, 0.0), jax.random.key(10))
  tr, va = out["train"], out["valid"]
  assert not np.array_equal(tr["targets"], va["targets"])
  for row in range(4):
    window = text.decode(va["inputs"][row]) + text.decode(va["targets"][row, -1:])
    assert window in valid_text
    assert text.decode(tr["targets"][row]) in train_text
  with pytest.raises(ValueError, match="split"):
    task.sample_batch(jax.random.key(0), "holdout")


def test_token_noise_corrupts_train_inputs_only(probe):
  key = jax.random.key(11)
  b = probe[0](_tp(1.0, 0.0), key)["train"]
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  noisy = probe[0](_tp(1.0, 0.5), key)
  n = noisy["train"]
  np.testing.assert_array_equal(n["targets"], b["targets"])
  changed = float(jnp.mean(n["inputs"] != b["inputs"]))
  assert 0.4 < changed < 0.6  # 0.5 * (1 - 1/60) in expectation over 512 tokens
  v = noisy["valid"]
  np.testing.assert_array_equal(v["inputs"][:, 1:], v["targets"][:, :-1])


def test_small_family_with_sinusoidal_positions():
  family = tasks.get("lm_transformer_small")

  @jax.jit
  def run(key):
    k_tp, k_init, k_batch = jax.random.split(key, 3)
    t = family.task(family.sample(k_tp))
    params = t.init(k_init)
    batch = t.sample_batch(k_batch, "valid")
    return params, batch, t.loss(params, key, batch)

  params, batch, loss = run(jax.random.key(12))
  assert "positions" not in params["embed"] and "block_1" in params
  assert batch["inputs"].shape == (8, 64)
  assert float(loss) == pytest.approx(LOG_V, abs=0.1)
  pe = lm.sinusoidal_positions(64, 64)
  np.testing.assert_allclose(pe[0, 0::2], 0.0, atol=1e-7)
  np.testing.assert_allclose(pe[0, 1::2], 1.0, atol=1e-7)
  np.testing.assert_allclose(pe[3, 0], np.sin(3.0), rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(width=30, num_heads=4), "divisible"),
    (dict(positions="rotary"), "positions"),
    (dict(num_layers=0), "num_layers"),
    (dict(init_scale=(2.0, 1.0)), "init_scale"),
    (dict(token_noise=(0.0, 1.5)), "token_noise"),
    (dict(valid_fraction=1.0), "valid_fraction"),
    (dict(seq_len=100_000), "too long"),
])
def test_family_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    lm.LanguageModelFamily(**kwargs)
