"""Denoiser networks F(c_in x; c_noise): an MLP for vectors and a small conv net for 8x8 images.

Both take the noise level through a sinusoidal embedding of ``c_noise`` (Vaswani et al. 2017,
arXiv 1706.03762, Sec. 3.5, as used for diffusion time in Ho et al. 2020, arXiv 2006.11239,
App. B). Parameters are plain dicts of arrays whose structure depends only on the static config;
``init(key, scale)`` multiplies LeCun-normal weights by ``scale`` (a per-task, possibly traced,
init scale). The output layer is further scaled by ``output_scale`` (0.1), so a fresh network
outputs nearly zero and ``D ≈ c_skip x`` whatever the target (diffusion U-Nets zero their last
layer for the same reason, e.g. Dhariwal & Nichol 2021, arXiv 2105.05233).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def sinusoidal_embedding(c_noise: jax.Array, dim: int, max_frequency: float = 64.0) -> jax.Array:
  """Features ``[cos(ω_k c), sin(ω_k c)]`` with ``ω_k`` geometric in ``[1, max_frequency]``.

  Args:
    c_noise: shape ``(B,)``.
    dim: even embedding size.
    max_frequency: the largest ω.

  Returns:
    Shape ``(B, dim)``.
  """
  half = dim // 2
  freqs = jnp.exp(jnp.linspace(0.0, jnp.log(max_frequency), half))
  angles = c_noise[:, None] * freqs
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], -1)


def _normals(key, shapes):
  """Standard normals of the given shapes from one PRNG call (threefry is slow to compile)."""
  sizes = [int(np.prod(s)) for s in shapes]
  flat = jax.random.normal(key, (sum(sizes),))
  offsets = np.cumsum([0] + sizes)
  return [flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]


def _dense_init(z, scale):
  """LeCun-normal dense layer from standard normals ``z`` of shape ``(fan_in, fan_out)``."""
  return {"w": z * (scale / np.sqrt(z.shape[0])), "b": jnp.zeros((z.shape[1],))}


def _dense(p, x):
  return x @ p["w"] + p["b"]


@dataclasses.dataclass(frozen=True)
class MLPDenoiser:
  """``F(x, c) = MLP([x, emb(c)])`` with SiLU activations, for inputs of shape ``(B, dim)``.

  Attributes:
    dim: data dimension (input and output size).
    hidden: width of each hidden layer.
    depth: number of hidden layers.
    embed_dim: size of the noise-level embedding.
    output_scale: extra factor on the output layer's initial weights.
  """

  dim: int = 2
  hidden: int = 64
  depth: int = 3
  embed_dim: int = 16
  output_scale: float = 0.1

  def __post_init__(self):
    for f in ("dim", "hidden", "depth", "embed_dim"):
      v = getattr(self, f)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"MLPDenoiser.{f} must be a positive int, got {v!r}")
    if self.embed_dim % 2:
      raise ValueError(f"MLPDenoiser.embed_dim must be even, got {self.embed_dim}")

  def init(self, key: jax.Array, scale: jax.Array | float = 1.0) -> dict:
    sizes = [self.dim + self.embed_dim] + [self.hidden] * self.depth + [self.dim]
    zs = _normals(key, list(zip(sizes[:-1], sizes[1:])))
    return {f"dense_{i}": _dense_init(z, scale * (self.output_scale if i == self.depth else 1.0))
            for i, z in enumerate(zs)}

  def apply(self, params: dict, x: jax.Array, c_noise: jax.Array) -> jax.Array:
    h = jnp.concatenate([x, sinusoidal_embedding(c_noise, self.embed_dim)], -1)
    for i in range(self.depth):
      h = jax.nn.silu(_dense(params[f"dense_{i}"], h))
    return _dense(params[f"dense_{self.depth}"], h)


def _conv_init(z, scale):
  """LeCun-normal conv layer from standard normals ``z`` of shape ``(h, w, c_in, c_out)``."""
  fan_in = z.shape[0] * z.shape[1] * z.shape[2]
  return {"w": z * (scale / np.sqrt(fan_in)), "b": jnp.zeros((z.shape[3],))}


def _conv(p, x):
  """'SAME' stride-1 convolution as one matmul over im2col patches.

  Under ``vmap`` over tasks (per-task kernels) this stays a batched matmul, where
  ``lax.conv_general_dilated`` would become a grouped convolution, far slower on CPU.
  """
  kh, kw, c_in, c_out = p["w"].shape
  h, w = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
  patches = jnp.concatenate([padded[:, i:i + h, j:j + w, :]
                             for i in range(kh) for j in range(kw)], axis=-1)
  return patches @ p["w"].reshape(kh * kw * c_in, c_out) + p["b"]


@dataclasses.dataclass(frozen=True)
class ConvDenoiser:
  """A residual 3x3 conv net for single-channel ``side x side`` images stored flat ``(B, side²)``.

  ``h = conv_in(x)``; each block ``h += conv(silu(h + dense(emb(c))))``; ``F = conv_out(silu(h))``.

  Attributes:
    side: image height and width.
    channels: feature channels.
    blocks: number of residual blocks.
    embed_dim: size of the noise-level embedding.
    output_scale: extra factor on the output layer's initial weights.
  """

  side: int = 8
  channels: int = 16
  blocks: int = 2
  embed_dim: int = 16
  output_scale: float = 0.1

  def __post_init__(self):
    for f in ("side", "channels", "blocks", "embed_dim"):
      v = getattr(self, f)
      if not isinstance(v, int) or v <= 0:
        raise ValueError(f"ConvDenoiser.{f} must be a positive int, got {v!r}")
    if self.embed_dim % 2:
      raise ValueError(f"ConvDenoiser.embed_dim must be even, got {self.embed_dim}")

  @property
  def dim(self) -> int:
    return self.side * self.side

  def init(self, key: jax.Array, scale: jax.Array | float = 1.0) -> dict:
    c = self.channels
    shapes = [(3, 3, 1, c), (3, 3, c, 1)] + [(self.embed_dim, c), (3, 3, c, c)] * self.blocks
    zs = _normals(key, shapes)
    params = {"conv_in": _conv_init(zs[0], scale),
              "conv_out": _conv_init(zs[1], scale * self.output_scale)}
    for i in range(self.blocks):
      params[f"embed_{i}"] = _dense_init(zs[2 + 2 * i], scale)
      params[f"conv_{i}"] = _conv_init(zs[3 + 2 * i], scale)
    return params

  def apply(self, params: dict, x: jax.Array, c_noise: jax.Array) -> jax.Array:
    b = x.shape[0]
    emb = sinusoidal_embedding(c_noise, self.embed_dim)
    h = _conv(params["conv_in"], x.reshape(b, self.side, self.side, 1))
    for i in range(self.blocks):
      t = _dense(params[f"embed_{i}"], emb)[:, None, None, :]
      h = h + _conv(params[f"conv_{i}"], jax.nn.silu(h + t))
    return _conv(params["conv_out"], jax.nn.silu(h)).reshape(b, self.dim)
