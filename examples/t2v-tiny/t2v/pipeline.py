"""The three phases as functions, and generate() that runs them in a row.

The phase executables (phased-phase-t2v-encoder, -transformer, -decoder)
call exactly these: encode_prompt in the encoder, denoise in the
transformer, decode_frames and gif_bytes in the decoder.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import numpy as np
import torch

from . import tokenizer
from .model import PARTS, T2V, Sample, ddim_sample, ddim_sample_batch, load_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CHECKPOINT = os.path.normpath(os.path.join(HERE, "..", "t2v-tiny.pt"))
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0
MAX_STEPS = 1000
GIF_FRAME_MS = 125

_cache = {}


def load(path: Optional[str] = None, parts=PARTS) -> T2V:
    """The checkpoint's model (float32, eval), loaded once per path and parts."""
    path = os.path.abspath(path or DEFAULT_CHECKPOINT)
    key = (path, tuple(parts))
    if key not in _cache:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"t2v checkpoint {path} not found (make train-t2v writes it)")
        _cache[key] = load_checkpoint(path, parts)
    return _cache[key]


def resolve_steps(steps: int) -> int:
    """0 means the default, 20; more than 1000 or fewer than 0 is refused."""
    steps = int(steps)
    if steps == 0:
        return DEFAULT_STEPS
    if steps < 0 or steps > MAX_STEPS:
        raise ValueError(f"steps {steps}: want 1 to {MAX_STEPS}, or 0 for the default {DEFAULT_STEPS}")
    return steps


@torch.no_grad()
def encode_prompt(model: T2V, prompt: str) -> Tuple[torch.Tensor, List[str]]:
    """The encoder phase: context float32 [L, D], and the prompt's words that
    the vocabulary lacks (they were encoded as <unk>)."""
    ids, unknown = tokenizer.encode(prompt)
    ctx = model.text(torch.tensor([ids], dtype=torch.long))[0]
    return ctx.contiguous(), unknown


def initial_noise(model: T2V, seed: int) -> torch.Tensor:
    cfg = model.config
    g = torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(cfg["latent_ch"], cfg["frames"], cfg["latent_size"], cfg["latent_size"], generator=g)


def state_shape(model: T2V) -> Tuple[int, ...]:
    """The shape of the sampler's state between steps (float32): what
    denoise's checkpoint gets and its start resumes from."""
    cfg = model.config
    return (1, cfg["latent_ch"], cfg["frames"], cfg["latent_size"], cfg["latent_size"])


@torch.no_grad()
def denoise(model: T2V, context: torch.Tensor, seed: int, steps: int = DEFAULT_STEPS,
            guidance: float = DEFAULT_GUIDANCE, progress: Optional[Callable[[int, int], None]] = None,
            cancelled: Optional[Callable[[], bool]] = None, start: int = 0, state: Optional[torch.Tensor] = None,
            checkpoint: Optional[Callable[[int, int, torch.Tensor], None]] = None) -> torch.Tensor:
    """The transformer phase: DDIM from the seed's noise, guided by context.
    Returns the latent float32 [C, T, h, w], in the DiT's normalised space.

    checkpoint(done, steps, state) gets the sampler's state, float32
    state_shape(model), after each step; start and state resume after step
    start from such a state, to the same latent, bit for bit."""
    cfg = model.config
    want = (cfg["ctx_len"], cfg["ctx_dim"])
    if tuple(context.shape) != want:
        raise ValueError(f"context is {list(context.shape)}; want {list(want)}")
    if state is not None and (tuple(state.shape) != state_shape(model) or state.dtype != torch.float32):
        raise ValueError(f"the sampler's state is {state.dtype} {list(state.shape)}; "
                         f"want torch.float32 {list(state_shape(model))}")
    noise = initial_noise(model, seed) if state is None else None
    x = ddim_sample(model.dit, context.float(), noise, resolve_steps(steps), float(guidance), progress, cancelled,
                    start, state, checkpoint)
    return x.contiguous()


