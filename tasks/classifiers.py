"""MLP and conv-net classifier task families on the offline datasets of :mod:`tasks.datasets`.

.. math::
  L(\\theta) = \\frac1B \\sum_{i=1}^B -\\log \\mathrm{softmax}(f_\\theta(x_i))_{\\tilde y_i},
  \\qquad \\tilde y_i = \\begin{cases} y_i + U\\{1..C-1\\} \\bmod C & \\text{w.p. } \\rho \\\\
  y_i & \\text{otherwise} \\end{cases}

Architecture (widths, depth, kernel), dataset and batch size are static: each combination is
its own family (``"digits_mlp"``, ``"digits_conv"``, ``"gaussian_mixture_mlp"``,
``"mnist1d_mlp"``, ``"mnist1d_conv"``). Sampled per task, in ``task_params`` (all scalars, so
N tasks are one ``vmap``):

* ``init_scale``: multiplies the ``1/sqrt(fan_in)`` normal initialisation (log-uniform);
* ``activation``: index into the family's ``activations``, applied with ``lax.switch``;
* ``label_noise``: ρ, the fraction of training labels flipped to another class, drawn per batch
  (``"valid"`` and ``"test"`` batches are clean, held-out examples, see :mod:`tasks.datasets`);
* ``dataset``: index into the stacked same-shape datasets (e.g. four Gaussian mixtures).

:meth:`ClassifierTask.eval_batch` is the first ``min(1024, n)`` examples of a split (in the
dataset's fixed order, for the task's dataset), with clean labels.

The normaliser divides the cross-entropy by ``log C`` (the loss of a uniform prediction), so
tasks with different numbers of classes share a scale, and clips it into ``[0, ceiling]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from tasks import base
from tasks import datasets

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "swish": jax.nn.swish,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
}


def apply_activation(index: jax.Array, x: jax.Array, names: tuple[str, ...]) -> jax.Array:
  """``ACTIVATIONS[names[index]](x)`` for a (possibly traced) integer ``index``."""
  if len(names) == 1:
    return ACTIVATIONS[names[0]](x)
  return jax.lax.switch(index, [ACTIVATIONS[n] for n in names], x)


def _dense_init(key: jax.Array, fan_in: int, shape: tuple[int, ...], scale: jax.Array) -> dict:
  return {"w": scale * jax.random.normal(key, shape) / math.sqrt(fan_in),
          "b": jnp.zeros(shape[-1:])}


@dataclasses.dataclass(frozen=True)
class ClassifierTask(base.Task):
  """One classification task; ``init_scale`` .. ``dataset_index`` may be traced arrays."""

  family: "ClassifierFamily"
  init_scale: jax.Array
  activation: jax.Array
  label_noise: jax.Array
  dataset_index: jax.Array
  name: str = "classifier"
  ceiling: float = base.DEFAULT_CEILING

  @property
  def num_classes(self) -> int:
    return self.family.data.num_classes

  def init(self, key):
    return self.family.init_params(key, self.init_scale)

  def sample_batch(self, key, split="train"):
    base.check_split(split)
    xs, ys = self.family.data.split(split)
    k_idx, k_flip, k_shift = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (self.family.batch_size,), 0, xs.shape[1])
    x, y = xs[self.dataset_index, idx], ys[self.dataset_index, idx]
    if split == "train":
      c = self.num_classes
      flip = jax.random.bernoulli(k_flip, self.label_noise, y.shape)
      shift = jax.random.randint(k_shift, y.shape, 1, c)
      y = jnp.where(flip, (y + shift) % c, y)
    return {"x": x, "y": y}

  def eval_batch(self, split):
    """The first ``min(EVAL_SIZE, n)`` examples of ``split`` of this task's dataset, clean labels.

    Sizes with the default datasets: digits 1,024 / 148 / 149 (train / valid / test),
    gaussian_mixture 1,024 / 512 / 1,024, mnist1d 1,024 / 1,000 / 1,024.
    """
    base.check_split(split)
    xs, ys = self.family.data.split(split)
    n = min(base.EVAL_SIZE, xs.shape[1])
    return {"x": xs[self.dataset_index, :n], "y": ys[self.dataset_index, :n]}

  def logits(self, params, x):
    """Class scores ``f_θ(x)`` for a batch ``x``, shape ``(B, num_classes)``."""
    act = lambda h: apply_activation(self.activation, h, self.family.activations)
    return self.family.apply(params, x, act)

  def loss(self, params, key, batch):
    del key
    logp = jax.nn.log_softmax(self.logits(params, batch["x"]))
    return -jnp.take_along_axis(logp, batch["y"][:, None], axis=-1).mean()

  def accuracy(self, params, batch):
    """Fraction of ``batch`` classified correctly."""
    return (self.logits(params, batch["x"]).argmax(-1) == batch["y"]).mean()

  def normalizer(self, loss):
    return base.clip_to_ceiling(loss / math.log(self.num_classes), self.ceiling, 0.0)


def _check_range(cls: str, field: str, rng: tuple[float, float], lo_ok, hi_ok) -> None:
  if len(rng) != 2 or not (lo_ok(rng[0]) and rng[0] <= rng[1] and hi_ok(rng[1])):
    raise ValueError(f"{cls}.{field} must be an ordered (lo, hi) pair in range, got {rng!r}")


def _check_sizes(cls: str, field: str, sizes: Any, allow_empty: bool = True) -> None:
  if (not isinstance(sizes, tuple) or (not sizes and not allow_empty)
      or not all(isinstance(s, int) and s > 0 for s in sizes)):
    raise ValueError(f"{cls}.{field} must be a tuple of positive ints, got {sizes!r}")


@dataclasses.dataclass(frozen=True)
class ClassifierFamily(base.TaskFamily):
  """Fields shared by the classifier families (subclasses add the architecture).

  Attributes:
    dataset: a name from :func:`tasks.datasets.names`.
    batch_size: examples per batch.
    init_scale: ``(lo, hi)`` of the log-uniform initialisation multiplier.
    label_noise: ``(lo, hi)`` of the uniform fraction of flipped training labels, in [0, 1).
    activations: names from :data:`ACTIVATIONS` sampled uniformly per task.
    suggested_lr: an Adam learning rate that trains these tasks (used by tests and baselines).
    name: the family's name.
  """

  dataset: str = "digits"
  batch_size: int = 64
  init_scale: tuple[float, float] = (0.5, 2.0)
  label_noise: tuple[float, float] = (0.0, 0.2)
  activations: tuple[str, ...] = ("relu", "tanh", "gelu", "swish")
  suggested_lr: float = 1e-2
  name: str = "classifier"

  def __post_init__(self):
    cls = type(self).__name__
    if self.dataset not in datasets.names():
      raise ValueError(f"{cls}.dataset must be one of {datasets.names()}, got {self.dataset!r}")
    if not isinstance(self.batch_size, int) or self.batch_size <= 0:
      raise ValueError(f"{cls}.batch_size must be a positive int, got {self.batch_size!r}")
    _check_range(cls, "init_scale", self.init_scale, lambda lo: lo > 0, lambda hi: True)
    _check_range(cls, "label_noise", self.label_noise, lambda lo: lo >= 0, lambda hi: hi < 1)
    if not self.activations or any(a not in ACTIVATIONS for a in self.activations):
      raise ValueError(f"{cls}.activations must be a non-empty tuple of names from "
                       f"{sorted(ACTIVATIONS)}, got {self.activations!r}")
    if not self.suggested_lr > 0:
      raise ValueError(f"{cls}.suggested_lr must be positive, got {self.suggested_lr!r}")
    self._check_architecture(cls)
    _ = self.data  # Build (or fetch from the per-process cache) the device arrays now.

  def _check_architecture(self, cls: str) -> None:
    """Subclasses validate their architecture fields (raise ``ValueError``)."""

  @property
  def data(self) -> datasets.Dataset:
    """The dataset in device memory (built once per process)."""
    return datasets.load(self.dataset)

  def init_params(self, key: jax.Array, init_scale: jax.Array) -> dict:
    """Initial network parameters; weights ``~ init_scale · N(0, 1/fan_in)``, biases 0."""
    raise NotImplementedError

  def apply(self, params: dict, x: jax.Array, act: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Logits of the network on a batch ``x``."""
    raise NotImplementedError

  def sample(self, key):
    k_scale, k_act, k_noise, k_data = jax.random.split(key, 4)
    lo, hi = self.init_scale
    return {
        "init_scale": jnp.exp(jax.random.uniform(k_scale, (), minval=math.log(lo),
                                                 maxval=math.log(hi))),
        "activation": jax.random.randint(k_act, (), 0, len(self.activations)),
        "label_noise": jax.random.uniform(k_noise, (), minval=self.label_noise[0],
                                          maxval=self.label_noise[1]),
        "dataset": jax.random.randint(k_data, (), 0, self.data.num_datasets),
    }

  def task(self, task_params):
    return ClassifierTask(family=self, init_scale=task_params["init_scale"],
                          activation=task_params["activation"],
                          label_noise=task_params["label_noise"],
                          dataset_index=task_params["dataset"], name=self.name)


