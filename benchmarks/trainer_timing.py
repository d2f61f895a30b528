"""Throughput of a :class:`meta_train.trainer.MetaTrainer`, shared by the meta-training benchmarks.

Imports jax only when called, so a script can set ``XLA_FLAGS`` before jax starts.
"""

from __future__ import annotations

import time


def time_dispatches(trainer, seconds: float, windows: int):
  """Times ``trainer.step`` after compiling it.

  The first dispatch (compile included) is timed on its own; a second one calibrates how many
  dispatches fill ``seconds``; then ``windows`` windows of that many dispatches are timed.

  Returns:
    ``(compile_s, rates, cpu_rates)``: compile seconds, and per window the inner steps per
    wall-clock second and per CPU second of this process.
  """
  import jax  # pylint: disable=import-outside-toplevel
  state = jax.block_until_ready(trainer.init(jax.random.key(0)))
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(trainer.step(state))
  compile_s = time.perf_counter() - t0
  per_dispatch = int(metrics["inner_steps"])
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(trainer.step(state))
  reps = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))
  rates, cpu_rates = [], []
  for _ in range(windows):
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(reps):
      state, metrics = trainer.step(state)
    jax.block_until_ready((state, metrics))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    rates.append(reps * per_dispatch / dt)
    cpu_rates.append(reps * per_dispatch / max(dc, 1e-9))
  return compile_s, rates, cpu_rates
