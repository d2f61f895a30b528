"""Adapters that turn a user's model and dataset into a :class:`~tasks.base.Task`.

* :func:`from_function` — plain ``init(key) -> params`` and ``loss(params, batch) -> scalar``;
* :func:`from_flax` — a flax linen module, or a flax nnx module (instance or factory);
* :func:`from_haiku` — an ``hk.transform``-ed function (needs ``pip install learned_opt[haiku]``);
* :func:`as_family` — a single task as a :class:`~tasks.base.TaskFamily`, so that it can be
  meta-trained on.

The ``data`` argument is the same everywhere: a mapping ``{name: array}`` whose arrays share
their leading (example) dimension, e.g. ``{"x": x, "y": y}``, a pair ``(train, valid)`` or a
triple ``(train, valid, test)`` of such mappings. With a single mapping, all three splits
(``"train"``, ``"valid"``, ``"test"``) draw from it; with a pair, ``"test"`` draws from the valid
data (so a test loss is then a second valid loss; pass a triple for a held-out test set). The
arrays are moved to the device once; each ``sample_batch(key, split)`` draws ``batch_size``
examples uniformly with replacement inside jit (``batch_size=None`` returns the whole split,
i.e. full-batch training), and ``eval_batch(split)`` is the split's first ``min(1024, n)``
rows.
The model adapters call the model on ``batch[input_key]`` (default ``"x"``) and hand the output
to ``loss_fn(outputs, batch)``.

Example::

  data = {"x": x_train, "y": y_train}
  task = tasks.from_function(
      init=lambda key: {"w": jnp.zeros(3), "b": jnp.zeros(())},
      loss=lambda p, batch: jnp.mean((batch["x"] @ p["w"] + p["b"] - batch["y"]) ** 2),
      data=data, batch_size=32, name="linreg")
  family = tasks.as_family(task)            # meta-train a learned optimizer on it
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp

from tasks import base

Data = Mapping[str, Any]


def _check_data(data: Data, what: str) -> dict[str, jax.Array]:
  if not isinstance(data, Mapping) or not data:
    raise TypeError(f"{what} must be a non-empty mapping {{name: array}}, "
                    f"got {type(data).__name__}")
  arrays = {}
  for k, v in data.items():
    a = jnp.asarray(v)
    if a.ndim == 0:
      raise ValueError(f"{what}[{k!r}] must have a leading example dimension, got a scalar")
    arrays[k] = a
  sizes = {k: a.shape[0] for k, a in arrays.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"The arrays of {what} must share their leading dimension (number of "
                     f"examples); got {sizes}")
  if next(iter(sizes.values())) == 0:
    raise ValueError(f"{what} holds no examples")
  return arrays


Splits = tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]


def split_data(data: Data | tuple[Data, ...]) -> Splits:
  """Validates ``data`` and returns ``(train, valid, test)`` dicts of device arrays.

  Args:
    data: a mapping ``{name: array}`` (every split draws from it), a pair ``(train, valid)``
      (test draws from valid) or a triple ``(train, valid, test)``.

  Returns:
    ``(train, valid, test)``, each a dict of ``jax.Array`` with a shared leading dimension.

  Raises:
    TypeError: ``data`` is neither a mapping nor a pair or triple of mappings.
    ValueError: arrays with mismatched leading dimensions, scalars, no examples, or splits
      with different keys.
  """
  if isinstance(data, (tuple, list)):
    if len(data) not in (2, 3):
      raise TypeError(f"data must be a mapping, a (train, valid) pair or a (train, valid, test) "
                      f"triple, got {len(data)} items")
    splits = tuple(_check_data(d, f"data[{i}] ({name})")
                   for i, (d, name) in enumerate(zip(data, base.SPLITS)))
    for name, split in zip(base.SPLITS[1:], splits[1:]):
      if set(split) != set(splits[0]):
        raise ValueError(f"train and {name} data must have the same keys, got "
                         f"{sorted(splits[0])} and {sorted(split)}")
    return splits if len(splits) == 3 else (splits[0], splits[1], splits[1])
  train = _check_data(data, "data")
  return train, train, train


def _sample(arrays: dict[str, jax.Array], key: jax.Array, batch_size: int | None):
  if batch_size is None:
    return dict(arrays)
  n = next(iter(arrays.values())).shape[0]
  idx = jax.random.randint(key, (batch_size,), 0, n)
  return {k: jnp.take(a, idx, axis=0) for k, a in arrays.items()}


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionTask(base.Task):
  """A task from plain functions and in-memory data (what every adapter builds).

  Attributes:
    init_fn: ``init_fn(key) -> params``.
    loss_fn: ``loss_fn(params, key, batch) -> scalar``.
    train, valid: dicts of arrays sharing a leading dimension.
    batch_size: examples per batch, or ``None`` for the whole split.
    normalizer_fn: optional ``loss -> scalar``; the result is clipped to ``[0, ceiling]`` with
      non-finite values mapped to ``ceiling``. Default: the identity.
    test: the ``"test"`` split's dict of arrays, or ``None`` to draw test batches from ``valid``.
  """

  init_fn: Callable[[jax.Array], Any]
  loss_fn: Callable[[Any, jax.Array, Any], jax.Array]
  train: dict[str, jax.Array]
  valid: dict[str, jax.Array]
  batch_size: int | None = None
  normalizer_fn: Callable[[jax.Array], jax.Array] | None = None
  name: str = "function"
  ceiling: float = base.DEFAULT_CEILING
  test: dict[str, jax.Array] | None = None

  def init(self, key):
    return self.init_fn(key)

  def loss(self, params, key, batch):
    return jnp.asarray(self.loss_fn(params, key, batch))

  def split(self, split: str) -> dict[str, jax.Array]:
    """The arrays of ``split`` (``"test"`` falls back to ``valid`` when ``test`` is ``None``)."""
    base.check_split(split)
    if split == "test" and self.test is not None:
      return self.test
    return self.train if split == "train" else self.valid

  def sample_batch(self, key, split="train"):
    return _sample(self.split(split), key, self.batch_size)

  def eval_batch(self, split):
    """The first ``min(EVAL_SIZE, n)`` rows of ``split`` (the whole split when it is smaller)."""
    return {k: a[:base.EVAL_SIZE] for k, a in self.split(split).items()}

  def normalizer(self, loss):
    value = loss if self.normalizer_fn is None else self.normalizer_fn(loss)
    return base.clip_to_ceiling(value, self.ceiling, 0.0)


def _check_batch_size(batch_size):
  if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
    raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")


def from_function(
    init: Callable[[jax.Array], Any],
    loss: Callable[..., jax.Array],
    data: Data | tuple[Data, ...],
    *,
    batch_size: int | None = None,
    loss_takes_key: bool = False,
    name: str = "function",
    normalizer: Callable[[jax.Array], jax.Array] | None = None,
    ceiling: float = base.DEFAULT_CEILING,
) -> FunctionTask:
  """A task from plain functions.

  Args:
    init: ``init(key) -> params`` (any pytree of arrays).
    loss: ``loss(params, batch) -> scalar``, or ``loss(params, key, batch)`` when
      ``loss_takes_key`` (for stochastic losses). ``batch`` has ``data``'s keys.
    data: ``{name: array}`` with a shared leading dimension, a ``(train, valid)`` pair (test
      draws from valid) or a ``(train, valid, test)`` triple.
    batch_size: examples drawn (with replacement) per batch; ``None`` uses the whole split.
    loss_takes_key: whether ``loss`` takes a PRNG key as its second argument.
    name: the task's name.
    normalizer: optional map of the loss onto a scale comparable across tasks; the result is
      clipped to ``[0, ceiling]`` (non-finite values map to ``ceiling``).
    ceiling: the normaliser's upper bound.

  Returns:
    A :class:`FunctionTask`.

  Example::

    x = np.random.randn(100, 3); y = x @ np.array([1., -2., .5])
    task = tasks.from_function(lambda key: jnp.zeros(3),
                               lambda w, batch: jnp.mean((batch["x"] @ w - batch["y"]) ** 2),
                               {"x": x, "y": y}, batch_size=16)
  """
  _check_batch_size(batch_size)
  if not callable(init) or not callable(loss):
    raise TypeError("from_function needs callables `init(key)` and `loss(params, batch)`")
  train, valid, test = split_data(data)
  loss_fn = loss if loss_takes_key else (lambda params, key, batch: loss(params, batch))
  return FunctionTask(init_fn=init, loss_fn=loss_fn, train=train, valid=valid, test=test,
                      batch_size=batch_size, normalizer_fn=normalizer, name=name, ceiling=ceiling)


def _input(batch, input_key):
  if input_key not in batch:
    raise KeyError(f"The batch has no input {input_key!r} (keys: {sorted(batch)}); pass "
                   f"input_key= to name the model's input")
  return batch[input_key]


def _from_linen(module, example_input, loss_fn, input_key):
  variables = jax.eval_shape(module.init, jax.random.key(0), example_input)
  extra = sorted(set(variables) - {"params"})
  if extra:
    raise ValueError(f"from_flax supports linen modules whose only variable collection is "
                     f"'params'; this one also has {extra}. Write the loss with "
                     f"tasks.from_function and manage those collections there.")

  def init(key):
    return module.init(key, example_input)["params"]

  def loss(params, key, batch):
    rngs = None if key is None else {"dropout": key}
    outputs = module.apply({"params": params}, _input(batch, input_key), rngs=rngs)
    return loss_fn(outputs, batch)

  return init, loss


def _from_nnx(module, loss_fn, input_key):
  from flax import nnx  # pylint: disable=g-import-not-at-top

  if isinstance(module, nnx.Module):
    graphdef, param_state, rest = nnx.split(module, nnx.Param, ...)
    fixed_params = nnx.to_pure_dict(param_state)
    init = lambda key: jax.tree.map(jnp.array, fixed_params)
    rebuild_rest = False
  else:
    factory = module
    abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
    if not isinstance(abstract, nnx.Module):
      raise TypeError(f"from_flax expects an nnx.Module or a factory `rngs -> nnx.Module`; "
                      f"the factory returned {type(abstract).__name__}")
    graphdef, param_state, rest = nnx.split(abstract, nnx.Param, ...)
    # Other state (RNG streams, batch statistics) is rebuilt from the loss key when present.
    rebuild_rest = bool(jax.tree.leaves(rest))

    def init(key):
      _, params, _ = nnx.split(factory(nnx.Rngs(key)), nnx.Param, ...)
      return nnx.to_pure_dict(params)

  param_treedef = jax.tree.structure(param_state)
  pure_treedef = jax.tree.structure(nnx.to_pure_dict(param_state))

  def loss(params, key, batch):
    if jax.tree.structure(params) != pure_treedef:
      raise ValueError(f"params do not have the model's structure: expected {pure_treedef}, "
                       f"got {jax.tree.structure(params)}")
    state = jax.tree.unflatten(param_treedef, jax.tree.leaves(params))
    if rebuild_rest:
      rngs = nnx.Rngs(jax.random.key(0) if key is None else key)
      _, _, other = nnx.split(factory(rngs), nnx.Param, ...)
    else:
      other = rest
    model = nnx.merge(graphdef, state, other)
    return loss_fn(model(_input(batch, input_key)), batch)

  return init, loss


def from_flax(
    module: Any,
    example_input: Any,
    loss_fn: Callable[[Any, Mapping[str, jax.Array]], jax.Array],
    data: Data | tuple[Data, ...],
    *,
    batch_size: int | None = None,
    input_key: str = "x",
    name: str = "flax",
    normalizer: Callable[[jax.Array], jax.Array] | None = None,
    ceiling: float = base.DEFAULT_CEILING,
) -> FunctionTask:
  """A task from a flax model (linen or nnx) and a loss on its outputs.

  * **linen**: ``module`` is a ``flax.linen.Module``; params are ``module.init(key,
    example_input)["params"]`` and the model runs as ``module.apply({"params": params}, x,
    rngs={"dropout": key})``. Modules with other variable collections (``batch_stats``) are
    rejected.
  * **nnx**: ``module`` is an ``nnx.Module`` instance or a factory ``rngs -> nnx.Module``
    (``example_input`` is unused, pass ``None``). The model is split with ``nnx.split(model,
    nnx.Param, ...)``; params are the ``nnx.Param`` state as a plain nested dict
    (``nnx.to_pure_dict``) and the loss rebuilds the model with ``nnx.merge`` inside jit.
    With an instance, every ``init(key)`` returns a copy of its current parameters and the
    other state (batch statistics, dropout RNG streams) is frozen as it is; with a factory,
    ``init(key)`` builds a fresh model from ``nnx.Rngs(key)`` and the loss rebuilds the other
    state from the loss key.

  Args:
    module: a linen module, an nnx module, or a factory ``rngs -> nnx.Module``.
    example_input: an input batch for linen's ``init`` (only its shape matters).
    loss_fn: ``loss_fn(outputs, batch) -> scalar``, e.g. cross-entropy against ``batch["y"]``.
    data: ``{name: array}`` with a shared leading dimension, a ``(train, valid)`` pair (test
      draws from valid) or a ``(train, valid, test)`` triple; the model is called on
      ``batch[input_key]``.
    batch_size: examples drawn (with replacement) per batch; ``None`` uses the whole split.
    input_key: the entry of the batch fed to the model.
    name, normalizer, ceiling: as in :func:`from_function`.

  Returns:
    A :class:`FunctionTask`.

  Example::

    class MLP(nnx.Module):
      def __init__(self, rngs):
        self.l1, self.l2 = nnx.Linear(2, 16, rngs=rngs), nnx.Linear(16, 1, rngs=rngs)
      def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))[:, 0]

    mse = lambda out, batch: jnp.mean((out - batch["y"]) ** 2)
    task = tasks.from_flax(MLP, None, mse, {"x": x, "y": y}, batch_size=32)   # nnx factory
    task = tasks.from_flax(LinenMLP(), x[:1], mse, {"x": x, "y": y})          # linen
  """
  _check_batch_size(batch_size)
  train, valid, test = split_data(data)
  if input_key not in train:
    raise KeyError(f"input_key {input_key!r} is not in data (keys: {sorted(train)})")
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  if isinstance(module, nn.Module):
    init, loss = _from_linen(module, example_input, loss_fn, input_key)
  elif callable(module) or _is_nnx_module(module):
    init, loss = _from_nnx(module, loss_fn, input_key)
  else:
    raise TypeError(f"from_flax expects a flax linen Module, an nnx Module or a factory "
                    f"`rngs -> nnx.Module`, got {type(module).__name__}")
  return FunctionTask(init_fn=init, loss_fn=loss, train=train, valid=valid, test=test,
                      batch_size=batch_size, normalizer_fn=normalizer, name=name, ceiling=ceiling)


def _is_nnx_module(module) -> bool:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return isinstance(module, nnx.Module)


def from_haiku(
    transformed: Any,
    example_input: Any,
    loss_fn: Callable[[Any, Mapping[str, jax.Array]], jax.Array],
    data: Data | tuple[Data, ...],
    *,
    batch_size: int | None = None,
    input_key: str = "x",
    name: str = "haiku",
    normalizer: Callable[[jax.Array], jax.Array] | None = None,
    ceiling: float = base.DEFAULT_CEILING,
) -> FunctionTask:
  """A task from a haiku model (``hk.transform`` or ``hk.without_apply_rng(hk.transform(f))``).

  Params are ``transformed.init(key, example_input)``; the loss is ``loss_fn(outputs, batch)``
  with ``outputs = transformed.apply(params, key, batch[input_key])`` (the loss key is the
  apply RNG, for dropout) or ``transformed.apply(params, batch[input_key])`` without an apply
  RNG. Functions that use haiku state (``hk.transform_with_state``) are rejected.

  Haiku is an optional dependency: ``pip install learned_opt[haiku]``.

  Args:
    transformed: an ``hk.Transformed`` pair of pure functions.
    example_input: an input batch for ``init`` (only its shape matters).
    loss_fn: ``loss_fn(outputs, batch) -> scalar``.
    data: ``{name: array}`` with a shared leading dimension, a ``(train, valid)`` pair (test
      draws from valid) or a ``(train, valid, test)`` triple.
    batch_size: examples drawn (with replacement) per batch; ``None`` uses the whole split.
    input_key: the entry of the batch fed to the model.
    name, normalizer, ceiling: as in :func:`from_function`.

  Returns:
    A :class:`FunctionTask`.

  Raises:
    ImportError: haiku is not installed.

  Example::

    net = hk.transform(lambda x: hk.nets.MLP([16, 1])(x)[:, 0])
    mse = lambda out, batch: jnp.mean((out - batch["y"]) ** 2)
    task = tasks.from_haiku(net, x[:1], mse, {"x": x, "y": y}, batch_size=32)
  """
  try:
    import haiku as hk  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("tasks.from_haiku needs dm-haiku: `pip install learned_opt[haiku]`") from e
  if isinstance(transformed, hk.TransformedWithState):
    raise ValueError("from_haiku does not support hk.transform_with_state (haiku state such as "
                     "batch-norm statistics); write the loss with tasks.from_function instead.")
  if not isinstance(transformed, hk.Transformed):
    raise TypeError(f"from_haiku expects an hk.Transformed (from hk.transform), got "
                    f"{type(transformed).__name__}")
  _check_batch_size(batch_size)
  train, valid, test = split_data(data)
  if input_key not in train:
    raise KeyError(f"input_key {input_key!r} is not in data (keys: {sorted(train)})")
  takes_rng = "rng" in inspect.signature(transformed.apply).parameters

  def init(key):
    return transformed.init(key, example_input)

  def loss(params, key, batch):
    x = _input(batch, input_key)
    outputs = transformed.apply(params, key, x) if takes_rng else transformed.apply(params, x)
    return loss_fn(outputs, batch)

  return FunctionTask(init_fn=init, loss_fn=loss, train=train, valid=valid, test=test,
                      batch_size=batch_size, normalizer_fn=normalizer, name=name, ceiling=ceiling)


@dataclasses.dataclass(frozen=True, eq=False)
class SingleTaskFamily(base.TaskFamily):
  """A family holding one task: ``sample`` returns a placeholder, ``task`` returns the task.

  ``task_params`` is ``{"task_id": int32 0}``, so the family has the array-pytree structure
  that meta-training ``vmap``s over; the tasks differ only through their init and data keys.
  """

  the_task: base.Task
  name: str = "single_task"

  def sample(self, key):
    del key
    return {"task_id": jnp.zeros((), jnp.int32)}

  def task(self, task_params):
    del task_params
    return self.the_task


def as_family(task: base.Task, *, name: str | None = None) -> SingleTaskFamily:
  """Wraps one task as a :class:`~tasks.base.TaskFamily` so it can be meta-trained on.

  Args:
    task: any :class:`~tasks.base.Task` (e.g. from :func:`from_flax`).
    name: the family's name (default: the task's name).

  Returns:
    A :class:`SingleTaskFamily` whose every sample is ``task``.

  Example::

    family = tasks.as_family(tasks.from_flax(MLP, None, mse, data, batch_size=32))
  """
  if not isinstance(task, base.Task):
    raise TypeError(f"as_family expects a tasks.Task, got {type(task).__name__}")
  return SingleTaskFamily(the_task=task, name=name or task.name)
