"""The task interfaces: a `Task` is one learning problem, a `TaskFamily` a distribution of them.

Contract (docs/architecture.md, "Tasks and task families"):

* ``Task.init(key) -> params``, ``Task.loss(params, key, batch) -> scalar``,
  ``Task.sample_batch(key, split) -> batch`` with ``split`` in :data:`SPLITS`
  ``("train", "valid", "test")``, ``Task.eval_batch(split) -> batch`` (a fixed, clean batch of
  at least :data:`EVAL_SIZE` examples, or the whole split when it is smaller),
  ``Task.normalizer(loss) -> scalar`` and ``Task.name``. All pure and jittable; data lives in
  device memory and batches are drawn inside jit.
* Splits: meta-training reads ``"train"`` (inner steps, ``meta_loss="train"``) and ``"valid"``
  (``meta_loss="valid"``); ``"test"`` is disjoint from both and is read only by evaluation.
* ``TaskFamily.sample(key) -> task_params`` returns an array pytree whose structure and shapes
  never depend on the key, and ``TaskFamily.task(task_params) -> Task`` closes over them, so
  ``jax.vmap`` over task_params runs N tasks as one program::

    family = tasks.get("quadratic")
    tps = jax.vmap(family.sample)(jax.random.split(key, 8))
    losses = jax.vmap(lambda tp, k: family.task(tp).loss(
        family.task(tp).init(k), k, family.task(tp).sample_batch(k, "train")))(tps, keys)
"""

from __future__ import annotations

import abc
from typing import Any, Callable

import jax
import jax.numpy as jnp

Params = Any
Batch = Any
TaskParams = Any

SPLITS = ("train", "valid", "test")

#: Examples in an :meth:`Task.eval_batch` (or the whole split when it holds fewer).
EVAL_SIZE = 1024

DEFAULT_CEILING = 10.0


def check_split(split: str) -> None:
  """Raises ``ValueError`` unless ``split`` is one of :data:`SPLITS` (a static Python string)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def clip_to_ceiling(x: jax.Array, ceiling: float, floor: float | None = None) -> jax.Array:
  """Maps non-finite values to ``ceiling`` and clips finite ones into ``[floor, ceiling]``."""
  x = jnp.asarray(x)
  clipped = jnp.minimum(x, ceiling)
  if floor is not None:
    clipped = jnp.maximum(clipped, floor)
  return jnp.where(jnp.isfinite(x), clipped, jnp.asarray(ceiling, x.dtype))


class Task(abc.ABC):
  """One learning problem: parameters, a loss, and a data source.

  Attributes:
    name: a short human-readable name (e.g. ``"quadratic_d10"``).
    ceiling: the largest value :meth:`normalizer` returns; non-finite losses map to it.
  """

  name: str = "task"
  ceiling: float = DEFAULT_CEILING

  @abc.abstractmethod
  def init(self, key: jax.Array) -> Params:
    """Samples initial parameters."""

  @abc.abstractmethod
  def loss(self, params: Params, key: jax.Array, batch: Batch) -> jax.Array:
    """Scalar loss of ``params`` on ``batch``; ``key`` drives any stochasticity (dropout, noise)."""

  @abc.abstractmethod
  def sample_batch(self, key: jax.Array, split: str = "train") -> Batch:
    """Draws a batch from ``split`` (one of :data:`SPLITS`, a static string) inside jit."""

  def eval_batch(self, split: str) -> Batch:
    """A fixed batch of ``split`` for measuring a loss: deterministic, key-free and clean.

    Built-in tasks return at least :data:`EVAL_SIZE` examples (or the whole split when it holds
    fewer) without label noise, token noise or augmentation, with shapes fixed per family, so
    ``task.loss(params, key, task.eval_batch(split))`` is jittable and vmappable over
    ``task_params``. This default, for users' own subclasses, is
    ``self.sample_batch(jax.random.key(0), split)``: one ordinary batch from a fixed key.
    """
    return self.sample_batch(jax.random.key(0), split)

  def normalizer(self, loss: jax.Array) -> jax.Array:
    """Maps a loss onto a scale shared across tasks of a family; NaN/inf map to ``ceiling``.

    The default clips the raw loss into ``[0, ceiling]``; families override it.
    """
    return clip_to_ceiling(loss, self.ceiling, 0.0)


class TaskFamily(abc.ABC):
  """A distribution over tasks with a fixed parameter structure (so N tasks are one ``vmap``).

  Variation that keeps shapes lives in ``task_params``; variation that changes shapes is a
  separate family (a mixture samples among families).
  """

  name: str = "family"
  # An Adam learning rate that trains this family's tasks within a few dozen steps (used by the
  # conformance tests, benchmarks and baselines); families override it.
  suggested_lr: float = 1e-2

  @abc.abstractmethod
  def sample(self, key: jax.Array) -> TaskParams:
    """Samples the parameters of one task: an array pytree of key-independent structure."""

  @abc.abstractmethod
  def task(self, task_params: TaskParams) -> Task:
    """Builds the task described by ``task_params`` (which may be traced arrays)."""


_FAMILIES: dict[str, Callable[[], TaskFamily]] = {}


def register_family(name: str, factory: Callable[[], TaskFamily]) -> None:
  """Registers ``factory`` (a no-argument callable building the default family) under ``name``."""
  if name in _FAMILIES:
    raise ValueError(f"A task family named {name!r} is already registered.")
  _FAMILIES[name] = factory


def families() -> dict[str, TaskFamily]:
  """The registry: ``{name: TaskFamily}`` built with each family's default configuration."""
  return {name: factory() for name, factory in sorted(_FAMILIES.items())}


def family_names() -> list[str]:
  """Names of the registered families, sorted."""
  return sorted(_FAMILIES)


class UnknownFamilyError(KeyError, ValueError):
  """Raised by :func:`get` for a name that is not registered (a ``KeyError`` and a ``ValueError``).

  ``str()`` gives the plain message (``KeyError`` alone would wrap it in quotes).
  """

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def get(name: str) -> TaskFamily:
  """The registered family ``name`` with its default configuration.

  Raises:
    UnknownFamilyError: (a ``KeyError`` and ``ValueError``) naming the unknown family and
      listing the known ones.
  """
  if name not in _FAMILIES:
    raise UnknownFamilyError(
        f"Unknown task family {name!r}; known families: {', '.join(sorted(_FAMILIES))}")
  return _FAMILIES[name]()
