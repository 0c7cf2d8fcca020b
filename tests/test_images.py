"""Images: trusted roots, sent as a person sees them, original bytes when possible, stable keys,
and the trainer reading the same pixels as the VLM. Every image here is a real file written by PIL."""

import asyncio
import hashlib
import base64
import io
import json
import os
import threading
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageFile, ImageOps, ImageStat

import pipeline.images as images_mod
from pipeline.config import ConvertConfig, ImageConfig
from pipeline.dedup import file_hashes
from pipeline.images import (EncodedImage, ImageError, ImageRoots, as_seen, kept_image_paths, load_image, load_images,
                             relative_to_out)

WHITE = (255, 255, 255)


def sent_bytes(im: EncodedImage) -> bytes:
    head, payload = im.data_url.split(b",", 1)
    assert head in (b"data:image/png;base64", b"data:image/jpeg;base64", b"data:image/webp;base64"), head
    return base64.b64decode(payload)


def sent_pixels(im: EncodedImage) -> Image.Image:
    with Image.open(io.BytesIO(sent_bytes(im))) as dec:
        assert dec.mode == "RGB" or not im.transforms  # a transformed image is always sent as RGB
        return dec.convert("RGB")


def llamafactory_load(path) -> Image.Image:
    """What LLaMA-Factory 0.9.5 does with an image path: open, convert to RGB; no EXIF rotation."""
    image = Image.open(path)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a.convert("RGB"), b.convert("RGB")).getbbox() is None


def close(rgb, expected, tol=6):
    return all(abs(x - y) <= tol for x, y in zip(rgb, expected))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "images"
    (r / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 48), "red").save(r / "sub" / "ok.png")
    return r


# ---- paths and trusted roots ---------------------------------------------------------------

def test_plain_png_sent_as_on_disk_with_hashes(root, tmp_path):
    im = load_image(root, "sub/ok.png", ImageConfig())
    assert (im.width, im.height) == (64, 48) and im.transforms == []
    assert sent_bytes(im) == (root / "sub" / "ok.png").read_bytes()
    assert len(im.file_sha256) == 64 and len(im.cache_key) == 64
    assert im.trainer_path == (root / "sub" / "ok.png").resolve()
    assert relative_to_out(im, tmp_path / "out") == "../images/sub/ok.png"


@pytest.mark.parametrize("raw", ["../secret.png", "sub/../../secret.png"])
def test_relative_escape_rejected(root, raw):
    Image.new("RGB", (8, 8)).save(root.parent / "secret.png")
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


def test_symlinked_folder_into_a_trusted_root(root, tmp_path):
    # The usual layout: <root>/coco -> /datasets/coco, with /datasets trusted.
    datasets = tmp_path / "datasets"
    (datasets / "coco").mkdir(parents=True)
    Image.new("RGB", (10, 6), "blue").save(datasets / "coco" / "0001.jpg")
    (root / "coco").symlink_to(datasets / "coco", target_is_directory=True)
    untrusted = ImageRoots.of(root)
    with pytest.raises(ImageError) as exc:
        load_image(untrusted, "coco/0001.jpg", ImageConfig())
    assert exc.value.reason == "image_path_escape"
    trusted = ImageRoots.of(root, [datasets])
    im = load_image(trusted, "coco/0001.jpg", ImageConfig())
    assert im.resolved == (datasets / "coco" / "0001.jpg").resolve() and im.width == 10
    # An absolute path straight into the trusted root, and no image_root at all.
    assert load_image(ImageRoots.of(None, [datasets]), str(datasets / "coco" / "0001.jpg"), ImageConfig()).width == 10
    # A sibling of the trusted root is still outside.
    (tmp_path / "datasets2").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "datasets2" / "x.png")
    with pytest.raises(ImageError) as exc:
        load_image(trusted, str(tmp_path / "datasets2" / "x.png"), ImageConfig())
    assert exc.value.reason == "image_path_escape"


def test_a_remembered_folder_still_refuses_a_symlink_out_and_follows_a_symlinked_folder(root, tmp_path):
    # The first image makes its folder's real path remembered; the checks must not be skipped after it.
    roots = ImageRoots.of(root)
    assert load_image(roots, "sub/ok.png", ImageConfig()).width == 64
    Image.new("RGB", (8, 8)).save(tmp_path / "private.png")
    (root / "sub" / "leak.png").symlink_to(tmp_path / "private.png")
    (root / "sub" / "inside.png").symlink_to(root / "sub" / "ok.png")
    (tmp_path / "private_dir").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "private_dir" / "x.png")
    (root / "sub" / "out").symlink_to(tmp_path / "private_dir", target_is_directory=True)
    for raw in ("sub/leak.png", "sub/out/x.png", "sub/out/x.png"):  # twice: the folder remembered by then
        with pytest.raises(ImageError) as exc:
            load_image(roots, raw, ImageConfig())
        assert exc.value.reason == "image_path_escape", raw
    im = load_image(roots, "sub/inside.png", ImageConfig())  # a symlink that stays inside: its target
    assert im.resolved == (root / "sub" / "ok.png").resolve()
    assert roots.resolve("sub/../sub/ok.png") == (root / "sub" / "ok.png").resolve()
    with pytest.raises(ImageError) as exc:
        load_image(roots, "sub/missing.png", ImageConfig())
    assert exc.value.reason == "image_missing"
    with pytest.raises(ImageError) as exc:
        load_image(roots, "sub", ImageConfig())  # a folder is not an image
    assert exc.value.reason == "image_missing"


