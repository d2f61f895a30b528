"""The learned-optimizer contract shared by every architecture.

A learned optimizer is split in three (see docs/architecture.md, "Contracts"):

* the object itself holds *static configuration only* (feature set, hidden sizes, scales);
* ``init(key) -> meta_params`` returns a plain pytree of arrays (what meta-training learns);
* the per-parameter accumulators live in the optax state returned by
  ``transform(meta_params).init(params)``.

``transform`` follows optax's two levels: :meth:`LearnedOptimizer.scale_by` is the raw learned
step (an update to *add* to the parameters, sign included), and :meth:`LearnedOptimizer.transform`
chains it with a ``learning_rate`` multiplier that ``optax.inject_hyperparams`` can trace.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

MetaParams = Any  # a pytree of jax arrays

_REGISTRY: dict[str, type["LearnedOptimizer"]] = {}


def register(cls: type["LearnedOptimizer"]) -> type["LearnedOptimizer"]:
  """Class decorator adding a learned optimizer to the registry under ``cls.name``.

  The registry is what :func:`learned_opt.load` uses to rebuild an optimizer from a file's
  metadata, and what the conformance suite iterates over.
  """
  if not cls.name:
    raise ValueError(f"{cls.__qualname__} must set a non-empty class attribute `name`.")
  if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
    raise ValueError(f"A learned optimizer named {cls.name!r} is already registered.")
  _REGISTRY[cls.name] = cls
  return cls


def registry() -> dict[str, type["LearnedOptimizer"]]:
  """Returns ``{name: class}`` for every registered learned optimizer."""
  return dict(_REGISTRY)


class LearnedOptimizer(abc.ABC):
  """Base class of learned optimizers. Subclasses are frozen dataclasses of static config.

  Subclasses must set the class attribute ``name`` (the architecture name written into saved
  files), be decorated with ``@dataclasses.dataclass(frozen=True)`` so that their fields are
  the JSON-serialisable config, and implement :meth:`init` and :meth:`scale_by`.
  """

  name: ClassVar[str] = ""
  # Meta-trained seeing each run's length as ``num_steps`` (give it ``num_steps`` at use).
  # Architectures that can be meta-trained so declare a dataclass field of this name, saved
  # with their config; a composite is horizon-aware when a part is.
  horizon_aware: ClassVar[bool] = False

  @abc.abstractmethod
  def init(self, key: jax.Array) -> MetaParams:
    """Returns freshly initialised meta-parameters (a pytree of arrays)."""

  @abc.abstractmethod
  def scale_by(
      self, meta_params: MetaParams, *, num_steps: int | None = None
  ) -> optax.GradientTransformationExtraArgs:
    """The raw learned step as an optax transformation (update to add to the params).

    ``update(updates, state, params=None, **extra_args)`` requires ``params`` (parameter
    values are features), accepts an optional ``loss=`` keyword (or optax's ``value=``) and
    ignores unknown keywords.
    ``num_steps``, when given, is the length of the inner training (a horizon feature).
    A tree that does not match the updates' structure raises a ``ValueError`` naming it
    (:func:`learned_opt.tree_utils.check_trees`). A non-finite gradient entry gives a
    non-finite update at that entry only: other tensors are computed as if it were absent, the
    other entries of its tensor get finite updates that do not depend on its value, and later
    steps stay finite elsewhere.
    """

  def transform(
      self,
      meta_params: MetaParams,
      learning_rate: optax.ScalarOrSchedule = 1.0,
      *,
      num_steps: int | None = None,
  ) -> optax.GradientTransformationExtraArgs:
    """The user-facing optimizer: the learned step times a ``learning_rate`` multiplier.

    Args:
      meta_params: meta-parameters from :meth:`init`, meta-training or :func:`learned_opt.load`.
      learning_rate: multiplier on the learned step (1.0 applies it as meta-trained); a float,
        an array, or an optax schedule. Injectable with ``optax.inject_hyperparams``.
      num_steps: optional length of the training run, used by horizon-aware features.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.

    Example::

      lopt = learned_opt.MLPOptimizer()
      tx = lopt.transform(lopt.init(jax.random.key(0)))
      state = tx.init(params)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
    """
    step = self.scale_by(meta_params, num_steps=num_steps)
    return optax.chain(step, scale_floats(learning_rate))

  def config(self) -> dict[str, Any]:
    """The static configuration as a JSON-serialisable dict (what ``save`` writes)."""
    out = {}
    for field in dataclasses.fields(self):  # type: ignore[arg-type]
      value = getattr(self, field.name)
      if dataclasses.is_dataclass(value):  # a nested frozen config: a JSON object
        value = dataclasses.asdict(value)
      out[field.name] = list(value) if isinstance(value, tuple) else value
    return out

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "LearnedOptimizer":
    """Rebuilds the optimizer from :meth:`config`'s output; unknown keys raise ``ValueError``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(config) - set(fields))
    if unknown:
      raise ValueError(f"{cls.name}: unknown config keys {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for k, v in config.items():
      kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def check_meta_params(name: str, meta_params: Any, expected: dict[str, tuple[int, ...]]) -> None:
  """Raises a ``ValueError`` unless ``meta_params`` is a dict of arrays of the ``expected`` shapes.

  Args:
    name: the optimizer's name, which starts the message.
    meta_params: the meta-parameters given to ``scale_by``.
    expected: ``{key: shape}`` for this config.
  """
  if not isinstance(meta_params, dict) or set(meta_params) != set(expected):
    got = sorted(meta_params) if isinstance(meta_params, dict) else type(meta_params)
    raise ValueError(f"{name}: meta_params must be a dict with keys {sorted(expected)}, "
                     f"got {got}")
  for k, shape in expected.items():
    if tuple(jnp.shape(meta_params[k])) != shape:
      raise ValueError(f"{name}: meta_params[{k!r}] has shape "
                       f"{tuple(jnp.shape(meta_params[k]))}, expected {shape} for this config")


class ScaleState(NamedTuple):
  """State of :func:`scale_floats`: the step count (used by schedules)."""

  count: jax.Array


def scale_floats(learning_rate: optax.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  """Multiplies floating-point updates by ``learning_rate``; integer/bool leaves pass through.

  Like ``optax.scale`` / ``optax.scale_by_schedule`` (a schedule is evaluated at the step count
  before the increment), except that non-float leaves keep their value and dtype, and each
  update keeps its own dtype (a bf16 update times an f32 learning rate stays bf16).
  """

  def init_fn(params):
    del params
    return ScaleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    def scale(u):
      if u is None or not jnp.issubdtype(jnp.asarray(u).dtype, jnp.floating):
        return u
      return (u * lr).astype(u.dtype)

    return jax.tree.map(scale, updates), ScaleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
