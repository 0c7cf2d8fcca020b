"""Read, validate and prepare a sample's images once; both VLM calls reuse the result.

An image is sent as a person sees it: EXIF orientation applied, transparency on white, 8-bit RGB.
When nothing has to change (JPEG/PNG/WebP, within max_pixels, no alpha, no rotation, a mode
every decoder turns into the same RGB), the file's own bytes are sent: no decode, no encode.
Otherwise the image is decoded once, transformed, and encoded cheaply; the trainer then gets that
encoded file (content-addressed under <out>/images/), so it sees exactly the VLM's pixels.
Request keys come from the file's hash and the transform's parameters, never from encoder
output, so a Pillow/zlib/libjpeg upgrade does not invalidate a resumable run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import stat
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pybase64
from PIL import ExifTags, Image, ImageOps

from .config import ConvertConfig, ImageConfig
from .image_files import IMAGES_DIR, content_addressed_path, images_dir, write_content_addressed
from .llm.dataurl import DataUrl

# Bump when the transform or the encoder settings change pixels: it is part of every request key
# of a transformed image (the key of an image sent as it is on disk does not depend on it).
TRANSFORM_VERSION = "images.v2"
JPEG_QUALITY = 95  # re-encoding a JPEG source: well below the source's own compression error
PNG_COMPRESS_LEVEL = 1  # lossless; level 1 is several times faster than zlib's 6 for ~10-30% more bytes

# Formats the served VLMs (vLLM, transformers serve, hosted APIs) take as they are.
# MPO: a JPEG with extra pictures appended (phone depth/gain maps); every decoder shows its first one.
_SENDABLE = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "WEBP": "webp"}
# Modes whose RGB is the same in every decoder (the VLM server's and the trainer's convert("RGB")).
_PLAIN_MODES = {"RGB", "L", "P", "1"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
# PNG chunks that can carry an orientation, which Pillow only sees after a full decode when they come
# after IDAT: eXIf, and text chunks by these keywords (EXIF as hex text; XMP's tiff:Orientation).
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_PNG_ORIENTATION_KEYS = (b"Raw profile type exif", b"XML:com.adobe.xmp")
_ORIENTATION = ExifTags.Base.Orientation


class ImageError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class EncodedImage:
    source_path: str  # as in the input
    resolved: Path  # the original file (symlinks followed)
    file_sha256: str  # hash of the bytes on disk
    cache_key: str  # request-key part: file hash + transform parameters (never encoder output)
    # The data URL as ASCII bytes: written into request bodies as it is (pipeline/llm/transport.py
    # splices it in; no 0.5 MB copy per request), carrying cache_key. b"" once the VLM stages are done with it.
    data_url: bytes
    width: int  # as sent
    height: int
    # The file the trainer should load: the original when sent as is, else the transformed
    # image's content-addressed path under <out>/images/ (written by write_trainer_files).
    trainer_path: Path
    transforms: list[str] = field(default_factory=list)  # empty: the original bytes were sent


# Folders whose real path is remembered (ImageRoots._dirs); past this many the memory starts over.
MAX_REMEMBERED_DIRS = 4096


@dataclass(frozen=True)
class ImageRoots:
    """Folders an input image may resolve into: image_root, extra trusted roots, <out>/images/."""

    image_root: Path | None = None
    trusted: tuple[Path, ...] = ()
    # Each folder's real path, by the path as written: resolving every component of every image's
    # path (an lstat each, ~14 calls per image with the reads' own) cost a GIL hand-off per call on
    # the image threads, and costs a metadata round trip per call on a network filesystem.
    _dirs: dict[str, Path] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, image_root: Path | None, extra: list[Path] | tuple[Path, ...] = (),
           out_dir: Path | None = None) -> "ImageRoots":
        trusted = [Path(p) for p in extra]
        if out_dir is not None:
            trusted.append(images_dir(Path(out_dir)))  # embedded images are written there
        # Resolved once: a root that is itself a symlink counts as where it points.
        return cls(Path(image_root).resolve() if image_root is not None else None,
                   tuple(p.resolve() for p in trusted))

    @classmethod
    def from_config(cls, cfg: ConvertConfig) -> "ImageRoots":
        return cls.of(cfg.image_root, cfg.image_roots, cfg.out)

    @property
    def all(self) -> tuple[Path, ...]:
        return ((self.image_root,) if self.image_root is not None else ()) + self.trusted

    def resolve(self, raw: object) -> Path:
        """The real file an input path names, refused (ImageError) unless it lies inside a root.

        Relative paths are relative to image_root (to the working folder when there is none);
        `..`, absolute paths and symlinks are followed first, so only where the file really is counts.
        """
        return self.locate(raw)[0]

    def locate(self, raw: object) -> tuple[Path, os.stat_result | None]:
        """`resolve`, with the file's own stat when it came for free (None: not known, or missing)."""
        if not isinstance(raw, str):
            raise ImageError("image_missing", f"the image path is a {type(raw).__name__}, not a string: {raw!r:.80}")
        if not raw.strip():
            raise ImageError("image_missing", "empty image path")
        if "\x00" in raw:
            raise ImageError("image_missing", f"the image path contains a NUL byte: {raw!r:.200}")
        candidate = Path(raw)
        if not candidate.is_absolute() and self.image_root is not None:
            candidate = self.image_root / candidate
        path, st = self._in_known_folder(candidate)
        if path is None:
            try:
                path = candidate.resolve()
            except (OSError, RuntimeError, ValueError) as exc:  # symlink loop, name too long
                raise ImageError("image_missing", f"{raw!r:.200} cannot be resolved: {exc}") from None
        if not any(path.is_relative_to(root) for root in self.all):
            roots = ", ".join(str(r) for r in self.all) or "none"
            hint = "; a relative path needs image_root (--image-root)" if self.image_root is None and \
                not Path(raw).is_absolute() else ""
            raise ImageError("image_path_escape",
                             f"{raw!r:.200} resolves to {path}, outside the trusted roots: {roots}{hint}")
        return path, st

    def _in_known_folder(self, candidate: Path) -> tuple[Path | None, os.stat_result | None]:
        """The real path of a file that is not a symlink, from its folder's remembered real path and
        one lstat; (None, None) where the full resolve must decide (a symlink, a missing file, `..`)."""
        name = candidate.name
        if name in ("", ".", ".."):
            return None, None
        key = str(candidate.parent)
        folder = self._dirs.get(key)
        try:
            if folder is None:
                folder = candidate.parent.resolve()
                if len(self._dirs) >= MAX_REMEMBERED_DIRS:
                    self._dirs.clear()
                self._dirs[key] = folder
            path = folder / name
            st = os.lstat(path)
        except (OSError, RuntimeError, ValueError):
            return None, None
        if stat.S_ISLNK(st.st_mode):
            return None, None
        return path, st


