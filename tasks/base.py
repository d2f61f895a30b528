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
import importlib
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
# Separates the module from the function in an import path ``"package.module:function"``.
IMPORT_PATH_SEPARATOR = ":"


def register_family(name: str, factory: Callable[[], TaskFamily]) -> None:
  """Registers ``factory`` (a no-argument callable building the default family) under ``name``.

  A name holds no ``":"``: that marks an import path (:func:`get`).
  """
  if IMPORT_PATH_SEPARATOR in name:
    raise ValueError(f"A registered family name holds no {IMPORT_PATH_SEPARATOR!r} (that marks "
                     f"an import path), got {name!r}")
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
  """The family ``name``: a registered one with its default configuration, or a user's own.

  A ``name`` holding a ``":"`` is an import path ``"package.module:function"``: the module is
  imported and ``function()`` (no arguments) must return a :class:`TaskFamily`, e.g. one built
  with :func:`tasks.from_flax` and :func:`tasks.as_family`. It is resolved again at each call
  (as a registered factory is called again), so a process that can import the module can
  rebuild the family from the name alone (meta-train's config, an optimizer's provenance).

  Example::

    # my_project/families.py
    def digits_regressor():
      return tasks.as_family(tasks.from_flax(MLP, None, mse, data, batch_size=32))

    tasks.get("my_project.families:digits_regressor")

  Raises:
    UnknownFamilyError: (a ``KeyError`` and ``ValueError``) naming the unknown family and
      listing the known ones.
    FamilyImportError: (an :class:`UnknownFamilyError`) naming the import path and what went
      wrong: the module cannot be imported, the attribute is missing or not callable, the call
      raised, or it returned something that is not a :class:`TaskFamily`.
  """
  if is_import_path(name):
    return _import_family(name)
  if name not in _FAMILIES:
    raise UnknownFamilyError(
        f"Unknown task family {name!r}; known families: {', '.join(sorted(_FAMILIES))}, or an "
        f"import path package.module:function")
  return _FAMILIES[name]()



class FamilyImportError(UnknownFamilyError):
  """Raised by :func:`get` for an import path that does not give a :class:`TaskFamily`."""


def is_import_path(name: str) -> bool:
  """Whether ``name`` is an import path ``"package.module:function"`` (it holds a ``":"``)."""
  return isinstance(name, str) and IMPORT_PATH_SEPARATOR in name


def _import_family(path: str) -> TaskFamily:
  """``function()`` of the import path ``"package.module:function"``, checked to be a family."""
  module_name, _, attr = path.partition(IMPORT_PATH_SEPARATOR)
  parts = attr.split(".")
  if (not module_name or not all(p.isidentifier() for p in module_name.split("."))
      or not all(p.isidentifier() for p in parts)):
    raise FamilyImportError(f"task family {path!r} is not an import path "
                            f"package.module:function")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise FamilyImportError(f"task family {path!r}: cannot import module {module_name!r} "
                            f"({e}); is its package installed or on PYTHONPATH?") from e
  except Exception as e:  # pylint: disable=broad-except
    raise FamilyImportError(f"task family {path!r}: importing module {module_name!r} raised "
                            f"{_first_line(e)}") from e
  for i, part in enumerate(parts):
    if not hasattr(obj, part):
      where = module_name + "".join(f".{p}" for p in parts[:i])
      raise FamilyImportError(f"task family {path!r}: {where!r} has no attribute {part!r}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise FamilyImportError(f"task family {path!r}: {attr!r} is not callable (a "
                            f"{type(obj).__name__}); give a function returning a "
                            f"tasks.TaskFamily")
  try:
    family = obj()
  except Exception as e:  # pylint: disable=broad-except
    raise FamilyImportError(f"task family {path!r}: calling {attr}() raised "
                            f"{_first_line(e)}") from e
  if not isinstance(family, TaskFamily):
    raise FamilyImportError(f"task family {path!r}: {attr}() returned a "
                            f"{type(family).__name__}, not a tasks.TaskFamily (wrap a task with "
                            f"tasks.as_family)")
  return family


def _first_line(e: BaseException) -> str:
  """``"TypeName: first line of the message"``."""
  text = str(e).splitlines()[0] if str(e) else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__
