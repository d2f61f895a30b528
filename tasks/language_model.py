"""Character-level transformer language models on the bundled grammar corpus.

A decoder-only, pre-LN transformer (Vaswani et al. 2017, arXiv 1706.03762; pre-LN as in
Xiong et al. 2020, arXiv 2002.04745) written with ``jax.numpy``; for inputs ``x_{1:L}``:

.. math::
  h_0 = E[x] + P,\\qquad
  h_\\ell' = h_{\\ell-1} + \\mathrm{Attn}(\\mathrm{LN}(h_{\\ell-1})),\\qquad
  h_\\ell = h_\\ell' + \\mathrm{MLP}(\\mathrm{LN}(h_\\ell')),\\\\
  \\mathcal L = -\\tfrac{1}{BL}\\sum_{b,t} \\log \\mathrm{softmax}(W\\,\\mathrm{LN}(h_n)_{b,t} + c)
  _{x_{b,t+1}}

with causal multi-head self-attention and learned (``P`` a parameter) or sinusoidal positions.
The corpus (:mod:`tasks.text`) lives in device memory; training batches are windows of
``seq_len + 1`` characters at random offsets in the first ``1 - valid_fraction`` of the text;
the held-out tail is split in two halves, ``"valid"`` (the first) and ``"test"`` (the second),
and their batches are windows inside their half. :meth:`TransformerLMTask.eval_batch` is a fixed
set of clean windows spread evenly over a split (at least 64 windows and 1,024 predicted
characters). Sampled per task (shape-preserving, so tasks
``vmap``): the initialisation scale and a token-noise rate (the fraction of *input* characters
of training batches replaced by uniformly random ones; targets stay clean). Width and depth are
separate families: ``lm_transformer_tiny`` (1 layer, width 32) and ``lm_transformer_small``
(2 layers, width 64).

Example::

  family = tasks.get("lm_transformer_tiny")
  task = family.task(family.sample(jax.random.key(0)))
  params = task.init(jax.random.key(1))
  batch = task.sample_batch(jax.random.key(2), "train")    # {"inputs", "targets"}: (16, 32)
  loss = task.loss(params, jax.random.key(3), batch)        # ~ log(60) = 4.09 at init
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tasks import base
from tasks import text

POSITIONS = ("learned", "sinusoidal")


@functools.lru_cache(maxsize=None)
def corpus_splits(valid_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The bundled corpus as ``(train, valid, test)`` ``uint8`` token arrays.

  The last ``round(N · valid_fraction)`` characters are held out: their first half (rounded
  down) is ``valid``, the rest ``test``; everything before them is ``train``.
  """
  ids = text.corpus_ids().astype(np.uint8)
  n_heldout = int(round(len(ids) * valid_fraction))
  start, middle = len(ids) - n_heldout, len(ids) - n_heldout + n_heldout // 2
  splits = ids[:start], ids[start:middle], ids[middle:]
  for split in splits:
    split.setflags(write=False)
  return splits


#: Windows of a language-model :meth:`~TransformerLMTask.eval_batch` (at least; see there).
EVAL_WINDOWS = 64


