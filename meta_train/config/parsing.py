"""Generic typed parsing for trees of frozen dataclasses: values, ``field.path=value``, JSON.

Nothing here knows what a run is. One interpreter of type annotations, :func:`convert`, turns
either a JSON-like value (from ``config.json``) or a command-line string (from
``field.path=value``) into a value of the annotated type, or raises :class:`ConfigError` naming
the field path. Around it: :func:`set_field` applies one override to a dataclass tree,
:func:`from_dict` / :func:`to_dict` round-trip a tree through JSON-compatible dicts,
:func:`fields_table` lists the leaf fields with their types and help, :func:`diff` compares two
trees.

Why hand-written rather than a library: the annotations used (``bool``, ``int``, ``float``,
``str``, ``Literal``, ``X | None``, unions, ``tuple[X, ...]``, fixed tuples, ``dict``,
``Any`` and nested dataclasses) fit in one short recursive function. pydantic (present in the
environment only through wandb) validates JSON values well, but the command line needs forms
it does not read (``none`` for optional fields, ``8,8`` for tuples, ``1_000``, ``yes``/``no``),
so a second interpreter of strings would remain next to it; it also rejects the arbitrary
classes that appear in learned-optimizer and task-family fields unless told to allow them, and
its messages would need rewriting to keep naming the field path. Command-line libraries built
on dataclasses (tyro, simple-parsing) own the whole parser, while ``meta-train`` keeps
``--preset`` and positional ``field.path=value`` overrides. So: one function, no dependency.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Callable, Literal, Mapping

_NONE = type(None)
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ConfigError(ValueError):
  """An invalid configuration; ``str()`` names the offending field path.

  Attributes:
    path: the dotted field path (``""`` for the whole config).
  """

  def __init__(self, path: str, message: str):
    self.path = path
    self.message = message
    super().__init__(f"{path}: {message}" if path else message)


def hints(cls) -> dict[str, Any]:
  """The resolved type annotations of a dataclass's fields (``Any`` where unresolvable)."""
  try:
    return typing.get_type_hints(cls)
  except Exception:  # pylint: disable=broad-except
    return {f.name: Any for f in dataclasses.fields(cls)}


def optional_inner(tp):
  """``X`` if ``tp`` is ``X | None`` / ``Optional[X]``, else None."""
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not _NONE]
    if len(args) == 1 and len(typing.get_args(tp)) == 2:
      return args[0]
  return None


def type_name(tp) -> str:
  """A short readable name of a type annotation (for messages and ``--help``)."""
  if tp is Any:
    return "any"
  inner = optional_inner(tp)
  if inner is not None:
    return f"{type_name(inner)} | None"
  origin = typing.get_origin(tp)
  if origin is Literal:
    return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
  if origin in (tuple, list):
    args = typing.get_args(tp)
    if origin is list and len(args) == 1:
      return f"list[{type_name(args[0])}]"
    if len(args) == 2 and args[1] is Ellipsis:
      return f"tuple[{type_name(args[0])}, ...]"
    return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
  if origin is dict:
    return "dict"
  return getattr(tp, "__name__", str(tp))


def _bad(path: str, tp, value) -> ConfigError:
  return ConfigError(path, f"expected {type_name(tp)}, got {value!r}")


def _freeze(value):
  """Untyped values: lists become tuples (hashable, like the dataclass configs downstream)."""
  if isinstance(value, list):
    return tuple(_freeze(v) for v in value)
  if isinstance(value, dict):
    return {k: _freeze(v) for k, v in value.items()}
  return value


def _json_or_text(text: str):
  """A JSON literal if ``text`` is one, else ``text`` itself."""
  try:
    return json.loads(text.strip())
  except json.JSONDecodeError:
    return text


def _json(text: str, tp, path: str):
  try:
    return json.loads(text.strip())
  except json.JSONDecodeError:
    raise _bad(path, tp, text) from None


def _text_int(text: str, tp, path: str) -> int:
  s = text.strip().replace("_", "")
  try:
    return int(s)
  except ValueError:
    pass
  try:
    f = float(s)
  except ValueError:
    raise _bad(path, tp, text) from None
  if not f.is_integer():
    raise _bad(path, tp, text)
  return int(f)


