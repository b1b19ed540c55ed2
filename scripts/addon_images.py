#!/usr/bin/env python3
"""Draw the Home Assistant add-on's icon.png (128x128) and logo.png (250x100).

The same mark as the dashboard's icon.svg (a dot and three sound arcs), plus the word
"harken" drawn from strokes for the logo, rasterised with numpy (4x4 supersampling) and
written as PNG with zlib: no font, no image library, nothing downloaded, same bytes every run.

    python3 scripts/addon_images.py            # (re)write deploy/home-assistant/harken/*.png
    python3 scripts/addon_images.py --check    # exit 1 if the committed files differ
"""

from __future__ import annotations

import argparse
import math
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

ADDON_DIR = Path(__file__).resolve().parent.parent / "deploy" / "home-assistant" / "harken"
SUPERSAMPLE = 4
ACCENT = (0x5E, 0xEA, 0xD4)  # --accent of the dashboard's dark theme
ACCENT_DARK = (0x0D, 0x94, 0x88)  # --accent of the light theme: readable on white and on dark grey
BACKGROUND = (0x0F, 0x14, 0x19)  # --bg of the dark theme

# A shape is a function from point arrays (x, y) to the distance outside it (<= 0 inside).
Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]


def disc(cx: float, cy: float, r: float) -> Shape:
    return lambda x, y: np.hypot(x - cx, y - cy) - r


def segment(x0: float, y0: float, x1: float, y1: float, width: float) -> Shape:
    """A straight stroke with round caps."""

    def distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy)) - width / 2

    return distance


def arc(cx: float, cy: float, r: float, start_deg: float, end_deg: float, width: float) -> Shape:
    """A circular stroke with round caps from start to end angle (counter-clockwise, y up)."""
    assert start_deg < end_deg <= start_deg + 360, (start_deg, end_deg)
    a0, a1 = math.radians(start_deg), math.radians(end_deg)
    ends = [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (a0, a1)]

    def distance(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        angle = np.mod(np.arctan2(-(y - cy), x - cx) - a0, 2 * math.pi)
        inside = angle <= a1 - a0
        on_ring = np.abs(np.hypot(x - cx, y - cy) - r)
        to_ends = np.minimum(*(np.hypot(x - ex, y - ey) for ex, ey in ends))
        return np.where(inside, on_ring, to_ends) - width / 2

    return distance


def mark(x: float, y: float, scale: float) -> list[Shape]:
    """icon.svg's mark (its 32-unit box) placed at (x, y), `scale` pixels per unit."""

    def at(px: float, py: float) -> tuple[float, float]:
        return x + px * scale, y + py * scale

    width = 2.6 * scale
    shapes: list[Shape] = [disc(*at(8, 16), 3.2 * scale)]
    # The SVG's arcs: end points (x, 16 +- half) with radius r; centre to the left.
    for end_x, half, r in ((13.5, 5.5, 7.5), (18.5, 9.5, 13.0), (23.5, 13.2, 18.0)):
        centre_x = end_x - math.sqrt(r * r - half * half)
        sweep = math.degrees(math.asin(half / r))
        shapes.append(arc(*at(centre_x, 16), r * scale, -sweep, sweep, width))
    return shapes


def word(x: float, baseline: float, size: float) -> list[Shape]:
    """'harken' in strokes; `size` is the x-height in pixels."""
    u = size / 10  # the letters are drawn on a 10-unit x-height
    w = 2.3 * u
    shapes: list[Shape] = []

    def seg(x0: float, y0: float, x1: float, y1: float) -> None:
        shapes.append(segment(x + x0 * u, baseline + y0 * u, x + x1 * u, baseline + y1 * u, w))

    def ring(cx: float, cy: float, r: float, a0: float, a1: float) -> None:
        shapes.append(arc(x + cx * u, baseline + cy * u, r * u, a0, a1, w))

    def hump(left: float) -> None:  # the arch of h and n, with its right stem
        ring(left + 3.5, -6.5, 3.5, 0, 180)
        seg(left + 7, -6.5, left + 7, 0)

    seg(0, -15, 0, 0)  # h
    hump(0)
    ring(14.2, -5, 3.9, 0, 359.9)  # a
    seg(18.1, -9, 18.1, 0)
    seg(23, -10, 23, 0)  # r
    ring(27, -6, 4, 60, 180)
    seg(31.5, -15, 31.5, 0)  # k
    seg(31.5, -3.2, 37.2, -10)
    seg(33.6, -5.6, 37.6, 0)
    ring(44, -5, 3.9, 35, 360)  # e
    seg(40.1, -5, 47.9, -5)
    seg(51.5, -10, 51.5, 0)  # n
    hump(51.5)
    return shapes


def render(width: int, height: int, layers: list[tuple[list[Shape], tuple[int, int, int]]],
           background: tuple[int, int, int] | None = None, radius: float = 0.0) -> np.ndarray:
    """RGBA image: each layer's shapes filled in its colour, over an optional rounded square."""
    n = SUPERSAMPLE
    ys, xs = np.mgrid[0:height * n, 0:width * n]
    x = (xs + 0.5) / n  # sample positions in pixels
    y = (ys + 0.5) / n
    rgb = np.zeros((height * n, width * n, 3))  # (rows, cols, rgb)
    alpha = np.zeros((height * n, width * n))
    if background is not None:
        # A rounded square: distance to the inner rectangle minus the corner radius.
        qx = np.maximum(np.abs(x - width / 2) - (width / 2 - radius), 0)
        qy = np.maximum(np.abs(y - height / 2) - (height / 2 - radius), 0)
        inside = np.hypot(qx, qy) <= radius
        rgb[inside] = background
        alpha[inside] = 1.0
    for shapes, colour in layers:
        covered = np.zeros_like(alpha, dtype=bool)
        for shape in shapes:
            covered |= shape(x, y) <= 0
        rgb[covered] = colour
        alpha[covered] = 1.0
    # Average each n x n block: anti-aliased edges.
    rgba = np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=2)
    rgba = rgba.reshape(height, n, width, n, 4).mean(axis=(1, 3))
    colour = np.where(rgba[..., 3:] > 0, rgba[..., :3] / np.maximum(rgba[..., 3:], 1e-9), 0)
    out = np.concatenate([colour, rgba[..., 3:] * 255], axis=2)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG of a (rows, cols, 4) uint8 array."""
    height, width, _ = image.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + image[row].tobytes() for row in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def images() -> dict[str, bytes]:
    icon = render(128, 128, [(mark(8, 11, 3.3), ACCENT)], background=BACKGROUND, radius=28)
    logo = render(250, 100, [(mark(0, 10, 2.5), ACCENT_DARK), (word(88, 66, 26), ACCENT_DARK)])
    return {"icon.png": png(icon), "logo.png": png(logo)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    parser.add_argument("--out", type=Path, default=ADDON_DIR, help="folder to write to")
    args = parser.parse_args(argv)
    stale = []
    for name, data in images().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data)} bytes)")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python3 scripts/addon_images.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
