"""The three phases of t2v-tiny, as phased.Phase classes; the executables
phased-phase-t2v-encoder, -transformer and -decoder serve them.

    encoder      prompt                     -> context float32 [8, 128]
    transformer  context, seed, steps       -> latent  float32 [4, 8, 16, 16]
    decoder      latent                     -> GIF (8 frames, 64x64)

Params (all optional, strings):
    every phase   checkpoint  path of the checkpoint (default: t2v-tiny.pt next to the executables)
                  threads     torch threads for this process (default: torch's own choice)
    encoder       strict      "true": refuse prompts outside the grammar; "false" (default): encode
                              unknown words as <unk> and log them
    transformer   guidance    classifier-free guidance scale, 1 to 20 (default 4; 1 = no guidance)
    decoder       frame_ms    GIF frame duration, 20 to 1000 ms (default 125)

request.steps is the number of DDIM steps; 0 means the default, 20.
"""

from __future__ import annotations

import difflib
import os
from typing import Callable, Dict, List

import phased
import torch

from . import pipeline, tokenizer
from .model import DEFAULT_CONFIG


def _bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes"):
        return True
    if v.lower() in ("false", "0", "no"):
        return False
    raise ValueError("want true or false")


def _number(lo: float, hi: float, kind=float) -> Callable[[str], float]:
    def parse(v: str):
        x = kind(v)
        if not (lo <= x <= hi):
            raise ValueError(f"want {lo:g} to {hi:g}")
        return x
    return parse


def _path(v: str) -> str:
    if not os.path.isfile(v):
        raise ValueError("no such file")
    return os.path.abspath(v)


COMMON = {"checkpoint": _path, "threads": _number(1, 256, int)}


def param_problems(params: Dict[str, str], known: Dict[str, Callable]) -> List[phased.ParamProblem]:
    """Every unknown or bad param, in key order; an unknown key close to a
    known one gets a "did you mean"."""
    known = dict(COMMON, **known)
    out = []
    for k, v in sorted(params.items()):
        if k not in known:
            near = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.75)
            hint = f"did you mean {near[0]!r}? " if near else ""
            out.append(phased.ParamProblem(k, f"unknown param {k!r} ({hint}known: {', '.join(sorted(known))})"))
            continue
        try:
            known[k](v)
        except ValueError as e:
            out.append(phased.ParamProblem(k, f"param {k}={v!r}: {e}"))
    return out


def parse_params(phase: str, params: Dict[str, str], known: Dict[str, Callable]) -> Dict[str, object]:
    """The params parsed; a ValueError with the first of param_problems."""
    problems = param_problems(params, known)
    if problems:
        raise ValueError(f"{phase}: {problems[0].message}")
    known = dict(COMMON, **known)
    return {k: known[k](v) for k, v in sorted(params.items())}


class _T2VPhase(phased.Phase):
    version = "0.1.0"
    arrays = "torch"
    parts = ()
    known: Dict[str, Callable] = {}

    def configure(self, config):
        self.params = parse_params(self.name, config.params, self.known)
        self.log = config.log
        self.model = None
        if "threads" in self.params:
            torch.set_num_threads(self.params["threads"])

    def validate_params(self, params):
        return param_problems(params, self.known)

    def load(self, ctx):
        path = self.params.get("checkpoint") or pipeline.DEFAULT_CHECKPOINT
        self.model = pipeline.load(path, self.parts)
        ctx.log.info(f"loaded {', '.join(self.parts)} from {path}")

    def _cfg(self):
        return self.model.config if self.model is not None else DEFAULT_CONFIG

    def close(self):
        self.model = None


class Encoder(_T2VPhase):
    name = "t2v-encoder"
    parts = ("text",)
    known = {"strict": _bool}

    def run(self, ctx, request, inputs):
        if self.params.get("strict"):
            try:
                tokenizer.parse(request.prompt)
            except ValueError as e:
                raise phased.InvalidArgument(str(e)) from None
        context, unknown = pipeline.encode_prompt(self.model, request.prompt)
        if unknown:
            ctx.log.warning(f"request {request.id}: words outside the vocabulary, encoded as <unk>: "
                            f"{', '.join(unknown)} (the grammar is {tokenizer.GRAMMAR})")
        return {"context": context}


