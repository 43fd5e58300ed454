#!/usr/bin/python3
"""t2v-tiny's three phases called in one process, without the supervisor:
the same classes the executables serve, run by phased.run_local. What the
end-to-end test compares the supervisor's GIFs with, and the baseline of
the latency benchmark (supervisor/e2e/python_bench_test.go).

    local.py [--param k=v ...] OUT_DIR ID SEED STEPS PROMPT
        writes OUT_DIR/ID.gif and prints its path
    local.py [--param k=v ...] --serve OUT_DIR
        reads "ID<TAB>SEED<TAB>STEPS<TAB>PROMPT" lines, answers each with
        "NANOSECONDS<TAB>PATH" (the time of the three phases' run calls)
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:0] = [os.path.normpath(os.path.join(HERE, "..", "..", "sdk", "python")), HERE]

import phased  # noqa: E402
from phased.local import configure_local  # noqa: E402
from t2v.phases import Decoder, Encoder, Transformer  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--param", action="append", default=[], help="a param k=v given to every phase")
    ap.add_argument("--serve", action="store_true")
    ap.add_argument("out")
    ap.add_argument("request", nargs="*")
    a = ap.parse_args(argv)
    params = dict(kv.split("=", 1) for kv in a.param)
    phases = [Encoder(), Transformer(), Decoder()]
    configure_local(phases, params)

    def one(rid, seed, steps, prompt):
        req = phased.Request(id=rid, prompt=prompt, seed=int(seed), steps=int(steps), artifact_dir=a.out)
        start = time.perf_counter_ns()
        art = phased.run_local(phases, req, params)
        return time.perf_counter_ns() - start, art.path

    if not a.serve:
        if len(a.request) != 4:
            ap.error("want ID SEED STEPS PROMPT")
        print(one(*a.request)[1])
        return 0
    print("ready", flush=True)
    for line in sys.stdin:
        rid, seed, steps, prompt = line.rstrip("\n").split("\t", 3)
        ns, path = one(rid, seed, steps, prompt)
        print(f"{ns}\t{path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
