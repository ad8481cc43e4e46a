"""Model input batches (Rust: DCT-scaled libjpeg-turbo decode + antialiased bilinear resize) against
Pillow's `draft` + `resize(BILINEAR)` on real chips."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from imagesim import _imagesim
from imagesim.imagery.chip import ChipSettings, run_chip


@pytest.fixture(scope="module")
def chip_paths(small_sample, tmp_path_factory):
    dest = tmp_path_factory.mktemp("batch-chips")
    run_chip(small_sample.root, dest, ChipSettings(zoom=17))
    return sorted(dest.rglob("*.jpg"))[:48]


def pillow(path, size):
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # Pillow's own DCT scaling (1/2, 1/4, 1/8)
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))


@pytest.mark.parametrize(("size", "max_diff"), [(64, 0), (256, 0), (224, 2)])
def test_batch_matches_pillow(chip_paths, size, max_diff):
    out = np.full((len(chip_paths), size, size, 3), 99, np.uint8)
    errors = _imagesim.decode_batch([str(p) for p in chip_paths], out, threads=2)
    assert errors == [None] * len(chip_paths)
    ref = np.stack([pillow(p, size) for p in chip_paths])
    diff = np.abs(out.astype(np.int16) - ref.astype(np.int16))
    assert diff.max() <= max_diff and diff.mean() < 0.2


def test_batch_reports_bad_files_and_keeps_the_rest(chip_paths, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(chip_paths[0].read_bytes()[:300])  # cut off
    paths = [str(chip_paths[0]), str(bad), str(tmp_path / "missing.jpg"), str(chip_paths[1])]
    out = np.full((4, 64, 64, 3), 7, np.uint8)
    errors = _imagesim.decode_batch(paths, out)
    assert errors[0] is None and errors[3] is None
    assert "bad.jpg" in errors[1] and "missing.jpg" in errors[2]
    assert not out[1].any() and not out[2].any()
    assert np.array_equal(out[0], pillow(chip_paths[0], 64))
    with pytest.raises(ValueError, match="shape"):
        _imagesim.decode_batch(paths, np.zeros((3, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        _imagesim.decode_batch(paths, np.zeros((4, 64, 64, 6), np.uint8)[..., ::2])