class Transformer(_T2VPhase):
    """The DiT. It can batch: with the config's batch { max_size = N } the
    Runs that reach an instance together denoise in one DiT forward per
    step (up to N, gathered for max_wait, 20 ms unless it says). It
    defaults to a batch of one, because a batched latent may differ from
    the request's unbatched one in the last bits, and a GIF then from
    local.py's (generate()'s) byte for byte."""

    name = "t2v-transformer"
    parts = ("dit",)
    known = {"guidance": _number(1.0, 20.0)}
    max_batch = 1
    batch_wait = 0.02

    def inputs(self, request, params):
        cfg = self._cfg()
        return [phased.Spec("context", "float32", [cfg["ctx_len"], cfg["ctx_dim"]])]

    def _job(self, ctx, request, inputs) -> pipeline.Denoise:
        """What denoising request takes: its steps, and where it resumes."""
        try:
            steps = pipeline.resolve_steps(request.steps)
        except ValueError as e:
            raise phased.InvalidArgument(str(e)) from None
        # A retry of a request whose instance died resumes from the
        # sampler's state at its last checkpoint, if it has one (only when
        # the config sets checkpoint_every; run_local never resumes).
        start, state = ctx.resume(steps)
        x = state.get("latent")
        if start and (x is None or x.dtype != torch.float32 or tuple(x.shape) != pipeline.state_shape(self.model)):
            ctx.log.warning(f"request {request.id}: its checkpoint holds no float32 latent "
                            f"{list(pipeline.state_shape(self.model))}: starting from step 0")
            start, x = 0, None

        def checkpoint(done, total, x):
            ctx.checkpoint(done, total, {"latent": x})

        return pipeline.Denoise(inputs["context"], request.seed, steps, progress=ctx.progress,
                                cancelled=ctx.cancelled, start=start, state=x if start else None,
                                checkpoint=checkpoint)

    @staticmethod
    def _output(ctx, latent):
        # Into memory the hop to the decoder lends instead of copying
        # (ordinary memory in run_local).
        out = ctx.alloc("latent", "float32", list(latent.shape))
        out.copy_(latent)
        return {"latent": out}

    def run(self, ctx, request, inputs):
        j = self._job(ctx, request, inputs)
        try:
            latent = pipeline.denoise(self.model, j.context, j.seed, j.steps,
                                      self.params.get("guidance", pipeline.DEFAULT_GUIDANCE),
                                      progress=j.progress, cancelled=j.cancelled, start=j.start, state=j.state,
                                      checkpoint=j.checkpoint)
        except InterruptedError:
            raise phased.Cancelled("cancelled") from None
        return self._output(ctx, latent)

    def run_batch(self, items):
        results = [None] * len(items)
        jobs, index = [], []
        for k, it in enumerate(items):
            try:
                jobs.append(self._job(it.ctx, it.request, it.inputs))
                index.append(k)
            except Exception as e:  # noqa: BLE001 - fails that item only
                results[k] = e
        got = pipeline.denoise_batch(self.model, jobs, self.params.get("guidance", pipeline.DEFAULT_GUIDANCE))
        for k, latent in zip(index, got):
            if isinstance(latent, InterruptedError):
                results[k] = phased.Cancelled("cancelled")
            elif isinstance(latent, Exception):
                results[k] = latent
            else:
                try:
                    results[k] = self._output(items[k].ctx, latent)
                except Exception as e:  # noqa: BLE001 - fails that item only
                    results[k] = e
        return results


class Decoder(_T2VPhase):
    name = "t2v-decoder"
    parts = ("vae_decoder",)
    known = {"frame_ms": _number(20, 1000, int)}

    def inputs(self, request, params):
        cfg = self._cfg()
        s = cfg["latent_size"]
        return [phased.Spec("latent", "float32", [cfg["latent_ch"], cfg["frames"], s, s])]

    def run(self, ctx, request, inputs):
        frames = pipeline.decode_frames(self.model, inputs["latent"])
        gif = pipeline.gif_bytes(frames, self.params.get("frame_ms", pipeline.GIF_FRAME_MS))
        return phased.write_artifact(request, gif, ext=".gif", media_type="image/gif")
