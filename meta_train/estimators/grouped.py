"""One particle group per member family of a mixture, combined with the mixture's weights.

.. math::
  \\hat g = \\sum_{i=1}^K w_i \\, \\hat g_i, \\qquad
  \\mathbb E[\\hat g] = \\nabla_\\theta \\sum_i w_i \\, \\mathbb E_{\\tau \\sim p_i}[L(\\theta, \\tau)]

where ``ĝ_i`` is an estimator's meta-gradient over tasks of member family ``i`` only and
``w_i`` the mixture's normalised sampling weights. The objective is the mixture's (a task of
member ``i`` is drawn with probability ``w_i``), but each group is a ``vmap`` of its own
family's unroll: a :class:`tasks.MixtureFamily` under ``vmap`` computes every member's loss at
every step (its ``lax.switch`` becomes a select), so a step of K members with N particles costs
K·N member steps of which N are used; here a group of ``N_i`` particles costs ``N_i`` steps of
its own family. Every member also gets a fixed share of the particles (no draw leaves a
family out of an estimate), and a costly member can get fewer (``member_pairs``). A member's
group can also take its own estimator settings (``member_overrides``): the meta-objective's
terms, for one, at a different weight per member (a stability term's weight per member is
measured in reports/experiments/LOG.md #130-#134).

With ``group_clip = c > 0`` each group's estimate is first clipped to global norm ``c``,
``ĝ_i ← ĝ_i · min(1, c / ‖ĝ_i‖)``: the families' estimates differ in noise by an order of
magnitude (a diffusion family's PES estimate can have norm 80 where a quadratic's has 5), and
after the sum the noisiest family would set the direction. Clipped per group, each family
moves θ by at most ``w_i c`` per step, however noisy (the per-task gradient normalisation of
multi-task learning; the objective is no longer exactly the mixture's while a clip is active).

The estimators of the groups are ordinary ones (:mod:`meta_train.estimators.registry`) and keep
their own states; this estimator's state is their tuple, its metrics their weighted combination
plus each group's ``meta_loss/<member>``. In the run config: ``estimator.group_by_member=true``
with a ``mixture`` task family (:func:`meta_train.config.build_estimator`).

Example::

  family = tasks.mixture_of(["digits_mlp", "diffusion_toy2d"], weights=[3, 1])
  est = grouped_estimator("pes", lopt, family, member_pairs=(8, 4), truncation_length=20)
  grad, state, metrics = est.estimate(theta, est.init(key, theta), key)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

import tasks
from meta_train import errors
from meta_train import unroll as unroll_lib
from meta_train.estimators import estimator as est_lib
from meta_train.estimators import registry


@dataclasses.dataclass(frozen=True)
class GroupedEstimator:
  """A weighted sum of per-member estimators (see the module docstring).

  Attributes:
    groups: one estimator per member family, all for the same learned optimizer.
    weights: the members' weights ``w_i`` (non-negative, normalised here to sum to 1).
    family: the mixture the groups were built from (what the run trains on and evaluates).
    group_clip: clip each group's estimate to this global norm before the sum (0: no clip).
  """

  groups: tuple[Any, ...]
  weights: tuple[float, ...]
  family: Any
  group_clip: float = 0.0

  name: ClassVar[str] = "grouped"

  def __post_init__(self):
    if not isinstance(self.groups, tuple) or not self.groups:
      raise errors.FieldError("GroupedEstimator", "groups",
                              f"must be a non-empty tuple of estimators, got {self.groups!r}")
    w = tuple(float(x) for x in self.weights)
    if len(w) != len(self.groups) or any(not (x >= 0 and math.isfinite(x)) for x in w) \
        or not sum(w) > 0:
      raise errors.FieldError("GroupedEstimator", "weights",
                              f"must be {len(self.groups)} non-negative finite numbers with a "
                              f"positive sum, got {self.weights!r}")
    object.__setattr__(self, "weights", tuple(x / sum(w) for x in w))
    if not (isinstance(self.group_clip, (int, float)) and not isinstance(self.group_clip, bool)
            and math.isfinite(self.group_clip) and self.group_clip >= 0):
      raise errors.FieldError("GroupedEstimator", "group_clip",
                              f"must be a finite number >= 0 (0: no clip), got "
                              f"{self.group_clip!r}")
    if any(g.lopt != self.groups[0].lopt for g in self.groups):
      raise errors.FieldError("GroupedEstimator", "groups",
                              "must all meta-train the same learned optimizer")

  @property
  def lopt(self) -> Any:
    """The learned optimizer every group meta-trains."""
    return self.groups[0].lopt

  @property
  def group_names(self) -> tuple[str, ...]:
    """The member families' names, in group order (made unique with an index if repeated)."""
    return _member_names([g.family for g in self.groups])

  def init(self, key: jax.Array, meta_params: Any) -> tuple[Any, ...]:
    """The groups' initial states (group ``i`` from ``fold_in(key, i)``)."""
    return tuple(g.init(_fold(key, i), meta_params) for i, g in enumerate(self.groups))

  def estimate(self, meta_params: Any, state: tuple[Any, ...], key: jax.Array
               ) -> tuple[Any, tuple[Any, ...], dict[str, jax.Array]]:
    """``Σ_i w_i ĝ_i`` and the groups' next states; group ``i`` draws from ``fold_in(key, i)``."""
    results = [g.estimate(meta_params, s, _fold(key, i))
               for i, (g, s) in enumerate(zip(self.groups, state))]
    grads = [r[0] for r in results]
    norms = [optax.tree.norm(g).astype(jnp.float32) for g in grads]
    if self.group_clip > 0:
      clip = optax.clip_by_global_norm(self.group_clip)
      grads = [clip.update(g, clip.init(g))[0] for g in grads]
    grad = jax.tree.map(lambda *gs: sum(w * g for w, g in zip(self.weights, gs)), *grads)
    metrics = combine_metrics([r[2] for r in results], self.weights, self.group_names)
    for name, n in zip(self.group_names, norms):
      metrics[f"grad_norm/{name}"] = n
    metrics["grad_norm"] = optax.tree.norm(grad).astype(jnp.float32)
    return grad, tuple(r[1] for r in results), metrics


