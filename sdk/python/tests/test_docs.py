"""The Python in the docs compiles, and the names it takes from phased
exist: a renamed API fails here, not in a reader's hands. The protocol's
shared-memory layout and control block are the Python SDK's."""

import ast
import glob
import os
import re

import phased

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "sdk", "python", "README.md")])


def blocks():
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        for m in re.finditer(r"```python\n(.*?)```", text, re.S):
            yield os.path.relpath(path, ROOT), text[:m.start()].count("\n") + 2, m.group(1)


def test_python_blocks():
    found = 0
    for path, line, code in blocks():
        found += 1
        tree = compile(code, f"{path}:{line}", "exec", ast.PyCF_ONLY_AST)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "phased":
                assert hasattr(phased, node.attr), f"{path}:{line + node.lineno - 1}: phased.{node.attr} does not exist"
    assert found >= 3, "the docs' Python examples were not found"


PROTOCOL = os.path.join(ROOT, "docs", "protocol.md")


def table(path, marker):
    """The body rows of the table after <!-- marker --> in path: its cells,
    stripped of spaces and backquotes (as internal/doctest.Table reads it)."""
    with open(path) as f:
        lines = f.read().split("\n")
    at = lines.index(f"<!-- {marker} -->")
    rows = []
    for line in lines[at + 1:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    assert len(rows) > 2, f"{path}: the table after <!-- {marker} --> has no rows"
    return rows[2:]


def test_protocol_layout_example():
    """5.2's example is what the Python receiver lays out: the buffers, the
    fast path's checksum table after them, the hand-off table after that,
    and the segment's size."""
    from phased import Spec
    from phased.transfer import segment as S

    rows = table(PROTOCOL, "layout-example")
    specs = [Spec(r[0], r[1], [int(n) for n in r[2].strip("[]").split(",")]) for r in rows if r[1]]
    bufs, sums_at, handoffs_at, need = S.shm_layout(specs)
    want = {b.name: f"{b.offset} {b.length}" for b in bufs}
    want.update({"checksums": f"{sums_at} {8 * len(bufs)}", "hand-offs": f"{handoffs_at} {128 * len(bufs)}",
                 "need": str(need), "segment_size": str(S.size_class(need))})
    got = {r[0]: f"{r[3]} {r[4]}".strip() for r in rows}
    assert got == want


def test_protocol_ctrl_block():
    """5.3's control block is where the Python SDK reads and writes it: a
    reset zeroes every field but the reserved bytes, a finish (the fast
    path) stores progress, bumps seq and sets done."""
    from phased.transfer.futex import Ctrl

    fields = {r[2]: (int(r[0]), int(r[1])) for r in table(PROTOCOL, "ctrl-block")}
    assert sorted(fields) == ["done", "progress", "reserved", "seq", "waiting"]
    assert sum(w for _, w in fields.values()) == 64
    buf = bytearray(b"\xff" * 64)
    c = Ctrl(buf)

    def value(name):
        off, width = fields[name]
        return int.from_bytes(buf[off:off + width], "little")

    c.reset()
    assert [value(f) for f in ("progress", "seq", "waiting", "done")] == [0, 0, 0, 0]
    assert value("reserved") == 2 ** (8 * fields["reserved"][1]) - 1  # untouched
    c.finish(0x0102030405060708)
    assert [value(f) for f in ("progress", "seq", "waiting", "done")] == [0x0102030405060708, 1, 0, 1]
    c.close()
