"""Meta-training some parts of a chain while the others stay as an optimizer file has them.

Celo's two phases (Moudgil et al., arXiv 2501.12670, Sec. 3): first meta-train the update
rule, then meta-train a learned scheduler on the *frozen* rule. Phase two here is a run whose
optimizer is the chain ``(rule, ..., schedule)``, whose start is the phase-one file
(``optimizer.start.scheme=file``) and whose ``optimizer.frozen`` names the rule's parts::

  meta-train --preset quickstart \\
    --set optimizer.kwargs='{"parts": [{"name": "mlp", ...}, {"name": "orthogonalize", ...},
                                       {"name": "schedule", "config": {}}]}' \\
    --set optimizer.start.scheme=file \\
    --set optimizer.start.path=reports/quickstart/optimizer.safetensors \\
    --set optimizer.frozen='["mlp", "orthogonalize"]'

The estimator sees :class:`FrozenParts`: a learned optimizer whose meta-parameters are the
trainable parts' only (so ES perturbs, and the outer optimizer updates, nothing else: the
frozen parts add no variance to the estimate), with the frozen parts' meta-parameters fixed
inside its ``scale_by``. What a run exports is the whole chain again
(:func:`exported`): a frozen part is a role in meta-training, not something the file says.

:func:`from_file` is the start itself: each part of the run's optimizer whose name the file
has starts from the file's meta-parameters, which requires the same architecture and config.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Mapping

import jax

import learned_opt
from learned_opt import base

PRETRAINED_PREFIX = "pretrained:"


def resolve_path(path: str) -> str:
  """``path`` itself, or the shipped file of ``pretrained:NAME``."""
  if path.startswith(PRETRAINED_PREFIX):
    return learned_opt.pretrained_path(path[len(PRETRAINED_PREFIX):])
  return path


def file_digest(path: str) -> str:
  """The sha256 of the file ``path`` names (:func:`resolve_path`), in hex."""
  with open(resolve_path(path), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _parts(lopt: base.LearnedOptimizer) -> dict[str, base.LearnedOptimizer]:
  """``{name: part}``: a chain's parts, or the optimizer itself as its one part."""
  if isinstance(lopt, learned_opt.Chain):
    return {p.name: p for p in lopt.parts}
  return {lopt.name: lopt}


def _as_parts(lopt: base.LearnedOptimizer, meta_params: Any) -> dict[str, Any]:
  return dict(meta_params) if isinstance(lopt, learned_opt.Chain) else {lopt.name: meta_params}


def file_parts(lopt: base.LearnedOptimizer, path: str) -> dict[str, Any]:
  """The meta-parameters of the file at ``path`` for the parts of ``lopt`` it holds.

  Args:
    lopt: the run's optimizer (a chain, or one architecture).
    path: an optimizer file (:func:`learned_opt.save`), or ``pretrained:NAME``.

  Returns:
    ``{part name: meta-parameters}`` for every part of the file (a file of one architecture
    is one part, named by its architecture).

  Raises:
    ValueError: the file cannot be read, a part of the file is not in ``lopt``, or a part's
      config differs from ``lopt``'s part of that name (both named in the message).
  """
  file_lopt, file_params = learned_opt.load(resolve_path(path))
  ours, theirs = _parts(lopt), _parts(file_lopt)
  missing = sorted(set(theirs) - set(ours))
  if missing:
    raise ValueError(f"{path} holds part(s) {missing} that the optimizer does not have (its "
                     f"parts: {sorted(ours)})")
  for name, part in theirs.items():
    if part != ours[name]:
      raise ValueError(f"{path}: part {name!r} has config {part.config()}, the optimizer's "
                       f"{ours[name].config()}")
  return _as_parts(file_lopt, file_params)


def from_file(lopt: base.LearnedOptimizer, path: str):
  """The start ``key -> meta_params`` of ``lopt`` with the file's parts from the file.

  The parts the file does not hold start from ``lopt.init(key)``. The file is read once,
  here (errors as :func:`file_parts`).
  """
  return _start_with(lopt, file_parts(lopt, path))


