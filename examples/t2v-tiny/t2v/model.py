"""The model: a text encoder, a DiT over video latents, a VAE, and DDIM.

    prompt --tokenizer--> ids [8] --TextEncoder--> context [8, 128]
    noise [4, 8, 16, 16] --DiT (v-prediction, DDIM, CFG), conditioned on context--> latent [4, 8, 16, 16]
    latent --VAEDecoder (per frame, 4x up)--> frames [8, 64, 64, 3]

Latents are [C=4, T=8, h=16, w=16]: the VAE works frame by frame, 4x down
in space, and keeps time. The DiT cuts the latent into patches of
2 frames x 4 x 4 (64 video tokens), puts the 8 projected text tokens in front of
them (in-context conditioning), adds fixed sine-cosine positions of
(frame group, y, x), and modulates every block with adaLN-Zero from the
timestep plus the pooled text plus a learned embedding of each token's
frame group. The text encoder is kept as initialised (seeded; see
t2v/train.py for why). The noise schedule is cosine
(alpha = cos(pi t / 2), sigma = sin(pi t / 2), t in [0, 1]); the DiT
predicts v. Classifier-free guidance uses a learned null context, which
training puts in place of the prompt's 10% of the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import tokenizer
from .fastops import Linear, attention

DEFAULT_CONFIG = dict(
    vocab=len(tokenizer.VOCAB), ctx_len=tokenizer.MAX_LEN, ctx_dim=128, text_layers=2, text_heads=4,
    latent_ch=4, frames=8, latent_size=16, patch=4, tpatch=2, dim=128, depth=4, heads=4, mlp=4,
    vae_ch=(16, 48, 64), shift=2,
)


# --- transformer pieces ------------------------------------------------------

class MHA(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = Linear(dim, 3 * dim)
        self.proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, N, D = x.shape
        H = self.heads
        q, k, v = self.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4).reshape(3, B * H, N, D // H)
        o = attention(q, k, v, bias)
        return self.proj(o.reshape(B, H, N, D // H).transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc1 = Linear(dim, dim * ratio)
        self.fc2 = Linear(dim * ratio, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.attn = MHA(dim, heads)
        self.n2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 2)

    def forward(self, x, bias):
        x = x + self.attn(self.n1(x), bias)
        return x + self.mlp(self.n2(x))


class TextEncoder(nn.Module):
    """Token ids [B, L] -> context [B, L, ctx_dim]; pads are masked out as keys."""

    def __init__(self, vocab: int, ctx_len: int, ctx_dim: int, text_layers: int, text_heads: int, **_):
        super().__init__()
        self.heads = text_heads
        self.tok = nn.Embedding(vocab, ctx_dim)
        self.pos = nn.Parameter(torch.randn(ctx_len, ctx_dim) * 0.02)
        self.blocks = nn.ModuleList(TextBlock(ctx_dim, text_heads) for _ in range(text_layers))
        self.norm = nn.LayerNorm(ctx_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        B, L = ids.shape
        x = self.tok(ids) + self.pos[:L]
        bias = (ids == tokenizer.PAD_ID).float() * -1e4  # [B, L] over keys
        bias = bias[:, None, None, :].expand(B, self.heads, 1, L).reshape(B * self.heads, 1, L)
        for b in self.blocks:
            x = b(x, bias)
        return self.norm(x)


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    a = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)


class DiTBlock(nn.Module):
    """Attention and MLP, each modulated per token by adaLN-Zero. The
    conditioning comes per group ([B, G, dim]) and `group` [N] says which
    group each token takes its modulation from."""

    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.n1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = MHA(dim, heads)
        self.n2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, mlp)
        self.ada = Linear(dim, 6 * dim, zero=True)

    def forward(self, x, c, group):
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).index_select(1, group).chunk(6, dim=-1)
        x = x + g1 * self.attn(self.n1(x) * (1 + sc1) + s1)
        return x + g2 * self.mlp(self.n2(x) * (1 + sc2) + s2)


def sincos(n: int, dim: int) -> torch.Tensor:
    """Fixed sine-cosine embeddings of positions 0..n-1: [n, dim], entries in [-1, 1]."""
    freqs = 1.0 / (10000.0 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim // 2)))
    a = torch.arange(n, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def video_positions(m: int, n: int, dim: int) -> torch.Tensor:
    """[m*n*n, dim] fixed embeddings of (time, y, x): a quarter of the
    channels for time, three eighths each for y and x."""
    dt = dim // 4
    ds = (dim - dt) // 2
    pt = sincos(m, dt)[:, None, None].expand(m, n, n, dt)
    py = sincos(n, ds)[None, :, None].expand(m, n, n, ds)
    px = sincos(n, dim - dt - ds)[None, None, :].expand(m, n, n, dim - dt - ds)
    return torch.cat([pt, py, px], dim=-1).reshape(m * n * n, dim)


class DiT(nn.Module):
    """v-prediction for latents [B, C, T, h, w] at times t [B] given context [B, L, ctx_dim].

    Two things make it follow the motion a prompt names (both measured, see
    the README): fixed sine-cosine positions as large as the patch
    embeddings, so that every token knows its frame and place from the
    first step; and adaLN conditioning per frame group (timestep + pooled
    text + a learned embedding of the group), so that "left" can modulate
    the first frames differently from the last."""

    def __init__(self, latent_ch: int, frames: int, latent_size: int, patch: int, tpatch: int, dim: int, depth: int,
                 heads: int, mlp: int, ctx_len: int, ctx_dim: int, shift: float = 1.0, **_):
        super().__init__()
        self.C, self.T, self.S, self.p, self.pt = latent_ch, frames, latent_size, patch, tpatch
        self.shift = float(shift)
        n, m = latent_size // patch, frames // tpatch
        self.patch_in = Linear(latent_ch * tpatch * patch * patch, dim)
        self.register_buffer("pos", video_positions(m, n, dim), persistent=False)
        self.frame_emb = nn.Parameter(torch.randn(m, dim) * 0.5)
        # modulation group of each token: 0 for the text tokens, 1+g for frame group g
        self.register_buffer("group", torch.cat([torch.zeros(ctx_len, dtype=torch.long),
                                                 1 + torch.arange(m).repeat_interleave(n * n)]), persistent=False)
        self.ctx_in = Linear(ctx_dim, dim)
        self.ctx_pos = nn.Parameter(torch.randn(ctx_len, dim) * 0.02)
        self.t_mlp = nn.Sequential(Linear(256, dim), nn.SiLU(), Linear(dim, dim))
        self.pool_mlp = nn.Sequential(Linear(ctx_dim, dim), nn.SiLU(), Linear(dim, dim))
        self.blocks = nn.ModuleList(DiTBlock(dim, heads, mlp) for _ in range(depth))
        self.n_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = Linear(dim, 2 * dim, zero=True)
        self.out = Linear(dim, latent_ch * tpatch * patch * patch, zero=True)
        # the context that stands for "no prompt" (classifier-free guidance)
        self.null_context = nn.Parameter(torch.randn(ctx_len, ctx_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        B, C, T, S, p, pt = x.shape[0], self.C, self.T, self.S, self.p, self.pt
        n, m = S // p, T // pt
        tok = x.reshape(B, C, m, pt, n, p, n, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, m * n * n, C * pt * p * p)
        tok = self.patch_in(tok) + self.pos
        ctx = self.ctx_in(context) + self.ctx_pos
        L = ctx.shape[1]
        h = torch.cat([ctx, tok], dim=1)
        c = self.t_mlp(timestep_embedding(t)) + self.pool_mlp(context.mean(1))       # [B, dim]
        c = torch.cat([c[:, None], c[:, None] + self.frame_emb[None]], dim=1)      # [B, 1+m, dim]
        for b in self.blocks:
            h = b(h, c, self.group)
        shift, scale = self.ada_out(F.silu(c)).index_select(1, self.group[L:]).chunk(2, dim=-1)
        h = self.out(self.n_out(h[:, L:]) * (1 + scale) + shift)
        return h.reshape(B, m, n, n, C, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(B, C, T, S, S)


# --- VAE ----------------------------------------------------------------------

class VAEEncoder(nn.Module):
    """frames [N, 3, H, W] in [0, 1] -> (mean, logvar) [N, C, H/4, W/4].
    The background is black, so zero padding looks like more background:
    the VAE trains mostly on crops and runs on whole frames."""

    def __init__(self, latent_ch: int, vae_ch=(16, 48, 64), **_):
        super().__init__()
        a, b, c = vae_ch
        self.net = nn.Sequential(
            nn.Conv2d(3, a, 3, padding=1), nn.SiLU(),
            nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(b, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, 2 * latent_ch, 1))

    def forward(self, x):
        return self.net(x).chunk(2, dim=1)


class VAEDecoder(nn.Module):
    """latents [N, C, h, w] -> frames [N, 3, 4h, 4w], about [0, 1]."""

    def __init__(self, latent_ch: int, vae_ch=(16, 48, 64), **_):
        super().__init__()
        a, b, c = vae_ch
        up = lambda: nn.Upsample(scale_factor=2, mode="nearest")  # noqa: E731
        self.net = nn.Sequential(
            nn.Conv2d(latent_ch, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.SiLU(),
            up(), nn.Conv2d(c, b, 3, padding=1), nn.SiLU(),
            up(), nn.Conv2d(b, a, 3, padding=1), nn.SiLU(),
            nn.Conv2d(a, 3, 3, padding=1))

    def forward(self, z):
        return self.net(z)


# --- diffusion ------------------------------------------------------------------

def alpha_sigma(t: torch.Tensor):
    return torch.cos(t * (math.pi / 2)), torch.sin(t * (math.pi / 2))


def shift_time(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Move times towards the noisy end: u in [0, 1] -> shift*u / (1 + (shift-1)*u).
    Training draws t this way and DDIM steps through it, so that the few steps
    where a clip's layout is decided (t near 1: alpha < 0.05, the object is
    already visible) are learnt and sampled finely."""
    return shift * u / (1 + (shift - 1) * u)