def _as_roots(roots: ImageRoots | Path) -> ImageRoots:
    return roots if isinstance(roots, ImageRoots) else ImageRoots.of(roots)


def resolve_inside(root: ImageRoots | Path, raw: str) -> Path:
    """Kept for callers that hold one folder: that folder is the only trusted root."""
    return _as_roots(root).resolve(raw)


def _checked(roots: ImageRoots | Path, raw: object, max_file_bytes: int) -> tuple[Path, int]:
    """The real path and size of an image file within the limits; ImageError otherwise."""
    path, st = _as_roots(roots).locate(raw)
    if st is None:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ImageError("image_missing", f"{raw!r} not found (resolved to {path})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError("image_missing", f"{raw!r} not found (resolved to {path})")
    size = st.st_size
    if size == 0:
        raise ImageError("image_empty", f"{raw!r} is an empty file")
    if size > max_file_bytes:
        raise ImageError("image_too_large", f"{raw!r} is {size} bytes > max_file_bytes {max_file_bytes}")
    return path, size


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _read_pieces(path: Path, size: int, max_file_bytes: int, piece_bytes: int) -> Iterator[bytes]:
    """The file's bytes in pieces of at most `piece_bytes`, read with os calls (each releases the
    GIL: Python's file object adds an fstat and a seek). A file grown past `max_file_bytes` since
    it was checked is refused."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        total = 0
        want = min(size + 1, piece_bytes)  # size + 1: a file read whole in one call (the next sees EOF)
        while piece := os.read(fd, want):
            total += len(piece)
            if total > max_file_bytes:
                raise ImageError("image_too_large", f"{str(path)!r} grew past max_file_bytes {max_file_bytes} while read")
            yield piece
            want = piece_bytes
    finally:
        os.close(fd)


def read_image_file(roots: ImageRoots | Path, raw: object, max_file_bytes: int) -> tuple[Path, bytes]:
    """Resolve and read one image file with its size limits checked; ImageError on any failure."""
    try:
        path, size = _checked(roots, raw, max_file_bytes)
        return path, b"".join(_read_pieces(path, size, max_file_bytes, max(size + 1, 1 << 16)))
    except OSError as exc:  # unreadable, name too long, vanished meanwhile
        raise ImageError("image_missing", f"{raw!r} cannot be read: {type(exc).__name__}: {exc}") from None


# Pieces the screening hashes read: a usual image in one read. Each piece hands the GIL to the
# event loop and takes it back (its read and its hash release it); in 64 KB pieces a 370 KB PNG
# took ~12 such waits, each up to the 5 ms switch interval on a busy loop, which held admission on
# 4+4 replicas to ~100 rows a second. Bounded so that a 50 MB file is not held whole.
HASH_PIECE_BYTES = 4 << 20


def image_file_sha256(roots: ImageRoots | Path, raw: object, max_file_bytes: int) -> str:
    """The file's content hash, read in HASH_PIECE_BYTES pieces (the same checks as
    `read_image_file`): screening hashes every row's images ahead of time and need not hold them whole."""
    try:
        path, size = _checked(roots, raw, max_file_bytes)
        digest = hashlib.sha256()
        for piece in _read_pieces(path, size, max_file_bytes, HASH_PIECE_BYTES):
            digest.update(piece)
        return digest.hexdigest()
    except OSError as exc:
        raise ImageError("image_missing", f"{raw!r} cannot be read: {type(exc).__name__}: {exc}") from None


