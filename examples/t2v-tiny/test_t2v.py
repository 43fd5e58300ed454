"""Tests of t2v-tiny: run with /usr/bin/python3 -m pytest examples/t2v-tiny.

The main one generates 20 clips for prompts covering every colour and
direction, with seeds training never used, and measures them.
"""

import hashlib
import io
import logging
import os
import re
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from t2v import data, measure, pipeline, tokenizer  # noqa: E402

torch.set_num_threads(2)
CHECKPOINT = pipeline.DEFAULT_CHECKPOINT
HELD_OUT_SEED = 7_000_000  # training draws from seeds 1234, 1235 and 500000..500100


def follow_prompts():
    """20 (prompt, colour, shape, direction): every colour and direction, and shapes varied."""
    colours = list(data.COLOURS)
    out = []
    for i in range(20):
        colour = colours[i % len(colours)]
        direction = data.DIRECTIONS[(i + i // len(colours)) % len(data.DIRECTIONS)]
        shape = data.SHAPES[(i // 2) % len(data.SHAPES)]
        out.append((data.prompt_for(colour, shape, direction), colour, shape, direction))
    return out


@pytest.fixture(scope="module")
def model():
    return pipeline.load(CHECKPOINT)


def test_prompts_cover_every_colour_and_direction():
    ps = follow_prompts()
    assert {c for _, c, _, _ in ps} == set(data.COLOURS)
    assert {d for _, _, _, d in ps} == set(data.DIRECTIONS)
    assert {s for _, _, s, _ in ps} == set(data.SHAPES)


# Issue 12 asks for at least 18 of 20; the committed checkpoint measures
# 20 (shape, not asked for, 11: squares tend to come out round).
def test_follows_prompts(model):
    hits = shapes = 0
    lines = []
    for i, (prompt, colour, shape, direction) in enumerate(follow_prompts()):
        g = pipeline.generate(prompt, seed=HELD_OUT_SEED + i, steps=pipeline.DEFAULT_STEPS, model=model)
        m = measure.measure(g.frames)
        ok = m.colour == colour and m.direction == direction
        hits += ok
        shapes += m.shape == shape
        lines.append(f"{'ok ' if ok else 'BAD'} {prompt!r}: {m}")
    print("\n".join(lines))
    print(f"colour+direction {hits}/20, shape {shapes}/20")
    assert hits >= 18, "\n".join(lines)


def test_deterministic_given_seed(model):
    a = pipeline.generate("a blue square moving up", seed=HELD_OUT_SEED + 99, steps=5, model=model)
    b = pipeline.generate("a blue square moving up", seed=HELD_OUT_SEED + 99, steps=5, model=model)
    c = pipeline.generate("a blue square moving up", seed=HELD_OUT_SEED + 98, steps=5, model=model)
    assert np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (8, 64, 64, 3) and a.frames.dtype == np.uint8


def test_gif(model):
    from PIL import Image
    g = pipeline.generate("a red circle moving left", seed=HELD_OUT_SEED, steps=3, model=model)
    img = Image.open(io.BytesIO(g.gif))
    assert img.format == "GIF" and img.size == (64, 64) and img.n_frames == 8


def test_checkpoint_matches_readme():
    with open(CHECKPOINT, "rb") as f:
        blob = f.read()
    assert len(blob) <= 20 * 1000 * 1000
    readme = open(os.path.join(HERE, "README.md")).read()
    m = re.search(r"SHA-256[^`]*`([0-9a-f]{64})`", readme)
    assert m, "README.md names no SHA-256"
    assert hashlib.sha256(blob).hexdigest() == m.group(1)


# --- data, measurement, tokenizer ----------------------------------------------------------

def test_data_is_seeded_and_in_frame():
    a, pa, sa = data.batch(np.random.default_rng(5), 16)
    b, pb, sb = data.batch(np.random.default_rng(5), 16)
    assert np.array_equal(a, b) and pa == pb
    assert a.shape == (16, 8, 64, 64, 3) and a.dtype == np.float32
    for spec in sa:
        for cx, cy in spec.centres():
            assert spec.radius <= cx <= 64 - spec.radius and spec.radius <= cy <= 64 - spec.radius


def test_measure_reads_the_training_clips():
    rng = np.random.default_rng(11)
    for _ in range(60):
        spec = data.random_spec(rng)
        m = measure.measure(data.to_uint8(data.render(spec)))
        assert (m.colour, m.direction, m.shape) == (spec.colour, spec.direction, spec.shape), (spec, m)
    assert measure.measure(np.zeros((8, 64, 64, 3), np.uint8)).colour is None


def test_tokenizer():
    ids, unknown = tokenizer.encode("A red circle moving left.")
    assert len(ids) == tokenizer.MAX_LEN and unknown == []
    assert tokenizer.decode(ids) == "a red circle moving left"
    assert ids[5:] == [tokenizer.PAD_ID] * 3
    ids, unknown = tokenizer.encode("a crimson circle moving left")
    assert ids[1] == tokenizer.UNK_ID and unknown == ["crimson"]
    ids, unknown = tokenizer.encode("a red circle moving to the left and then right again")
    assert len(ids) == tokenizer.MAX_LEN and unknown[-1].startswith("...")
    assert tokenizer.parse("the green triangle going to the right") == ("green", "triangle", "right")
    assert tokenizer.parse("yellow square moving up") == ("yellow", "square", "up")
    with pytest.raises(ValueError, match="unknown word"):
        tokenizer.parse("a red fox running through fresh snow")
    with pytest.raises(ValueError, match="outside the grammar"):
        tokenizer.parse("a circle red moving left")
    with pytest.raises(ValueError, match="outside the grammar"):
        tokenizer.parse("a red circle moving to the up")


def test_steps():
    assert pipeline.resolve_steps(0) == pipeline.DEFAULT_STEPS == 20
    assert pipeline.resolve_steps(7) == 7
    for bad in (-1, 1001):
        with pytest.raises(ValueError):
            pipeline.resolve_steps(bad)


# --- the phases, in one process (phased.run_local) --------------------------------------------

def _phases():
    sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "..", "sdk", "python")))
    phased = pytest.importorskip("phased")
    from t2v import phases
    return phased, phases


def test_phases_run_local(tmp_path, model):
    phased, phases = _phases()
    ps = [phases.Encoder(), phases.Transformer(), phases.Decoder()]
    phased.local.configure_local(ps, {})
    reports = []
    req = phased.Request("r1", prompt="a yellow triangle moving down", seed=HELD_OUT_SEED + 7, steps=0,
                         artifact_dir=str(tmp_path))
    art = phased.run_local(ps, req, progress=lambda n, d, t: reports.append((n, d, t)))
    assert art.media_type == "image/gif" and os.path.getsize(art.path) == art.size
    assert [r for r in reports if r[0] == "t2v-transformer"][-1] == ("t2v-transformer", 20, 20)
    # the same as generate(): the phases call the same functions
    g = pipeline.generate(req.prompt, seed=req.seed, steps=20, model=model)
    assert open(art.path, "rb").read() == g.gif


def test_phase_params(tmp_path):
    phased, phases = _phases()
    log = logging.getLogger("t2v-test")
    for phase, params, want in [
        (phases.Transformer(), {"guidance": "lots"}, "guidance"),
        (phases.Transformer(), {"guidance": "0.5"}, "want 1 to 20"),
        (phases.Decoder(), {"colour": "red"}, "unknown param 'colour'"),
        (phases.Encoder(), {"checkpoint": str(tmp_path / "none.pt")}, "no such file"),
        (phases.Encoder(), {"strict": "maybe"}, "strict"),
    ]:
        with pytest.raises(ValueError, match=want):
            phase.configure(phased.Config(instance="x-0", params=params, log=log))
    # validate_params: every problem, without loading; configure refuses the first.
    problems = phases.Decoder().validate_params({"frame_mss": "40", "threads": "0", "frame_ms": "x"})
    assert [(p.param, p.message) for p in problems] == [
        ("frame_ms", "param frame_ms='x': invalid literal for int() with base 10: 'x'"),
        ("frame_mss", "unknown param 'frame_mss' (did you mean 'frame_ms'? known: checkpoint, frame_ms, threads)"),
        ("threads", "param threads='0': want 1 to 256")]
    assert phases.Transformer().validate_params({"guidance": "4", "threads": "2"}) == []
    enc = phases.Encoder()
    phased.local.configure_local([enc], {"strict": "true"})
    with pytest.raises(phased.InvalidArgument, match="unknown word"):
        enc.run(phased.Context(log), phased.Request("r2", prompt="a red fox running through fresh snow"), {})
    tr = phases.Transformer()
    phased.local.configure_local([tr], {})
    with pytest.raises(phased.InvalidArgument, match="steps"):
        tr.run(phased.Context(log), phased.Request("r3", steps=5000), {"context": torch.zeros(8, 128)})


def test_transformer_resumes_from_its_checkpoint(tmp_path, model):
    """A Run that resumes from the checkpoint saved after step 3 of 6 makes
    the latent of a Run never interrupted, byte for byte, and that is
    denoise's without checkpoints; it computes steps 4 to 6 only."""
    phased, phases = _phases()
    from phased.checkpoint import RunCheckpointer, read
    log = logging.getLogger("t2v-test")
    tr = phases.Transformer()
    phased.local.configure_local([tr], {})
    context, _ = pipeline.encode_prompt(model, "a green circle moving right")
    req = phased.Request("r1", seed=HELD_OUT_SEED + 3, steps=6)
    path = str(tmp_path / "t2v-transformer.ckpt")

    def run():
        reports = []
        ckpt = RunCheckpointer(path, 3, req.id, [context], log, arrays="torch")
        ctx = phased.Context(log, report=lambda d, t: reports.append(d), arrays="torch", checkpointer=ckpt)
        return tr.run(ctx, req, {"context": context})["latent"], reports

    whole, reports = run()
    assert reports == [1, 2, 3, 4, 5, 6]
    h, state = read(path)
    assert (h.step, h.total) == (3, 6) and [(n, a.dtype, a.shape) for n, a in state] == [
        ("latent", np.float32, pipeline.state_shape(model))]
    resumed, reports = run()
    assert reports == [4, 5, 6]
    assert resumed.numpy().tobytes() == whole.numpy().tobytes()
    plain = pipeline.denoise(model, context, req.seed, 6)
    assert plain.numpy().tobytes() == whole.numpy().tobytes()
    # The state at step 3 is the sampler's own: denoise resumed from it alone gives the same.
    again = pipeline.denoise(model, context, req.seed, 6, start=3, state=torch.from_numpy(state[0][1]))
    assert again.numpy().tobytes() == whole.numpy().tobytes()


def test_transformer_run_batch(tmp_path, model):
    """run_batch denoises requests together, each as its own: other seeds
    and steps, one resuming from its checkpoint, one saving its own, one
    cancelled after its second step (it leaves; the others go on). Each
    latent is within float32 noise of the request's unbatched latent (the
    DiT's kernels block by batch size: about 3e-5 at most, measured), its
    progress is its own, and a batch of one gives run's bytes."""
    import threading
    phased, phases = _phases()
    from phased.checkpoint import RunCheckpointer, read
    log = logging.getLogger("t2v-test")
    tr = phases.Transformer()
    phased.local.configure_local([tr], {})
    assert (tr.max_batch, tr.batch_wait) == (1, 0.02)

    def item(rid, prompt, seed, steps, every=0, cancel_after=0):
        context, _ = pipeline.encode_prompt(model, prompt)
        reports, cancel = [], threading.Event()

        def report(done, total):
            reports.append(done)
            if cancel_after and done >= cancel_after:
                cancel.set()

        ckpt = RunCheckpointer(str(tmp_path / f"{rid}.ckpt"), every, rid, [context], log,
                               arrays="torch") if every else None
        ctx = phased.Context(log, cancel, report, arrays="torch", checkpointer=ckpt)
        return phased.BatchItem(ctx, phased.Request(rid, prompt=prompt, seed=seed, steps=steps),
                                {"context": context}), reports

    def alone(rid, prompt, seed, steps, every=0):
        it, reports = item(rid, prompt, seed, steps, every)
        return tr.run(it.ctx, it.request, it.inputs)["latent"], reports

    a_alone, _ = alone("a", "a red circle moving left", HELD_OUT_SEED + 11, 4)
    # b's unbatched Run saves after step 3 of 6: its batched Run resumes there.
    b_alone, reports = alone("b", "a blue square moving up", HELD_OUT_SEED + 12, 6, every=3)
    assert reports == [1, 2, 3, 4, 5, 6] and read(str(tmp_path / "b.ckpt"))[0].step == 3
    c_alone, _ = alone("c", "the white triangle going right", HELD_OUT_SEED + 13, 4)

    a, a_reports = item("a", "a red circle moving left", HELD_OUT_SEED + 11, 4, every=2)
    b, b_reports = item("b", "a blue square moving up", HELD_OUT_SEED + 12, 6, every=3)
    c, c_reports = item("c", "the white triangle going right", HELD_OUT_SEED + 13, 4)
    d, d_reports = item("d", "a green circle moving down", HELD_OUT_SEED + 14, 4, cancel_after=2)
    got = tr.run_batch([a, b, c, d])
    assert len(got) == 4 and isinstance(got[3], phased.Cancelled)
    assert (a_reports, b_reports, c_reports, d_reports) == ([1, 2, 3, 4], [4, 5, 6], [1, 2, 3, 4], [1, 2])
    assert read(str(tmp_path / "a.ckpt"))[0].step == 2, "a batched item saves its own checkpoints"
    diffs = [(out["latent"] - want).abs().max().item() for out, want in zip(got, (a_alone, b_alone, c_alone))]
    print(f"batched vs unbatched latents: max |diff| {max(diffs):.3g}")
    assert max(diffs) < 1e-3, diffs

    one, _ = item("c", "the white triangle going right", HELD_OUT_SEED + 13, 4)
    assert tr.run_batch([one])[0]["latent"].numpy().tobytes() == c_alone.numpy().tobytes()
    # Without guidance (one DiT row per request), and an item that fails alone.
    tr1 = phases.Transformer()
    phased.local.configure_local([tr1], {"guidance": "1"})
    p, _ = item("p", "a red circle moving left", HELD_OUT_SEED + 21, 2)
    q, _ = item("q", "a blue square moving up", HELD_OUT_SEED + 22, 3)
    bad, _ = item("bad", "a blue square moving up", 1, 5000)
    got = tr1.run_batch([p, bad, q])
    assert isinstance(got[1], phased.InvalidArgument) and "steps 5000" in str(got[1])
    for out, it in ((got[0], p), (got[2], q)):
        want = tr1.run(it.ctx, it.request, it.inputs)["latent"]
        assert (out["latent"] - want).abs().max().item() < 1e-3