def ddim_sample(dit: DiT, context: torch.Tensor, noise: Optional[torch.Tensor], steps: int, guidance: float,
                progress: Optional[Callable[[int, int], None]] = None,
                cancelled: Optional[Callable[[], bool]] = None, start: int = 0, x: Optional[torch.Tensor] = None,
                checkpoint: Optional[Callable[[int, int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Deterministic DDIM (eta 0) from t=1 to t=0 in `steps` equal steps, with
    classifier-free guidance: v = v_null + guidance * (v_prompt - v_null).
    context [L, D], noise [C, T, h, w] -> latent [C, T, h, w].

    The sampler's state after a step is x, float32 [1, C, T, h, w], alone:
    checkpoint(i + 1, steps, x) gets it after each step i (before
    progress), and start, x resume after step `start` from such an x (noise
    is then not read), to the same latent, bit for bit, as a run that was
    never interrupted."""
    if not 0 <= start <= steps:
        raise ValueError(f"resuming after step {start} of {steps}")
    if x is None:
        if start:
            raise ValueError(f"resuming after step {start} needs the sampler's state then")
        x = noise[None].float()
    ctx = torch.stack([context.float(), dit.null_context.detach().float()])
    ts = shift_time(torch.linspace(1.0, 0.0, steps + 1), dit.shift)
    for i in range(start, steps):
        if cancelled is not None and cancelled():
            raise InterruptedError("cancelled")
        t, tn = ts[i], ts[i + 1]
        if guidance == 1.0:
            v = dit(x, t.reshape(1), ctx[:1])
        else:
            vc, vu = dit(x.expand(2, -1, -1, -1, -1), t.reshape(1).expand(2), ctx).chunk(2)
            v = vu + guidance * (vc - vu)
        a, s = alpha_sigma(t)
        an, sn = alpha_sigma(tn)
        x0 = a * x - s * v
        eps = s * x + a * v
        x = an * x0 + sn * eps
        if checkpoint is not None:
            checkpoint(i + 1, steps, x)
        if progress is not None:
            progress(i + 1, steps)
    return x[0]


@dataclass
class Sample:
    """One request of ddim_sample_batch: what ddim_sample takes for it
    (context [L, D]; noise [C, T, h, w], or start and x [1, C, T, h, w]
    to resume), its own steps and callbacks."""

    context: torch.Tensor
    steps: int
    noise: Optional[torch.Tensor] = None
    start: int = 0
    x: Optional[torch.Tensor] = None
    progress: Optional[Callable[[int, int], None]] = None
    cancelled: Optional[Callable[[], bool]] = None
    checkpoint: Optional[Callable[[int, int, torch.Tensor], None]] = None


def ddim_sample_batch(dit: DiT, samples: List[Sample], guidance: float) -> List[Optional[torch.Tensor]]:
    """ddim_sample for several requests at once: each step is one DiT
    forward over the samples still going (with guidance, their prompts
    and the null context stacked: 2n rows), each at its own time t of its
    own steps; the update, checkpoint and progress stay per sample. A
    sample whose cancelled() turns true leaves at its next step; the
    others go on. Returns each sample's latent [C, T, h, w], None for one
    that left cancelled.

    The DDIM update of each sample is ddim_sample's, op for op; only the
    DiT's kernels see another batch size, so a latent may differ from
    ddim_sample's in the last bits (a batch of one is the same bytes)."""
    n = len(samples)
    xs, at, ts = [], [], []
    for s in samples:
        if not 0 <= s.start <= s.steps:
            raise ValueError(f"resuming after step {s.start} of {s.steps}")
        if s.x is None and s.start:
            raise ValueError(f"resuming after step {s.start} needs the sampler's state then")
        xs.append(s.x if s.x is not None else s.noise[None].float())
        at.append(s.start)
        ts.append(shift_time(torch.linspace(1.0, 0.0, s.steps + 1), dit.shift))
    out: List[Optional[torch.Tensor]] = [None] * n
    going = list(range(n))
    null = dit.null_context.detach().float()
    while True:
        active = []
        for k in going:
            s = samples[k]
            if at[k] >= s.steps:
                out[k] = xs[k][0]
            elif s.cancelled is None or not s.cancelled():
                active.append(k)
        going = active
        if not going:
            return out
        m = len(going)
        x = torch.cat([xs[k] for k in going])
        t = torch.stack([ts[k][at[k]] for k in going])
        cond = torch.stack([samples[k].context.float() for k in going])
        if guidance == 1.0:
            v = dit(x, t, cond)
        else:
            vc, vu = dit(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null.expand(m, -1, -1)])).chunk(2)
            v = vu + guidance * (vc - vu)
        for j, k in enumerate(going):
            s, i = samples[k], at[k]
            xj, vj = x[j:j + 1], v[j:j + 1]
            a, sg = alpha_sigma(ts[k][i])
            an, sn = alpha_sigma(ts[k][i + 1])
            x0 = a * xj - sg * vj
            eps = sg * xj + a * vj
            xs[k] = an * x0 + sn * eps
            at[k] = i + 1
            if s.checkpoint is not None:
                s.checkpoint(i + 1, s.steps, xs[k])
            if s.progress is not None:
                s.progress(i + 1, s.steps)


# --- the whole model, and its checkpoint --------------------------------------------

PARTS = ("text", "dit", "vae_encoder", "vae_decoder")


class T2V(nn.Module):
    def __init__(self, config: Optional[Dict] = None, parts=PARTS):
        super().__init__()
        self.config = dict(DEFAULT_CONFIG, **(config or {}))
        cfg = self.config
        self.parts = tuple(parts)
        if "text" in parts:
            self.text = TextEncoder(**cfg)
        if "dit" in parts:
            self.dit = DiT(**cfg)
        if "vae_encoder" in parts:
            self.vae_encoder = VAEEncoder(**cfg)
        if "vae_decoder" in parts:
            self.vae_decoder = VAEDecoder(**cfg)
        # per-channel statistics of the VAE's latents: the DiT works on
        # (latent - mean) / std.
        self.register_buffer("latent_mean", torch.zeros(cfg["latent_ch"]))
        self.register_buffer("latent_std", torch.ones(cfg["latent_ch"]))

    def normalise(self, z):
        return (z - self.latent_mean.reshape(-1, 1, 1, 1)) / self.latent_std.reshape(-1, 1, 1, 1)

    def denormalise(self, z):
        return z * self.latent_std.reshape(-1, 1, 1, 1) + self.latent_mean.reshape(-1, 1, 1, 1)


def count_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def save_checkpoint(model: T2V, path: str, extra: Optional[Dict] = None) -> None:
    """float16 weights (float32 statistics), written atomically."""
    import os
    # torch 1.13's weights_only loader takes no floats: they are stored as strings
    conv = lambda v: list(v) if isinstance(v, tuple) else (repr(float(v)) if isinstance(v, float) else v)  # noqa: E731
    ck = {"format": "t2v-tiny/2", "config": {k: conv(v) for k, v in model.config.items()},
          "vocab": list(tokenizer.VOCAB), "latent_mean": model.latent_mean.clone(),
          "latent_std": model.latent_std.clone(), "extra": extra or {}}
    for part in model.parts:
        ck[part] = {k: v.detach().half().clone() for k, v in getattr(model, part).state_dict().items()}
    tmp = path + ".tmp"
    torch.save(ck, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, parts=PARTS) -> T2V:
    """The model with the parts asked for, in float32, in eval mode."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch without weights_only
        ck = torch.load(path, map_location="cpu")
    if not isinstance(ck, dict) or ck.get("format") != "t2v-tiny/2":
        raise ValueError(f"{path}: not a t2v-tiny checkpoint")
    if list(ck["vocab"]) != list(tokenizer.VOCAB):
        raise ValueError(f"{path}: the checkpoint's vocabulary differs from t2v.tokenizer's")
    cfg = dict(ck["config"])
    cfg["vae_ch"] = tuple(cfg["vae_ch"])
    cfg["shift"] = float(cfg.get("shift", 1.0))
    model = T2V(cfg, parts)
    for part in parts:
        getattr(model, part).load_state_dict({k: v.float() for k, v in ck[part].items()})
    model.latent_mean.copy_(ck["latent_mean"].float())
    model.latent_std.copy_(ck["latent_std"].float())
    return model.eval().requires_grad_(False)