@dataclasses.dataclass(frozen=True)
class MLPClassifierFamily(ClassifierFamily):
  """Fully connected classifiers: flatten, ``hidden_sizes`` dense layers + activation, logits.

  Attributes:
    hidden_sizes: widths of the hidden layers (``()`` is a linear classifier).
  """

  hidden_sizes: tuple[int, ...] = (32,)
  name: str = "mlp_classifier"

  def _check_architecture(self, cls):
    _check_sizes(cls, "hidden_sizes", self.hidden_sizes)

  def init_params(self, key, init_scale):
    sizes = (math.prod(self.data.feature_shape),) + self.hidden_sizes + (self.data.num_classes,)
    keys = jax.random.split(key, len(sizes) - 1)
    return {f"dense_{i}": _dense_init(keys[i], sizes[i], (sizes[i], sizes[i + 1]), init_scale)
            for i in range(len(sizes) - 1)}

  def apply(self, params, x, act):
    h = x.reshape(x.shape[0], -1)
    n = len(self.hidden_sizes)
    for i in range(n + 1):
      layer = params[f"dense_{i}"]
      h = h @ layer["w"] + layer["b"]
      if i < n:
        h = act(h)
    return h


@dataclasses.dataclass(frozen=True)
class ConvClassifierFamily(ClassifierFamily):
  """Conv nets on 1-D or 2-D channel-last data: strided convs + activation, mean pool, logits.

  Attributes:
    channels: output channels of each convolution.
    kernel_size: spatial extent of every kernel (``k`` or ``k x k``).
    stride: stride of every convolution (``"SAME"`` padding).
  """

  channels: tuple[int, ...] = (8, 16)
  kernel_size: int = 3
  stride: int = 2
  name: str = "conv_classifier"

  def _check_architecture(self, cls):
    _check_sizes(cls, "channels", self.channels, allow_empty=False)
    for field in ("kernel_size", "stride"):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{cls}.{field} must be a positive int, got {value!r}")
    if len(datasets.load(self.dataset).feature_shape) not in (2, 3):
      raise ValueError(f"{cls} needs 1-D or 2-D channel-last data; dataset {self.dataset!r} "
                       f"has feature shape {datasets.load(self.dataset).feature_shape}")

  @property
  def _spatial(self) -> int:
    return len(self.data.feature_shape) - 1

  def init_params(self, key, init_scale):
    d = self._spatial
    chans = (self.data.feature_shape[-1],) + self.channels
    keys = jax.random.split(key, len(self.channels) + 1)
    params = {}
    for i in range(len(self.channels)):
      shape = (self.kernel_size,) * d + (chans[i], chans[i + 1])
      params[f"conv_{i}"] = _dense_init(keys[i], self.kernel_size**d * chans[i], shape, init_scale)
    params["head"] = _dense_init(keys[-1], chans[-1], (chans[-1], self.data.num_classes),
                                 init_scale)
    return params

  def apply(self, params, x, act):
    d = self._spatial
    h = x
    for i in range(len(self.channels)):
      layer = params[f"conv_{i}"]
      h = act(conv_same(h, layer["w"], self.stride) + layer["b"])
    h = h.mean(axis=tuple(range(1, d + 1)))
    return h @ params["head"]["w"] + params["head"]["b"]


