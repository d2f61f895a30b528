"""Report figures are written as palette PNGs that keep a line plot's colours exactly."""

import io

import numpy as np
from PIL import Image

from meta_train.evaluation import figures


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, "PNG")
  return out.getvalue()


def test_palette_png_keeps_a_few_colours_exactly():
  rng = np.random.default_rng(0)
  colours = np.array([[255, 255, 255], [31, 119, 180], [214, 39, 40], [200, 200, 200]], np.uint8)
  pixels = colours[rng.integers(0, len(colours), size=(40, 60))]
  small = figures.to_palette_png(_png(pixels))
  image = Image.open(io.BytesIO(small))
  assert image.mode == "P"
  np.testing.assert_array_equal(np.asarray(image.convert("RGB")), pixels)


def test_palette_png_caps_the_number_of_colours():
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)  # ~1,000 distinct colours
  image = Image.open(io.BytesIO(figures.to_palette_png(_png(pixels), colors=16)))
  assert len(image.getcolors(maxcolors=10_000)) <= 16


def test_save_png_writes_a_palette_png(tmp_path):
  plt = figures._plt()  # pylint: disable=protected-access
  fig, ax = plt.subplots(figsize=(2, 2))
  ax.plot([0, 1, 2], [1, 0, 2], color="tab:red")
  path = str(tmp_path / "f.png")
  figures.save_png(fig, path)
  plt.close(fig)
  image = Image.open(path)
  assert image.mode == "P" and image.size == (2 * figures.DPI, 2 * figures.DPI)


def test_meta_loss_figure_draws_every_run(tmp_path):
  records = [{"step": s, "meta_loss": 1.0 / s, "grad_norm": 2.0} for s in range(10, 110, 10)]
  path = figures.meta_loss_figure({"a": records, "b": records[:3], "empty": []},
                                  str(tmp_path / "m.png"), "t")
  image = Image.open(path)
  assert image.mode == "P" and image.size == (7 * figures.DPI, 5 * figures.DPI)
