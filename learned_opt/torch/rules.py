"""Which update rule applies an optimizer file in PyTorch, and reading the file for it.

:func:`load_rule` takes a shipped optimizer's name or a path to a file written by
:func:`learned_opt.save`, reads it with :mod:`learned_opt.file_format` (numpy and safetensors,
no JAX) and builds the torch rule of its architecture from the file's config dict and
tensors. A file it cannot apply (an architecture or a config option it does not know, tensors
that do not fit) raises :class:`~learned_opt.FileFormatError` naming what is unsupported.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from learned_opt import file_format
from learned_opt.pretrained import pretrained_path
from learned_opt.torch.adafactor_mlp import AdafactorMLPRule
from learned_opt.torch import pieces as pieces_lib
from learned_opt.torch.mlp import MLPRule

#: Architecture name (a file's ``"name"``) -> torch rule class.
RULES = {rule.name: rule for rule in (MLPRule, AdafactorMLPRule)}

# Hand-designed baselines a file can hold: torch already has them.
_BASELINES = {"adam": "torch.optim.Adam", "sgd_momentum": "torch.optim.SGD(momentum=...)"}


class LoadedRule(NamedTuple):
  """A rule read from a file.

  Attributes:
    rule: the torch update rule (:class:`~learned_opt.torch.mlp.MLPRule`, ...).
    path: the file.
    pretrained_name: the shipped name it was asked for, or None for a path.
    horizon_aware: meta-trained seeing each run's length (from the file's provenance).
    clip: the gradient clip a chain applies before the rule
      (:class:`~learned_opt.torch.pieces.GradientClip`), or None.
  """

  rule: Any
  path: str
  pretrained_name: str | None
  horizon_aware: bool
  clip: Any = None


def _is_name(optimizer: str | os.PathLike) -> bool:
  text = os.fspath(optimizer)
  return (isinstance(text, str) and os.sep not in text and "/" not in text
          and not text.endswith(".safetensors"))


def load_rule(optimizer: str | os.PathLike) -> LoadedRule:
  """Reads a shipped optimizer (by name) or an optimizer file (by path) into a torch rule.

  Args:
    optimizer: a name of :func:`learned_opt.list_pretrained` (e.g. ``"default"``) or the path
      of a ``.safetensors`` file written by :func:`learned_opt.save`.

  Returns:
    A :class:`LoadedRule`.

  Raises:
    ValueError: for a name that is not shipped (listing those that are).
    FileFormatError: for a file that is missing, corrupt, or that learned_opt.torch cannot
      apply; the message names the file and what is unsupported.
  """
  name = os.fspath(optimizer) if _is_name(optimizer) else None
  path = pretrained_path(name) if name else os.fspath(optimizer)
  contents = file_format.read(path)  # v1 files come back upgraded to v2
  architecture, config, meta = contents.name, contents.config, contents.meta_params
  horizon_aware = bool(config.get("horizon_aware", False))
  if architecture == "chain":
    rule, horizon_aware, clip = _chain_rule(path, config, meta)
    return LoadedRule(rule=rule, path=path, pretrained_name=name, horizon_aware=horizon_aware,
                      clip=clip)
  if architecture not in RULES:
    hint = (f" (a hand-designed baseline: use {_BASELINES[architecture]})"
            if architecture in _BASELINES else "")
    raise file_format.FileFormatError(
        f"{path}: learned_opt.torch cannot apply architecture {architecture!r}{hint}; it "
        f"applies {sorted(RULES)}")
  rule = RULES[architecture](path, config, meta)
  return LoadedRule(rule=rule, path=path, pretrained_name=name, horizon_aware=horizon_aware)


# The chains learned_opt.torch applies: optionally the gradient clip, the MLP rule, optionally
# normalised, then any per-tensor pieces (learned_opt.torch.pieces), then optionally a learned
# schedule, then optionally the fixed cosine decay.
_CHAINS = ("[clip], mlp, [normalize_step], [orthogonalize | param_scale ...], [schedule], "
           "[cosine_decay]")


def _chain_names_ok(names: list[str] | None) -> bool:
  if not names or len(names) < 2:
    return False
  if names[0] == pieces_lib.GradientClip.name:
    names = names[1:]
  if names[0] != "mlp":
    return False
  names = names[:-1] if names[-1] == pieces_lib.CosineDecayFactor.name else names
  middle = names[1:-1] if names[-1] == "schedule" else names[1:]
  if middle and middle[0] == "normalize_step":
    middle = middle[1:]
  return all(n in pieces_lib.PIECES for n in middle)


def _chain_rule(path: str, config: dict[str, Any],
                meta: Any) -> tuple[MLPRule, bool, pieces_lib.GradientClip | None]:
  """The torch MLP rule applying a ``chain`` file (with its pieces and schedule), its horizon
  flag, and the gradient clip in front of it (or None)."""
  parts = config.get("parts")
  names = [p.get("name") for p in parts] if isinstance(parts, list) and all(
      isinstance(p, dict) for p in parts) else None
  if (not _chain_names_ok(names) or len(set(names)) != len(names)
      or not isinstance(meta, dict)):
    raise file_format.FileFormatError(
        f"{path}: learned_opt.torch applies chains of {_CHAINS}, got parts {names}")
  configs = {p["name"]: dict(p.get("config") or {}) for p in parts}
  decay = configs.get(pieces_lib.CosineDecayFactor.name)
  # A cosine decay reads the run's length whatever the rule does (as its optax part).
  aware = decay is not None or any(bool(c.get("horizon_aware", False))
                                   for c in configs.values())
  sched = configs.get("schedule")
  if sched is not None:
    unknown = sorted(set(sched) - {"hidden_size", "time_scales", "loss_decays", "horizon_aware"})
    if unknown or sched.get("time_scales") != configs["mlp"].get("time_scales"):
      raise file_format.FileFormatError(
          f"{path}: learned_opt.torch applies a schedule with the rule's time_scales and no "
          f"other option, got {sched}")
  normalize = configs.get("normalize_step")
  lr = float(normalize["learning_rate"]) if normalize is not None else None
  pieces = tuple(pieces_lib.PIECES[n](path, configs[n], meta.get(n)) for n in names
                 if n in pieces_lib.PIECES)
  flat = dict(meta.get("mlp") or {})
  flat.update({f"sched_{k}": v for k, v in (meta.get("schedule") or {}).items()})
  cosine = (pieces_lib.CosineDecayFactor(path, decay, meta.get(pieces_lib.CosineDecayFactor.name))
            if decay is not None else None)
  rule = MLPRule(path, configs["mlp"], flat, schedule=sched, normalize_lr=lr, pieces=pieces,
                 cosine=cosine)
  clip = configs.get(pieces_lib.GradientClip.name)
  if clip is not None:
    clip = pieces_lib.GradientClip(path, clip, meta.get(pieces_lib.GradientClip.name))
  return rule, aware, clip