def test_images_of_one_folder_cost_one_stat_each_after_the_first(root, monkeypatch):
    # Each stat is a GIL hand-off on the image threads and a metadata round trip on a network
    # filesystem: resolving every component of every path cost ~14 per image.
    deep = root / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(deep / f"{i}.png")
    roots = ImageRoots.of(root)
    calls = []
    real_lstat, real_stat = os.lstat, os.stat
    monkeypatch.setattr(os, "lstat", lambda p, *a, **k: calls.append(p) or real_lstat(p, *a, **k))
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: calls.append(p) or real_stat(p, *a, **k))
    got = [load_image(roots, f"a/b/c/d/{i}.png", ImageConfig()) for i in range(20)]
    assert [sent_bytes(im) for im in got] == [(deep / f"{i}.png").read_bytes() for i in range(20)]
    assert len(calls) <= 20 + 12, calls  # one per image, and the folder's own resolve once
    calls.clear()
    assert file_hashes(roots, ["a/b/c/d/3.png"], 1 << 20) == [hashlib.sha256((deep / "3.png").read_bytes()).hexdigest()]
    assert len(calls) == 1


def test_out_images_is_always_trusted_and_config_roots(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (5, 5), "green").save(out / "images" / "abc.png")
    cfg = ConvertConfig(image_root=None, image_roots=[tmp_path / "extra"], out=out)
    roots = ImageRoots.from_config(cfg)
    assert roots.image_root is None and roots.trusted == ((tmp_path / "extra").resolve(), (out / "images").resolve())
    im = load_image(roots, str(out / "images" / "abc.png"), ImageConfig(), out)
    assert relative_to_out(im, out) == "images/abc.png"
    # A relative path with no image_root is relative to the working folder, and still checked.
    Image.new("RGB", (5, 5)).save(tmp_path / "stray.png")
    with pytest.raises(ImageError) as exc:
        load_image(roots, os.path.relpath(tmp_path / "stray.png"), ImageConfig(), out)
    assert exc.value.reason == "image_path_escape" and "needs image_root" in exc.value.detail
    with pytest.raises(ImageError) as exc:
        load_image(roots, str(out / "elsewhere.png"), ImageConfig(), out)  # out itself is not trusted
    assert exc.value.reason == "image_path_escape"


@pytest.mark.parametrize("raw", ["", "   ", "sub/ok\x00.png", "a" * 5000, 42, None, {"bytes": b"x"}, ["sub/ok.png"]])
def test_bad_paths_are_row_rejects_not_exceptions(root, raw):
    with pytest.raises(ImageError) as exc:
        load_image(root, raw, ImageConfig())
    assert exc.value.reason in ("image_missing", "image_path_escape")
    assert file_hashes(root, [raw]) is None  # the dedup step uses the same resolver


def test_symlink_loop_is_a_reject(root):
    (root / "a.png").symlink_to(root / "b.png")
    (root / "b.png").symlink_to(root / "a.png")
    with pytest.raises(ImageError) as exc:
        load_image(root, "a.png", ImageConfig())
    assert exc.value.reason == "image_missing"


def test_dedup_hashes_follow_the_same_roots(root, tmp_path, monkeypatch):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    Image.new("RGB", (4, 4), "blue").save(datasets / "x.png")
    (root / "x.png").symlink_to(datasets / "x.png")
    assert file_hashes(root, ["x.png"]) is None
    hashes = file_hashes(ImageRoots.of(root, [datasets]), ["x.png", "sub/ok.png"])
    assert hashes == [load_image(ImageRoots.of(root, [datasets]), p, ImageConfig()).file_sha256
                      for p in ("x.png", "sub/ok.png")]
    assert file_hashes(root, ["sub/ok.png"], max_file_bytes=10) is None
    # Read in pieces: a file of several pieces and a partial last one hashes as a whole read.
    monkeypatch.setattr(images_mod, "HASH_PIECE_BYTES", 65536)
    big = os.urandom(3 * 65536 + 1234)
    (root / "big.bin").write_bytes(big)
    assert file_hashes(root, ["big.bin"]) == [hashlib.sha256(big).hexdigest()]


