"""tasks: learning problems (`Task`) and distributions over them (`TaskFamily`).

`tasks.families()` is the registry of built-in families; `tasks.get(name)` builds one.
"""

from tasks.base import (SPLITS, Task, TaskFamily, clip_to_ceiling, families, family_names, get,
                        register_family)
from tasks.quadratic import QuadraticFamily, QuadraticTask

__all__ = [
    "SPLITS",
    "QuadraticFamily",
    "QuadraticTask",
    "Task",
    "TaskFamily",
    "clip_to_ceiling",
    "families",
    "family_names",
    "get",
    "register_family",
]
