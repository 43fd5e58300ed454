"""The three phase executables (phased-phase-py*) in one process with the
SDK's run_local: an all-Python pipeline gives the Go reference GIF, the
params errors have the built-in phases' format, the transformer reports
progress, leaves its inputs alone and stops when cancelled. The runs
through the real supervisor are supervisor/e2e's python_test.go.

Run: /usr/bin/python3 -m pytest -q examples/toy-python
"""

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import threading

import numpy as np
import pytest

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:0] = [os.path.normpath(os.path.join(HERE, "..", "..", "sdk", "python")), HERE]

phased = pytest.importorskip("phased")
import toymodel as tm  # noqa: E402

with open(os.path.join(HERE, "testdata", "golden.json"), encoding="utf-8") as f:
    CASES = {c["name"]: c for c in json.load(f)["cases"]}

LOG = logging.getLogger("test")


def load(name):
    path = os.path.join(HERE, "phased-phase-" + name)
    loader = importlib.machinery.SourceFileLoader("phase_" + name, path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


ENC, TR, DEC = load("pyencoder").PyEncoder, load("pytransformer").PyTransformer, load("pydecoder").PyDecoder


def configured(cls, params):
    ph = cls()
    ph.configure(phased.Config(instance=ph.name + "-0", params=dict(params), log=LOG))
    return ph


@pytest.mark.parametrize("name", ["demo", "pipeline-python", "odd-sizes", "utf8-negative-seed", "very-long-prompt", "conformance"])
def test_pipeline_matches_go(tmp_path, name):
    c = CASES[name]
    phases = [configured(cls, c["params"]) for cls in (ENC, TR, DEC)]
    reports = []
    req = phased.Request(id="r-" + name, prompt=c["prompt"] * c.get("prompt_repeat", 1), seed=c["seed"], steps=c["steps"],
                         artifact_dir=str(tmp_path / "out"))
    art = phased.run_local(phases, req, params=c["params"], progress=lambda n, d, t: reports.append((n, d, t)))
    data = open(art.path, "rb").read()
    assert art.path == str(tmp_path / "out" / (req.id + ".gif"))
    assert art.media_type == "image/gif" and art.size == len(data) == c["gif_len"]
    assert art.sha256 == hashlib.sha256(data).hexdigest() == c["gif_sha256"]
    assert reports == [("pytransformer", i + 1, c["steps"]) for i in range(c["steps"])]


def test_params_errors():
    for cls in (ENC, TR, DEC):
        with pytest.raises(ValueError) as e:
            configured(cls, {"height": "-4"})
        assert str(e.value) == f'{cls.name}: params: height = "-4": must be a positive integer'
        with pytest.raises(ValueError) as e:
            configured(cls, {"steps": "3"})
        assert str(e.value).startswith(f'{cls.name}: params: steps = "3": unknown param; the known params are ')


def test_validate_params():
    """validate_params reports every problem that configure refuses the
    first of, without configuring."""
    for cls in (ENC, TR, DEC):
        ph = cls()
        assert ph.validate_params({"frames": "3"}) == []
        got = ph.validate_params({"fraems": "3", "height": "-4"})
        assert got == [("fraems", 'fraems = "3": unknown param; did you mean "frames"? The known params are '
                        'channels, context_dim, context_len, delay, frames, height, scale, width'),
                       ("height", 'height = "-4": must be a positive integer')]
        with pytest.raises(ValueError) as e:
            configured(cls, {"fraems": "3", "height": "-4"})
        assert str(e.value) == f"{cls.name}: params: {got[0][1]}"


def test_specs():
    params = {"context_len": "4", "context_dim": "8", "channels": "3", "frames": "2", "height": "4", "width": "6"}
    req = phased.Request(id="x")
    assert configured(ENC, params).inputs(req, params) == []
    assert configured(TR, params).inputs(req, params) == [phased.Spec("context", "float32", [4, 8]),
                                                          phased.Spec("latent", "float32", [3, 2, 4, 6])]
    assert configured(DEC, params).inputs(req, params) == [phased.Spec("latent", "float32", [3, 2, 4, 6])]


def test_transformer_leaves_inputs_and_cancels():
    p = tm.Params()
    cond, latent = tm.encode(p, "x", 1)
    ins = {"context": cond.copy(), "latent": latent.copy()}
    for a in ins.values():
        a.flags.writeable = False  # as views of received memory may be
    tr = configured(TR, {})
    out = tr.run(phased.Context(LOG), phased.Request(id="a", steps=3), ins)
    assert np.array_equal(ins["latent"], latent) and np.array_equal(out["context"], cond)
    assert out["latent"].dtype == np.float32 and out["latent"].flags.c_contiguous
    assert not np.array_equal(out["latent"], latent)

    cancel = threading.Event()
    n = []

    def report(done, total):
        n.append(done)
        if done == 2:
            cancel.set()

    with pytest.raises(phased.Cancelled):
        tr.run(phased.Context(LOG, cancel, report), phased.Request(id="b", steps=1000), ins)
    assert n == [1, 2]
    with pytest.raises(ValueError, match="^pytransformer: steps must be 0 or more: got -1$"):
        tr.run(phased.Context(LOG), phased.Request(id="c", steps=-1), ins)


def test_decoder_bad_request(tmp_path):
    dec = configured(DEC, {})
    lat = tm.encode(tm.Params(), "", 0)[1]
    with pytest.raises(ValueError):
        dec.run(phased.Context(LOG), phased.Request(id="../x", artifact_dir=str(tmp_path)), {"latent": lat})
    with pytest.raises(ValueError):
        dec.run(phased.Context(LOG), phased.Request(id="x"), {"latent": lat})
    assert os.listdir(tmp_path) == []