def convert(value: Any, tp, path: str, *, text: bool = False) -> Any:
  """``value`` as a value of annotation ``tp``, normalised; the one interpreter of annotations.

  With ``text=False`` ``value`` is JSON-like (``config.json``, a programmatic config): it must
  already have the type; lists become tuples for tuple annotations and ints become floats for
  float annotations; bools are never numbers. With ``text=True`` ``value`` is a command-line
  string, decoded per type first: ``none``/``null`` for optional fields; ``true``/``yes``/
  ``on``/``1`` and ``false``/``no``/``off``/``0`` for bools; ``1_000`` or ``1e3`` for ints;
  Python floats; strings as given; a Literal's choices by name; JSON lists or comma-separated
  items for tuples and lists; JSON objects for dicts; a JSON literal or else the string for
  ``Any``.

  Args:
    value: the value (or the string, with ``text=True``).
    tp: the type annotation.
    path: the field path, for error messages.
    text: whether ``value`` is a command-line string.

  Returns:
    The value, normalised (tuples, floats, frozen untyped lists).

  Raises:
    ConfigError: naming ``path``, with the expected type and the bad value.
  """
  if tp is Any or tp is object:
    return _freeze(_json_or_text(value) if text else value)
  inner = optional_inner(tp)
  if inner is not None:
    if value is None or (text and value.strip().lower() in ("none", "null")):
      return None
    return convert(value, inner, path, text=text)
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if origin is Literal:
    if text:
      matches = [a for a in args if str(a) == value.strip()]
    else:
      matches = [a for a in args if a == value and isinstance(a, bool) == isinstance(value, bool)]
    if not matches:
      raise ConfigError(path, f"expected one of {list(args)}, got {value!r}")
    return matches[0]
  if origin in (typing.Union, types.UnionType):
    for arg in args:
      try:
        return convert(value, arg, path, text=text)
      except ConfigError:
        pass
    raise _bad(path, tp, value)
  if origin in (tuple, list) or tp in (tuple, list):
    items_text, given = False, value
    if text:
      s = value.strip()
      if s.startswith("["):
        value = _json(s, tp, path)
      else:
        value = [p for p in s.strip("()").split(",") if p.strip()] if s not in ("", "()") else []
        items_text = True
    if not isinstance(value, (list, tuple)):
      raise _bad(path, tp, given)
    if not args:
      item_types = [Any] * len(value)
    elif (origin or tp) is list or (len(args) == 2 and args[1] is Ellipsis):
      item_types = [args[0]] * len(value)
    else:
      if len(value) != len(args):
        raise ConfigError(path, f"expected {len(args)} items ({type_name(tp)}), got {given!r}")
      item_types = list(args)
    items = [convert(v, a, f"{path}[{i}]", text=items_text)
             for i, (v, a) in enumerate(zip(value, item_types))]
    return tuple(items) if (origin or tp) is tuple else list(items)
  if origin is dict or tp is dict:
    if text:
      value = _json(value, tp, path)
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
      raise _bad(path, tp, value)
    return {k: _freeze(v) for k, v in value.items()}
  if tp is bool:
    if text:
      s = value.strip().lower()
      if s not in _TRUE | _FALSE:
        raise _bad(path, tp, value)
      return s in _TRUE
    if not isinstance(value, bool):
      raise _bad(path, tp, value)
    return value
  if tp is int:
    if text:
      return _text_int(value, tp, path)
    if isinstance(value, bool) or not isinstance(value, int):
      raise _bad(path, tp, value)
    return value
  if tp is float:
    if text:
      try:
        return float(value.strip())
      except ValueError:
        raise _bad(path, tp, value) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise _bad(path, tp, value)
    return float(value)
  if tp is str:
    if not isinstance(value, str):
      raise _bad(path, tp, value)
    return value
  if text:
    value = _json_or_text(value)
  if isinstance(tp, type) and not isinstance(value, tp):
    raise _bad(path, tp, value)
  return value


# ---------------------------------------------------------------------------------------------
# Dataclass trees <-> JSON-compatible dicts.


