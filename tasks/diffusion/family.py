"""Diffusion task families: denoising losses parameterised by (p(σ), w(σ), target, init scale).

One task trains a denoiser ``D(x; σ)`` (see :mod:`tasks.diffusion.targets`) with

.. math::
  L(\\theta) = \\mathbb E_{x_0,\\ \\sigma \\sim p,\\ \\varepsilon \\sim \\mathcal N(0, I)}
  \\Big[\\lambda(\\sigma)\\, c_{out}(\\sigma)^2\\,
  \\big\\| F_\\theta(c_{in} x; c_{noise}) - F^*\\big\\|^2 / d\\Big],
  \\qquad x = x_0 + \\sigma\\varepsilon,

which equals ``E[λ(σ) ‖D(x; σ) − x0‖²]/d`` (Karras et al. 2022, arXiv 2206.00364, Eq. 2 and 8).
What shapes training is the product p(σ) λ(σ), not a schedule's name (Kingma & Gao 2023,
arXiv 2303.00848; Dieleman 2024), so a task is the tuple (p(σ), λ(σ), target, init scale), each
an array in ``task_params`` chosen by ``lax.switch``: N different tasks are one ``vmap``.

The dataset fixes the shapes, so it is per family: ``"diffusion_toy2d"`` (an MLP on the 2-D toys,
which one is a per-task index) and ``"diffusion_digits"`` (a conv net on 8x8 digits).

Splits: ``"train"``, ``"valid"`` and ``"test"`` (see :mod:`tasks.base`); the toys draw each
from its own stream, the digits split a fixed permutation (:func:`tasks.diffusion.data.digits`).
:meth:`DiffusionTask.eval_batch` holds ``EVAL_SIZE`` fixed examples of a split (or all of a
smaller one), each repeated :data:`EVAL_NOISE_LEVELS` times so that the loss, which draws σ from
the key it is given, sees every example at several noise levels.

The normaliser divides by the expected loss of the zero-output network under the task's own
target, p(σ) and λ(σ) (``F = 0`` gives ``D = c_skip x`` and, per dimension,
``E‖D − x0‖² = (1 − c_skip)² σ_d² + c_skip² σ²``), integrated over p(σ) by quadrature; so every
task starts near 1 whatever its target or weighting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tasks import base
from tasks.diffusion import data, denoisers, schedules, targets, weighting

weighting_index = weighting.weighting_index  # `weighting` is also a keyword argument below

#: Copies of each example in :meth:`DiffusionTask.eval_batch` (each meets its own σ).
EVAL_NOISE_LEVELS = 4

# Folded into a toy batch's key for the valid and test streams (train uses the key itself).
_TOY_STREAMS = {"train": None, "valid": 0x5EED, "test": 0x7E57}


@dataclasses.dataclass(frozen=True)
class ToySource:
  """Standardised 2-D toy data times ``scale``; each split draws from an independent stream."""

  scale: float = 0.5

  dim = 2

  @property
  def sigma_data(self) -> float:
    return float(self.scale)

  def sample(self, dataset: jax.Array, key: jax.Array, n: int, split: str) -> jax.Array:
    if _TOY_STREAMS[split] is not None:
      key = jax.random.fold_in(key, _TOY_STREAMS[split])
    return self.scale * data.sample_toy(dataset, key, n)

  def eval_examples(self, dataset: jax.Array, split: str) -> jax.Array:
    """``EVAL_SIZE`` points of ``split``'s stream drawn from the fixed key 0."""
    return self.sample(dataset, jax.random.key(0), base.EVAL_SIZE, split)


@dataclasses.dataclass(frozen=True)
class DigitsSource:
  """scikit-learn's 8x8 digits in ``[-1, 1]`` (flat, 64-d): fixed train, valid and test sets."""

  dim = 64

  @property
  def sigma_data(self) -> float:
    train = data.digits()[0]
    return float(np.sqrt(np.mean(train.astype(np.float64) ** 2)))

  def sample(self, dataset: jax.Array, key: jax.Array, n: int, split: str) -> jax.Array:
    del dataset
    images = jnp.asarray(data.digits()[base.SPLITS.index(split)])
    return images[jax.random.randint(key, (n,), 0, images.shape[0])]

  def eval_examples(self, dataset: jax.Array, split: str) -> jax.Array:
    """The first ``min(EVAL_SIZE, n)`` images of ``split``."""
    del dataset
    return jnp.asarray(data.digits()[base.SPLITS.index(split)][:base.EVAL_SIZE])


