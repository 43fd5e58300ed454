#!/usr/bin/python3
"""The Python side of the hop benchmarks (sdk/python/bench_test.go) and
of the Go<->Python transfer tests (handoff_test.go, curve_test.go): a
peer driven one line at a time on stdin, answering on stdout.

    hoppeer.py RUN_DIR [PEER_TIMEOUT_SECONDS]

Its managers use the CURVE key file $PHASED_CURVE_KEY_FILE names, if any,
for zmq rooms (docs/protocol.md 4.7), as a phase's runtime does.

    py2py SIZE ROOM           one shm hop between two Python managers
    recv SIZE ROOM ENDPOINT   open a receiver of SIZE bytes ("open"), wait
                              for the bytes, verify, remove ("ok")
    send SIZE ROOM            open a sender ("ep ENDPOINT"), send SIZE
                              bytes once the receiver's descriptor comes,
                              remove ("ok")
    lendrecv SIZE ROOM ENDPOINT
                              open a receiver of SIZE bytes ("open"), wait
                              for them, then remove the room and drop the
                              array (a lent segment goes back to its
                              sender): "ok CHECKSUM readonly=0|1
                              file=NAME", NAME being the file the array
                              maps (- for none)
    lendsend SIZE ROOM [written]
                              open a sender ("ep ENDPOINT"), write SIZE
                              bytes of the pattern into memory from alloc
                              (telling its checksum with written), send it
                              (lent to a receiver that offers a hand-off
                              table): "sent FILE", the output segment
    lendfree ROOM             free that output and remove the room ("ok")
    realloc SIZE              alloc SIZE bytes again: "same" if they are
                              the segment last freed by lendfree, else
                              "new"; then free them
    zrecv SIZE ROOM ENDPOINT  open a zmq receiver of SIZE bytes ("open"),
                              wait for them, check them against the
                              pattern, remove ("ok"; a failed room:
                              "error: REASON")
    zsend SIZE ROOM           open a zmq sender ("ep ENDPOINT"), send
                              SIZE bytes of the pattern once the
                              receiver's descriptor comes ("sent"); the
                              room stays until zclose ROOM (its data is
                              queued, not yet delivered, when send
                              returns)
    zopen ROOM                open a zmq sender and wait for nothing
                              ("ep ENDPOINT")
    zclose ROOM               remove a zmq sender ("ok")
    refused                   "refused N": the clients the ZAP handler
                              of the sending manager refused
    quit                      release both managers and exit

Every answer is one line; an error is "error: TEXT".
"""

import os
import sys
import threading

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import numpy as np  # noqa: E402

from phased.tensor import Spec, checksum  # noqa: E402
from phased.transfer import Manager, curve_from_env  # noqa: E402

SPEC_NAME = "latent"


def pattern(size: int) -> np.ndarray:
    """The bytes every side sends: i*7 + i>>9 (mod 256), as the Go bench fills."""
    i = np.arange(size, dtype=np.uint64)
    return ((i * 7 + (i >> 9)) & 0xFF).astype(np.uint8)


def main() -> None:
    run_dir = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 0
    pid = os.getpid()
    curve = curve_from_env()
    a = Manager(name=f"pya.{pid}", run_dir=run_dir, peer_timeout=timeout, curve=curve)
    b = Manager(name=f"pyb.{pid}", run_dir=run_dir, peer_timeout=timeout, curve=curve)
    a.start()
    b.start()
    sources = {}
    lent = {}  # room -> the array lendsend sent
    freed = [0]  # the address of the last array lendfree freed

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
            if f[0] == "lendfree":
                room = int(f[1])
                arr = lent.pop(room)
                freed[0] = arr.ctypes.data
                a.free(arr)
                del arr
                a.remove(room)
                answer("ok")
                continue
            if f[0] == "realloc":
                arr = a.alloc(Spec(SPEC_NAME, "uint8", [int(f[1])]))
                answer("same" if arr.ctypes.data == freed[0] else "new")
                a.free(arr)
                continue
            if f[0] == "refused":
                answer(f"refused {a.refused}")
                continue
            if f[0] == "zopen":
                answer("ep " + a.open_sender(int(f[1]), "zmq"))
                continue
            if f[0] == "zclose":
                a.remove(int(f[1]))
                answer("ok")
                continue
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
            elif f[0] == "zrecv":
                b.open_receiver(room, "zmq", [spec], f[3])
                answer("open")
                try:
                    got = b.receive(room)[0]
                    same = got.tobytes() == source(size).tobytes()
                    del got
                finally:
                    b.remove(room)
                answer("ok" if same else "error: the received bytes differ from the pattern")
            elif f[0] == "zsend":
                ep = a.open_sender(room, "zmq")
                answer("ep " + ep)
                a.send(room, {SPEC_NAME: source(size)})
                answer("sent")
            elif f[0] == "lendrecv":
                b.open_receiver(room, "shm", [spec], f[3])
                answer("open")
                got = b.receive(room)[0]
                facts = (f"{checksum(got)} readonly={int(not got.flags.writeable)} "
                         f"file={mapped_file(got.ctypes.data)}")
                del got
                b.remove(room)
                answer("ok " + facts)
            elif f[0] == "lendsend":
                ep = a.open_sender(room, "shm")
                answer("ep " + ep)
                arr = a.alloc(spec)
                arr[:] = source(size)
                if f[3:] == ["written"]:
                    a.written(arr, checksum(arr))
                lent[room] = arr
                a.send(room, {SPEC_NAME: arr})
                answer("sent " + mapped_file(arr.ctypes.data))
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


def mapped_file(addr: int) -> str:
    """The base name of the file whose mapping holds addr, from
    /proc/self/maps; - for none."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return os.path.basename(parts[5].strip()) if len(parts) == 6 and parts[5].strip() else "-"
    return "-"


def _send(m, room, data, errors):
    try:
        m.send(room, {SPEC_NAME: data})
    except Exception as e:  # noqa: BLE001
        errors.append(e)


if __name__ == "__main__":
    main()
