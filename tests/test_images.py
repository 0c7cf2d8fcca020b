"""Image loading: containment, validation, bombs, downscale, hashing."""

import base64
import io
import os

import pytest
from PIL import Image

from pipeline.config import ImageConfig
from pipeline.images import ImageError, load_image, relative_to_out


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "images"
    (r / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(r / "sub" / "ok.png")
    return r


def test_valid_image_encoded_with_hashes(root, tmp_path):
    im = load_image(root, "sub/ok.png", ImageConfig())
    assert (im.width, im.height) == (64, 48)
    assert im.data_url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(im.data_url.split(",", 1)[1])))
    assert decoded.size == (64, 48)
    assert len(im.file_sha256) == 64 and len(im.sent_sha256) == 64
    assert relative_to_out(im, tmp_path / "out") == os.path.join("..", "images", "sub", "ok.png")


@pytest.mark.parametrize("raw", ["../secret.png", "sub/../../secret.png"])
def test_relative_escape_rejected(root, raw):
    (root.parent / "secret.png").write_bytes(b"x")
    with pytest.raises(ImageError) as exc:
        load_image(root, raw, ImageConfig())
    assert exc.value.reason == "image_path_escape"


def test_absolute_path_outside_rejected_inside_accepted(root, tmp_path):
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    with pytest.raises(ImageError) as exc:
        load_image(root, str(outside), ImageConfig())
    assert exc.value.reason == "image_path_escape"
    assert load_image(root, str(root / "sub" / "ok.png"), ImageConfig()).width == 64


def test_symlink_escape_rejected(root, tmp_path):
    target = tmp_path / "private.png"
    Image.new("RGB", (8, 8)).save(target)
    (root / "link.png").symlink_to(target)
    with pytest.raises(ImageError) as exc:
        load_image(root, "link.png", ImageConfig())
    assert exc.value.reason == "image_path_escape"


def test_missing_empty_corrupt(root):
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png body")
    good = (root / "sub" / "ok.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    cases = {"nope.png": "image_missing", "empty.png": "image_empty", "corrupt.png": "image_corrupt",
             "truncated.png": "image_corrupt", "": "image_missing"}
    for raw, reason in cases.items():
        with pytest.raises(ImageError) as exc:
            load_image(root, raw, ImageConfig())
        assert exc.value.reason == reason, raw


def test_decompression_bomb_rejected_before_decoding(root):
    # A 12000x12000 image compresses to a few hundred KB but decodes to 432 MB.
    Image.new("L", (12000, 12000)).save(root / "bomb.png", optimize=True)
    with pytest.raises(ImageError) as exc:
        load_image(root, "bomb.png", ImageConfig())
    assert exc.value.reason == "image_too_large"
    assert "max_decoded_pixels" in exc.value.detail


def test_file_size_limit(root):
    with pytest.raises(ImageError) as exc:
        load_image(root, "sub/ok.png", ImageConfig(max_file_bytes=10))
    assert exc.value.reason == "image_too_large"


def test_downscale_to_max_pixels(root):
    Image.new("RGB", (2000, 1000), "blue").save(root / "big.png")
    im = load_image(root, "big.png", ImageConfig(max_pixels=200_000))
    assert im.width * im.height <= 200_000
    assert abs(im.width / im.height - 2.0) < 0.02  # aspect kept
    full = load_image(root, "big.png", ImageConfig(max_pixels=None))
    assert (full.width, full.height) == (2000, 1000)
    assert full.file_sha256 == im.file_sha256 and full.sent_sha256 != im.sent_sha256