def _start_with(lopt: base.LearnedOptimizer, loaded: Mapping[str, Any]):
  """``key -> meta_params``: ``lopt.init(key)`` with the parts in ``loaded`` replaced."""

  def start(key: jax.Array):
    theta = _as_parts(lopt, lopt.init(key))
    theta.update(loaded)
    return theta if isinstance(lopt, learned_opt.Chain) else theta[lopt.name]

  return start


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenParts(base.LearnedOptimizer):
  """A chain whose meta-parameters are its trainable parts'; the others are fixed.

  .. math::
    \\mathrm{scale\\_by}(θ_{\\text{train}}) = \\mathrm{chain.scale\\_by}(θ_{\\text{train}}
    \\cup θ_{\\text{frozen}})

  Not registered and not saved: :func:`exported` gives the chain and its whole meta-parameters.

  Attributes:
    chain: the whole learned optimizer.
    frozen: ``{part name: meta-parameters}`` of the parts that stay fixed (not every part).
  """

  chain: learned_opt.Chain
  frozen: Mapping[str, Any]

  name = "frozen_parts"

  def __post_init__(self):
    if not isinstance(self.chain, learned_opt.Chain):
      raise ValueError(f"frozen parts need a chain, got {type(self.chain).__name__}")
    names = self.chain.part_names
    unknown = sorted(set(self.frozen) - set(names))
    if unknown:
      raise ValueError(f"frozen part(s) {unknown} are not parts of the chain {names}")
    if set(self.frozen) == set(names):
      raise ValueError(f"every part of the chain {names} is frozen: nothing to meta-train")

  @property
  def trainable(self) -> list[str]:
    """The names of the parts meta-training changes, in chain order."""
    return [n for n in self.chain.part_names if n not in self.frozen]

  @property
  def horizon_aware(self) -> bool:  # type: ignore[override]
    return self.chain.horizon_aware

  def trainable_of(self, meta_params: Mapping[str, Any]) -> dict[str, Any]:
    """The trainable parts of the chain's whole meta-parameters."""
    return {n: meta_params[n] for n in self.trainable}

  def merged(self, meta_params: Mapping[str, Any]) -> dict[str, Any]:
    """The chain's whole meta-parameters: ``meta_params`` (trainable) and the frozen ones."""
    return {**self.frozen, **meta_params}

  def init(self, key: jax.Array) -> base.MetaParams:
    return self.trainable_of(self.chain.init(key))

  def scale_by(self, meta_params, *, num_steps=None):
    if not isinstance(meta_params, dict) or set(meta_params) != set(self.trainable):
      got = sorted(meta_params) if isinstance(meta_params, dict) else type(meta_params)
      raise ValueError(f"{self.name}: meta_params must be a dict with keys "
                       f"{sorted(self.trainable)} (the trainable parts), got {got}")
    return self.chain.scale_by(self.merged(meta_params), num_steps=num_steps)

  def config(self) -> dict[str, Any]:
    raise TypeError("FrozenParts is a meta-training role, not an architecture: save "
                    "meta_train.recipe.frozen.exported(lopt, meta_params) instead")


def freeze(lopt: base.LearnedOptimizer, path: str, names) -> tuple[FrozenParts, Any]:
  """``(FrozenParts, its start)``: ``lopt`` started from the file at ``path`` (:func:`from_file`)
  with the parts ``names`` kept at the file's meta-parameters.

  Raises:
    ValueError: as :func:`file_parts`; a name the file does not hold (a frozen part keeps
      the file's values), or one that is not a part, or every part frozen.
  """
  loaded = file_parts(lopt, path)
  missing = sorted(set(names) - set(loaded))
  if missing:
    raise ValueError(f"frozen part(s) {missing} are not in {path} (it holds {sorted(loaded)}): "
                     f"a frozen part keeps the file's meta-parameters")
  frozen = FrozenParts(lopt, {n: loaded[n] for n in names})
  start = _start_with(lopt, loaded)  # the file read once
  return frozen, lambda key: frozen.trainable_of(start(key))


def exported(lopt: base.LearnedOptimizer, meta_params: Any) -> tuple[base.LearnedOptimizer, Any]:
  """``(lopt, meta_params)`` as a file holds them: a :class:`FrozenParts` becomes its chain
  with every part's meta-parameters; anything else comes back as it is."""
  if isinstance(lopt, FrozenParts):
    return lopt.chain, lopt.merged(meta_params)
  return lopt, meta_params
