"""Time the inner step (batch, loss, gradient) of every registered task family.

For each family in ``tasks.families()``: the batch size is set to ``--batch-size`` (128 by
default; families without a ``batch_size`` field keep theirs, marked ``*``), ``--tasks`` tasks
(8) are sampled, and one jitted, vmapped step ``(params, key) -> (loss, grads)`` that draws a
batch inside jit is compiled (compile seconds reported separately) and timed ``--repeats``
times with ``block_until_ready``. The quadratic family is timed in the same process,
interleaved round by round, as the baseline column, so ratios survive a shared machine.
Prints: family, parameters per task, compile seconds, median ms per step, vmapped steps/s
(tasks x steps per second), ratio to the quadratic step.

Run from the repository root::

  python -m benchmarks.task_speed
  python -m benchmarks.task_speed --family digits_mlp mixture --repeats 50
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

import tasks

BASELINE = "quadratic"


def with_batch_size(family: tasks.TaskFamily, batch_size: int) -> tuple[tasks.TaskFamily, bool]:
  """``family`` with its batch size replaced where it has one; also whether it was replaced."""
  if isinstance(family, tasks.MixtureFamily):
    members = [with_batch_size(m, batch_size) for m in family.families]
    return (dataclasses.replace(family, members=tuple(m for m, _ in members)),
            any(ok for _, ok in members))
  if dataclasses.is_dataclass(family) and "batch_size" in {
      f.name for f in dataclasses.fields(family)}:
    return dataclasses.replace(family, batch_size=batch_size), True
  return family, False


def build_step(family: tasks.TaskFamily, num_tasks: int, key: jax.Array):
  """A compiled vmapped ``(params, keys) -> (losses, grads)``, its inputs and compile seconds."""
  k_sample, k_init = jax.random.split(key)
  task_params = jax.vmap(family.sample)(jax.random.split(k_sample, num_tasks))

  def one(tp, params, k):
    task = family.task(tp)
    batch = task.sample_batch(k, "train")
    return jax.value_and_grad(task.loss)(params, k, batch)

  init = jax.jit(jax.vmap(lambda tp, k: family.task(tp).init(k)))
  params = init(task_params, jax.random.split(k_init, num_tasks))
  keys = jax.random.split(key, num_tasks)
  step = jax.jit(jax.vmap(one))
  t0 = time.perf_counter()
  compiled = step.lower(task_params, params, keys).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(task_params, params, keys))  # Warm up.
  return compiled, (task_params, params, keys), compile_s


def time_once(step, args) -> float:
  t0 = time.perf_counter()
  jax.block_until_ready(step(*args))
  return time.perf_counter() - t0


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--family", nargs="*", default=None, help="families (default: all)")
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--tasks", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args(argv)
  names = args.family or tasks.family_names()
  key = jax.random.key(0)

  baseline, _ = with_batch_size(tasks.get(BASELINE), args.batch_size)
  base_step, base_args, _ = build_step(baseline, args.tasks, key)

  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {args.batch_size}, "
        f"{args.tasks} tasks vmapped, median of {args.repeats}; baseline: {BASELINE}")
  header = (f"{'family':<24}{'params/task':>12}{'compile s':>11}{'ms/step':>10}"
            f"{'task-steps/s':>14}{'x ' + BASELINE:>13}")
  print(header)
  print("-" * len(header))
  for name in names:
    family, resized = with_batch_size(tasks.get(name), args.batch_size)
    step, step_args, compile_s = build_step(family, args.tasks, key)
    n_params = sum(int(np.prod(x.shape[1:])) for x in jax.tree.leaves(step_args[1]))
    times, base_times = [], []
    for _ in range(args.repeats):  # Interleave with the baseline so both see the same load.
      times.append(time_once(step, step_args))
      base_times.append(time_once(base_step, base_args))
    ms = 1e3 * float(np.median(times))
    ratio = float(np.median(times)) / float(np.median(base_times))
    mark = "" if resized else "*"
    print(f"{name + mark:<24}{n_params:>12,}{compile_s:>11.2f}{ms:>10.3f}"
          f"{args.tasks / (ms / 1e3):>14,.0f}{ratio:>13.1f}")
  print("* batch size not settable; the family's default is used.")


if __name__ == "__main__":
  main()
