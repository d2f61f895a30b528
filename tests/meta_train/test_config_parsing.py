"""The generic typed parser: one interpreter for command-line strings and JSON values."""

import dataclasses
from typing import Any, Literal

import pytest

from meta_train.config import parsing as P


@pytest.mark.parametrize("tp, text, value, expected", [
    (int, "1_000", 1000, 1000),
    (int, "1e3", 1000, 1000),
    (float, "3e-3", 3e-3, 3e-3),
    (float, "2", 2, 2.0),
    (bool, "yes", True, True),
    (bool, "off", False, False),
    (str, "a b", "a b", "a b"),
    (Literal["train", "valid"], "valid", "valid", "valid"),
    (int | None, "none", None, None),
    (int | None, "7", 7, 7),
    (tuple[int, ...], "8,8", [8, 8], (8, 8)),
    (tuple[int, ...], "[8, 8]", [8, 8], (8, 8)),
    (tuple[int, ...], "()", [], ()),
    (tuple[float, float], "0.5,1.5", [0.5, 1.5], (0.5, 1.5)),
    (tuple[float, float], "[0, 1]", [0, 1], (0.0, 1.0)),
    (list[int], "1,2", [1, 2], [1, 2]),
    (dict, '{"a": [1, 2]}', {"a": [1, 2]}, {"a": (1, 2)}),
    (Any, "[1, 2]", [1, 2], (1, 2)),
    (Any, "adam", "adam", "adam"),
    (int | str, "3", 3, 3),
])
def test_text_and_json_values_convert_to_the_same_value(tp, text, value, expected):
  from_text = P.convert(text, tp, "f", text=True)
  from_json = P.convert(value, tp, "f")
  assert from_text == from_json == expected
  assert type(from_text) is type(expected) and type(from_json) is type(expected)


@pytest.mark.parametrize("tp, value, text, message", [
    (int, True, False, "f: expected int, got True"),
    (int, 1.5, False, "f: expected int, got 1.5"),
    (int, "1.5", True, "f: expected int, got '1.5'"),
    (float, "fast", True, "f: expected float, got 'fast'"),
    (float, False, False, "f: expected float, got False"),
    (bool, "maybe", True, "f: expected bool, got 'maybe'"),
    (bool, 1, False, "f: expected bool, got 1"),
    (str, 3, False, "f: expected str, got 3"),
    (Literal["a", "b"], "c", True, "f: expected one of ['a', 'b'], got 'c'"),
    (Literal[1, 2], True, False, "f: expected one of [1, 2], got True"),
    (tuple[float, float], "1", True, "f: expected 2 items (tuple[float, float]), got '1'"),
    (tuple[int, ...], [1, "x"], False, "f[1]: expected int, got 'x'"),
    (tuple[int, ...], "1,x", True, "f[1]: expected int, got 'x'"),
    (dict, "[1]", True, "f: expected dict, got [1]"),
    (dict, "{", True, "f: expected dict, got '{'"),
])
def test_errors_name_the_path_the_type_and_the_value(tp, value, text, message):
  with pytest.raises(P.ConfigError) as e:
    P.convert(value, tp, "f", text=text)
  assert str(e.value) == message


@dataclasses.dataclass(frozen=True)
class _Inner:
  n: int = 1
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Root:
  inner: _Inner = dataclasses.field(default_factory=_Inner)
  x: float | None = None


def test_set_field_walks_dataclasses_and_dict_entries():
  root = _Root()
  assert P.set_field(root, "inner.n", "3") == _Root(_Inner(3))
  assert P.set_field(root, "x", "none") == root
  typed = P.set_field(root, "inner.kwargs.h", "8,8", entry_type=lambda r, p, k: tuple[int, ...])
  assert typed.inner.kwargs == {"h": (8, 8)}
  assert P.set_field(root, "inner.kwargs.h", "[8, 8]").inner.kwargs == {"h": (8, 8)}
  for path, message in [
      ("inner.m", "inner.m: unknown field; known fields of inner: kwargs, n"),
      ("y", "y: unknown field; known fields of the config: inner, x"),
      ("inner", "inner: is a section; set one of its fields, e.g. inner.n=..."),
      ("inner.n.k", "inner.n.k: inner.n has no sub-fields"),
      ("inner.n", "inner.n: expected int, got 'v'"),
  ]:
    with pytest.raises(P.ConfigError) as e:
      P.set_field(root, path, "v")
    assert str(e.value) == message


def test_dict_round_trip_and_diff():
  root = _Root(_Inner(2, {"h": (8, 8)}), 0.5)
  data = P.to_dict(root)
  assert data == {"inner": {"n": 2, "kwargs": {"h": [8, 8]}}, "x": 0.5}
  assert P.from_dict(_Root, data) == root
  assert P.from_dict(_Root, {}) == _Root()
  assert P.diff(_Root(), root) == [("inner.kwargs.h", "<unset>", [8, 8]), ("inner.n", 1, 2),
                                   ("x", None, 0.5)]
  with pytest.raises(P.ConfigError) as e:
    P.from_dict(_Root, {"inner": {"n": "2"}})
  assert str(e.value) == "inner.n: expected int, got '2'"
  assert P.fields_table(root) == [("inner.n", "int", 2, ""),
                                  ("inner.kwargs", "dict", {"h": (8, 8)}, ""),
                                  ("x", "float | None", 0.5, "")]
