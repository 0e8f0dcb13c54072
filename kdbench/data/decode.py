"""Decoding image files into one ``uint8 (N, 3, H, W)`` tensor: torchvision's native decoders in a thread
pool (they release the GIL), Pillow as the fallback, every mode and bit depth converted to 8-bit RGB."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench._errors import UserError

__all__ = ["DECODE_VERSION", "IMAGE_EXTENSIONS", "decode_image", "decode_images", "decoder_name", "to_uint8_rgb"]

#: File name endings decoded from ImageFolder trees (case-insensitive); other files are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: Bumped when the decoded content for the same files would change (part of every fingerprint).
DECODE_VERSION = 2  # 2: 16-bit images scaled to 8 bits (1 kept the low byte)


def _num_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


@functools.cache
def _torchvision_decoder_available() -> bool:
    try:
        from torchvision.io import image as tv_image

        return bool(tv_image._has_image_ops()) and hasattr(tv_image, "decode_image")
    except Exception:  # removed in a future torchvision, or its image extension failed to load
        return False


def decoder_name() -> str:
    """The image decoder in use, with its version; part of every folder fingerprint.

    torchvision's libjpeg decoder is used while it exists (its C++ decode releases the GIL, so threads
    scale); Pillow is the fallback (torchvision deprecated its image I/O in 0.29). JPEG decoders may
    differ by a grey level here and there, so a change of decoder must invalidate cached splits.
    """
    if _torchvision_decoder_available():
        import torchvision

        return f"torchvision-{torchvision.__version__}"
    import PIL

    return f"pillow-{PIL.__version__}"


@contextlib.contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    """Silence torchvision's per-call deprecation warning of its image I/O (one per image otherwise).

    Warning filters are process-global, so the filter also covers the decode threads while the
    calling thread waits inside this block.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The image decoding and encoding capabilities of TorchVision")
        yield


def _decode_torchvision(path: Path) -> Tensor:
    from torchvision.io import ImageReadMode, decode_image, read_file

    # mode=RGB converts grayscale, palette and alpha images to 3 channels.
    image: Tensor = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    return image


#: Pillow modes holding more than 8 bits per sample (16-bit greyscale PNGs open as one of these).
_PILLOW_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _decode_pillow(path: Path) -> Tensor:
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in _PILLOW_WIDE_MODES:
            # convert("RGB") would clip these to 255; scale the 16-bit range instead.
            wide = torch.from_numpy(np.asarray(image).astype(np.int32).clip(0, 65535))
            return to_uint8_rgb(wide[None], path)
        if image.mode == "F":
            raise UserError(f"{path}: floating-point image (mode F); save it as an 8- or 16-bit PNG or JPEG")
        rgb = image.convert("RGB") if image.mode != "RGB" else image  # grey, palette, CMYK, alpha (dropped)
        array = np.asarray(rgb)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def to_uint8_rgb(image: Tensor, path: Path) -> Tensor:
    """``(C, H, W)`` of any integer depth -> ``uint8 (3, H, W)``; grey is repeated, alpha dropped.

    16-bit samples map to 8 bits by rounding ``v * 255 / 65535`` (the nearest 8-bit level), never by
    keeping the low byte, which would turn a smooth 16-bit image into noise.
    """
    if image.dtype != torch.uint8:
        if image.dtype.is_floating_point or image.dtype == torch.bool:
            raise UserError(f"{path}: decoded to {image.dtype} samples; save it as an 8- or 16-bit PNG or JPEG")
        image = ((image.to(torch.int64).clamp(0, 65535) * 255 + 32767) // 65535).to(torch.uint8)
    channels = image.shape[0]
    if channels in (1, 2):  # grey (+ alpha)
        image = image[:1].expand(3, -1, -1).contiguous()
    elif channels == 4:  # RGBA: drop alpha, as torchvision's RGB mode and Pillow's convert("RGB") do
        image = image[:3].contiguous()
    elif channels != 3:
        raise UserError(f"{path}: image with {channels} channels; save it as RGB or greyscale")
    return image


def _backend() -> str:
    return "torchvision" if _torchvision_decoder_available() else "pillow"


def _decode_one(path: Path, backend: str) -> Tensor:
    """Decode one image file to ``uint8 (3, H, W)``; a broken file is a UserError naming it.

    Callers wrap the torchvision backend in `_quiet_torchvision_io` once, in the calling thread:
    ``warnings.catch_warnings`` is not thread-safe, so it must never be entered by the decode threads.
    """
    try:
        image = _decode_torchvision(path) if backend == "torchvision" else _decode_pillow(path)
        return to_uint8_rgb(image, path)  # torchvision returns 16-bit PNGs as uint16
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot decode image ({reason}); replace or delete the file") from None


def _resize(image: Tensor, size: int) -> Tensor:
    """Antialiased bilinear resize of one ``uint8 (C, H, W)`` image (or a batch) to ``size x size``."""
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out if image.dim() == 4 else out[0]


def decode_image(path: Path) -> Tensor:
    """One image file as ``uint8 (3, H, W)`` RGB, with the decoder `decode_images` uses."""
    with _quiet_torchvision_io():
        return _decode_one(path, _backend())


def decode_images(files: Sequence[Path], image_size: int | None = None, num_workers: int | None = None) -> Tensor:
    """Decode JPEG/PNG ``files`` into one ``uint8 (N, 3, H, W)`` tensor, in order, with a thread pool.

    Any mode and bit depth (grey, palette, CMYK, alpha, 16-bit) becomes 8-bit RGB; alpha is dropped.
    With ``image_size`` every image is resized to ``image_size x image_size`` (antialiased bilinear);
    without it all images must already share the first image's size. Images are written into a
    preallocated tensor so the peak memory is the result plus one chunk per thread.
    """
    if not files:
        raise UserError("no images to decode")
    backend = _backend()
    with _quiet_torchvision_io():
        return _decode_all(files, image_size, num_workers, backend)


def _decode_all(files: Sequence[Path], image_size: int | None, num_workers: int | None, backend: str) -> Tensor:
    first = _decode_one(files[0], backend)
    if image_size is not None and tuple(first.shape[1:]) != (image_size, image_size):
        first = _resize(first, image_size)
    height, width = first.shape[1:]
    out = torch.empty((len(files), 3, height, width), dtype=torch.uint8)
    out[0] = first

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            image = _decode_one(files[i], backend)
            if tuple(image.shape[1:]) != (height, width):
                if image_size is None:
                    raise UserError(
                        f"{files[i]}: image is {image.shape[2]}x{image.shape[1]} but {files[0]} is {width}x{height}; "
                        "set image_size in the dataset options to resize all images to one size"
                    )
                image = _resize(image, image_size)
            out[i] = image

    workers = num_workers or _num_workers()
    chunk = max(64, -(-(len(files) - 1) // (workers * 8)))
    bounds = [(lo, min(lo + chunk, len(files))) for lo in range(1, len(files), chunk)]
    if workers == 1 or len(bounds) <= 1:
        for lo, hi in bounds:
            work(lo, hi)
        return out
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kdbench-decode") as pool:
        futures = [pool.submit(work, lo, hi) for lo, hi in bounds]
        for future in futures:
            future.result()  # re-raises the first error (e.g. a UserError naming the bad file)
    return out