def conv_same(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  """Strided ``"SAME"`` convolution of channel-last ``x`` written as patches @ kernel.

  Equal to ``lax.conv_general_dilated(x, w, (stride,) * d, "SAME")`` with ``NWC``/``NHWC``
  inputs and ``WIO``/``HWIO`` kernels. Built from pads, strided slices and one matmul, so that
  under ``vmap`` over per-task kernels it becomes a batched matmul (XLA compiles that far
  faster on CPU than the grouped convolution ``vmap`` of ``conv_general_dilated`` produces).

  Args:
    x: ``(B, *spatial, C_in)`` with one or two spatial axes.
    w: ``(*kernel, C_in, C_out)``.
    stride: the stride along every spatial axis.

  Returns:
    ``(B, *ceil(spatial / stride), C_out)``.
  """
  kernel = w.shape[:-2]
  spatial = x.shape[1:-1]
  outs = tuple(-(-n // stride) for n in spatial)
  pads = []
  for n, k, o in zip(spatial, kernel, outs):
    total = max((o - 1) * stride + k - n, 0)
    pads.append((total // 2, total - total // 2))
  x = jnp.pad(x, [(0, 0)] + pads + [(0, 0)])
  patches = []
  for offset in itertools.product(*(range(k) for k in kernel)):
    start = (0,) + offset + (0,)
    limit = (x.shape[0],) + tuple(s + (o - 1) * stride + 1 for s, o in zip(offset, outs))
    limit += (x.shape[-1],)
    patches.append(jax.lax.slice(x, start, limit, (1,) + (stride,) * len(kernel) + (1,)))
  patches = jnp.concatenate(patches, axis=-1)  # (B, *outs, prod(kernel) * C_in)
  return patches @ w.reshape(-1, w.shape[-1])


def _register(name: str, cls: type[ClassifierFamily], **kwargs) -> None:
  base.register_family(name, lambda: cls(name=name, **kwargs))


_register("digits_mlp", MLPClassifierFamily, dataset="digits", hidden_sizes=(32,))
_register("digits_conv", ConvClassifierFamily, dataset="digits", channels=(8, 16))
_register("gaussian_mixture_mlp", MLPClassifierFamily, dataset="gaussian_mixture",
          hidden_sizes=(32, 32))
_register("mnist1d_mlp", MLPClassifierFamily, dataset="mnist1d", hidden_sizes=(64,))
_register("mnist1d_conv", ConvClassifierFamily, dataset="mnist1d", channels=(16, 16, 16),
          kernel_size=5)
