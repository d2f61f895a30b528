"""Particles sharded over devices: the mesh, the state's shardings, placing states on them.

Meta-training is embarrassingly parallel over particles. The estimator state holds one row per
particle (or per antithetic pair) along its leading axis; this module splits that axis over a
one-dimensional :class:`jax.sharding.Mesh` whose axis is named ``"particles"`` and keeps
everything else (meta-parameters, outer optimizer state, step, key) replicated:

.. math::
  \\hat g = \\frac1N \\sum_{i=1}^N \\hat g_i
  = \\frac1N \\sum_{d=1}^D \\sum_{i \\in \\mathcal P_d} \\hat g_i

where device ``d`` owns the particles ``P_d`` (``N / D`` of them). The jitted outer step is
compiled with these shardings as ``in_shardings``/``out_shardings`` and XLA's SPMD partitioner
(GSPMD / Shardy) splits the ``vmap`` over particles and turns the mean over the particle axis
into an all-reduce (the only collective of a step, a vector the size of θ). The same code runs
on one device, on forced CPU devices, on a GPU node and across hosts after
``jax.distributed.initialize()`` (see :mod:`meta_train.runtime.distributed`).

Why GSPMD through ``jit`` shardings and not ``jax.shard_map``: the estimators are written as
plain batched code over the particle axis; with jit shardings they stay sharding-agnostic (no
per-device code, no explicit ``psum``), and the partitioner handles layouts that do not split
evenly per pair, such as PES's ``[θ+ε members; θ−ε members]`` particle axis next to its
per-pair accumulator.

Why ``AxisType.Auto`` (``jax.make_mesh`` in jax 0.10 defaults to ``Explicit``): explicit axes
make the sharding part of every array's type, so each op in the estimators (the ``[pos; neg]``
concatenation, the half slices of :func:`meta_train.estimators.antithetic.split_pair`, reshapes of
perturbations) would need a sharding rule or an ``out_sharding`` annotation, and fail to trace
when one is ambiguous. Auto axes let the partitioner propagate the shardings given at the jit
boundary through that code unchanged.

The sharding rule is generic, so it survives changes of the estimators' state types: every
estimator-state leaf whose leading axis equals one of the estimator's *particle counts*
(:func:`particle_counts`: ``num_pairs`` and ``2 * num_pairs`` for antithetic estimators,
``num_particles`` otherwise) is split along that axis; every other leaf is replicated.

Example::

  mesh = make_mesh(8)
  trainer = MetaTrainer(lopt, family, estimator, mesh=mesh)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXIS = "particles"


def make_mesh(num_devices: int | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-dimensional mesh named ``"particles"`` with an ``Auto`` axis type.

  In a multi-process run every process contributes the same number of devices
  (``num_devices / jax.process_count()`` of its local ones), so every process holds a share of
  the particles.

  Args:
    num_devices: how many devices; ``None`` means all (``jax.device_count()``).
    devices: the devices to choose from (default ``jax.devices()``, all processes').

  Returns:
    A :class:`jax.sharding.Mesh` with axis ``"particles"`` of size ``num_devices``.

  Raises:
    ValueError: ``num_devices`` is not in ``[1, available]`` or does not split evenly over
      the processes.
  """
  available = list(jax.devices() if devices is None else devices)
  n = len(available) if num_devices is None else num_devices
  if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(available):
    raise ValueError(f"num_devices must be an int in [1, {len(available)}] (the devices "
                     f"available), got {num_devices!r}")
  processes = sorted({d.process_index for d in available})
  if n % len(processes):
    raise ValueError(f"num_devices ({n}) must be a multiple of the number of processes "
                     f"({len(processes)}) so that every process holds particles")
  per = n // len(processes)
  chosen = [d for p in processes for d in [x for x in available if x.process_index == p][:per]]
  if len(chosen) != n:
    raise ValueError(f"num_devices ({n}) needs {per} devices on each of the {len(processes)} "
                     f"processes; some process has fewer")
  return jax.make_mesh((n,), (AXIS,), axis_types=(AxisType.Auto,), devices=chosen)


def particle_counts(estimator: Any) -> tuple[int, ...]:
  """The leading-axis sizes that index particles in ``estimator``'s state.

  ``(num_pairs, 2 * num_pairs)`` for an estimator with a ``num_pairs`` field (antithetic: one
  row per pair, or one per ``θ±ε`` member), ``(num_particles,)`` for one with
  ``num_particles``.

  A :class:`~meta_train.estimators.grouped.GroupedEstimator` (one with ``groups``) has the union
  of its groups' counts.

  Raises:
    ValueError: the estimator has neither field.
  """
  groups = getattr(estimator, "groups", None)
  if groups is not None:
    return tuple(sorted({c for g in groups for c in particle_counts(g)}))
  pairs = getattr(estimator, "num_pairs", None)
  if pairs is not None:
    return (int(pairs), 2 * int(pairs))
  particles = getattr(estimator, "num_particles", None)
  if particles is not None:
    return (int(particles),)
  raise ValueError(f"{type(estimator).__name__} has neither num_pairs nor num_particles; "
                   f"cannot tell which axis of its state holds particles")


def sharding_unit(estimator: Any) -> int:
  """The count that must divide over the devices (pairs, else particles).

  For grouped estimators, the greatest common divisor of the groups' units: it divides over
  the devices exactly when every group's does.
  """
  groups = getattr(estimator, "groups", None)
  if groups is not None:
    return math.gcd(*(sharding_unit(g) for g in groups))
  return min(particle_counts(estimator))


