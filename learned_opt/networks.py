"""The per-parameter network of the MLP learned optimizers, in its two compiled forms.

Both compute the same ReLU MLP elementwise over parameter-shaped arrays (up to float rounding
order); :class:`learned_opt.MLPOptimizer` picks one per tensor by size (``FUSE_MIN_SIZE``):

* :func:`fused_mlp` writes the whole network as unrolled scalar-weight arithmetic, which XLA
  compiles into one elementwise loop: no ``[N, features]`` or ``[N, hidden]`` array is ever
  materialised and the loop runs at the machine's FMA rate, at a compile cost of a few seconds
  per large tensor;
* :func:`matmul_mlp` uses matmuls on ``[N, width]`` (compiles instantly), for small tensors.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp


def fused_mlp(xs: Sequence[jax.Array], layers: Sequence[tuple[jax.Array, jax.Array]]):
  """A ReLU MLP applied elementwise, written as unrolled scalar-weight arithmetic.

  .. math::
    h^{(0)} = x,\\quad h^{(l+1)}_j = \\mathrm{relu}\\big(b_j + \\textstyle\\sum_i W_{ij} h^{(l)}_i\\big)

  (no ReLU after the last layer). Each ``h_j`` is an array shaped like the inputs, so XLA fuses
  the whole network into one elementwise loop.

  Args:
    xs: the input features, arrays of one common shape.
    layers: ``(W, b)`` per layer, ``W`` of shape ``(fan_in, fan_out)``.

  Returns:
    The list of output arrays (one per output unit).
  """
  h = list(xs)
  for depth, (w, b) in enumerate(layers):
    out = []
    for j in range(w.shape[1]):
      # Scalars are indexed from the whole matrix (not row by row) so that the fused loop
      # keeps few operands: LLVM's vectoriser gives up on loops with many pointer operands.
      acc = h[0] * w[0, j]
      for i in range(1, len(h)):
        acc = acc + h[i] * w[i, j]
      acc = acc + b[j]
      out.append(jax.nn.relu(acc) if depth < len(layers) - 1 else acc)
    h = out
  return h


def matmul_mlp(xs: Sequence[jax.Array], layers: Sequence[tuple[jax.Array, jax.Array]]):
  """The same network as :func:`fused_mlp` with matmuls on ``[n, width]``, for small tensors.

  The output layer (``fan_out = 2``) is written as unrolled multiply-adds on the columns of the
  last hidden layer: XLA fuses it with the step computation that consumes it, where a matmul
  with two output columns is a library call that costs more than the rest of the network at
  these sizes.
  """
  shape = xs[0].shape
  h = jnp.stack([x.reshape(-1) for x in xs], axis=-1)
  for w, b in layers[:-1]:
    h = jax.nn.relu(jnp.dot(h, w, precision=jax.lax.Precision.HIGHEST) + b)
  w, b = layers[-1]
  cols = [h[:, i] for i in range(w.shape[0])]
  return [functools.reduce(jnp.add, [c * w[i, j] for i, c in enumerate(cols)]).reshape(shape)
          + b[j] for j in range(w.shape[1])]