def _fit_max_pixels(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    if not max_pixels or width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def _complete(fmt: str, data: bytes) -> bool:
    """Cheap structural check that a JPEG or WebP file is whole; False only sends it to the full decode
    (a PNG's is read with its chunks: _png_scan)."""
    if fmt in ("JPEG", "MPO"):
        return data.endswith(b"\xff\xd9")  # EOI; a JPEG with trailing bytes is decoded to be sure
    if fmt == "WEBP":
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")  # RIFF size
    return False


def _png_scan(data: bytes) -> tuple[bool, bool]:
    """(whole, may_rotate) of a PNG, read chunk by chunk without inflating it: whole when every chunk's
    CRC is right up to IEND (what Pillow's open + verify() check); may_rotate when a chunk can carry an
    orientation. (Searching the bytes for the markers cost 0.3 ms per 370 KB PNG; Pillow's verify 0.1.)"""
    view = memoryview(data)
    pos, end = 8, len(data)
    may_rotate = False
    while pos + 12 <= end:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        stop = pos + 8 + length
        if stop + 4 > end or zlib.crc32(view[pos + 4:stop]) != int.from_bytes(data[stop:stop + 4], "big"):
            return False, True  # cut short or damaged: the decode decides
        if kind == b"eXIf" or (kind in _PNG_TEXT_CHUNKS
                               and data[pos + 8:min(stop, pos + 88)].split(b"\0", 1)[0] in _PNG_ORIENTATION_KEYS):
            may_rotate = True
        if kind == b"IEND":
            return True, may_rotate
        pos = stop + 4
    return False, True


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1-8; a broken EXIF block is ignored, as viewers ignore it."""
    try:
        value = int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:
        return 1
    return value if 1 <= value <= 8 else 1


def _whole_and_upright(probe: Image.Image, data: bytes) -> bool:
    """The file is whole and needs no rotation, known without decoding its pixels."""
    if probe.format == "PNG":
        # Pillow's PNG getexif() decodes the whole image to look for late chunks: one walk over the
        # chunk list tells both.
        return _png_scan(data) == (True, False)
    return _orientation(probe) == 1 and _complete(probe.format, data)


def _as_is(probe: Image.Image, data: bytes, cfg: ImageConfig) -> bool:
    """True when the on-disk bytes are exactly what a person sees, in a form the model takes."""
    return (probe.format in _SENDABLE
            and probe.mode in _PLAIN_MODES and "transparency" not in probe.info
            and (probe.format == "MPO" or not getattr(probe, "is_animated", False))
            and _fit_max_pixels(probe.width, probe.height, cfg.max_pixels) == probe.size
            and _whole_and_upright(probe, data))


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit and float images mapped to L the way viewers show them (a plain convert clips to white)."""
    if img.mode.startswith("I;16"):
        return img.convert("I").point(lambda v: v * (1 / 257)).convert("L")  # full 16-bit range
    lo, hi = img.getextrema()
    if img.mode == "F" and 0 <= lo and hi <= 1:
        return img.point(lambda v: v * 255).convert("L")  # float images in [0, 1]
    if 0 <= lo and hi <= 255:
        return img.convert("L")
    if img.mode == "I" and 0 <= lo and hi <= 65535:
        return img.point(lambda v: v * (1 / 257)).convert("L")  # 16-bit data held as I (TIFF, older PNG)
    scale = 255 / (hi - lo) if hi > lo else 0.0  # anything else: its own range stretched to 0..255
    return img.point(lambda v: (v - lo) * scale).convert("L")


def as_seen(img: Image.Image, transforms: list[str] | None = None) -> Image.Image:
    """The RGB image a person sees: EXIF-rotated, alpha composited on white, 8 bits per channel.

    `img` must be loaded; `transforms` (if given) gets a name for each change made.
    """
    done = transforms if transforms is not None else []
    orientation = _orientation(img)
    if orientation != 1:
        img = ImageOps.exif_transpose(img)
        done.append(f"exif_orientation:{orientation}")
    if img.mode in _HIGH_DEPTH_MODES:
        done.append(f"depth:{img.mode}")
        img = _to_8bit(img)  # a transparency value of a 16-bit image is not kept (rare)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        done.append(f"alpha_on_white:{img.mode}")
        rgba = img.convert("RGBA")
        # As qwen-vl-utils and vLLM do it for RGBA: paste through the alpha onto white.
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        img = white
    if img.mode != "RGB":
        if img.mode not in _PLAIN_MODES:
            done.append(f"mode:{img.mode}")
        img = img.convert("RGB")
    return img


def _codec(probe_format: str | None, data: bytes, cfg: ImageConfig) -> str:
    """The re-encoding codec: lossy sources stay lossy (JPEG), lossless ones (diagrams) stay lossless."""
    if cfg.encode_format != "auto":
        return cfg.encode_format.lower()
    if probe_format in ("JPEG", "MPO"):
        return "jpeg"
    if probe_format == "WEBP" and b"VP8L" not in data[12:4096]:
        return "jpeg"  # lossy WebP (a VP8 bitstream)
    return "png"


def _encode(img: Image.Image, codec: str) -> bytes:
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def transform_key(file_sha256: str, transforms: list[str], codec: str | None) -> str:
    """Request-key part for one image: what was sent is a function of exactly these inputs."""
    params = {"file_sha256": file_sha256}
    if transforms:
        params.update(version=TRANSFORM_VERSION, transforms=transforms, codec=codec)  # type: ignore[arg-type]
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def load_image(roots: ImageRoots | Path, raw: str, cfg: ImageConfig, out_dir: Path | None = None) -> EncodedImage:
    """One image, ready to send. `out_dir` places transformed copies (default: `images/` relative to it)."""
    path, data = read_image_file(roots, raw, cfg.max_file_bytes)
    file_sha = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            # Our own limit (max_decoded_pixels) decides; PIL still errors past twice its default.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size  # header only: checked before any pixel is decoded
                if width * height > cfg.max_decoded_pixels:
                    raise ImageError(
                        "image_too_large",
                        f"{raw!r} is {width}x{height} > max_decoded_pixels {cfg.max_decoded_pixels}",
                    )
                fmt = probe.format
                if _as_is(probe, data, cfg):
                    key = transform_key(file_sha, [], None)
                    return EncodedImage(raw, path, file_sha, key, DataUrl.encode(_SENDABLE[fmt], data, key),
                                        width, height, path, [])
                target = _fit_max_pixels(width, height, cfg.max_pixels)  # in stored orientation
                if fmt in ("JPEG", "MPO") and target != (width, height):
                    # Decode a big JPEG at 1/2, 1/4 or 1/8 scale (never below the target): far less work.
                    probe.draft(None, target)
                probe.load()
                transforms: list[str] = []
                img = as_seen(probe, transforms)
                if fmt != "MPO" and getattr(probe, "is_animated", False):
                    transforms.append("first_frame")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("image_too_large", f"{raw!r}: {exc}") from None
    except Exception as exc:  # PIL raises many types for broken files
        raise ImageError("image_corrupt", f"{raw!r} cannot be decoded: {type(exc).__name__}: {exc}") from None

    if any(t.split(":")[-1] in ("5", "6", "7", "8") for t in transforms if t.startswith("exif_orientation:")):
        width, height, target = height, width, (target[1], target[0])  # rotated by 90 degrees
    if target != (width, height):
        transforms.append(f"resize:{width}x{height}->{target[0]}x{target[1]}")
    if img.size != target:
        img = img.resize(target, Image.Resampling.BICUBIC)
    if not transforms and fmt in _SENDABLE:
        # Decoded only to be sure (trailing bytes, a possible late EXIF chunk): nothing to change.
        key = transform_key(file_sha, [], None)
        return EncodedImage(raw, path, file_sha, key, DataUrl.encode(_SENDABLE[fmt], data, key),
                            img.width, img.height, path, [])
    if not transforms:
        transforms.append(f"format:{fmt}")  # GIF, BMP, TIFF...: not every server takes them
    codec = _codec(fmt, data, cfg)
    sent = _encode(img, codec)
    ext = "jpg" if codec == "jpeg" else "png"
    # Absolute when out_dir is given (a relative out is taken from the working folder, as the writers do);
    # without one, relative to the output folder that relative_to_out is later given.
    where = images_dir(Path(out_dir)).absolute() if out_dir is not None else Path(IMAGES_DIR)
    trainer = content_addressed_path(sent, where, ext)
    key = transform_key(file_sha, transforms, codec)
    return EncodedImage(raw, path, file_sha, key, DataUrl.encode(codec, sent, key), img.width, img.height, trainer,
                        transforms)


def load_images(raws: list[str], roots: ImageRoots, cfg: ImageConfig, out_dir: Path) -> list[EncodedImage]:
    return [load_image(roots, raw, cfg, out_dir) for raw in raws]


def _trainer_file(image: EncodedImage, out_dir: Path) -> Path:
    return image.trainer_path if image.trainer_path.is_absolute() else Path(out_dir).absolute() / image.trainer_path


def write_trainer_files(images: list[EncodedImage], out_dir: Path) -> None:
    """Write each transformed image (the exact bytes sent) to its content-addressed trainer_path."""
    for im in images:
        if not im.transforms:
            continue
        target = _trainer_file(im, out_dir)
        payload = pybase64.b64decode(im.data_url.split(b",", 1)[1])
        written = write_content_addressed(payload, target.parent, target.suffix)
        assert written == target, (written, target)


def kept_image_paths(images: list[EncodedImage], out_dir: Path) -> list[str]:
    """For a kept record: write the transformed files, return every path relative to the output folder."""
    write_trainer_files(images, out_dir)
    out = Path(out_dir).resolve()
    return [_relative(im, out) for im in images]


def relative_to_out(image: EncodedImage, out_dir: Path) -> str:
    """The path LLaMA-Factory resolves from its dataset_dir (the output folder)."""
    return _relative(image, Path(out_dir).resolve())


def _relative(image: EncodedImage, out: Path) -> str:
    # An original's path was resolved when it was read (`resolved`); resolving it again cost ~0.1 ms of lstat calls.
    target = image.resolved if image.trainer_path == image.resolved else _trainer_file(image, out).resolve()
    return Path(os.path.relpath(target, out)).as_posix()


def open_as_seen(path: Path) -> Image.Image:
    """A full-resolution RGB copy of an image file as a person sees it (for OCR and other annotators)."""
    with Image.open(path) as opened:
        opened.load()
        return as_seen(opened)
