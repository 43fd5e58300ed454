"""Says what a clip shows, from its pixels alone: the object's colour (the
palette colour nearest to its pixels), its direction (the path of its
centroid from the first frame to the last) and its shape (how much of its
bounding box it fills: a square all of it, a circle pi/4, a triangle half).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .data import BACKGROUND, COLOURS
from .tokenizer import parse

MIN_PIXELS = 12     # a frame with fewer foreground pixels has no object
MIN_TRAVEL = 4.0    # pixels, first to last frame, to count as moving


@dataclass(frozen=True)
class Measurement:
    colour: Optional[str]
    direction: Optional[str]
    shape: Optional[str]
    dx: float          # centroid travel, pixels (x right, y down)
    dy: float
    fill: float        # median fraction of the bounding box the object fills

    def __str__(self):
        return f"{self.colour} {self.shape} moving {self.direction} (dx {self.dx:+.1f}, dy {self.dy:+.1f}, fill {self.fill:.2f})"


def _foreground(frame: np.ndarray) -> np.ndarray:
    d = np.abs(frame.astype(np.int16) - np.asarray(BACKGROUND, np.int16)).max(axis=-1)
    return d >= 90


def measure(frames: np.ndarray) -> Measurement:
    """frames: uint8 [T, H, W, 3]."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"want uint8 frames [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    centres, fills, pixels = [], [], []
    for f in frames:
        m = _foreground(f)
        if m.sum() < MIN_PIXELS:
            centres.append(None)
            continue
        ys, xs = np.nonzero(m)
        centres.append((xs.mean(), ys.mean()))
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fills.append(m.sum() / box)
        pixels.append(f[m])
    if not pixels:
        return Measurement(None, None, None, 0.0, 0.0, 0.0)
    rgb = np.median(np.concatenate(pixels).astype(np.float32), axis=0)
    names = list(COLOURS)
    dist = [float(np.sum((rgb - np.asarray(COLOURS[n], np.float32)) ** 2)) for n in names]
    colour = names[int(np.argmin(dist))]
    seen = [(i, c) for i, c in enumerate(centres) if c is not None]
    direction, dx, dy = None, 0.0, 0.0
    if len(seen) >= 2:
        # least-squares velocity of the centroid, times the clip's length
        i = np.asarray([s[0] for s in seen], np.float64)
        xy = np.asarray([s[1] for s in seen], np.float64)
        i = i - i.mean()
        vel = (i[:, None] * (xy - xy.mean(0))).sum(0) / max((i * i).sum(), 1e-9)
        dx, dy = (vel * (len(frames) - 1)).tolist()
        if max(abs(dx), abs(dy)) >= MIN_TRAVEL:
            direction = ("right" if dx > 0 else "left") if abs(dx) >= abs(dy) else ("down" if dy > 0 else "up")
    fill = float(np.median(fills))
    shape = "triangle" if fill < 0.64 else ("circle" if fill < 0.89 else "square")
    return Measurement(colour, direction, shape, dx, dy, fill)


def follows(prompt: str, frames: np.ndarray) -> bool:
    """Whether the clip's measured colour and direction are the prompt's."""
    colour, _, direction = parse(prompt)
    m = measure(frames)
    return m.colour == colour and m.direction == direction
