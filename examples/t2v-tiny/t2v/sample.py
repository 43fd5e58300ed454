"""Generate clips in this process, time them and measure them.

    /usr/bin/python3 -m t2v.sample --prompt "a red circle moving left" --seed 1 --png sample.png --gif sample.gif
    /usr/bin/python3 -m t2v.sample --measure out/*.gif      (what clips made elsewhere show)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from . import measure, pipeline


def read_gif(path: str) -> np.ndarray:
    from PIL import Image, ImageSequence
    with Image.open(path) as img:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(img)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt", action="append", help="repeatable")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=pipeline.DEFAULT_STEPS)
    ap.add_argument("--guidance", type=float, default=pipeline.DEFAULT_GUIDANCE)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--png", help="write the first clip's frames as a PNG strip")
    ap.add_argument("--gif", help="write the first clip as a GIF")
    ap.add_argument("--measure", nargs="*", metavar="GIF", help="measure these GIFs instead")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.measure:
        for path in a.measure:
            print(f"{path}: {measure.measure(read_gif(path))}")
        return 0
    t0 = time.perf_counter()
    model = pipeline.load(a.checkpoint)
    print(f"loaded in {time.perf_counter() - t0:.2f}s")
    for i, prompt in enumerate(a.prompt or ["a red circle moving left"]):
        t0 = time.perf_counter()
        g = pipeline.generate(prompt, seed=a.seed + i, steps=a.steps, guidance=a.guidance, model=model)
        dt = time.perf_counter() - t0
        print(f"{prompt!r} seed {a.seed + i}: {dt:.2f}s, measured: {measure.measure(g.frames)}"
              + (f" (unknown words: {', '.join(g.unknown_words)})" if g.unknown_words else ""))
        if i == 0 and a.png:
            with open(a.png, "wb") as f:
                f.write(pipeline.strip_png(g.frames))
        if i == 0 and a.gif:
            with open(a.gif, "wb") as f:
                f.write(g.gif)
    return 0


if __name__ == "__main__":
    sys.exit(main())
