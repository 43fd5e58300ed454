"""phased: write phase plugins for the phased supervisor in Python.

A phase is a subclass of phased.Phase; its executable, named
phased-phase-NAME in the supervisor's plugin directory, ends in
phased.serve(MyPhase()). The SDK speaks docs/protocol.md: go-plugin's
handshake with mutual TLS, the phased.v1.Phase gRPC service, rooms over
ZeroMQ, tensors through shared memory (or zmq between hosts) arriving as
numpy arrays or torch tensors that view the received bytes.

    import phased

    class Transformer(phased.Phase):
        name = "transformer"

        def inputs(self, request, params):
            return [phased.Spec("latent", "float32", [4, 8, 24, 32])]

        def run(self, ctx, request, inputs):
            # A retry resumes where a dead Run's last checkpoint left off.
            step, state = ctx.resume(request.steps)
            latent = state["latent"] if step else inputs["latent"].copy()
            for i in range(step, request.steps):
                ...
                ctx.checkpoint(i + 1, request.steps, {"latent": latent})
                ctx.progress(i + 1, request.steps)
            return {"latent": latent}

    if __name__ == "__main__":
        phased.serve(Transformer())
"""

from __future__ import annotations

import os
import sys
import time

from .api import (Artifact, BatchItem, Cancelled, Config, Context, InvalidArgument, ParamProblem,  # noqa: F401
                  Phase, Request, write_artifact)
from .local import run_local  # noqa: F401
from .tensor import Spec, SpecError, checksum  # noqa: F401

__version__ = "0.1.0"

__all__ = ["Artifact", "BatchItem", "Cancelled", "Config", "Context", "InvalidArgument", "ParamProblem", "Phase", "Request",
           "Spec", "SpecError", "checksum", "run_local", "serve", "write_artifact"]


def serve(phase: Phase) -> None:
    """Serve phase as a phase plugin until the supervisor stops it, then
    exit 0. Run from the executable's main; never returns."""
    from . import executor, log, plugin, runtime

    plugin.check_environment()  # before anything else can fail or print
    # A thread that hands work to another (gRPC to the executor, the
    # executor to the transfer threads and back) and keeps running makes
    # it wait for the GIL up to the switch interval, 5 ms by default, on
    # every hand-off of a request's path: 0.5 ms keeps those waits short.
    sys.setswitchinterval(0.0005)
    logger = log.plugin_logger(phase.name or type(phase).__name__)
    main = executor.Executor()  # load and run execute on this (the main) thread
    rt = runtime.Runtime(phase, logger, executor=main)

    def stop():
        errors = rt.release(time.monotonic() + 5.0)
        for e in errors:
            logger.warning("release at shutdown", extra={"error": e})

    try:
        plugin.serve_services([runtime.handler(runtime.Service(rt))], on_shutdown=stop, executor=main)
    except plugin.HandshakeError:
        raise
    except BaseException as e:  # noqa: BLE001 - say why, then exit non-zero
        logger.error("plugin failed", extra={"error": runtime.reason(e)})
        sys.stderr.flush()
        os._exit(1)
    sys.stderr.flush()
    # gRPC's threads and any thread a phase left behind must not keep the
    # process alive: everything this process made is released by now.
    os._exit(0)
