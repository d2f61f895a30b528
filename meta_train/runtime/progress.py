"""Progress display of a run: a tqdm bar on a terminal, nothing (plain log lines) otherwise.

The bar counts outer steps (its rate is outer steps/s, with tqdm's ETA) and shows the current
meta-loss and inner steps/s as a postfix. When stdout is not a terminal the bar is disabled and
the driver prints periodic plain log lines instead
(:func:`meta_train.runtime.metrics_log.format_line`).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from tqdm.auto import tqdm


def bar_enabled(mode: str, stream: TextIO | None = None) -> bool:
  """Whether to draw the bar: ``"on"``, ``"off"``, or ``"auto"`` (only if ``stream`` is a tty)."""
  if mode == "on":
    return True
  if mode == "off":
    return False
  stream = sys.stdout if stream is None else stream
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):
    return False


class Progress:
  """A tqdm bar over outer steps, or a no-op when disabled.

  Args:
    total: total outer steps of the run.
    initial: steps already done (a resumed run).
    enabled: draw the bar (see :func:`bar_enabled`).
    stream: where the bar is drawn.
  """

  def __init__(self, total: int, initial: int = 0, *, enabled: bool = True,
               stream: TextIO | None = None):
    self.enabled = enabled
    self._bar = None
    if enabled:
      self._bar = tqdm(total=total, initial=initial, unit="step", desc="meta-train",
                       dynamic_ncols=True, file=stream or sys.stdout, smoothing=0.1)

  def update(self, steps: int, *, meta_loss: float | None = None,
             inner_steps_per_s: float | None = None) -> None:
    """Advances by ``steps`` outer steps and refreshes the postfix."""
    if self._bar is None:
      return
    postfix: dict[str, Any] = {}
    if meta_loss is not None:
      postfix["meta_loss"] = f"{meta_loss:.4g}"
    if inner_steps_per_s is not None:
      postfix["inner/s"] = f"{inner_steps_per_s:,.0f}"
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(steps)

  def write(self, message: str) -> None:
    """Prints a message line without breaking the bar (plain print when disabled)."""
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
