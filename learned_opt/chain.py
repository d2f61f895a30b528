"""Composite learned optimizers: learned pieces applied one after another, as ``optax.chain``.

A :class:`Chain` is itself a learned optimizer: its meta-parameters are a dict of its parts'
(keyed by each part's ``name``), its transform is ``optax.chain`` of the parts' ``scale_by``,
and it saves and loads as one file (its config is the list of its parts' names and configs)::

  lopt = learned_opt.chain(learned_opt.MLPOptimizer(), learned_opt.LearnedSchedule())
  theta = lopt.init(jax.random.key(0))          # {"mlp": {...}, "schedule": {...}}
  learned_opt.save("opt.safetensors", lopt, theta)
  tx = learned_opt.load("opt.safetensors")[0].transform(theta, num_steps=1000)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from learned_opt import base
from learned_opt import mlp as mlp_lib
from learned_opt import schedule as schedule_lib
from learned_opt import tree_utils


def _rule_and_schedule() -> tuple[base.LearnedOptimizer, ...]:
  return (mlp_lib.MLPOptimizer(), schedule_lib.LearnedSchedule())


@base.register
@dataclasses.dataclass(frozen=True)
class Chain(base.LearnedOptimizer):
  """Learned optimizers applied in sequence: the first reads the gradients, each next one the
  previous one's updates (optax's ``chain``).

  .. math::
    u = f_n(\\cdots f_2(f_1(g;\\ θ_1);\\ θ_2) \\cdots;\\ θ_n),\\qquad
    θ = \\{\\text{name}_i: θ_i\\}

  Every part receives ``params``, ``num_steps`` and the extra keywords (``loss=``). Between
  the parts the updates are held in at least float32, and each is rounded to its gradient's
  dtype once, at the end: a bf16 model's step is not rounded after every part (nor its
  schedule factor to bf16), and it is the step ``learned_opt.torch`` takes.
  :meth:`init` gives the first part ``key`` itself and part ``i > 0`` ``fold_in(key, i)``, so
  ``chain(rule, ...).init(key)[rule.name] == rule.init(key)``.

  Attributes:
    parts: the learned optimizers, in order; their names must differ. The default is Celo's
      decomposition: the MLP rule, then a learned schedule.
  """

  name = "chain"
  parts: tuple[base.LearnedOptimizer, ...] = dataclasses.field(
      default_factory=_rule_and_schedule)

  def __post_init__(self):
    parts = tuple(self.parts)
    if not parts:
      raise ValueError("chain needs at least one part")
    for p in parts:
      if not isinstance(p, base.LearnedOptimizer):
        raise ValueError(f"chain parts must be learned optimizers, got {p!r}")
      if isinstance(p, Chain):
        raise ValueError("chain parts cannot be chains themselves; list their parts instead")
    names = [p.name for p in parts]
    if len(set(names)) != len(names):
      raise ValueError(f"chain parts must have distinct names (the keys of the "
                       f"meta-parameters), got {names}")
    object.__setattr__(self, "parts", parts)

  @property
  def part_names(self) -> list[str]:
    """The keys of the meta-parameters, one per part."""
    return [p.name for p in self.parts]

  @property
  def horizon_aware(self) -> bool:  # type: ignore[override]
    """Whether any part was meta-trained seeing each run's length as ``num_steps``."""
    return any(p.horizon_aware for p in self.parts)

  def part_keys(self, key: jax.Array) -> list[jax.Array]:
    """The key each part's ``init`` gets from :meth:`init`'s ``key``."""
    return [key if i == 0 else jax.random.fold_in(key, i) for i in range(len(self.parts))]

  def init(self, key: jax.Array) -> base.MetaParams:
    return {p.name: p.init(k) for p, k in zip(self.parts, self.part_keys(key))}

  def scale_by(self, meta_params, *, num_steps=None):
    """``optax.chain`` of the parts' ``scale_by`` on their own meta-parameters."""
    if not isinstance(meta_params, dict) or set(meta_params) != set(self.part_names):
      got = sorted(meta_params) if isinstance(meta_params, dict) else type(meta_params)
      raise ValueError(f"{self.name}: meta_params must be a dict with keys "
                       f"{sorted(self.part_names)}, got {got}")
    inner = optax.chain(*(p.scale_by(meta_params[p.name], num_steps=num_steps)
                          for p in self.parts))

    def update_fn(updates, state, params=None, **extra_args):
      wide = jax.tree.map(
          lambda u: u.astype(jnp.promote_types(u.dtype, jnp.float32))
          if tree_utils.is_float(u) else u, updates)
      out, state = inner.update(wide, state, params, **extra_args)
      # Each update back to its gradient's dtype, rounded once (None and integer leaves pass).
      out = jax.tree.map(lambda u, g: u.astype(g.dtype) if tree_utils.is_float(g) else u,
                         out, updates, is_leaf=lambda x: x is None)
      return out, state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)

  def config(self) -> dict[str, Any]:
    return {"parts": [{"name": p.name, "config": p.config()} for p in self.parts]}

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "Chain":
    """From :meth:`config`: ``{"parts": [{"name": ..., "config": {...}}, ...]}``."""
    unknown = sorted(set(config) - {"parts"})
    if unknown:
      raise ValueError(f"{cls.name}: unknown config keys {unknown}; known: ['parts']")
    parts, known = config.get("parts"), base.registry()
    if not isinstance(parts, list):
      raise ValueError(f"{cls.name}: 'parts' must be a list, got {parts!r}")
    built = []
    for i, part in enumerate(parts):
      if not isinstance(part, dict) or set(part) != {"name", "config"}:
        raise ValueError(f"{cls.name}: part {i} must be {{'name': ..., 'config': {{...}}}}, "
                         f"got {part!r}")
      if part["name"] not in known or part["name"] == cls.name:
        raise ValueError(f"{cls.name}: part {i} has unknown architecture {part['name']!r}; "
                         f"registered: {sorted(set(known) - {cls.name})}")
      built.append(known[part["name"]].from_config(part["config"]))
    return cls(parts=tuple(built))


def chain(*parts: base.LearnedOptimizer) -> Chain:
  """The learned optimizer applying ``parts`` in sequence (:class:`Chain`).

  Example::

    lopt = learned_opt.chain(learned_opt.MLPOptimizer(), learned_opt.LearnedSchedule())
  """
  return Chain(parts=parts)
