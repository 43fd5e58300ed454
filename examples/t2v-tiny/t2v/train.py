"""Train t2v-tiny from nothing, on clips generated here, and write the checkpoint.

    /usr/bin/python3 -m t2v.train --out t2v-tiny.pt      (from examples/t2v-tiny)

Stages, all seeded from --seed:
  1. VAE: frames of fresh random clips, reconstruction (foreground
     weighted) plus a small KL term.
  2. Encode a fixed set of --clips random clips to latents (the VAE
     encoder's means) and take per-channel statistics.
  3. The DiT (the text encoder stays as initialised): v-prediction on
     those latents with the shifted cosine schedule, the prompt replaced by
     the null context 10% of the time; an EMA of the weights is what gets
     saved.
Finally a quick check: clips for held-out seeds, measured.

Steps are counted, not timed, so a run is the same computation on any
machine; --scale multiplies every stage's length (for quick experiments).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# OpenMP's wait policy changes speed, never results. Its default (spin,
# then sleep) is fastest on a quiet machine: a DiT step 0.25 s against
# 0.31 s with PASSIVE. On a machine shared with other work, run with
# OMP_WAIT_POLICY=PASSIVE: a descheduled thread then makes the others
# sleep at a barrier instead of spinning (steps 10x slower were seen).

import numpy as np
import torch
import torch.nn.functional as F

from . import data, tokenizer
from .model import DEFAULT_CONFIG, T2V, alpha_sigma, count_params, save_checkpoint, shift_time


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


T0 = time.monotonic()


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.02) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def frames_tensor(frames: np.ndarray) -> torch.Tensor:
    """[N, T, H, W, 3] float -> [N*T, 3, H, W]."""
    n, t, h, w, _ = frames.shape
    return torch.from_numpy(frames).reshape(n * t, h, w, 3).permute(0, 3, 1, 2).contiguous()


def train_vae(model: T2V, rng: np.random.Generator, steps: int, batch: int, kl_weight: float) -> None:
    params = list(model.vae_encoder.parameters()) + list(model.vae_decoder.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    per_clip = 4
    crop_until = int(steps * 0.9)
    run = 0.0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 2e-3, 50)
        specs = [data.random_spec(rng) for _ in range(batch // per_clip)]
        frames = np.stack([data.render(sp, rng.choice(data.FRAMES, per_clip, replace=False)) for sp in specs])
        if step < crop_until:
            # 32x32 crops on the latent grid, near the object: 4x cheaper, mostly object
            crops = []
            for sp, clip in zip(specs, frames):
                cx, cy = sp.centres()[rng.integers(data.FRAMES)]
                ox, oy = (int(np.clip(round((c - 16 + rng.uniform(-10, 10)) / 4) * 4, 0, data.SIZE - 32))
                          for c in (cx, cy))
                crops.append(clip[:, oy:oy + 32, ox:ox + 32])
            frames = np.stack(crops)
        x = frames_tensor(frames)
        mu, logvar = model.vae_encoder(x)
        logvar = logvar.clamp(-12, 6)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        r = model.vae_decoder(z)
        fg = (x.amax(dim=1, keepdim=True) > 0.1).float()
        w = 1.0 + 4.0 * fg
        rec = (w * ((r - x) ** 2 + 0.2 * (r - x).abs())).mean()
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean()
        loss = rec + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        run = 0.95 * run + 0.05 * rec.item() if step else rec.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae {step + 1}/{steps} rec {run:.5f} kl {kl.item():.3f}")


@torch.no_grad()
def vae_check(model: T2V, rng: np.random.Generator, n: int = 48) -> None:
    """Reconstruct fresh clips; measure what survives."""
    from . import measure
    frames, _, specs = data.batch(rng, n)
    mu, _ = model.vae_encoder(frames_tensor(frames))
    r = model.vae_decoder(mu).clamp(0, 1)
    err = (r - frames_tensor(frames)).abs().mean().item()
    r = r.reshape(n, data.FRAMES, 3, data.SIZE, data.SIZE).permute(0, 1, 3, 4, 2).numpy()
    ms = [measure.measure(data.to_uint8(x)) for x in r]
    cd = sum(m.colour == s.colour and m.direction == s.direction for m, s in zip(ms, specs))
    sh = sum(m.shape == s.shape for m, s in zip(ms, specs))
    log(f"vae check: mean abs error {err:.4f}; reconstructions measured right: colour+direction {cd}/{n}, shape {sh}/{n}")


@torch.no_grad()
def encode_clips(model: T2V, rng: np.random.Generator, n: int, chunk: int = 200):
    lats, ids = [], []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        frames, prompts, _ = data.batch(rng, m)
        mu, _ = model.vae_encoder(frames_tensor(frames))          # [m*T, C, h, w]
        C, h = mu.shape[1], mu.shape[2]
        lats.append(mu.reshape(m, data.FRAMES, C, h, h).permute(0, 2, 1, 3, 4).contiguous())
        ids.extend(tokenizer.encode(p)[0] for p in prompts)
        if (start // chunk) % 10 == 0:
            log(f"encoded {start + m}/{n} clips")
    return torch.cat(lats), torch.tensor(ids, dtype=torch.long)


def train_dit(model: T2V, lat: torch.Tensor, ids: torch.Tensor, steps: int, batch: int, lr: float,
              gen: torch.Generator) -> None:
    """The DiT learns; the text encoder stays as initialised (seeded). Trained
    together, the text encoder learned to say the colour about six times more
    loudly than the direction (the distance between the contexts of "red ...
    left" and "blue ... left" against "red ... left" and "red ... right"),
    and the DiT learned to ignore direction; fixed, every word stays as
    distinct as every other."""
    dit, text = model.dit, model.text
    text.requires_grad_(False)
    params = list(dit.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    live = dict(dit.named_parameters())
    ema = {k: v.detach().clone() for k, v in dit.state_dict().items()}
    assert set(live) == set(ema), "EMA covers parameters only"
    n = lat.shape[0]
    run = None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 100)
        idx = torch.randint(n, (batch,), generator=gen)
        x0 = lat[idx]
        tok = ids[idx].clone()
        # a few words become <unk>, so that unknown words do not throw the model
        unk = (torch.rand(tok.shape, generator=gen) < 0.03) & (tok != tokenizer.PAD_ID)
        tok[unk] = tokenizer.UNK_ID
        with torch.no_grad():
            ctx = text(tok)
        drop = torch.rand(batch, generator=gen) < 0.1
        ctx = torch.where(drop[:, None, None], dit.null_context.expand_as(ctx), ctx)
        t = shift_time(torch.rand(batch, generator=gen), dit.shift)
        eps = torch.randn(x0.shape, generator=gen)
        a, s = alpha_sigma(t.reshape(-1, 1, 1, 1, 1))
        xt = a * x0 + s * eps
        v = a * eps - s * x0
        loss = F.mse_loss(dit(xt, t, ctx), v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, p in live.items():
                ema[k].mul_(decay).add_(p.detach(), alpha=1 - decay)
        run = loss.item() if run is None else 0.98 * run + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"dit {step + 1}/{steps} loss {run:.4f} lr {opt.param_groups[0]['lr']:.2e}")
    dit.load_state_dict(ema)


def quick_check(model: T2V, steps: int = 20) -> None:
    from . import measure, pipeline
    hits = shape_hits = total = 0
    for i, colour in enumerate(data.COLOURS):
        for j, direction in enumerate(data.DIRECTIONS):
            shape = data.SHAPES[(i + j) % 3]
            prompt = data.prompt_for(colour, shape, direction)
            g = pipeline.generate(prompt, seed=500_000 + 10 * i + j, steps=steps, model=model)
            m = measure.measure(g.frames)
            ok = m.colour == colour and m.direction == direction
            hits += ok
            shape_hits += m.shape == shape
            total += 1
            if not ok:
                log(f"check: {prompt!r} -> {m}")
    log(f"check: colour+direction {hits}/{total}, shape {shape_hits}/{total}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint path to write")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every stage's length")
    ap.add_argument("--vae-steps", type=int, default=900)
    ap.add_argument("--clips", type=int, default=8000)
    ap.add_argument("--dit-steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dim", type=int, default=DEFAULT_CONFIG["dim"])
    ap.add_argument("--depth", type=int, default=DEFAULT_CONFIG["depth"])
    ap.add_argument("--heads", type=int, default=DEFAULT_CONFIG["heads"])
    ap.add_argument("--tpatch", type=int, default=DEFAULT_CONFIG["tpatch"])
    ap.add_argument("--shift", type=int, default=DEFAULT_CONFIG["shift"])
    ap.add_argument("--vae-from", help="experiments: take the VAE from this checkpoint, skip stage 1")
    ap.add_argument("--no-check", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    gen = torch.Generator().manual_seed(a.seed + 1)
    model = T2V(dict(dim=a.dim, depth=a.depth, heads=a.heads, tpatch=a.tpatch, shift=a.shift))
    log(f"t2v-tiny: text {count_params(model.text):,} dit {count_params(model.dit):,} "
        f"vae encoder {count_params(model.vae_encoder):,} decoder {count_params(model.vae_decoder):,} params; "
        f"threads {a.threads}, seed {a.seed}, scale {a.scale}")
    s = lambda n: max(1, int(round(n * a.scale)))  # noqa: E731
    if a.vae_from:  # experiments: reuse a checkpoint's VAE
        from .model import load_checkpoint
        old = load_checkpoint(a.vae_from, ("vae_encoder", "vae_decoder"))
        model.vae_encoder.load_state_dict(old.vae_encoder.state_dict())
        model.vae_decoder.load_state_dict(old.vae_decoder.state_dict())
        log(f"VAE from {a.vae_from}")
    else:
        train_vae(model, rng, s(a.vae_steps), 64, kl_weight=1e-4)
    vae_check(model, np.random.default_rng(a.seed + 2))
    lat, ids = encode_clips(model, rng, s(a.clips))
    mean = lat.mean(dim=(0, 2, 3, 4))
    std = lat.std(dim=(0, 2, 3, 4))
    model.latent_mean.copy_(mean)
    model.latent_std.copy_(std)
    log(f"latent mean {mean.numpy().round(3).tolist()} std {std.numpy().round(3).tolist()}")
    lat = model.normalise(lat).contiguous()
    train_dit(model, lat, ids, s(a.dit_steps), a.batch, a.lr, gen)
    model.eval().requires_grad_(False)
    extra = {"command": " ".join([os.path.basename(sys.executable), "-m", "t2v.train"] + list(argv or sys.argv[1:])),
             "seed": a.seed, "threads": a.threads}
    save_checkpoint(model, a.out, extra)
    log(f"wrote {a.out} ({os.path.getsize(a.out):,} bytes)")
    if not a.no_check:
        quick_check(model)
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