def divisibility_error(units: int, num_devices: int, unit_name: str = "particles") -> str | None:
  """A message if ``units`` (particles or pairs) do not split evenly over ``num_devices``."""
  if units % num_devices == 0:
    return None
  return (f"{units} {unit_name} do not split evenly over {num_devices} devices: use a multiple "
          f"of {num_devices} {unit_name}, or set run.num_devices to a divisor of {units}")


def _leaf_sharding(leaf: Any, mesh: Mesh, counts: Sequence[int]) -> NamedSharding:
  shape = getattr(leaf, "shape", ())
  if len(shape) >= 1 and shape[0] in counts and shape[0] % mesh.size == 0:
    return NamedSharding(mesh, PartitionSpec(AXIS))
  return NamedSharding(mesh, PartitionSpec())


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value every device holds whole."""
  return NamedSharding(mesh, PartitionSpec())


def state_shardings(state: Any, mesh: Mesh, counts: Sequence[int]) -> Any:
  """Shardings for a :class:`~meta_train.trainer.MetaTrainerState` (concrete or abstract).

  The estimator state's leaves whose leading axis is one of ``counts`` are split along it over
  ``mesh``; meta-parameters, outer optimizer state, step and key are replicated.

  Args:
    state: a ``MetaTrainerState`` (arrays or ``jax.ShapeDtypeStruct``).
    mesh: the device mesh from :func:`make_mesh`.
    counts: :func:`particle_counts` of the estimator.

  Returns:
    A pytree of :class:`jax.sharding.NamedSharding` with ``state``'s structure.
  """
  rep = replicated(mesh)
  out = jax.tree.map(lambda _: rep, state)
  est = jax.tree.map(lambda x: _leaf_sharding(x, mesh, counts), state.estimator_state)
  return out._replace(estimator_state=est)


def place(tree: Any, shardings: Any) -> Any:
  """Puts host or device values onto ``shardings`` (also across processes).

  Every process must pass the same values (e.g. a restored checkpoint); each process builds its
  own shards from its host copy with :func:`jax.make_array_from_callback`, so nothing is sent
  between processes.
  """

  def put(x, s):
    host = np.asarray(jax.device_get(x)) if not isinstance(x, np.ndarray) else x
    return jax.make_array_from_callback(host.shape, s, lambda idx: host[idx])

  return jax.tree.map(put, tree, shardings)


def jit_trainer(trainer: Any, mesh: Mesh) -> tuple[Any, Any, Any]:
  """``(init, step, shardings)``: ``trainer``'s init and step jitted with the mesh's shardings.

  ``init(key, meta_params)`` returns a state laid out by :func:`state_shardings`; ``step``
  takes and returns such a state (and replicated metrics). ``shardings`` is that layout, for
  placing a restored state with :func:`place`.

  Raises:
    ValueError: the estimator's pairs (or particles) do not split evenly over the mesh.
  """
  unit = sharding_unit(trainer.estimator)
  first = getattr(trainer.estimator, "groups", (trainer.estimator,))[0]
  name = "pairs" if getattr(first, "num_pairs", None) is not None else "particles"
  error = divisibility_error(unit, mesh.size, name)
  if error:
    raise ValueError(f"{type(trainer.estimator).__name__}: {error}")
  raw_key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  abstract = jax.eval_shape(trainer._init_impl, raw_key, None)  # pylint: disable=protected-access
  shardings = state_shardings(abstract, mesh, particle_counts(trainer.estimator))
  rep = replicated(mesh)
  init = jax.jit(trainer._init_impl, out_shardings=shardings)  # pylint: disable=protected-access
  step = jax.jit(trainer._step_impl, in_shardings=(shardings,),  # pylint: disable=protected-access
                 out_shardings=(shardings, rep))
  return _under_mesh(init, mesh), _under_mesh(step, mesh), shardings


def _under_mesh(fn, mesh: Mesh):
  """``fn`` called (and so traced) with ``mesh`` as JAX's context mesh (for
  :func:`constrain_particles`)."""

  def wrapped(*args):
    # The abstract mesh (not jax.set_mesh) so that jax.eval_shape can trace this too.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return wrapped


def constrain_particles(tree: Any) -> Any:
  """Marks the leading (particle) axis of ``tree``'s leaves as split over the context mesh.

  Inside a computation traced under a mesh with a ``"particles"`` axis (as
  :func:`jit_trainer` arranges), every leaf whose leading axis divides over it gets
  ``jax.lax.with_sharding_constraint(x, P("particles"))``; elsewhere this is the identity.
  :meth:`meta_train.estimators.antithetic.AntitheticEstimator.unroll_pairs` calls it on the ``2 N``
  particles and meta-parameters it unrolls, so that work sampled afresh inside a step
  (full-horizon ES keeps no particle state) is split over devices too.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AXIS not in mesh.axis_names:
    return tree
  n = mesh.shape[AXIS]

  def constrain(x):
    if getattr(x, "ndim", 0) and x.shape[0] % n == 0:
      return jax.lax.with_sharding_constraint(x, PartitionSpec(AXIS))
    return x

  return jax.tree.map(constrain, tree)


def describe(mesh: Mesh) -> str:
  """``"8 devices (cpu) in 1 process"``-style summary of a mesh."""
  kinds = sorted({d.platform for d in mesh.devices.flat})
  procs = len({d.process_index for d in mesh.devices.flat})
  return (f"{mesh.size} device{'s' if mesh.size != 1 else ''} ({', '.join(kinds)}) in {procs} "
          f"process{'es' if procs != 1 else ''}")


__all__ = ["AXIS", "constrain_particles", "describe", "divisibility_error", "jit_trainer",
           "make_mesh", "particle_counts", "place", "replicated", "sharding_unit",
           "state_shardings"]