def to_dict(obj: Any) -> Any:
  """A dataclass tree as nested JSON-compatible dicts (tuples become lists)."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
  if isinstance(obj, (list, tuple)):
    return [to_dict(v) for v in obj]
  if isinstance(obj, dict):
    return {k: to_dict(v) for k, v in obj.items()}
  return obj


def from_dict(cls, data: Any, path: str = ""):
  """The ``cls`` tree :func:`to_dict` gave ``data``; missing fields take their defaults.

  Raises:
    ConfigError: for an unknown field or a value of the wrong type, naming its path.
  """
  if not isinstance(data, Mapping):
    raise ConfigError(path, f"expected an object for {cls.__name__}, got {data!r}")
  types_ = hints(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(data) - set(names))
  if unknown:
    raise ConfigError(_join(path, unknown[0]), f"unknown field; known fields of "
                                               f"{path or 'the config'}: {', '.join(names)}")
  kwargs = {}
  for name, value in data.items():
    tp = types_[name]
    if dataclasses.is_dataclass(tp):
      kwargs[name] = from_dict(tp, value, _join(path, name))
    else:
      kwargs[name] = convert(value, tp, _join(path, name))
  return _construct(cls, kwargs, path)


def _construct(cls, kwargs: Mapping[str, Any], path: str, base: Any = None):
  """``cls(**kwargs)`` (or ``replace(base, **kwargs)``) with the section's own check
  (``__post_init__``'s ``ValueError``) turned into a :class:`ConfigError` naming ``path``."""
  try:
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    field = next((k for k in kwargs if f".{k} " in str(e) or f".{k}:" in str(e)), None)
    raise ConfigError(_join(path, field) if field else path, str(e)) from None


def _join(prefix: str, name: str) -> str:
  return f"{prefix}.{name}" if prefix else name


# ---------------------------------------------------------------------------------------------
# Field paths.


def fields_table(obj: Any) -> list[tuple[str, str, Any, str]]:
  """``(path, type name, value, help)`` for every leaf field of the dataclass tree ``obj``.

  The help is the field's ``metadata["help"]`` (``""`` if none).
  """
  rows = []

  def walk(node, prefix):
    types_ = hints(type(node))
    for f in dataclasses.fields(node):
      value = getattr(node, f.name)
      if dataclasses.is_dataclass(value):
        walk(value, _join(prefix, f.name))
      else:
        rows.append((_join(prefix, f.name), type_name(types_[f.name]), value,
                     f.metadata.get("help", "")))

  walk(obj, "")
  return rows


def get_field(obj: Any, path: str) -> Any:
  """The value at dotted ``path`` of a dataclass tree (entries of dict fields included)."""
  for part in path.split("."):
    obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
  return obj


def split_override(item: str) -> tuple[str, str]:
  """``"a.b=text"`` (or ``"--a.b=text"``) as ``("a.b", "text")``."""
  if "=" not in item:
    raise ConfigError(item, "override must look like field.path=value")
  path, text = item.split("=", 1)
  path = path.strip()
  if path.startswith("--"):
    path = path[2:]
  if not path:
    raise ConfigError(item, "override has an empty field path")
  return path, text


EntryType = Callable[[Any, str, str], Any]


def set_field(root: Any, path: str, text: str, entry_type: EntryType | None = None) -> Any:
  """``root`` (a frozen dataclass tree) with the field at ``path`` set from the string ``text``.

  ``text`` is parsed with :func:`convert` against the field's annotation. A path one level into a
  dict field (``section.kwargs.name``) sets that entry, typed by ``entry_type(root,
  "section.kwargs", "name")`` (``Any`` without it), which may raise :class:`ConfigError`.

  Raises:
    ConfigError: unknown field, a section given a value, or an unparsable value, naming
      ``path``.
  """
  parts = path.split(".")

  def set_in(node, i):
    prefix = ".".join(parts[:i])
    if not dataclasses.is_dataclass(node):
      raise ConfigError(path, f"{prefix} has no sub-fields")
    names = [f.name for f in dataclasses.fields(node)]
    head = parts[i]
    if head not in names:
      raise ConfigError(path, f"unknown field; known fields of {prefix or 'the config'}: "
                              f"{', '.join(sorted(names))}")
    value = getattr(node, head)
    if i == len(parts) - 1:
      if dataclasses.is_dataclass(value):
        raise ConfigError(path, "is a section; set one of its fields, e.g. "
                                f"{path}.{dataclasses.fields(value)[0].name}=...")
      new = convert(text, hints(type(node))[head], path, text=True)
    elif isinstance(value, Mapping) and i == len(parts) - 2:
      key = parts[-1]
      tp = Any if entry_type is None else entry_type(root, ".".join(parts[:-1]), key)
      new = {**value, key: convert(text, tp, path, text=True)}
    else:
      new = set_in(value, i + 1)
    return _construct(type(node), {head: new}, prefix, base=node)

  return set_in(root, 0)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, f"{prefix}{k}."))  # an empty dict has no entries
    else:
      out[f"{prefix}{k}"] = v
  return out


def diff(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
  """``(path, a's value, b's value)`` for every leaf (dict entries too) where trees differ.

  Values are :func:`to_dict`'s; a leaf missing on one side shows as ``"<unset>"``.
  """
  da, db = _flatten(to_dict(a)), _flatten(to_dict(b))
  missing = "<unset>"
  return [(k, da.get(k, missing), db.get(k, missing)) for k in sorted(set(da) | set(db))
          if da.get(k, missing) != db.get(k, missing)]