@dataclasses.dataclass(frozen=True)
class DiffusionTask(base.Task):
  """One denoising-diffusion training problem. Array fields may be traced (vmapped tasks).

  Attributes:
    target, schedule, weighting: int indices into TARGETS, SCHEDULES, WEIGHTINGS.
    dataset: int index of the dataset within ``source`` (toys) or 0.
    init_scale: multiplier of the LeCun-normal initial weights.
    denoiser: the network (static config).
    source: where x0 comes from (static config).
    sigma_data: root-mean-square of the data, σ_d (EDM preconditioning and weighting).
    batch_size: examples per batch.
    min_snr_gamma: γ of the Min-SNR-γ weighting.
    stratified: stratified sampling of σ within a batch.
  """

  target: jax.Array
  schedule: jax.Array
  weighting: jax.Array
  dataset: jax.Array
  init_scale: jax.Array
  denoiser: Any
  source: Any
  sigma_data: float
  batch_size: int = 128
  min_snr_gamma: float = weighting.DEFAULT_MIN_SNR_GAMMA
  stratified: bool = True
  name: str = "diffusion"
  ceiling: float = base.DEFAULT_CEILING

  def init(self, key):
    return self.denoiser.init(key, self.init_scale)

  def sample_batch(self, key, split="train"):
    base.check_split(split)
    return {"x0": self.source.sample(self.dataset, key, self.batch_size, split)}

  def eval_batch(self, split):
    """Fixed clean examples of ``split``, the whole set repeated ``EVAL_NOISE_LEVELS`` times.

    ``x0`` is ``(EVAL_NOISE_LEVELS · n, d)`` with ``n = EVAL_SIZE`` for the toys (drawn from a
    fixed key) and ``n = min(EVAL_SIZE, len(split))`` images for the digits (1,024 / 148 / 149
    for train / valid / test). The copies are stacked (``tile``, not ``repeat``) so that with
    stratified σ each example gets strata a quarter of the batch apart.
    """
    base.check_split(split)
    x0 = self.source.eval_examples(self.dataset, split)
    return {"x0": jnp.tile(x0, (EVAL_NOISE_LEVELS, 1))}

  def heldout(self, key: jax.Array, n: int, split: str = "valid") -> jax.Array:
    """``n`` held-out examples of ``split`` (default ``"valid"``), e.g. for a sample metric."""
    base.check_split(split)
    return self.source.sample(self.dataset, key, n, split)

  def apply_denoiser(self, params, x: jax.Array, c_noise: jax.Array) -> jax.Array:
    """``denoiser.apply`` on ``(B, d)`` inputs, in chunks of ``batch_size`` examples when ``B``
    is larger (``lax.map``; the last chunk zero-padded and its padding dropped).

    The same outputs as one call; the evaluation sets (:meth:`eval_batch`, up to 4,096 noisy
    examples) run about 3x faster on a CPU as chunks of a training batch's size than as one
    convolution over all of them (benchmarks/eval_chunks.py).
    """
    n, chunk = x.shape[0], self.batch_size
    if n <= chunk:
      return self.denoiser.apply(params, x, c_noise)
    pad = -n % chunk
    xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
    cs = jnp.pad(jnp.broadcast_to(c_noise, (n,)), (0, pad)).reshape(-1, chunk)
    out = jax.lax.map(lambda a: self.denoiser.apply(params, a[0], a[1]), (xs, cs))
    return out.reshape((-1,) + out.shape[2:])[:n]

  def model_output(self, params, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """The raw network output ``F(c_in x; c_noise)`` at per-example (or scalar) σ."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    pc = targets.preconditioning(self.target, sigma, self.sigma_data)
    return self.apply_denoiser(params, pc.c_in[:, None] * x, pc.c_noise)

  def denoise(self, params, x: jax.Array, sigma: jax.Array) -> jax.Array:
    """The x0 estimate ``D(x; σ)`` of noisy ``x`` (shape ``(B, d)``), whatever the target."""
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x.shape[:1])
    out = self.model_output(params, x, sigma)
    return targets.denoised(self.target, x, out, sigma, self.sigma_data)

  def weight(self, sigma: jax.Array) -> jax.Array:
    """λ(σ), the x0-space weight of this task's weighting."""
    return weighting.weight(self.weighting, sigma, self.sigma_data, self.min_snr_gamma)

  def loss(self, params, key, batch):
    x0 = batch["x0"]
    # One PRNG call for σ and ε (each call compiles to a threefry kernel): u = Φ(z) ~ U(0, 1).
    z = jax.random.normal(key, (x0.shape[0], x0.shape[1] + 1))
    u = jax.scipy.special.ndtr(z[:, 0])
    if self.stratified:
      u = schedules.stratified_uniforms(u[0], x0.shape[0])
    sigma = schedules.sigma_from_uniform(self.schedule, jnp.clip(u, 1e-7, 1.0 - 1e-7))
    noise = z[:, 1:]
    x = x0 + sigma[:, None] * noise
    pc = targets.preconditioning(self.target, sigma, self.sigma_data)
    out = self.apply_denoiser(params, pc.c_in[:, None] * x, pc.c_noise)
    # F* = ((1 − c_skip) x0 − c_skip σ ε)/c_out, the output that makes D = x0.
    tgt = ((pc.one_minus_c_skip[:, None] * x0 - (pc.c_skip * sigma)[:, None] * noise)
           / pc.c_out[:, None])
    per_example = jnp.mean((out - tgt) ** 2, axis=-1)
    return jnp.mean(self.weight(sigma) * pc.c_out**2 * per_example)

  def reference_loss(self, num_quadrature: int = 256) -> jax.Array:
    """Expected loss of the zero-output network: ``E_p[λ(σ)((1 − c_skip)² σ_d² + c_skip² σ²)]``."""
    sigma = schedules.quadrature_sigmas(self.schedule, num_quadrature)
    pc = targets.preconditioning(self.target, sigma, self.sigma_data)
    err = pc.one_minus_c_skip**2 * self.sigma_data**2 + (pc.c_skip * sigma) ** 2
    return jnp.mean(self.weight(sigma) * err)

  def normalizer(self, loss):
    return base.clip_to_ceiling(loss / self.reference_loss(), self.ceiling, 0.0)


def _check_names(owner: str, field: str, names, known: tuple[str, ...]) -> tuple[str, ...]:
  if isinstance(names, str) or not names:
    raise ValueError(f"{owner}.{field} must be a non-empty tuple of names from {known}, "
                     f"got {names!r}")
  names = tuple(names)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f"{owner}.{field} has unknown names {unknown}; known: {', '.join(known)}")
  return names


