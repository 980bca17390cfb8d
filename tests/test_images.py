"""The one intensity rule (`model.io.images.to_uint8`) that image files and napari layers both go through."""

import numpy as np
import pytest

from model.io.images import ImageError, as_rgb, read_image, to_uint8, write_png


def test_uint8_is_kept_and_alpha_dropped():
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 7, 255
    out = to_uint8(rgba)
    assert out.shape == (4, 5, 3) and out[0, 0].tolist() == [7, 0, 0]
    grey_alpha = np.stack([np.full((4, 5), 9, np.uint8), np.full((4, 5), 255, np.uint8)], -1)
    assert to_uint8(grey_alpha).shape == (4, 5) and to_uint8(grey_alpha).max() == 9
    assert as_rgb(to_uint8(grey_alpha)).shape == (4, 5, 3)


def test_other_types_are_windowed_by_min_max_or_contrast_limits():
    ramp = np.linspace(-1.0, 3.0, 20).reshape(4, 5)
    out = to_uint8(ramp)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone
    # With contrast limits the window is theirs: values outside clip, inside map linearly.
    sixteen = np.array([[0, 1000, 2000, 4000]], np.uint16)
    assert to_uint8(sixteen, (1000, 3000)).tolist() == [[0, 0, 128, 255]]
    # Colours keep their balance: one window over all channels.
    rgb = np.zeros((2, 2, 3), np.float32)
    rgb[..., 0], rgb[..., 1] = 1.0, 0.5
    assert to_uint8(rgb)[0, 0].tolist() == [255, 128, 0]
    assert to_uint8(np.full((3, 3), 9, np.uint16)).max() == 0  # constant image
    assert to_uint8(np.array([[True, False]])).tolist() == [[255, 0]]


def test_nan_pixels_become_zero_and_infinite_limits_are_refused():
    out = to_uint8(np.array([[np.nan, 1.0, 3.0]]))
    assert out.tolist() == [[0, 0, 255]]
    assert to_uint8(np.full((2, 2), np.nan)).max() == 0
    with pytest.raises(ImageError, match="not finite"):
        to_uint8(np.zeros((4, 4), np.float32), (0, float("inf")))


@pytest.mark.parametrize("bad,message", [
    (np.zeros((2, 3, 16, 16), np.uint8), "shape"),
    (np.zeros((16, 16, 5), np.uint8), "shape"),
    (np.zeros((0, 16), np.uint8), "empty"),
    (np.zeros((16, 16), np.complex64), "pixel type"),
    (np.array([["a", "b"]]), "pixel type"),
])
def test_bad_images_are_refused_with_the_reason(bad, message):
    with pytest.raises(ImageError, match=message):
        to_uint8(bad, where="x.png")


def test_png_round_trip_and_unreadable_files(tmp_path):
    grey16 = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    write_png(tmp_path / "sub" / "a.png", grey16)
    assert np.array_equal(read_image(tmp_path / "sub" / "a.png"), grey16)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.png"]  # no temporary file left
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png: cannot read"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "missing.png")
