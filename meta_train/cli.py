"""The ``meta-train`` console script's address (``meta-train = meta_train.cli:main``).

The command itself lives in :mod:`meta_train.runtime.cli`; this module keeps the entry point
and ``python -m meta_train.cli`` stable.
"""

import sys

from meta_train.runtime.cli import build_parser, main, resolve_args

__all__ = ["build_parser", "main", "resolve_args"]

if __name__ == "__main__":
  sys.exit(main())