def _choice(key: jax.Array, ids: list[int]) -> jax.Array:
  return jnp.asarray(ids, jnp.int32)[jax.random.randint(key, (), 0, len(ids))]


@dataclasses.dataclass(frozen=True)
class _DiffusionFamily(base.TaskFamily):
  """Shared configuration of the diffusion families (see :class:`Toy2DFamily`)."""

  targets: tuple[str, ...] = targets.TARGETS
  schedules: tuple[str, ...] = schedules.SCHEDULES
  weightings: tuple[str, ...] = weighting.WEIGHTINGS
  init_scale: tuple[float, float] = (0.5, 2.0)
  batch_size: int = 128
  min_snr_gamma: float = weighting.DEFAULT_MIN_SNR_GAMMA
  stratified: bool = True

  # Adam's learning rate for quick checks (the task conformance suite): the diffusion losses are
  # noisy (σ and ε are resampled every step), so the default 1e-2 overshoots on some tasks.
  suggested_lr = 1e-3

  def __post_init__(self):
    owner = type(self).__name__
    for field, known in (("targets", targets.TARGETS), ("schedules", schedules.SCHEDULES),
                         ("weightings", weighting.WEIGHTINGS)):
      object.__setattr__(self, field, _check_names(owner, field, getattr(self, field), known))
    lo, hi = self.init_scale
    if not 0 < lo <= hi:
      raise ValueError(f"{owner}.init_scale must be 0 < lo <= hi, got {self.init_scale}")
    if not isinstance(self.batch_size, int) or self.batch_size <= 0:
      raise ValueError(f"{owner}.batch_size must be a positive int, got {self.batch_size!r}")
    if not self.min_snr_gamma > 0:
      raise ValueError(f"{owner}.min_snr_gamma must be > 0, got {self.min_snr_gamma}")

  # Subclasses provide these three.
  def _dataset_names(self) -> tuple[str, ...]:
    return ("default",)

  def _source(self):
    raise NotImplementedError

  def _denoiser(self):
    raise NotImplementedError

  def _all_dataset_names(self) -> tuple[str, ...]:
    return ("default",)

  def sample(self, key):
    k_t, k_s, k_w, k_d, k_i = jax.random.split(key, 5)
    lo, hi = self.init_scale
    all_ds = self._all_dataset_names()
    return {
        "target": _choice(k_t, [targets.TARGETS.index(n) for n in self.targets]),
        "schedule": _choice(k_s, [schedules.SCHEDULES.index(n) for n in self.schedules]),
        "weighting": _choice(k_w, [weighting.WEIGHTINGS.index(n) for n in self.weightings]),
        "dataset": _choice(k_d, [all_ds.index(n) for n in self._dataset_names()]),
        "init_scale": jnp.exp(jax.random.uniform(k_i, (), minval=jnp.log(lo),
                                                 maxval=jnp.log(hi))),
    }

  def task_params(self, *, target: str = "edm", schedule: str = "edm", weighting: str = "edm",
                  dataset: str | None = None, init_scale: float = 1.0) -> dict:
    """``task_params`` of one named task (for users, evaluation and tests).

    Raises:
      ValueError: for an unknown target, schedule, weighting or dataset name.
    """
    all_ds = self._all_dataset_names()
    dataset = self._dataset_names()[0] if dataset is None else dataset
    if dataset not in all_ds:
      raise ValueError(f"Unknown dataset {dataset!r}; known: {', '.join(all_ds)}")
    return {
        "target": jnp.asarray(targets.target_index(target), jnp.int32),
        "schedule": jnp.asarray(schedules.schedule_index(schedule), jnp.int32),
        "weighting": jnp.asarray(weighting_index(weighting), jnp.int32),
        "dataset": jnp.asarray(all_ds.index(dataset), jnp.int32),
        "init_scale": jnp.asarray(init_scale, jnp.float32),
    }

  def task(self, task_params):
    source = self._source()
    return DiffusionTask(
        target=task_params["target"], schedule=task_params["schedule"],
        weighting=task_params["weighting"], dataset=task_params["dataset"],
        init_scale=task_params["init_scale"], denoiser=self._denoiser(), source=source,
        sigma_data=source.sigma_data, batch_size=self.batch_size,
        min_snr_gamma=self.min_snr_gamma, stratified=self.stratified, name=self.name)