def test_missing_empty_corrupt(root):
    (root / "empty.png").write_bytes(b"")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png body")
    good = (root / "sub" / "ok.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.new("RGB", (64, 64), "red").save(root / "whole.jpg")
    jpeg = (root / "whole.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    Image.new("RGB", (64, 64), "red").save(root / "whole.webp")
    webp = (root / "whole.webp").read_bytes()
    (root / "truncated.webp").write_bytes(webp[: len(webp) - 10])
    cases = {"nope.png": "image_missing", "empty.png": "image_empty", "corrupt.png": "image_corrupt",
             "truncated.png": "image_corrupt", "truncated.jpg": "image_corrupt", "truncated.webp": "image_corrupt",
             "": "image_missing", "sub": "image_missing"}
    for raw, reason in cases.items():
        with pytest.raises(ImageError) as exc:
            load_image(root, raw, ImageConfig())
        assert exc.value.reason == reason, raw


def test_jpeg_with_trailing_bytes_is_checked_then_sent_as_is(root):
    Image.new("RGB", (32, 32), "red").save(root / "tail.jpg", quality=90)
    data = (root / "tail.jpg").read_bytes() + b"\x00\x00vendor trailer"
    (root / "tail.jpg").write_bytes(data)
    im = load_image(root, "tail.jpg", ImageConfig())
    assert im.transforms == [] and sent_bytes(im) == data


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


# ---- sent as on disk when nothing has to change ------------------------------------------------

def _photo(size=(96, 64)) -> Image.Image:
    """Photo-like content: smooth gradients plus a few shapes (not a flat colour)."""
    w, h = size
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    img.paste((30, 140, 220), (w // 4, h // 4, w // 2, h // 2))
    return img


@pytest.mark.parametrize("name,mode,fmt,subtype", [
    ("rgb.png", "RGB", "PNG", "png"), ("gray.png", "L", "PNG", "png"), ("palette.png", "P", "PNG", "png"),
    ("bits.png", "1", "PNG", "png"), ("photo.jpg", "RGB", "JPEG", "jpeg"), ("gray.jpg", "L", "JPEG", "jpeg"),
    ("photo.webp", "RGB", "WEBP", "webp"),
])
def test_unchanged_images_are_sent_byte_for_byte(root, tmp_path, name, mode, fmt, subtype):
    _photo().convert(mode).save(root / name, format=fmt)
    data = (root / name).read_bytes()
    im = load_image(root, name, ImageConfig(), tmp_path / "out")
    assert im.data_url.startswith(f"data:image/{subtype};base64,".encode()) and not im.data_url.startswith(b"data:image;")
    assert sent_bytes(im) == data and im.transforms == []
    assert im.trainer_path == (root / name).resolve()  # the record keeps the original file
    assert same_pixels(llamafactory_load(im.trainer_path), sent_pixels(im))
    # A key from the file alone: the re-encoding setting (unused here) cannot change it.
    other = load_image(root, name, ImageConfig(encode_format="JPEG", max_pixels=None), tmp_path / "out")
    assert other.cache_key == im.cache_key and other.data_url == im.data_url


def test_multi_picture_jpeg_is_sent_as_is(root):
    # Phone JPEGs with an appended depth or gain map open as MPO; decoders show the first picture.
    first, second = _photo(), _photo().rotate(180)
    first.save(root / "phone.jpg", format="MPO", save_all=True, append_images=[second])
    with Image.open(root / "phone.jpg") as opened:
        assert opened.format == "MPO" and opened.n_frames == 2
    im = load_image(root, "phone.jpg", ImageConfig())
    assert im.transforms == [] and im.data_url.startswith(b"data:image/jpeg;base64,")
    assert sent_bytes(im) == (root / "phone.jpg").read_bytes()
    assert max(ImageStat.Stat(ImageChops.difference(sent_pixels(im), first)).mean) < 4


def test_animated_png_sends_its_first_frame(root):
    frames = [Image.new("RGB", (16, 16), c) for c in ("red", "blue")]
    frames[0].save(root / "anim.png", save_all=True, append_images=frames[1:])
    im = load_image(root, "anim.png", ImageConfig())
    assert im.transforms == ["first_frame"] and sent_pixels(im).getpixel((3, 3)) == (255, 0, 0)


def test_unchanged_images_are_never_decoded(root, monkeypatch):
    from PIL import WebPImagePlugin

    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.webp", "WEBP")):
        _photo((300, 200)).save(root / name, format=fmt)
    decoded = []
    for cls in (ImageFile.ImageFile, WebPImagePlugin.WebPImageFile):
        real = cls.load
        monkeypatch.setattr(cls, "load", lambda self, _real=real: decoded.append(self.format) or _real(self))
    for name in ("a.png", "a.jpg", "a.webp"):
        assert load_image(root, name, ImageConfig()).transforms == []
    assert decoded == []  # header only: the client's CPU goes to hashing and base64, not to codecs
    Image.new("RGBA", (8, 8)).save(root / "alpha.png")
    load_image(root, "alpha.png", ImageConfig())
    assert "PNG" in decoded  # the spy does see a decode when a transform is needed


def test_png_with_eXIf_orientation_is_not_sent_as_is(root):
    exif = Image.Exif()
    exif[0x0112] = 3  # rotate 180
    upright = _photo((40, 20))
    upright.rotate(180).save(root / "rot.png", exif=exif)
    im = load_image(root, "rot.png", ImageConfig())
    assert im.transforms == ["exif_orientation:3"]
    assert same_pixels(sent_pixels(im), upright)
    # Orientation 1 in the same chunk: nothing to do, original bytes.
    exif[0x0112] = 1
    upright.save(root / "norot.png", exif=exif)
    same = load_image(root, "norot.png", ImageConfig())
    assert same.transforms == [] and sent_bytes(same) == (root / "norot.png").read_bytes()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _with_late_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """The PNG with one more chunk after its pixels (just before IEND), where Pillow only finds it on a decode."""
    assert png[-12:-8] == b"\x00\x00\x00\x00" and png[-8:-4] == b"IEND"
    return png[:-12] + _png_chunk(kind, body) + png[-12:]


_XMP_ROTATED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("kind,body,turned", [
    # ImageMagick-style EXIF as hex text; XMP's tiff:Orientation (both read by Pillow's getexif()).
    (b"tEXt", None, 6),
    (b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + _XMP_ROTATED, 8),
    # The same words in another chunk's text, or a comment's: no orientation, the original bytes go.
    (b"tEXt", b"Comment\x00eXIf Raw profile type exif XML:com.adobe.xmp", None),
    (b"zTXt", b"Software\x00\x00" + zlib.compress(b"XML:com.adobe.xmp"), None),
])
def test_png_orientation_in_a_late_text_chunk(root, kind, body, turned):
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    if body is None:
        body = b"Raw profile type exif\x00" + (f"\nexif\n{len(raw):8d}\n{raw.hex()}").encode()
    upright = _photo((40, 20))
    buf = io.BytesIO()
    upright.save(buf, "PNG")
    (root / "late.png").write_bytes(_with_late_chunk(buf.getvalue(), kind, body))
    im = load_image(root, "late.png", ImageConfig())
    if turned is None:
        assert im.transforms == [] and sent_bytes(im) == (root / "late.png").read_bytes()
    else:
        assert im.transforms == [f"exif_orientation:{turned}"]
        assert same_pixels(sent_pixels(im), ImageOps.exif_transpose(Image.open(root / "late.png")))


def test_a_png_with_a_damaged_chunk_is_decoded_not_sent_blindly(root, monkeypatch):
    buf = io.BytesIO()
    _photo((40, 20)).save(buf, "PNG")
    good = buf.getvalue()
    (root / "good.png").write_bytes(good)
    assert images_mod._png_scan(good) == (True, False)
    bad_crc = good[:-16] + bytes([good[-16] ^ 1]) + good[-15:]  # the last IDAT's CRC
    assert images_mod._png_scan(bad_crc)[0] is False and images_mod._png_scan(good[:-5])[0] is False
    assert images_mod._png_scan(good[:40] + b"\xff\xff\xff\xff" + good[44:])[0] is False  # a length past the end
    decoded = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self.format) or real(self))
    assert load_image(root, "good.png", ImageConfig()).transforms == [] and decoded == []
    (root / "crc.png").write_bytes(bad_crc)
    load_image(root, "crc.png", ImageConfig())
    assert decoded and set(decoded) == {"PNG"}  # the decode decides (this one decodes: the pixels are intact)


# ---- sent as a person sees it ------------------------------------------------------------------

def _half_transparent(mode: str, color, clear) -> Image.Image:
    """Left half opaque `color`, right half fully transparent with stored value `clear` (often black)."""
    img = Image.new(mode, (16, 16), clear)
    img.paste(color, (0, 0, 8, 16))
    return img


def _palette_image(transparency) -> tuple[Image.Image, dict]:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([200, 30, 30, 0, 0, 0] + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 8, 16))
    return img, {"transparency": transparency}


def _pa_image() -> Image.Image:
    img = Image.new("PA", (16, 16), (1, 0))
    img.putpalette([200, 30, 30, 0, 0, 0] + [0, 0, 0] * 254)
    img.paste((0, 255), (0, 0, 8, 16))
    return img


ALPHA_CASES = {
    # name: (writer of a real file, opaque colour expected on the left half)
    "rgba.png": (lambda p: _half_transparent("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)).save(p), (200, 30, 30)),
    "la.png": (lambda p: _half_transparent("LA", (60, 255), (0, 0)).save(p), (60, 60, 60)),
    "p_trns_index.png": (lambda p: (lambda im, kw: im.save(p, **kw))(*_palette_image(1)), (200, 30, 30)),
    "p_trns_alpha.png": (lambda p: (lambda im, kw: im.save(p, **kw))(*_palette_image(b"\xff\x00")), (200, 30, 30)),
    "rgb_trns.png": (lambda p: _half_transparent("RGB", (200, 30, 30), (0, 0, 0)).save(p, transparency=(0, 0, 0)),
                     (200, 30, 30)),
    "l_trns.png": (lambda p: _half_transparent("L", 60, 0).save(p, transparency=0), (60, 60, 60)),
    "pa.tif": (lambda p: _pa_image().save(p), (200, 30, 30)),
    "rgba.tif": (lambda p: _half_transparent("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)).save(p), (200, 30, 30)),
    "rgba_lossless.webp": (lambda p: _half_transparent("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)).save(
        p, lossless=True, exact=True),
                           (200, 30, 30)),
    "transparent.gif": (lambda p: (lambda im, kw: im.save(p, **kw))(*_palette_image(1)), (200, 30, 30)),
}


@pytest.mark.parametrize("name", sorted(ALPHA_CASES))
def test_transparency_is_composited_on_white(root, tmp_path, name):
    writer, left = ALPHA_CASES[name]
    writer(root / name)
    with Image.open(root / name) as opened:
        naive = opened.convert("RGB").getpixel((12, 8))
    assert naive == (0, 0, 0)  # what a plain convert("RGB") sends: the bug this guards against
    im = load_image(root, name, ImageConfig(), tmp_path / "out")
    assert any(t.startswith("alpha_on_white:") for t in im.transforms), im.transforms
    px = sent_pixels(im)
    assert px.getpixel((12, 8)) == WHITE
    assert close(px.getpixel((3, 8)), left)
    # Lossless sources stay lossless: a diagram's edges are not blurred by JPEG.
    assert im.data_url.startswith(b"data:image/png;base64,")


def test_partial_alpha_blends_toward_white(root):
    Image.new("LA", (4, 4), (0, 128)).save(root / "half.png")
    px = sent_pixels(load_image(root, "half.png", ImageConfig())).getpixel((1, 1))
    assert close(px, (127, 127, 127), tol=2)


def _i16(p):
    img = Image.new("I;16", (4, 1))
    img.putdata([0, 257 * 64, 32768, 65535])
    img.save(p)


def _i32(p):
    img = Image.new("I", (4, 1))
    img.putdata([0, 257 * 64, 32768, 65535])
    img.save(p)


def _f(p):
    img = Image.new("F", (4, 1))
    img.putdata([0.0, 0.25, 0.5, 1.0])
    img.save(p)


@pytest.mark.parametrize("name,writer,expected", [
    ("deep.png", _i16, [0, 64, 127, 255]),
    ("deep32.tif", _i32, [0, 64, 127, 255]),
    ("float.tif", _f, [0, 63, 127, 255]),
])
def test_high_bit_depth_is_scaled_not_clipped(root, name, writer, expected):
    writer(root / name)
    with Image.open(root / name) as opened:
        assert opened.mode in ("I;16", "I", "F")
        assert opened.convert("RGB").getpixel((1, 0)) in ((255, 255, 255), (0, 0, 0))  # plain convert: clipped
    im = load_image(root, name, ImageConfig())
    assert im.transforms and im.transforms[0].startswith("depth:")
    got = [sent_pixels(im).getpixel((x, 0)) for x in range(4)]
    assert all(close(g, (e, e, e), tol=1) for g, e in zip(got, expected)), got


@pytest.mark.parametrize("name,mode,fmt,lossy", [
    ("cmyk.jpg", "CMYK", "JPEG", True), ("cmyk.tif", "CMYK", "TIFF", False), ("ycc.tif", "YCbCr", "TIFF", False),
    ("rgb.bmp", "RGB", "BMP", False), ("rgb.gif", "P", "GIF", False), ("rgb.tif", "RGB", "TIFF", False),
])
def test_other_modes_and_formats_become_rgb(root, tmp_path, name, mode, fmt, lossy):
    _photo().convert(mode).save(root / name, format=fmt)
    with Image.open(root / name) as opened:
        assert opened.mode == mode
        expected = opened.convert("RGB")
    im = load_image(root, name, ImageConfig(), tmp_path / "out")
    assert im.transforms, "a format or mode the server may not take is re-encoded"
    assert im.data_url.startswith(b"data:image/jpeg;base64," if lossy else b"data:image/png;base64,")
    px = sent_pixels(im)
    if lossy:
        assert max(ImageStat.Stat(ImageChops.difference(px, expected)).mean) < 3
    else:
        assert same_pixels(px, expected)


def _exif_rotated_jpeg(path, upright: Image.Image, orientation: int) -> None:
    stored = {6: upright.transpose(Image.Transpose.ROTATE_90), 3: upright.transpose(Image.Transpose.ROTATE_180),
              8: upright.transpose(Image.Transpose.ROTATE_270)}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", exif=exif, quality=95)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(root, tmp_path, orientation):
    upright = _photo((96, 64))
    _exif_rotated_jpeg(root / "cam.jpg", upright, orientation)
    im = load_image(root, "cam.jpg", ImageConfig(), tmp_path / "out")
    assert im.transforms == [f"exif_orientation:{orientation}"]
    assert (im.width, im.height) == (96, 64) and im.data_url.startswith(b"data:image/jpeg;base64,")
    assert max(ImageStat.Stat(ImageChops.difference(sent_pixels(im), upright)).mean) < 4
    # What LLaMA-Factory would load from the original: not upright. The record must not point there.
    naive = llamafactory_load(root / "cam.jpg")
    assert naive.size == ((96, 64) if orientation == 3 else (64, 96))
    assert max(ImageStat.Stat(ImageChops.difference(naive.resize((96, 64)), upright)).mean) > 20
    assert im.trainer_path.parent == tmp_path / "out" / "images"


def test_downscale_to_max_pixels(root):
    Image.new("RGB", (2000, 1000), "blue").save(root / "big.png")
    im = load_image(root, "big.png", ImageConfig(max_pixels=200_000))
    assert im.width * im.height <= 200_000 and im.transforms == [f"resize:2000x1000->{im.width}x{im.height}"]
    assert abs(im.width / im.height - 2.0) < 0.02  # aspect kept
    full = load_image(root, "big.png", ImageConfig(max_pixels=None))
    assert (full.width, full.height) == (2000, 1000) and full.transforms == []
    assert full.file_sha256 == im.file_sha256 and full.cache_key != im.cache_key


# ---- request keys --------------------------------------------------------------------------------

def test_key_does_not_change_when_the_encoder_would(root, monkeypatch):
    _half_transparent("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)).resize((256, 256)).save(root / "t.png")
    _exif_rotated_jpeg(root / "cam.jpg", _photo(), 6)
    before = {n: load_image(root, n, ImageConfig()) for n in ("t.png", "cam.jpg")}
    monkeypatch.setattr(images_mod, "PNG_COMPRESS_LEVEL", 9)
    monkeypatch.setattr(images_mod, "JPEG_QUALITY", 80)  # as a libjpeg/zlib upgrade would change bytes
    after = {n: load_image(root, n, ImageConfig()) for n in ("t.png", "cam.jpg")}
    for n in before:
        assert after[n].data_url != before[n].data_url, n  # the encoder output changed...
        assert after[n].cache_key == before[n].cache_key, n  # ...the request key did not


def test_request_keys_take_the_image_key_not_the_bytes_sent(root, monkeypatch):
    import pickle

    from pipeline.llm import canonical_messages, request_key
    from pipeline.stages import _vlm_messages

    _half_transparent("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)).resize((256, 256)).save(root / "t.png")
    before = load_image(root, "t.png", ImageConfig())
    monkeypatch.setattr(images_mod, "PNG_COMPRESS_LEVEL", 9)
    after = load_image(root, "t.png", ImageConfig())

    def key(url: bytes) -> str:
        return request_key("m", canonical_messages(_vlm_messages([replace(before, data_url=url)], "q?")), {})

    assert after.data_url != before.data_url and key(after.data_url) == key(before.data_url)
    image_part = canonical_messages(_vlm_messages([before], "q?"))[0]["content"][0]
    assert image_part == {"type": "image", "sha256": before.cache_key}
    plain = bytes(before.data_url)  # a data URL made elsewhere, without a key: keyed by its bytes
    assert canonical_messages(_vlm_messages([replace(before, data_url=plain)], "q?"))[0]["content"][0] == \
        {"type": "image", "sha256": hashlib.sha256(plain).hexdigest()}
    copied = pickle.loads(pickle.dumps(before.data_url))  # as a Ray shard would get it
    assert copied == before.data_url and copied.key == before.cache_key and key(copied) == key(before.data_url)


def test_key_changes_with_what_is_sent(root):
    _photo((200, 100)).save(root / "a.png")
    _photo((200, 100)).rotate(180).save(root / "b.png")
    a = load_image(root, "a.png", ImageConfig())
    assert load_image(root, "b.png", ImageConfig()).cache_key != a.cache_key  # other content
    assert load_image(root, "a.png", ImageConfig(max_pixels=10_000)).cache_key != a.cache_key  # other size
    small = load_image(root, "a.png", ImageConfig(max_pixels=10_000))
    assert load_image(root, "a.png", ImageConfig(max_pixels=10_000, encode_format="JPEG")).cache_key != small.cache_key
    assert load_image(root, "a.png", ImageConfig(max_pixels=10_000)).cache_key == small.cache_key  # deterministic


# ---- the trainer reads what the VLM saw ----------------------------------------------------------

TRANSFORMED = {
    "rgba.png": lambda p: _half_transparent("RGBA", (200, 30, 30, 255), (0, 0, 0, 0)).save(p),
    "cam.jpg": lambda p: _exif_rotated_jpeg(p, _photo(), 6),
    "deep.png": _i16,
    "cmyk.jpg": lambda p: _photo().convert("CMYK").save(p),
    "big.jpg": lambda p: _photo((1400, 1200)).save(p, quality=90),  # over the default max_pixels
}


def test_trainer_loads_the_pixels_the_vlm_was_sent(root, tmp_path):
    out = tmp_path / "out"
    for name, writer in TRANSFORMED.items():
        writer(root / name)
    loaded = load_images(sorted(TRANSFORMED) + ["sub/ok.png"], ImageRoots.of(root, (), out), ImageConfig(), out)
    assert not (out / "images").exists()  # nothing is written before a record is kept
    rel = kept_image_paths(loaded, out)
    for im, path in zip(loaded, rel):
        if im.transforms:
            assert path.startswith("images/") and (out / path) == im.trainer_path
            assert (out / path).read_bytes() == sent_bytes(im)
        else:
            assert path == "../images/sub/ok.png"
        # Exactly LLaMA-Factory's loading, from the dataset dir: the same pixels the VLM decoded.
        assert same_pixels(llamafactory_load(out / path), sent_pixels(im)), im.source_path
    # Lossless outputs equal the person's view of the original exactly.
    for im in loaded:
        if im.data_url.startswith(b"data:image/png"):
            with Image.open(im.resolved) as original:
                original.load()
                assert same_pixels(sent_pixels(im), as_seen(original))
    # Written once: a second keep of the same images adds no file.
    files = sorted((out / "images").iterdir())
    assert kept_image_paths(loaded, out) == rel and sorted((out / "images").iterdir()) == files


# ---- end to end over HTTP -------------------------------------------------------------------------

def test_convert_sends_what_a_person_sees_and_keeps_it_for_the_trainer(tmp_path, monkeypatch):
    from pipeline import runner as runner_mod
    from pipeline.demo_data import make_demo_dataset
    from pipeline.simulator import SimConfig, SimServer

    from .conftest import R1_MODEL, VLM_MODEL, read_jsonl

    class RecordingSim(SimServer):
        """The simulator, also keeping each image URL it received, by sample."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.urls: dict[str, list[str]] = {}

        async def _chat(self, request):
            body = await request.json()
            for msg in body.get("messages", []):
                if isinstance(msg.get("content"), list):
                    self.urls.setdefault(request.headers.get("X-Coldstart-Sample", ""), []).extend(
                        p["image_url"]["url"] for p in msg["content"] if p.get("type") == "image_url")
            return await super()._chat(request)

    input_path, root = make_demo_dataset(tmp_path / "input", n=8)
    rows = [json.loads(l) for l in input_path.read_text().splitlines()]
    demo = {r["id"]: root / r["image"] for r in rows}
    # Row 0: a diagram with a transparent background; row 1: a photo stored sideways with EXIF;
    # row 2: a trusted symlinked folder; row 3: a symlink out of every root; row 4: a NUL in the path.
    with Image.open(demo["demo-00000"]) as im0:
        rgba = im0.convert("RGBA")
    rgba.putdata([(0, 0, 0, 0) if p[:3] == WHITE else p for p in rgba.get_flattened_data()])
    rgba.save(demo["demo-00000"])
    with Image.open(demo["demo-00001"]) as im1:
        upright1 = im1.convert("RGB")
    _exif_rotated_jpeg(root / "cam.jpg", upright1, 6)
    rows[1]["image"] = "cam.jpg"
    datasets = tmp_path / "datasets"
    (datasets / "coco").mkdir(parents=True)
    os.replace(demo["demo-00002"], datasets / "coco" / "2.png")
    (root / "coco").symlink_to(datasets / "coco", target_is_directory=True)
    rows[2]["image"] = "coco/2.png"
    (tmp_path / "private").mkdir()
    os.replace(demo["demo-00003"], tmp_path / "private" / "3.png")
    (root / "leak.png").symlink_to(tmp_path / "private" / "3.png")
    rows[3]["image"] = "leak.png"
    rows[4]["image"] = "count/00004\x00.png"
    input_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    loop_threads = []
    real_load, real_keep = runner_mod.load_images, runner_mod.kept_image_paths
    monkeypatch.setattr(runner_mod, "load_images",
                        lambda *a: loop_threads.append(threading.current_thread()) or real_load(*a))
    at_keep = []  # the images a kept sample still holds when its record is written
    # Writing a transformed image is image work; the paths of untransformed ones are not (no thread hop).
    monkeypatch.setattr(runner_mod, "kept_image_paths",
                        lambda *a: (any(im.transforms for im in a[0]) and loop_threads.append(threading.current_thread()))
                        or at_keep.extend(a[0]) or real_keep(*a))

    vlm = RecordingSim(SimConfig(role="vlm", models=[VLM_MODEL], slots=8)).start()
    reasoner = SimServer(SimConfig(role="reasoner", models=[R1_MODEL], slots=8)).start()
    out = tmp_path / "out"
    try:
        cfg = ConvertConfig(source_format="llava-cot", input=input_path, image_root=root, image_roots=[datasets],
                            out=out, vlm={"url": vlm.url, "model": VLM_MODEL},
                            reasoner={"url": reasoner.url, "model": R1_MODEL}, progress=False)
        manifest = asyncio.run(runner_mod.Converter(cfg).run())
    finally:
        vlm.stop()
        reasoner.stop()

    counts = manifest["counts"]
    assert counts["read"] == 8 and counts["kept"] + counts["rejected"] == 8
    rejects = {r["id"]: r for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects["demo-00003"]["reason"] == "image_path_escape"
    # The reader already refuses a path with a NUL byte (a per-row reject, the run goes on).
    assert rejects["demo-00004"]["reason"] == "bad_image_field" and "NUL" in rejects["demo-00004"]["detail"]
    assert threading.main_thread() not in loop_threads and loop_threads  # image work off the event loop

    records = {r["id"]: r for r in read_jsonl(out / "vision_r1_cold.jsonl")}
    assert {"demo-00000", "demo-00001", "demo-00002", "demo-00005"} <= set(records)
    index = {r["id"]: str(i) for i, r in enumerate(rows)}
    for rid, rec in records.items():
        urls = set(vlm.urls[index[rid]])
        assert len(urls) == 1  # both VLM calls sent the same image
        (url,) = urls
        head, payload = url.split(",", 1)
        sent = Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")
        trainer = llamafactory_load(out / rec["image"])
        assert same_pixels(trainer, sent), rid  # the trainer sees what the VLM saw
        if rid in ("demo-00000", "demo-00001"):
            assert rec["image"].startswith("images/") and head != "data:image;base64"
        else:
            assert not rec["image"].startswith("images/")
            assert base64.b64decode(payload) == (out / rec["image"]).read_bytes()  # byte for byte as on disk
    sent_diagram = Image.open(io.BytesIO(base64.b64decode(vlm.urls[index["demo-00000"]][0].split(",")[1])))
    assert sent_diagram.convert("RGB").getpixel((2, 2)) == WHITE  # transparent corner: white, not black
    sent_cam = llamafactory_load(out / records["demo-00001"]["image"])
    assert sent_cam.size == upright1.size
    assert max(ImageStat.Stat(ImageChops.difference(sent_cam, upright1)).mean) < 4  # upright, as photographed
    assert (out / records["demo-00002"]["image"]).resolve() == (datasets / "coco" / "2.png").resolve()
    # Past the VLM stages a sample holds no image bytes, except a transformed image's (to write it).
    assert at_keep and all((im.data_url != b"") == bool(im.transforms) for im in at_keep)
    assert any(im.transforms for im in at_keep) and any(not im.transforms for im in at_keep)


def test_big_jpeg_is_drafted_then_resized_to_the_exact_target(root):
    # 3000x2000 stored sideways (EXIF 6): decoded at reduced scale, then resized to the exact fit.
    _exif_rotated_jpeg(root / "phone.jpg", _photo((2000, 3000)), 6)
    cfg = ImageConfig(max_pixels=400_000)
    im = load_image(root, "phone.jpg", cfg)
    w, h = images_mod._fit_max_pixels(2000, 3000, cfg.max_pixels)
    assert (im.width, im.height) == (w, h) == sent_pixels(im).size
    assert im.transforms == ["exif_orientation:6", f"resize:2000x3000->{w}x{h}"]
    with Image.open(root / "phone.jpg") as full:
        reference = ImageOps.exif_transpose(full).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
    assert max(ImageStat.Stat(ImageChops.difference(sent_pixels(im), reference)).mean) < 4


def test_relative_output_folder_and_no_output_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    Image.new("RGBA", (8, 8)).save(tmp_path / "src" / "t.png")
    out = Path("runs") / "out"  # relative, as the config's default is
    im = load_image(Path("src"), "t.png", ImageConfig(), out)
    rel = kept_image_paths([im], out)
    assert rel[0].startswith("images/") and (tmp_path / "runs" / "out" / rel[0]).read_bytes() == sent_bytes(im)
    # No output folder known at load time: the path is relative to the one given when kept.
    bare = load_image(Path("src"), "t.png", ImageConfig())
    assert not bare.trainer_path.is_absolute()
    assert kept_image_paths([bare], tmp_path / "elsewhere") == rel
    assert (tmp_path / "elsewhere" / rel[0]).is_file()
