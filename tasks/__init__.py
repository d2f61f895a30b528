"""tasks: learning problems (`Task`) and distributions over them (`TaskFamily`).

`tasks.families()` is the registry of built-in families; `tasks.get(name)` builds one, or a
user's own from an import path ``"package.module:function"``.
"""

from tasks.base import (EVAL_SIZE, SPLITS, Task, TaskFamily, clip_to_ceiling, families,
                        family_names, get, register_family)
from tasks.base import FamilyImportError, UnknownFamilyError, is_import_path
from tasks.quadratic import QuadraticFamily, QuadraticTask
from tasks import text
from tasks.language_model import LanguageModelFamily, TransformerLMTask
from tasks.adapters import as_family, from_flax, from_function, from_haiku
from tasks import datasets
from tasks.classifiers import (ClassifierFamily, ClassifierTask, ConvClassifierFamily,
                               MLPClassifierFamily)
from tasks.mixture import MixtureFamily, MixtureTask, mixture_of
from tasks import diffusion
from tasks.diffusion import DiffusionTask, DigitsFamily, Toy2DFamily

__all__ = [
    "diffusion",
    "DiffusionTask",
    "DigitsFamily",
    "Toy2DFamily",
    "text",
    "from_haiku",
    "from_function",
    "from_flax",
    "as_family",
    "TransformerLMTask",
    "LanguageModelFamily",
    "EVAL_SIZE",
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
    "UnknownFamilyError",
    "FamilyImportError",
    "is_import_path",
    "datasets",
    "ClassifierFamily",
    "ClassifierTask",
    "ConvClassifierFamily",
    "MLPClassifierFamily",
    "MixtureFamily",
    "MixtureTask",
    "mixture_of",
]