def combine_metrics(per_group: Sequence[dict[str, jax.Array]], weights: Sequence[float],
                    names: Sequence[str]) -> dict[str, jax.Array]:
  """The groups' metrics as one estimator's.

  Counts (:data:`meta_train.estimators.estimator.COUNT_METRICS`) are summed; ``meta_loss`` is
  the weighted mean ``Σ w_i L_i``; ``grad_variance`` is ``Σ w_i² Var[ĝ_i]`` (the groups are
  independent); every other metric is the weighted mean. Each group's own meta-loss is kept
  as ``meta_loss/<name>``.
  """
  out = {}
  for key in per_group[0]:
    values = [m[key] for m in per_group]
    if key in est_lib.COUNT_METRICS:
      out[key] = sum(values[1:], values[0])
    elif key == "grad_variance":
      out[key] = sum(w * w * v for w, v in zip(weights, values)).astype(jnp.float32)
    else:
      out[key] = sum(w * v for w, v in zip(weights, values)).astype(jnp.float32)
  for name, m in zip(names, per_group):
    out[f"meta_loss/{name}"] = jnp.asarray(m["meta_loss"], jnp.float32)
  return out


def grouped_estimator(name: str, lopt: Any, family: Any,
                      member_pairs: Sequence[int] | None = None,
                      group_clip: float = GroupedEstimator.group_clip,
                      member_overrides: Mapping[str, Mapping[str, Any]] | None = None,
                      **fields: Any) -> GroupedEstimator:
  """Estimator ``name`` built once per member of the mixture ``family``, grouped.

  Args:
    name: a key of :data:`meta_train.estimators.registry.ESTIMATORS` with a ``num_pairs`` (or
      ``num_particles``) field.
    lopt: the learned optimizer.
    family: a :class:`tasks.MixtureFamily` (its members and weights are used).
    member_pairs: pairs (particles for ``tbptt``) of each member's group, in member order;
      ``None``: every group takes ``fields``' count (or the estimator's default).
    group_clip: clip each group's estimate to this global norm before the sum (0: no clip).
    member_overrides: ``{member name: {field: value}}``: estimator settings of that member's
      group that replace ``fields``' (e.g. ``{"diffusion_digits": {"rise_penalty": 3.0}}``);
      a repeated member is named as in :attr:`GroupedEstimator.group_names`. Counts go in
      ``member_pairs``.
    **fields: the estimator's settings (:func:`meta_train.estimators.registry.make_estimator`).

  Raises:
    meta_train.errors.FieldError: ``family`` is not a mixture, ``member_pairs`` does not give
      one positive count per member, or ``member_overrides`` names no member, a field the
      estimator does not take, or the count.
  """
  if not isinstance(family, tasks.MixtureFamily):
    raise errors.FieldError("GroupedEstimator", "family",
                            f"grouping by member needs a mixture family (tasks.mixture_of), "
                            f"got {getattr(family, 'name', family)!r}")
  members = family.families
  count_field = registry.count_field(name)
  if member_pairs is not None:
    member_pairs = tuple(member_pairs)
    if len(member_pairs) != len(members) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in member_pairs):
      raise errors.FieldError("GroupedEstimator", "member_pairs",
                              f"must be {len(members)} positive ints (one per member of "
                              f"{[m.name for m in members]}), got {member_pairs!r}")
  names = _member_names(members)
  overrides = _check_overrides(name, names, member_overrides or {})
  groups = []
  for i, member in enumerate(members):
    own = dict(fields)
    if member_pairs is not None:
      own[count_field] = member_pairs[i]
    own.update(overrides.get(names[i], {}))
    try:
      groups.append(registry.make_estimator(name, lopt, member, **own))
    except errors.FieldError as e:
      if e.field not in overrides.get(names[i], {}):
        raise
      raise errors.FieldError("GroupedEstimator", "member_overrides",
                              f"{names[i]}.{e.field}: {e.message}") from None
  weights = family.weights if family.weights is not None else (1.0,) * len(members)
  return GroupedEstimator(tuple(groups), tuple(weights), family, group_clip)


