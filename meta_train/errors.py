"""``FieldError``: a constructor argument with an invalid value, named by its field.

Estimators and :class:`~meta_train.unroll.UnrollConfig` check their own fields when constructed
and raise :class:`FieldError`; the run config (:mod:`meta_train.config`), whose estimator
fields carry the same names, turns it into a ``ConfigError`` naming ``estimator.<field>``.
So every estimator setting is validated in exactly one place, its constructor.
"""

from __future__ import annotations

from typing import Any


class FieldError(ValueError):
  """An invalid field of ``owner``; ``str()`` is ``"Owner.field: message"``.

  Attributes:
    owner: the class whose field is invalid (its name).
    field: the field's name.
    message: what is wrong, with the bad value.
  """

  def __init__(self, owner: str, field: str, message: str):
    self.owner, self.field, self.message = owner, field, message
    super().__init__(f"{owner}.{field}: {message}")


def check_positive_int(owner: str, field: str, value: Any) -> None:
  """Raises :class:`FieldError` unless ``value`` is an ``int`` (not a bool) ``> 0``."""
  if not isinstance(value, int) or isinstance(value, bool):
    raise FieldError(owner, field, f"must be an int, got {value!r}")
  if value <= 0:
    raise FieldError(owner, field, f"must be > 0, got {value!r}")