@dataclasses.dataclass(frozen=True)
class Toy2DFamily(_DiffusionFamily):
  """Diffusion on 2-D toy distributions with an MLP denoiser (registered as ``diffusion_toy2d``).

  Per task: prediction target, p(σ), λ(σ), toy dataset and init scale, each drawn uniformly from
  the names allowed by this config (restrict a field to a sub-tuple to restrict the family).

  Attributes:
    targets, schedules, weightings: allowed names (from TARGETS, SCHEDULES, WEIGHTINGS).
    datasets: allowed toy distributions (from ``data.TOY_DATASETS``).
    init_scale: ``(lo, hi)``; log-uniform per task.
    batch_size: examples per batch.
    min_snr_gamma: γ of Min-SNR-γ.
    stratified: stratified σ within a batch.
    scale: data standard deviation σ_d (the toys are standardised, then scaled).
    hidden, depth, embed_dim: MLP width, number of hidden layers, noise-embedding size.

  Raises:
    ValueError: at construction, for unknown names or invalid numbers.
  """

  datasets: tuple[str, ...] = data.TOY_DATASETS
  scale: float = 0.5
  hidden: int = 64
  depth: int = 3
  embed_dim: int = 16
  name: str = "diffusion_toy2d"

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "datasets", _check_names(type(self).__name__, "datasets",
                                                      self.datasets, data.TOY_DATASETS))
    if not self.scale > 0:
      raise ValueError(f"Toy2DFamily.scale must be > 0, got {self.scale}")
    self._denoiser()  # validates hidden/depth/embed_dim

  def _dataset_names(self):
    return self.datasets

  def _all_dataset_names(self):
    return data.TOY_DATASETS

  def _source(self):
    return ToySource(scale=self.scale)

  def _denoiser(self):
    return denoisers.MLPDenoiser(dim=2, hidden=self.hidden, depth=self.depth,
                                 embed_dim=self.embed_dim)


@dataclasses.dataclass(frozen=True)
class DigitsFamily(_DiffusionFamily):
  """Diffusion on scikit-learn's 8x8 digits (registered as ``diffusion_digits``).

  Per task: prediction target, p(σ), λ(σ) and init scale. The data are loaded (offline) on the
  first :meth:`task` call, not at construction.

  Attributes:
    targets, schedules, weightings, init_scale, batch_size, min_snr_gamma, stratified: as in
      :class:`Toy2DFamily`.
    denoiser: ``"conv"`` (:class:`~tasks.diffusion.denoisers.ConvDenoiser`) or ``"mlp"`` (an MLP
      on the flat 64-d vector).
    channels: conv channels, or MLP width when ``denoiser="mlp"``.
    blocks: residual conv blocks, or MLP hidden layers.
  """

  batch_size: int = 32
  denoiser: str = "conv"
  channels: int = 16
  blocks: int = 2
  name: str = "diffusion_digits"

  def __post_init__(self):
    super().__post_init__()
    if self.denoiser not in ("conv", "mlp"):
      raise ValueError(f"DigitsFamily.denoiser must be 'conv' or 'mlp', got {self.denoiser!r}")
    self._denoiser()

  def _source(self):
    return DigitsSource()

  def _denoiser(self):
    if self.denoiser == "conv":
      return denoisers.ConvDenoiser(side=8, channels=self.channels, blocks=self.blocks)
    return denoisers.MLPDenoiser(dim=64, hidden=self.channels, depth=self.blocks)


base.register_family("diffusion_toy2d", Toy2DFamily)
base.register_family("diffusion_digits", DigitsFamily)
