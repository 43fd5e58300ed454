"""run_local: a pipeline of phases in one process, without the supervisor,
sockets or shared memory. The outputs of each phase go to the next by name,
checked against its declared inputs, as the transfer would check them. It
is what a model author tests first, and the baseline of the overhead
benchmark.
"""

from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

from .api import Artifact, Config, Context, Phase, Request
from .tensor import as_array, dtype_number, to_torch


def configure_local(phases: Sequence[Phase], params: Optional[Dict[str, str]] = None,
                    log: Optional[logging.Logger] = None) -> None:
    """Configure and load each phase as its instance "<name>-0" would be."""
    log = log or logging.getLogger("phased.local")
    for p in phases:
        p.configure(Config(instance=f"{p.name}-0", params=dict(params or {}), log=log))
        p.load(Context(log))


def run_local(phases: Sequence[Phase], request: Request, params: Optional[Dict[str, str]] = None,
              log: Optional[logging.Logger] = None, progress=None) -> Artifact:
    """Run request through configured phases, first to last, and return the
    last one's artifact. progress(phase_name, done, total) gets the reports."""
    log = log or logging.getLogger("phased.local")
    params = dict(params or {})
    outputs: Dict[str, object] = {}
    for i, p in enumerate(phases):
        inputs = {}
        for s in p.inputs(request, params) or []:
            s.check()
            if s.name not in outputs:
                raise RuntimeError(f"phase {p.name}: the receiver asks for tensor {s.name!r}; "
                                   f"the sender has {sorted(outputs)}")
            arr = as_array(outputs[s.name])
            if dtype_number(arr.dtype) != s.dtype or tuple(arr.shape) != s.shape:
                raise RuntimeError(f"phase {p.name}: tensor {s.name!r} is {arr.dtype} {list(arr.shape)}; "
                                   f"want {s}")
            inputs[s.name] = to_torch(arr, s.dtype) if p.arrays == "torch" else arr
        report = (lambda d, t, n=p.name: progress(n, d, t)) if progress else None
        out = p.run(Context(log, report=report, arrays=p.arrays), request, inputs)
        if i == len(phases) - 1:
            if not isinstance(out, Artifact):
                raise RuntimeError("the last phase of the pipeline returned no artifact")
            return out
        if not isinstance(out, dict):
            raise RuntimeError(f"phase {p.name} returned {type(out).__name__}; want a dict of tensors")
        outputs = out
    raise ValueError("run_local needs at least one phase")
