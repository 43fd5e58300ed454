#!/usr/bin/python3
"""The Python side of the hop benchmarks (sdk/python/bench_test.go): a
peer driven one line at a time on stdin, answering on stdout.

    hoppeer.py RUN_DIR
    py2py SIZE ROOM           one shm hop between two Python managers
    recv SIZE ROOM ENDPOINT   open a receiver of SIZE bytes ("open"), wait
                              for the bytes, verify, remove ("ok")
    send SIZE ROOM            open a sender ("ep ENDPOINT"), send SIZE
                              bytes once the receiver's descriptor comes,
                              remove ("ok")
    quit                      release both managers and exit

Every answer is one line; an error is "error: TEXT".
"""

import os
import sys
import threading

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from phased.tensor import Spec  # noqa: E402
from phased.transfer import Manager  # noqa: E402

SPEC_NAME = "latent"


def pattern(size: int) -> np.ndarray:
    """The bytes every side sends: i*7 + i>>9 (mod 256), as the Go bench fills."""
    i = np.arange(size, dtype=np.uint64)
    return ((i * 7 + (i >> 9)) & 0xFF).astype(np.uint8)


def main() -> None:
    run_dir = sys.argv[1]
    pid = os.getpid()
    a = Manager(name=f"pya.{pid}", run_dir=run_dir)
    b = Manager(name=f"pyb.{pid}", run_dir=run_dir)
    a.start()
    b.start()
    sources = {}

    def source(size):
        if size not in sources:
            sources[size] = pattern(size)
        return sources[size]

    def answer(line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    answer("ready")
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        try:
            if f[0] == "quit":
                break
            size, room = int(f[1]), int(f[2])
            spec = Spec(SPEC_NAME, "uint8", [size])
            if f[0] == "py2py":
                ep = a.open_sender(room, "shm")
                b.open_receiver(room, "shm", [spec], ep)
                errors = []
                t = threading.Thread(target=lambda: _send(a, room, source(size), errors))
                t.start()
                b.receive(room)
                t.join()
                if errors:
                    raise errors[0]
                a.remove(room)
                b.remove(room)
                answer("ok")
            elif f[0] == "recv":
                b.open_receiver(room, "shm", [spec], f[3])
                answer("open")
                b.receive(room)
                b.remove(room)
                answer("ok")
            elif f[0] == "send":
                ep = a.open_sender(room, "shm")
                answer("ep " + ep)
                a.send(room, {SPEC_NAME: source(size)})
                a.remove(room)
                answer("ok")
            else:
                answer(f"error: unknown command {f[0]!r}")
        except Exception as e:  # noqa: BLE001 - the benchmark shows it
            answer(f"error: {e}")
    a.close()
    b.close()


def _send(m, room, data, errors):
    try:
        m.send(room, {SPEC_NAME: data})
    except Exception as e:  # noqa: BLE001
        errors.append(e)


if __name__ == "__main__":
    main()
