"""LOG #146: the step sizes the general files take on digit conv nets (run from the repository root).

For three `digits_conv` tasks (sampled with keys 100-102, not meta-eval's `dev`/`report` draws) each
file trains 200 steps at learning-rate multipliers 0.5, 1 and 2, as does Adam at four constant
rates; printed: the final loss on the train evaluation set, and the RMS of the update over the
network's tensors at the first step and averaged over steps 100-199. Writes the table to stdout (conv_steps.txt is its output).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

import learned_opt
import tasks

FILES = {
    "shipped default": "learned_opt/pretrained/default.safetensors",
    "#141 clip + rise + held scale": "reports/experiments/r5_default_clip1_rise3_cls1/optimizer.safetensors",
    "#145 clip + rise, no scale": "reports/experiments/r5_default_clip1_noscale_rise3_cls1/optimizer.safetensors",
    "#146 held scale, kernels spared": "reports/experiments/r5_default_clip1_rise3_cls1_dense/optimizer.safetensors",
}
STEPS = 200


def train(task, tx, key):
  params = task.init(key)
  state = tx.init(params)

  @jax.jit
  def step(params, state, k):
    batch = task.sample_batch(k)
    loss, g = jax.value_and_grad(task.loss)(params, k, batch)
    u, state = tx.update(g, state, params, loss=loss)
    rms = jnp.sqrt(jnp.mean(jnp.stack([jnp.mean(x * x) for x in jax.tree.leaves(u)])))
    return optax.apply_updates(params, u), state, rms

  rms = []
  for t in range(STEPS):
    params, state, r = step(params, state, jax.random.fold_in(key, t))
    rms.append(float(r))
  return (float(task.loss(params, key, task.eval_batch("train"))), rms[0],
          float(np.mean(rms[STEPS // 2:])))


def row(label, runs):
  losses = " / ".join(f"{loss:.4f}" for loss, _, _ in runs)
  return (f"| {label} | {losses} | {np.mean([r[1] for r in runs]):.4f} | "
          f"{np.mean([r[2] for r in runs]):.5f} |")


def main():
  family = tasks.get("digits_conv")
  draws = [family.task(family.sample(jax.random.key(100 + i))) for i in range(3)]
  key = jax.random.key(7)
  print("| optimizer | lr x | final train loss, tasks 100 / 101 / 102 | step RMS: first | "
        "steps 100-199 |")
  print("|---|---|---|---|---|")
  for name, path in FILES.items():
    lopt, theta = learned_opt.load(path)[:2]
    for mult in (0.5, 1.0, 2.0):
      runs = [train(task, lopt.transform(theta, mult, num_steps=STEPS), key) for task in draws]
      print(row(f"{name} | {mult}", runs), flush=True)
  for lr in (1e-3, 3e-3, 1e-2, 3e-2):
    runs = [train(task, optax.adam(lr), key) for task in draws]
    print(row(f"Adam {lr:g} | –", runs), flush=True)


if __name__ == "__main__":
  main()