def eval_offsets(split_length: int, seq_len: int) -> np.ndarray:
  """Start offsets of the eval windows of ``seq_len + 1`` characters, evenly spread over a split.

  ``W = max(EVAL_WINDOWS, ceil(EVAL_SIZE / seq_len))`` windows (so at least ``EVAL_SIZE``
  predicted characters), the first at 0 and the last ending at the split's end.
  """
  num_windows = max(EVAL_WINDOWS, -(-base.EVAL_SIZE // seq_len))
  return np.floor(np.linspace(0, split_length - seq_len - 1, num_windows)).astype(np.int64)


def sinusoidal_positions(seq_len: int, width: int) -> jax.Array:
  """Fixed positions (Vaswani et al., arXiv 1706.03762, Sec. 3.5): sin/cos of ``t/10000^(2i/d)``.

  .. math::
    P_{t, 2i} = \\sin(t / 10000^{2i/d}),\\qquad P_{t, 2i+1} = \\cos(t / 10000^{2i/d})
  """
  t = np.arange(seq_len)[:, None]
  freq = np.exp(-math.log(10000.0) * np.arange(0, width, 2) / width)[None, :]
  pe = np.zeros((seq_len, width), np.float32)
  pe[:, 0::2] = np.sin(t * freq)
  pe[:, 1::2] = np.cos(t * freq)[:, :width // 2]
  return jnp.asarray(pe)


def _layer_norm(x, p, eps=1e-5):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _attention(x, p, num_heads):
  """Causal multi-head self-attention on ``x`` of shape ``(B, L, D)``."""
  b, l, d = x.shape
  qkv = (x @ p["qkv"]).reshape(b, l, 3, num_heads, d // num_heads)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, L, H, Dh)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // num_heads)
  causal = jnp.tril(jnp.ones((l, l), bool))
  scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, l, d)
  return out @ p["out"]


def _mlp(x, p):
  return jax.nn.gelu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


class _Normal(NamedTuple):
  """Placeholder for a weight ``std * N(0, I)`` of ``shape`` in an init spec."""

  shape: tuple[int, ...]
  std: float


def _draw(spec, key, scale):
  """Replaces the :class:`_Normal` leaves of ``spec`` with ``scale * std * N(0, I)`` draws.

  All weights come from a single ``jax.random.normal`` call (sliced), which compiles several
  times faster than one call per weight.
  """
  is_normal = lambda x: isinstance(x, _Normal)
  leaves, treedef = jax.tree.flatten(spec, is_leaf=is_normal)
  sizes = [math.prod(l.shape) for l in leaves if is_normal(l)]
  flat = jax.random.normal(key, (sum(sizes),), jnp.float32) * scale
  out, start = [], 0
  for leaf in leaves:
    if is_normal(leaf):
      size = math.prod(leaf.shape)
      out.append(leaf.std * flat[start:start + size].reshape(leaf.shape))
      start += size
    else:
      out.append(leaf)
  return jax.tree.unflatten(treedef, out)


@dataclasses.dataclass(frozen=True)
class TransformerLMTask(base.Task):
  """Next-character prediction with one transformer; ``init_scale``/``token_noise`` may be traced.

  Batches are ``{"inputs": int32 (B, L), "targets": int32 (B, L)}`` with targets the inputs
  shifted by one character. The normaliser is ``loss / log(vocab_size)`` clipped to
  ``[0, ceiling]`` (1.0 is a uniform prediction).
  """

  family: "LanguageModelFamily"
  init_scale: jax.Array
  token_noise: jax.Array
  name: str = "lm_transformer"
  ceiling: float = base.DEFAULT_CEILING

  def init(self, key):
    f = self.family
    d, hidden, v = f.width, f.mlp_ratio * f.width, text.VOCAB_SIZE
    residual = 1.0 / math.sqrt(2 * f.num_layers)  # GPT-2's scaling of residual projections.
    normal = lambda *shape, std: _Normal(shape, std)
    ln = lambda: {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}
    spec = {"embed": {"tokens": normal(v, d, std=1.0 / math.sqrt(d))}}
    if f.positions == "learned":
      spec["embed"]["positions"] = normal(f.seq_len, d, std=1.0 / math.sqrt(d))
    for i in range(f.num_layers):
      spec[f"block_{i}"] = {
          "ln1": ln(),
          "attn": {"qkv": normal(d, 3 * d, std=1.0 / math.sqrt(d)),
                   "out": normal(d, d, std=residual / math.sqrt(d))},
          "ln2": ln(),
          "mlp": {"w1": normal(d, hidden, std=1.0 / math.sqrt(d)),
                  "b1": jnp.zeros((hidden,), jnp.float32),
                  "w2": normal(hidden, d, std=residual / math.sqrt(hidden)),
                  "b2": jnp.zeros((d,), jnp.float32)},
      }
    spec["ln_f"] = ln()
    spec["head"] = {"w": normal(d, v, std=f.readout_scale / math.sqrt(d)),
                    "b": jnp.zeros((v,), jnp.float32)}
    return _draw(spec, key, jnp.asarray(self.init_scale, jnp.float32))

  def apply(self, params, inputs):
    """Logits ``(B, L, vocab_size)`` for int ``inputs`` of shape ``(B, L)``, ``L <= seq_len``."""
    f = self.family
    length = inputs.shape[-1]
    if f.positions == "learned":
      pos = params["embed"]["positions"][:length]
    else:
      pos = sinusoidal_positions(f.seq_len, f.width)[:length]
    # One-hot products instead of gathers: cheaper to compile and differentiate on CPU.
    tokens = params["embed"]["tokens"]
    h = jax.nn.one_hot(inputs, text.VOCAB_SIZE, dtype=tokens.dtype) @ tokens + pos
    for i in range(f.num_layers):
      p = params[f"block_{i}"]
      h = h + _attention(_layer_norm(h, p["ln1"]), p["attn"], f.num_heads)
      h = h + _mlp(_layer_norm(h, p["ln2"]), p["mlp"])
    return _layer_norm(h, params["ln_f"]) @ params["head"]["w"] + params["head"]["b"]

  def sample_batch(self, key, split="train"):
    base.check_split(split)
    f = self.family
    data = jnp.asarray(corpus_splits(f.valid_fraction)[base.SPLITS.index(split)])
    # One uniform draw per window: its offset, then a (noise?, random token) pair per input.
    u = jax.random.uniform(key, (f.batch_size, 1 + 2 * f.seq_len), jnp.float32)
    num_offsets = data.shape[0] - f.seq_len
    offsets = jnp.minimum((u[:, 0] * num_offsets).astype(jnp.int32), num_offsets - 1)
    windows = jax.vmap(lambda o: jax.lax.dynamic_slice(data, (o,), (f.seq_len + 1,)))(offsets)
    windows = windows.astype(jnp.int32)
    inputs, targets = windows[:, :-1], windows[:, 1:]
    if split == "train":
      noisy = u[:, 1:1 + f.seq_len] < self.token_noise
      random_tokens = jnp.minimum((u[:, 1 + f.seq_len:] * text.VOCAB_SIZE).astype(jnp.int32),
                                  text.VOCAB_SIZE - 1)
      inputs = jnp.where(noisy, random_tokens, inputs)
    return {"inputs": inputs, "targets": targets}

  def eval_batch(self, split):
    """Clean windows at the :func:`eval_offsets` of ``split``: int32 ``(W, seq_len)`` arrays.

    With the default families ``W = 64``: 2,048 predicted characters for
    ``lm_transformer_tiny``, 4,096 for ``lm_transformer_small``.
    """
    base.check_split(split)
    f = self.family
    data = corpus_splits(f.valid_fraction)[base.SPLITS.index(split)]
    offsets = eval_offsets(len(data), f.seq_len)
    windows = data[offsets[:, None] + np.arange(f.seq_len + 1)].astype(np.int32)
    return {"inputs": jnp.asarray(windows[:, :-1]), "targets": jnp.asarray(windows[:, 1:])}

  def loss(self, params, key, batch):
    del key
    logits = self.apply(params, batch["inputs"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    targets = jax.nn.one_hot(batch["targets"], text.VOCAB_SIZE, dtype=logp.dtype)
    return -jnp.mean(jnp.sum(targets * logp, axis=-1))

  def normalizer(self, loss):
    return base.clip_to_ceiling(loss / math.log(text.VOCAB_SIZE), self.ceiling, 0.0)


@dataclasses.dataclass(frozen=True)
class LanguageModelFamily(base.TaskFamily):
  """Transformer character LMs of fixed shape with sampled init scale and token noise.

  Attributes:
    num_layers: number of transformer blocks.
    width: model width ``d`` (divisible by ``num_heads``).
    num_heads: attention heads.
    mlp_ratio: MLP hidden width is ``mlp_ratio * width``.
    seq_len: characters per training window ``L``.
    batch_size: windows per batch ``B``.
    positions: ``"learned"`` or ``"sinusoidal"``.
    readout_scale: the output layer's init is ``readout_scale`` times a fan-in init, so the
      initial loss is close to ``log(vocab_size)``.
    valid_fraction: fraction of the corpus held out (its tail): the first half is the
      ``"valid"`` split, the second the ``"test"`` split.
    init_scale: range ``(lo, hi)``; multiplier on every weight's init, log-uniform per task.
    token_noise: range ``(lo, hi)``; fraction of training inputs replaced, uniform per task.
  """

  num_layers: int = 1
  width: int = 32
  num_heads: int = 2
  mlp_ratio: int = 4
  seq_len: int = 32
  batch_size: int = 16
  positions: str = "learned"
  readout_scale: float = 0.1
  valid_fraction: float = 0.1
  init_scale: tuple[float, float] = (0.5, 2.0)
  token_noise: tuple[float, float] = (0.0, 0.1)
  name: str = "lm_transformer_tiny"

  def __post_init__(self):
    for field in ("num_layers", "width", "num_heads", "mlp_ratio", "seq_len", "batch_size"):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"LanguageModelFamily.{field} must be a positive int, got {value!r}")
    if self.width % self.num_heads:
      raise ValueError(f"LanguageModelFamily.width ({self.width}) must be divisible by "
                       f"num_heads ({self.num_heads})")
    if self.positions == "sinusoidal" and self.width % 2:
      raise ValueError(f"Sinusoidal positions need an even width, got {self.width}")
    if self.positions not in POSITIONS:
      raise ValueError(f"LanguageModelFamily.positions must be one of {POSITIONS}, "
                       f"got {self.positions!r}")
    if not 0 < self.valid_fraction < 1:
      raise ValueError(f"LanguageModelFamily.valid_fraction must be in (0, 1), "
                       f"got {self.valid_fraction}")
    if not 0 < self.init_scale[0] <= self.init_scale[1]:
      raise ValueError(f"LanguageModelFamily.init_scale must be 0 < lo <= hi, "
                       f"got {self.init_scale}")
    if not 0 <= self.token_noise[0] <= self.token_noise[1] <= 1:
      raise ValueError(f"LanguageModelFamily.token_noise must be 0 <= lo <= hi <= 1, "
                       f"got {self.token_noise}")
    shortest = min(len(split) for split in corpus_splits(self.valid_fraction))
    if self.seq_len + 1 >= shortest:
      raise ValueError(f"seq_len {self.seq_len} is too long for the valid and test splits "
                       f"({shortest} characters for valid_fraction={self.valid_fraction})")

  def sample(self, key):
    k_scale, k_noise = jax.random.split(key)
    lo, hi = self.init_scale
    return {
        "init_scale": jnp.exp(jax.random.uniform(k_scale, (), minval=math.log(lo),
                                                 maxval=math.log(hi))),
        "token_noise": jax.random.uniform(k_noise, (), minval=self.token_noise[0],
                                          maxval=self.token_noise[1]),
    }

  def task(self, task_params):
    return TransformerLMTask(family=self, init_scale=task_params["init_scale"],
                             token_noise=task_params["token_noise"],
                             name=f"{self.name}_l{self.num_layers}_w{self.width}")


def lm_transformer_tiny() -> LanguageModelFamily:
  """1 layer, width 32, 2 heads, learned positions, 16 windows of 32 characters."""
  return LanguageModelFamily()


def lm_transformer_small() -> LanguageModelFamily:
  """2 layers, width 64, 4 heads, sinusoidal positions, 8 windows of 64 characters."""
  return LanguageModelFamily(num_layers=2, width=64, num_heads=4, seq_len=64, batch_size=8,
                             positions="sinusoidal", name="lm_transformer_small")


base.register_family("lm_transformer_tiny", lm_transformer_tiny)
base.register_family("lm_transformer_small", lm_transformer_small)
