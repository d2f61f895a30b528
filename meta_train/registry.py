"""Deprecated: moved to :mod:`meta_train.estimators.registry`; this alias will be removed."""

import importlib
import sys
import warnings

warnings.warn("meta_train.registry moved to meta_train.estimators.registry; import it from there",
              DeprecationWarning, stacklevel=2)
# The old name is the new module itself, so attributes and monkeypatches agree.
sys.modules[__name__] = importlib.import_module("meta_train.estimators.registry")