@dataclass
class Denoise:
    """One request of denoise_batch: denoise's arguments but the model and
    the guidance, which the batch shares."""

    context: torch.Tensor
    seed: int
    steps: int = DEFAULT_STEPS
    progress: Optional[Callable[[int, int], None]] = None
    cancelled: Optional[Callable[[], bool]] = None
    start: int = 0
    state: Optional[torch.Tensor] = None
    checkpoint: Optional[Callable[[int, int, torch.Tensor], None]] = None


@torch.no_grad()
def denoise_batch(model: T2V, jobs: List[Denoise],
                  guidance: float = DEFAULT_GUIDANCE) -> List[Union[torch.Tensor, Exception]]:
    """The transformer phase for several requests at once: one DiT forward
    per DDIM step over those still going (model.ddim_sample_batch). Each
    result is what denoise would return for the job, or its error: a
    ValueError for bad inputs, InterruptedError when it was cancelled
    (it left the batch; the others went on). A latent may differ from
    denoise's in the last bits (the DiT's kernels block by batch size);
    a batch of one gives denoise's bytes."""
    results: List[Union[torch.Tensor, Exception, None]] = [None] * len(jobs)
    samples, index = [], []
    cfg = model.config
    for k, j in enumerate(jobs):
        try:
            if tuple(j.context.shape) != (cfg["ctx_len"], cfg["ctx_dim"]):
                raise ValueError(f"context is {list(j.context.shape)}; want {[cfg['ctx_len'], cfg['ctx_dim']]}")
            if j.state is not None and (tuple(j.state.shape) != state_shape(model) or j.state.dtype != torch.float32):
                raise ValueError(f"the sampler's state is {j.state.dtype} {list(j.state.shape)}; "
                                 f"want torch.float32 {list(state_shape(model))}")
            steps = resolve_steps(j.steps)
            if not 0 <= j.start <= steps or (j.start and j.state is None):
                raise ValueError(f"resuming after step {j.start} of {steps} needs the sampler's state then")
        except ValueError as e:
            results[k] = e
            continue
        noise = initial_noise(model, j.seed) if j.state is None else None
        samples.append(Sample(j.context.float(), steps, noise, j.start, j.state, j.progress, j.cancelled,
                              j.checkpoint))
        index.append(k)
    for k, x in zip(index, ddim_sample_batch(model.dit, samples, float(guidance))):
        results[k] = x.contiguous() if x is not None else InterruptedError("cancelled")
    return results


@torch.no_grad()
def decode_frames(model: T2V, latent: torch.Tensor) -> np.ndarray:
    """The decoder phase: frames uint8 [T, H, W, 3] from a latent [C, T, h, w]."""
    z = model.denormalise(latent.float())            # [C, T, h, w]
    x = model.vae_decoder(z.permute(1, 0, 2, 3).contiguous())  # [T, 3, H, W]
    x = (x.clamp(0, 1) * 255.0).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def gif_bytes(frames: np.ndarray, frame_ms: int = GIF_FRAME_MS) -> bytes:
    """An animated GIF of frames uint8 [T, H, W, 3], looping."""
    from PIL import Image
    images = [Image.fromarray(f, "RGB") for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   optimize=False, disposal=1)
    return buf.getvalue()


def strip_png(frames: np.ndarray, scale: int = 2, gap: int = 2) -> bytes:
    """The frames side by side as one PNG (for the README)."""
    from PIL import Image
    T, H, W, _ = frames.shape
    out = np.full((H, T * W + (T - 1) * gap, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        out[:, i * (W + gap): i * (W + gap) + W] = f
    img = Image.fromarray(out, "RGB").resize((out.shape[1] * scale, H * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Generated:
    frames: np.ndarray   # uint8 [T, H, W, 3]
    gif: bytes
    unknown_words: List[str]


def generate(prompt: str, seed: int = 0, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
             checkpoint: Optional[str] = None, model: Optional[T2V] = None) -> Generated:
    """encoder -> transformer -> decoder in this process, through the same
    functions the phases call (tensors pass as float32, as over a hop)."""
    model = model or load(checkpoint)
    context, unknown = encode_prompt(model, prompt)
    latent = denoise(model, context.float().contiguous(), seed, steps, guidance)
    frames = decode_frames(model, latent.float().contiguous())
    return Generated(frames, gif_bytes(frames), unknown)
