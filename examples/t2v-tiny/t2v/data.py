"""The training data, generated here: one coloured shape moving on a plain
background, and a prompt that says what it is and where it goes.

A clip is 8 frames of 64x64 RGB. Everything random about a clip (shape,
colour, direction, size, start position, speed, prompt wording) comes from
a numpy Generator, so a seed gives the same clips on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

FRAMES = 8
SIZE = 64

SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
# name -> RGB (0..255). Far apart in RGB so that a pixel's colour names one.
COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "white": (240, 240, 240),
}
BACKGROUND = (0, 0, 0)
# unit step per frame (dx, dy); y grows downwards.
MOTION = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

RADIUS = (7.0, 10.0)   # half the object's extent, pixels
SPEED = (2.0, 3.5)     # pixels per frame
JITTER = 6.0           # the path's midpoint: the frame's centre +- JITTER pixels, in x and in y
VERBS = ("moving", "going")
ARTICLES = ("a", "the", "")


@dataclass(frozen=True)
class ClipSpec:
    shape: str
    colour: str
    direction: str
    radius: float
    speed: float
    x0: float  # centre at frame 0
    y0: float

    def centres(self) -> List[Tuple[float, float]]:
        dx, dy = MOTION[self.direction]
        return [(self.x0 + dx * self.speed * f, self.y0 + dy * self.speed * f) for f in range(FRAMES)]


def prompt_for(colour: str, shape: str, direction: str, rng: Optional[np.random.Generator] = None) -> str:
    """The canonical prompt ("a red circle moving left"), or with rng one of
    the wordings of the grammar (article, verb, "to the")."""
    if rng is None:
        return f"a {colour} {shape} moving {direction}"
    art = ARTICLES[rng.integers(len(ARTICLES))]
    verb = VERBS[rng.integers(len(VERBS))]
    to_the = "to the " if direction in ("left", "right") and rng.random() < 0.3 else ""
    words = [art, colour, shape, verb, to_the + direction]
    return " ".join(w for w in words if w)


def random_spec(rng: np.random.Generator, shape: Optional[str] = None, colour: Optional[str] = None,
                direction: Optional[str] = None) -> ClipSpec:
    """A random clip; the object stays whole inside the frame throughout.
    Where the path lies varies by +-JITTER pixels around the centre, not over
    the whole frame: placing the object anywhere is a harder problem than a
    30-minute CPU training solves (see README, Limits)."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    names = list(COLOURS)
    colour = colour or names[rng.integers(len(names))]
    direction = direction or DIRECTIONS[rng.integers(len(DIRECTIONS))]
    r = float(rng.uniform(*RADIUS))
    speed = float(rng.uniform(*SPEED))
    travel = speed * (FRAMES - 1)
    # the path's midpoint lies within JITTER pixels of the frame's centre
    mx, my = (SIZE / 2 + float(rng.uniform(-JITTER, JITTER)) for _ in range(2))
    dx, dy = MOTION[direction]
    x0 = mx - dx * travel / 2
    y0 = my - dy * travel / 2
    return ClipSpec(shape, colour, direction, r, speed, x0, y0)


_SS = 2  # supersampling for anti-aliased edges
_grid = (np.arange(SIZE * _SS, dtype=np.float32) + 0.5) / _SS


def _mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    x = _grid[None, :]
    y = _grid[:, None]
    if shape == "circle":
        m = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        h = r * 0.9
        m = (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    elif shape == "triangle":  # apex up, base down, as wide as tall
        top = cy - r
        m = (y >= top) & (y <= cy + r) & (np.abs(x - cx) <= (y - top) / 2.0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    m = m.astype(np.float32).reshape(SIZE, _SS, SIZE, _SS).mean(axis=(1, 3))
    return m


def render(spec: ClipSpec, which=None) -> np.ndarray:
    """The clip as float32 [T, H, W, 3] in [0, 1] (only frames `which`, if given)."""
    col = np.asarray(COLOURS[spec.colour], np.float32) / 255.0
    bg = np.asarray(BACKGROUND, np.float32) / 255.0
    centres = spec.centres()
    which = range(FRAMES) if which is None else which
    out = np.empty((len(which), SIZE, SIZE, 3), np.float32)
    for i, f in enumerate(which):
        m = _mask(spec.shape, *centres[f], spec.radius)[..., None]
        out[i] = bg * (1.0 - m) + col * m
    return out


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def batch(rng: np.random.Generator, n: int):
    """n random clips: (frames float32 [n, T, H, W, 3], prompts, specs)."""
    specs = [random_spec(rng) for _ in range(n)]
    prompts = [prompt_for(s.colour, s.shape, s.direction, rng) for s in specs]
    frames = np.stack([render(s) for s in specs])
    return frames, prompts, specs
