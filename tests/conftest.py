"""Test-session settings shared by every test file.

One persistent JAX compilation cache per test run, shared by the xdist workers and by the
subprocesses the tests start (``meta-train``, ``meta-eval``, several processes of one
distributed run): many tests compile the same programs (the same family, optimizer and
estimator at the same shapes), and on 2 CPU cores compiling is most of the suite's time. The
cache holds XLA executables keyed by their program, options and backend, so a hit runs the
very program a fresh compilation would give (the bit-exact resume tests rely on that). The
directory is removed when the run ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Set by the process that imports this first (pytest itself, or xdist's controller before it
# starts its workers, which inherit it); a cache the caller chose is left alone.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE = tempfile.mkdtemp(prefix="learned_opt_tests_jax_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


def pytest_unconfigure(config):
  """The process that made the cache removes it when the run ends."""
  del config
  if _OWN_CACHE is not None:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
