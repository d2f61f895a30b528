"""Deprecated: moved to :mod:`meta_train.runtime.run`; this alias will be removed."""

import importlib
import sys
import warnings

warnings.warn("meta_train.run moved to meta_train.runtime.run; import it from there",
              DeprecationWarning, stacklevel=2)
# The old name is the new module itself, so attributes and monkeypatches agree.
sys.modules[__name__] = importlib.import_module("meta_train.runtime.run")
