"""Reading an optimizer file's config dict and tensors for a PyTorch update rule.

A torch rule is built from what the file says (its architecture's config dict and its
meta-parameters), not from the JAX optimizer object, so that it can check each option itself:
every key of the config must be one the rule applies or knows to be irrelevant to the update
(a speed knob, an initialisation setting), and anything else is refused with a
:class:`~learned_opt.FileFormatError` that names it, before any training step.
"""

from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np
import torch

from learned_opt.file_format import FileFormatError

_MISSING = object()


class ConfigReader:
  """Takes options out of a file's config dict, type-checked, and refuses leftovers.

  Args:
    path: the file (starts every message).
    architecture: the file's architecture name (named in messages).
    config: the file's config dict.
  """

  def __init__(self, path: str, architecture: str, config: dict[str, Any]):
    self.path, self.architecture, self._config = path, architecture, dict(config)
    self._seen: set[str] = set()

  def fail(self, msg: str) -> FileFormatError:
    return FileFormatError(f"{self.path}: {self.architecture}: {msg}")

  def _take(self, key: str, default: Any) -> Any:
    self._seen.add(key)
    if key in self._config:
      return self._config[key]
    if default is _MISSING:
      raise self.fail(f"the config has no {key!r}, which learned_opt.torch needs")
    return default

  def number(self, key: str, default: Any = _MISSING) -> float:
    value = self._take(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
      raise self.fail(f"config {key!r} must be a number, got {value!r}")
    return float(value)

  def integer(self, key: str, default: Any = _MISSING) -> int:
    value = self._take(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
      raise self.fail(f"config {key!r} must be an int >= 0, got {value!r}")
    return int(value)

  def flag(self, key: str, default: Any = _MISSING) -> bool:
    value = self._take(key, default)
    if not isinstance(value, bool):
      raise self.fail(f"config {key!r} must be true or false, got {value!r}")
    return value

  def number_list(self, key: str, default: Any = _MISSING) -> tuple[float, ...]:
    value = self._take(key, default)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
      raise self.fail(f"config {key!r} must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)

  def int_list(self, key: str, default: Any = _MISSING) -> tuple[int, ...]:
    value = self._take(key, default)
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in value):
      raise self.fail(f"config {key!r} must be a list of positive ints, got {value!r}")
    return tuple(int(v) for v in value)

  def take_dict(self, key: str, default: Any = _MISSING) -> dict[str, Any] | None:
    """A nested config object (a JSON object, or null for ``None``)."""
    value = self._take(key, default)
    if value is not None and not isinstance(value, dict):
      raise self.fail(f"config {key!r} must be an object or null, got {value!r}")
    return value

  def ignore(self, *keys: str) -> None:
    """Marks keys that do not change the update (speed knobs, initialisation settings)."""
    self._seen.update(keys)

  def finish(self) -> None:
    """Raises for config keys that no call took: options this rule cannot apply."""
    unknown = sorted(set(self._config) - self._seen)
    if unknown:
      raise self.fail(f"unsupported config option(s) {unknown}: learned_opt.torch applies "
                      f"{sorted(self._seen)}")


def meta_tensors(reader: ConfigReader, meta_params: Any,
                 expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
  """Checks a file's meta-parameters against ``expected`` shapes; returns float32 tensors.

  Args:
    reader: the file's :class:`ConfigReader` (for messages).
    meta_params: nested dicts of numpy arrays (:func:`learned_opt.file_format.read_meta_params`).
    expected: ``{"/"-joined path: shape}`` the config implies.

  Returns:
    ``{"/"-joined path: float32 CPU tensor}`` (copies: the file's buffers are not shared).

  Raises:
    FileFormatError: for a missing or unexpected tensor, a wrong shape or a dtype other than
      float32.
  """
  flat = dict(_flatten(meta_params, ""))
  missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
  if missing or extra:
    raise reader.fail(f"tensors do not match the config: missing {missing}, unexpected {extra}")
  out = {}
  for key, shape in expected.items():
    array = flat[key]
    if tuple(array.shape) != tuple(shape):
      raise reader.fail(f"tensor {key!r} has shape {tuple(array.shape)}, expected {tuple(shape)}"
                        " for this config")
    if array.dtype != np.float32:
      raise reader.fail(f"tensor {key!r} is {array.dtype}; learned_opt.torch applies float32 "
                        "meta-parameters only")
    out[key] = torch.from_numpy(np.array(array, copy=True))
  return out


def _flatten(tree: Any, prefix: str) -> Iterable[tuple[str, np.ndarray]]:
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _flatten(value, f"{prefix}/{key}" if prefix else key)
  else:
    yield prefix, tree
