"""Offline classification datasets held in device memory: bundled digits and generated signals.

Nothing here downloads. ``"digits"`` is scikit-learn's bundled 8x8 handwritten digits
(``sklearn.datasets.load_digits`` reads a file shipped inside scikit-learn);
``"gaussian_mixture"`` and ``"mnist1d"`` are generated here from a fixed seed with numpy, so
every process builds bit-identical arrays. Each dataset is built once per process
(:func:`load` caches it) and is stored as ``jnp`` arrays with a leading *dataset-index* axis of
size ``num_datasets``: several same-shaped datasets (e.g. several Gaussian mixtures) can then be
picked per task by an integer inside ``jit``/``vmap``.

Shapes (``M = num_datasets``): ``train_x (M, N_train, *feature_shape)`` float32,
``train_y (M, N_train)`` int32, and the same for ``valid_*`` and ``test_*``. Features are
standardised with the training split's mean and standard deviation.

Splits (:data:`tasks.base.SPLITS`): ``"train"`` and ``"valid"`` are what meta-training reads;
``"test"`` is disjoint from both and read only by evaluation. ``"digits"`` holds out the last
297 images of a seeded shuffle: the first 148 are ``"valid"``, the last 149 ``"test"``. The
generated datasets draw ``"test"`` from a second, independently seeded stream (the same class
templates / mixture means), so their train and valid examples are those of the single-stream
generator. Image-like data are channel-last
(``digits``: ``(8, 8, 1)``; ``mnist1d``: ``(40, 1)``) so both MLPs (which flatten) and conv nets
can read them.

The mnist1d-style generator follows the idea of Greydanus & Kobak, "Scaling down deep learning
with MNIST-1D" (arXiv 2011.14439): a 1-D template per class, randomly shifted, stretched, scaled,
sheared and corrupted by correlated and white noise. Its templates and transformations are our own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from tasks import base


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """A classification dataset in device memory (see the module docstring for shapes).

  Attributes:
    name: the dataset's registry name.
    train_x, train_y, valid_x, valid_y, test_x, test_y: the arrays, with a leading
      dataset-index axis.
    num_classes: number of classes (labels are ``0 .. num_classes - 1``).
  """

  name: str
  train_x: jax.Array
  train_y: jax.Array
  valid_x: jax.Array
  valid_y: jax.Array
  test_x: jax.Array
  test_y: jax.Array
  num_classes: int

  @property
  def num_datasets(self) -> int:
    """Size of the leading dataset-index axis."""
    return self.train_x.shape[0]

  @property
  def feature_shape(self) -> tuple[int, ...]:
    """Shape of one example."""
    return tuple(self.train_x.shape[2:])

  def split(self, split: str) -> tuple[jax.Array, jax.Array]:
    """The ``(x, y)`` arrays of ``split`` (``"train"``, ``"valid"`` or ``"test"``)."""
    base.check_split(split)
    return getattr(self, f"{split}_x"), getattr(self, f"{split}_y")


def _finish(name: str, train, valid, test, num_classes: int) -> Dataset:
  """Standardises with train statistics (per dataset) and moves the arrays to the device.

  Args:
    name: the dataset's name.
    train, valid, test: ``(x, y)`` numpy pairs with a leading dataset-index axis.
    num_classes: number of classes.
  """
  xs_train = train[0]
  axes = tuple(range(1, xs_train.ndim))
  mean = xs_train.mean(axis=axes, keepdims=True)
  std = xs_train.std(axis=axes, keepdims=True) + 1e-6
  arrays = {}
  for split, (x, y) in zip(base.SPLITS, (train, valid, test)):
    arrays[f"{split}_x"] = jnp.asarray((x - mean) / std, jnp.float32)
    arrays[f"{split}_y"] = jnp.asarray(y, jnp.int32)
  return Dataset(name=name, num_classes=num_classes, **arrays)


def _test_rng(seed: int) -> np.random.Generator:
  """The generator of a dataset's ``"test"`` examples: independent of the ``seed`` stream."""
  return np.random.default_rng([seed, 1])