def _member_names(families: Sequence[Any]) -> tuple[str, ...]:
  """The families' names, made unique with their index where a name repeats."""
  names = [getattr(f, "name", f"group{i}") for i, f in enumerate(families)]
  return tuple(n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names))


def _check_overrides(name: str, members: Sequence[str],
                     overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """``member_overrides`` as plain dicts, after checking members and fields by name."""
  if not isinstance(overrides, Mapping):
    raise errors.FieldError("GroupedEstimator", "member_overrides",
                            f"must map member names to estimator settings, got {overrides!r}")
  takes, count = registry.estimator_fields(name), registry.count_field(name)
  out = {}
  for member, own in overrides.items():
    if member not in members:
      raise errors.FieldError("GroupedEstimator", "member_overrides",
                              f"names {member!r}, which is not a member; the members are "
                              f"{list(members)}")
    if not isinstance(own, Mapping) or not own:
      raise errors.FieldError("GroupedEstimator", "member_overrides",
                              f"{member!r} must map to a non-empty dict of estimator "
                              f"settings, got {own!r}")
    for field in own:
      if field == count:
        raise errors.FieldError("GroupedEstimator", "member_overrides",
                                f"sets {field} for {member!r}: a group's count goes in "
                                f"member_pairs")
      if field not in takes:
        raise errors.FieldError("GroupedEstimator", "member_overrides",
                                f"sets {field!r} for {member!r}, which estimator {name!r} "
                                f"does not take; its fields: {', '.join(takes)}")
    out[member] = dict(own)
  return out


def _fold(key: jax.Array, i: int) -> jax.Array:
  """Group ``i``'s key: ``fold_in`` of the (typed or raw) ``key``."""
  return jax.random.fold_in(unroll_lib.wrap_key(key), i)
