"""ImageFolder images of every mode and bit depth decode to the right 8-bit RGB, with either decoder.

A 16-bit PNG used to keep only the low byte of each sample (a smooth image became noise, silently).
Each file below is written the way an image tool writes it; the expected pixels are computed here
with numpy, independently of kdbench's conversion.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kdbench.data.decode as decode
from kdbench.data.sources import read_image_folder


def _png16(path: Path, samples: np.ndarray) -> None:
    """A 16-bit PNG (grey, RGB or RGBA by the channel count) from ``samples: uint16 (H, W, C)``.

    Pillow cannot write 16-bit colour PNGs, so this writes the chunks itself (PNG spec, section 11.2).
    """
    height, width, channels = samples.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def _to8(samples16: np.ndarray) -> np.ndarray:
    return np.round(samples16.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _gradient16(channels: int) -> np.ndarray:
    """A ramp whose high and low bytes differ everywhere (the low byte alone is noise)."""
    ramp = (np.arange(8 * 8 * channels, dtype=np.int64).reshape(8, 8, channels) * 997 + 0x1357) % 65536
    return ramp.astype(np.uint16)


def _write_case(kind: str, path: Path) -> np.ndarray:
    """Write one image of ``kind`` to ``path``; returns the expected ``uint8 (H, W, 3)``."""
    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    if kind == "grey8":
        grey = rgb8[..., 0]
        Image.fromarray(grey, mode="L").save(path)
        return np.repeat(grey[..., None], 3, axis=2)
    if kind == "palette":
        palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
        index = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        image = Image.fromarray(index, mode="P")
        image.putpalette(palette.reshape(-1).tolist())
        image.save(path)
        return palette[index]
    if kind == "rgba8":
        alpha = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
        Image.fromarray(np.concatenate([rgb8, alpha], axis=2), mode="RGBA").save(path)
        return rgb8
    if kind == "grey-alpha8":
        la = np.stack([rgb8[..., 0], rgb8[..., 1]], axis=2)
        Image.fromarray(la, mode="LA").save(path)
        return np.repeat(rgb8[..., :1], 3, axis=2)
    if kind == "cmyk":
        cmyk = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
        Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
        with Image.open(path) as back:  # the JPEG's own CMYK samples, after its lossy round trip
            c, m, y, k = (np.asarray(back).astype(np.float64)[..., i] for i in range(4))
        # The usual device-independent mapping (Pillow's and libjpeg's): R = (255 - C)(255 - K) / 255.
        expected = np.stack([(255 - c) * (255 - k), (255 - m) * (255 - k), (255 - y) * (255 - k)], 2) / 255
        expected = np.round(expected)
        return expected.astype(np.uint8)
    if kind.endswith("16"):
        channels = {"grey16": 1, "rgb16": 3, "rgba16": 4}[kind]
        samples = _gradient16(channels)
        _png16(path, samples)
        eight = _to8(samples)
        return np.repeat(eight, 3, axis=2) if channels == 1 else eight[..., :3]
    raise AssertionError(kind)


KINDS = ["grey8", "palette", "rgba8", "grey-alpha8", "cmyk", "grey16", "rgb16", "rgba16"]


@pytest.mark.parametrize("backend", ["torchvision", "pillow"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_mode_and_bit_depth_decodes_to_the_right_8_bit_rgb(tmp_path, monkeypatch, backend, kind):
    if backend == "torchvision" and not decode._torchvision_decoder_available():
        pytest.skip("torchvision has no image decoder here")
    monkeypatch.setattr(decode, "_backend", lambda: backend)  # choose the decoder, as a missing one would
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    path = folder / ("x.jpg" if kind == "cmyk" else "x.png")
    expected = _write_case(kind, path)

    data, _ = read_image_folder(tmp_path / "train")
    got = data.images[0].permute(1, 2, 0).numpy()
    assert data.images.dtype == torch.uint8 and got.shape == (8, 8, 3)
    # CMYK -> RGB rounds in integer steps; Pillow reduces 16-bit colour to its high byte (floor(v / 256)),
    # which is at most one level from the rounded value. The low byte alone would be off by up to 255.
    tolerance = 1 if kind == "cmyk" or (backend == "pillow" and kind in ("rgb16", "rgba16")) else 0
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance, kind