@functools.lru_cache(maxsize=None)
def digits(num_valid: int = 148, num_test: int = 149, seed: int = 0) -> Dataset:
  """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), shape ``(8, 8, 1)``.

  After a seeded shuffle the last ``num_valid + num_test`` images are held out: first the
  ``"valid"`` images, then the ``"test"`` ones; the rest are ``"train"``.

  Args:
    num_valid: images of the ``"valid"`` split.
    num_test: images of the ``"test"`` split.
    seed: seed of the shuffle.

  Returns:
    A :class:`Dataset` with ``num_datasets == 1``.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  bunch = load_digits()
  x = np.asarray(bunch.images, np.float64).reshape(-1, 8, 8, 1) / 16.0
  y = np.asarray(bunch.target, np.int64)
  if num_valid <= 0 or num_test <= 0 or num_valid + num_test >= len(y):
    raise ValueError(f"digits: num_valid and num_test must be positive with a sum below "
                     f"{len(y)}, got {num_valid} and {num_test}")
  perm = np.random.default_rng(seed).permutation(len(y))
  x, y = x[perm], y[perm]
  n, m = len(y) - num_valid - num_test, len(y) - num_test
  parts = [(x[None, a:b], y[None, a:b]) for a, b in ((0, n), (n, m), (m, len(y)))]
  return _finish("digits", *parts, 10)


@functools.lru_cache(maxsize=None)
def gaussian_mixture(num_classes: int = 5, dim: int = 16, components_per_class: int = 3,
                     num_datasets: int = 4, num_train: int = 2048, num_valid: int = 512,
                     num_test: int = 1024, separation: float = 0.6, seed: int = 0) -> Dataset:
  """Classes that are each a mixture of isotropic Gaussians (not linearly separable).

  .. math::
    \\mu_{c,j} \\sim \\mathcal N(0, s^2 I),\\quad y \\sim U\\{0..C-1\\},\\quad
    j \\sim U\\{0..J-1\\},\\quad x = \\mu_{y,j} + \\epsilon,\\ \\epsilon \\sim \\mathcal N(0, I)

  Args:
    num_classes: C.
    dim: feature dimension.
    components_per_class: J, Gaussians per class.
    num_datasets: how many independent mixtures (same shapes) to stack; tasks pick one by index.
    num_train, num_valid, num_test: examples per split and per dataset; train and valid come
      from the ``seed`` stream, test from an independent one (with the same means).
    separation: s, the scale of the component means relative to the unit noise.
    seed: seed of the generator.

  Returns:
    A :class:`Dataset` with feature shape ``(dim,)``.
  """
  for arg, value in [("num_classes", num_classes), ("dim", dim),
                     ("components_per_class", components_per_class),
                     ("num_datasets", num_datasets), ("num_train", num_train),
                     ("num_valid", num_valid), ("num_test", num_test)]:
    if value <= 0:
      raise ValueError(f"gaussian_mixture: {arg} must be positive, got {value}")
  rng = np.random.default_rng(seed)
  means = separation * rng.standard_normal((num_datasets, num_classes, components_per_class, dim))

  def examples(rng, n):
    y = rng.integers(0, num_classes, (num_datasets, n))
    comp = rng.integers(0, components_per_class, (num_datasets, n))
    idx = np.arange(num_datasets)[:, None]
    return means[idx, y, comp] + rng.standard_normal((num_datasets, n, dim)), y

  x, y = examples(rng, num_train + num_valid)
  test = examples(_test_rng(seed), num_test)
  return _finish("gaussian_mixture", (x[:, :num_train], y[:, :num_train]),
                 (x[:, num_train:], y[:, num_train:]), test, num_classes)


def _mnist1d_templates(num_classes: int, num_points: int, rng: np.random.Generator) -> np.ndarray:
  """One smooth random curve per class, shape ``(num_classes, num_points)``, max |value| = 1."""
  raw = rng.standard_normal((num_classes, num_points + 4))
  kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0]) / 9.0
  smooth = np.stack([np.convolve(r, kernel, mode="valid") for r in raw])
  smooth -= smooth.mean(axis=1, keepdims=True)
  return smooth / np.abs(smooth).max(axis=1, keepdims=True)


def _interp(templates: np.ndarray, pos: np.ndarray) -> np.ndarray:
  """Linear interpolation of rows of ``templates`` at fractional positions; zero outside."""
  p = templates.shape[-1]
  lo = np.floor(pos).astype(np.int64)
  frac = pos - lo
  def at(i):
    inside = (i >= 0) & (i < p)
    return np.where(inside, np.take_along_axis(templates, np.clip(i, 0, p - 1), axis=-1), 0.0)
  return (1 - frac) * at(lo) + frac * at(lo + 1)


@functools.lru_cache(maxsize=None)
def mnist1d(num_classes: int = 10, length: int = 40, num_train: int = 4000, num_valid: int = 1000,
            num_test: int = 1024, template_points: int = 12, noise: float = 0.15,
            correlated_noise: float = 0.15, seed: int = 0) -> Dataset:
  """An mnist1d-style dataset of 1-D signals, shape ``(length, 1)``.

  Each example takes its class template (a smooth curve of ``template_points`` values), places
  it on a grid of ``length`` points with a random shift (±25% of the length) and stretch
  (×0.7–1.3), multiplies it by a random amplitude (0.6–1.4), adds a random linear shear
  (slope ±0.5), correlated noise (white noise smoothed by a 5-point box filter) and white noise.

  Args:
    num_classes: number of classes (one template each).
    length: number of points of each signal.
    num_train, num_valid, num_test: examples per split; train and valid come from the ``seed``
      stream, test from an independent one (with the same templates).
    template_points: resolution of the templates.
    noise, correlated_noise: standard deviations of the white and correlated noise.
    seed: seed of the templates and of the examples.

  Returns:
    A :class:`Dataset` with ``num_datasets == 1``; arXiv 2011.14439 describes the original.
  """
  if min(num_classes, length, num_train, num_valid, num_test, template_points) <= 1:
    raise ValueError("mnist1d: sizes must be > 1")
  rng = np.random.default_rng(seed)
  templates = _mnist1d_templates(num_classes, template_points, rng)
  x, y = _mnist1d_examples(templates, length, num_train + num_valid, noise, correlated_noise, rng)
  test = _mnist1d_examples(templates, length, num_test, noise, correlated_noise, _test_rng(seed))
  return _finish("mnist1d", (x[None, :num_train], y[None, :num_train]),
                 (x[None, num_train:], y[None, num_train:]), (test[0][None], test[1][None]),
                 num_classes)


def _mnist1d_examples(templates: np.ndarray, length: int, n: int, noise: float,
                      correlated_noise: float, rng: np.random.Generator):
  """``n`` mnist1d signals ``(n, length, 1)`` and their labels ``(n,)`` drawn from ``rng``."""
  num_classes, template_points = templates.shape
  y = rng.integers(0, num_classes, n)
  shift = rng.uniform(-0.25, 0.25, (n, 1))
  stretch = rng.uniform(0.7, 1.3, (n, 1))
  amp = rng.uniform(0.6, 1.4, (n, 1))
  shear = rng.uniform(-0.5, 0.5, (n, 1))
  grid = np.linspace(0.0, 1.0, length)[None, :]
  # Template coordinate of each grid point: the template spans the middle 60% of the signal.
  u = ((grid - 0.5 - shift) / stretch + 0.3) / 0.6 * (template_points - 1)
  signal = amp * _interp(templates[y], u) + shear * (grid - 0.5)
  box = np.ones(5) / np.sqrt(5.0)
  white = rng.standard_normal((n, length + 4))
  corr = np.stack([np.convolve(w, box, mode="valid") for w in white])
  x = signal + correlated_noise * corr + noise * rng.standard_normal((n, length))
  return x[..., None], y


_LOADERS: dict[str, Callable[[], Dataset]] = {
    "digits": digits,
    "gaussian_mixture": gaussian_mixture,
    "mnist1d": mnist1d,
}


def names() -> list[str]:
  """Names accepted by :func:`load`."""
  return sorted(_LOADERS)


def load(name: str) -> Dataset:
  """The dataset ``name`` with its default settings, built once per process.

  Raises:
    ValueError: for an unknown name, listing the known ones.
  """
  if name not in _LOADERS:
    raise ValueError(f"Unknown dataset {name!r}; known datasets: {', '.join(names())}")
  return _LOADERS[name]()


def clear_cache() -> None:
  """Forgets the cached datasets (the next :func:`load` rebuilds them)."""
  for loader in (digits, gaussian_mixture, mnist1d):
    loader.cache_clear()
