"""Data for diffusion tasks: 2-D toy distributions drawn inside jit, and 8x8 digit images.

Toy samplers are pure functions ``(key, n) -> (n, 2)``, standardised so each coordinate has
mean ~0 and standard deviation ~1 (constants measured on 4M samples), so the data scale of a
task is set by one number (``scale``, the ``sigma_data`` of EDM, arXiv 2206.00364, Sec. 5).
Choosing among them by a traced index goes through :func:`sample_toy` (``lax.switch``), so tasks
that differ only by dataset are one ``vmap``.

The digits are scikit-learn's bundled 1,797 8x8 images (``sklearn.datasets.load_digits``, no
download), mapped from ``[0, 16]`` to ``[-1, 1]`` and split once into fixed train, valid and
test sets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


# Each raw sampler maps shared base randomness -- uniforms ``u`` (n, 3) and normals ``z`` (n, 2)
# -- to points, so a batch costs two PRNG calls whichever (traced) dataset is chosen.

def _swiss_roll(u, z):
  t = 1.5 * jnp.pi * (1.0 + 2.0 * u[:, 0])
  return jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) + 0.5 * z


def _eight_gaussians(u, z):
  angle = jnp.floor(8 * u[:, 0]) * (jnp.pi / 4)
  return 2.0 * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1) + 0.2 * z


def _two_moons(u, z):
  t = jnp.pi * u[:, 0]
  upper = jnp.stack([jnp.cos(t), jnp.sin(t)], -1)
  lower = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], -1)
  return jnp.where(u[:, 1:2] < 0.5, lower, upper) + 0.08 * z


def _checkerboard(u, z):
  del z
  x = 4.0 * u[:, 0] - 2.0
  y = u[:, 1] - 2.0 * jnp.floor(2 * u[:, 2]) + jnp.mod(jnp.floor(x), 2.0)
  return jnp.stack([x, y], -1)


def _rings(u, z):
  radius = 1.0 + jnp.floor(4 * u[:, 0])
  angle = 2 * jnp.pi * u[:, 1]
  return radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1) + 0.08 * z


def _base_randomness(key, n):
  # One PRNG call (each compiles to a threefry kernel, slow to compile on CPU); Φ(z) ~ U(0, 1).
  z = jax.random.normal(key, (n, 5))
  return jax.scipy.special.ndtr(z[:, :3]), z[:, 3:]


# name -> (raw sampler, per-coordinate mean, per-coordinate std) of the raw sampler.
_TOYS = {
    "swiss_roll": (_swiss_roll, (2.005, 0.217), (6.640, 6.968)),
    "eight_gaussians": (_eight_gaussians, (0.0, 0.0), (1.4283, 1.4283)),  # sqrt(2 + 0.2^2)
    "two_moons": (_two_moons, (0.5, 0.25), (0.8696, 0.5004)),
    "checkerboard": (_checkerboard, (0.0, 0.0), (1.1547, 1.1547)),  # sqrt(16 / 12)
    "rings": (_rings, (0.0, 0.0), (1.9382, 1.9382)),  # sqrt(7.5 / 2 + 0.08^2)
}

TOY_DATASETS: tuple[str, ...] = tuple(_TOYS)


def toy_sampler(name: str):
  """The standardised sampler ``(key, n) -> (n, 2)`` of toy distribution ``name``.

  Raises:
    ValueError: if ``name`` is not one of :data:`TOY_DATASETS`.
  """
  if name not in _TOYS:
    raise ValueError(f"Unknown toy dataset {name!r}; known: {', '.join(TOY_DATASETS)}")
  raw, mean, std = _TOYS[name]

  def sample(key, n):
    return standardised(raw, mean, std, *_base_randomness(key, n))

  return sample


def standardised(raw, mean, std, u, z):
  return (raw(u, z) - jnp.asarray(mean)) / jnp.asarray(std)


def sample_toy(index: jax.Array, key: jax.Array, n: int) -> jax.Array:
  """Draws ``n`` standardised points of toy dataset number ``index`` (traced) of TOY_DATASETS."""
  branches = [functools.partial(standardised, *_TOYS[name]) for name in TOY_DATASETS]
  return jax.lax.switch(index, branches, *_base_randomness(key, n))


DIGITS_NUM_VALID = 148
DIGITS_NUM_TEST = 149


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits in ``[-1, 1]``, flattened: ``(train, valid, test)``.

  Of a fixed permutation (seed 0, the same on every machine) the first 148 images are
  ``valid`` ``(148, 64)``, the next 149 ``test`` ``(149, 64)`` and the last 1,500 ``train``
  ``(1500, 64)``.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top  (heavy; only when used)
  images = datasets.load_digits().data.astype(np.float32) / 8.0 - 1.0
  order = np.random.default_rng(0).permutation(images.shape[0])
  images = images[order]
  heldout = DIGITS_NUM_VALID + DIGITS_NUM_TEST
  return images[heldout:], images[:DIGITS_NUM_VALID], images[DIGITS_NUM_VALID:heldout]
