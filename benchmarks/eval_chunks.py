"""Evaluation-set losses of the conv denoiser: one call over all examples vs chunks.

``DiffusionTask.apply_denoiser`` runs a batch larger than the training batch as ``lax.map``
over chunks of ``batch_size`` examples. This times the ``diffusion_digits`` train-split
evaluation loss (4,096 noisy examples) of ``--runs`` vmapped parameter sets both ways in one
process — chunked, and one call (the task rebuilt with ``batch_size`` = the whole set) — and
prints the ratio, which is stable under machine load where seconds are not.

Run::

  python benchmarks/eval_chunks.py [--runs 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax

import tasks


def _seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  family = tasks.get("diffusion_digits")
  keys = jax.random.split(jax.random.key(0), args.runs)
  task_params = jax.vmap(family.sample)(keys)
  params = jax.vmap(lambda tp, k: family.task(tp).init(k))(task_params, keys)
  key = jax.random.key(1)

  def loss(chunked):
    def one(tp, p):
      task = family.task(tp)
      batch = task.eval_batch("train")
      if not chunked:
        task = dataclasses.replace(task, batch_size=batch["x0"].shape[0])
      return task.loss(p, key, batch)
    return jax.jit(jax.vmap(one))

  n = family.task(jax.tree.map(lambda x: x[0], task_params)).eval_batch("train")["x0"].shape[0]
  one_call = _seconds(loss(False), task_params, params, repeats=args.repeats)
  chunks = _seconds(loss(True), task_params, params, repeats=args.repeats)
  print(f"diffusion_digits train evaluation set ({n} examples) x {args.runs} runs: "
        f"one call {one_call:.3f} s, chunks {chunks:.3f} s, speed-up {one_call / chunks:.2f}x")


if __name__ == "__main__":
  main()
