"""CURVE security for the sockets of zmq rooms (docs/protocol.md section
4.7, CURVE). The Go twin is sdk/transfer/curve.go.

When $PHASED_CURVE_KEY_FILE names a key file (the supervisor and
`supervisor agent` set it for every plugin they start when a cluster is
configured), every tcp socket of a zmq room uses ZeroMQ CURVE with that
one key pair, which the whole cluster shares: a bound socket is a CURVE
server with the secret key and ZAP domain "phased", a connecting one a
CURVE client whose server key is the pair's public key and which presents
the pair. The public key is public, so CURVE alone would admit anyone who
has it: each manager answers ZAP (RFC 27) in its own zmq context, and
admits a client only if it presents the cluster's public key, which only
a holder of the secret key can. The handler's ROUTER socket is one more
socket of the manager's socket owner, polled with the room sockets
(manager.py); zmq.auth's ThreadAuthenticator would run a thread of its
own.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import zmq

from .frames import go_quote

CURVE_KEY_FILE_ENV = "PHASED_CURVE_KEY_FILE"
# Where libzmq asks its context's ZAP handler.
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# The ZMQ_ZAP_DOMAIN of every CURVE server socket: with a domain set,
# libzmq asks the ZAP handler about every client.
ZAP_DOMAIN = b"phased"
# What CURVE adds to a message part on the wire, where ZMQ_MAXMSGSIZE
# counts it: the part travels in a MESSAGE command (its name, 8 bytes;
# nonce, 8; MAC, 16; flags, 1). A CURVE socket's limit is raised by it, so
# that a peer may send the same parts as without CURVE.
CURVE_OVERHEAD = 33
# The monitor events of a failed handshake.
HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
# A handshake's ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL value when the two ends
# use different security mechanisms (CURVE and NULL).
MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)
MAX_KEY_FILE = 4096
_NO_CURVE = "this libzmq has no CURVE security (it was built without libsodium): install Debian's libzmq5"
_FIX = f"every host needs the cluster's CURVE key file, ${CURVE_KEY_FILE_ENV}"


class CurveKeyError(ValueError):
    """A CURVE key file (or key pair) that cannot be used; str() names the
    file and says why, worded as the Go SDK's. An OSError that caused it
    is its __cause__."""


@dataclass(frozen=True)
class CurveKeys:
    """A CURVE key pair, each key in Z85 (40 characters)."""

    public: str
    secret: str

    def __repr__(self) -> str:  # never print the secret key
        return f"CurveKeys(public={self.public!r}, secret=...)"

    def check(self) -> None:
        """Raises ValueError unless both keys are Z85 of 32 bytes and the
        public key is the secret key's (and libzmq has CURVE)."""
        for name, key in (("public", self.public), ("secret", self.secret)):
            if z85_decode(key) is None or len(key) != 40:
                raise ValueError(f"the {name} key is not 40 characters of Z85")
        if not zmq.has("curve"):
            raise ValueError(_NO_CURVE)
        try:
            pub = zmq.curve_public(self.secret.encode()).decode()
        except zmq.ZMQError as e:
            raise ValueError(f"derive the public key: {e}") from None
        if pub != self.public:
            raise ValueError("the public key is not the secret key's")

    @property
    def public_bytes(self) -> bytes:
        """The public key's 32 bytes, as a ZAP request carries it."""
        return z85_decode(self.public) or b""


_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_INDEX = {c: i for i, c in enumerate(_Z85)}


def z85_decode(s: str) -> Optional[bytes]:
    """The bytes of Z85 text s, None if it is not Z85 (its length not a
    multiple of 5, a character outside the alphabet, a group over 2^32)."""
    if not isinstance(s, str) or len(s) % 5:
        return None
    out = bytearray()
    for i in range(0, len(s), 5):
        v = 0
        for c in s[i:i + 5]:
            d = _Z85_INDEX.get(c)
            if d is None:
                return None
            v = v * 85 + d
        if v >= 1 << 32:
            return None
        out += v.to_bytes(4, "big")
    return bytes(out)


def new_curve_keys() -> CurveKeys:
    """A new CURVE key pair. It fails when libzmq has no CURVE."""
    if not zmq.has("curve"):
        raise CurveKeyError(_NO_CURVE)
    pub, sec = zmq.curve_keypair()
    return CurveKeys(pub.decode(), sec.decode())


def write_curve_key_file(path: str, keys: CurveKeys) -> None:
    """Writes keys to a new file at path, readable by its owner only; fails
    if the file exists. The format, two lines: `public Z85`, `secret Z85`."""
    try:
        keys.check()
    except ValueError as e:
        raise CurveKeyError(f"write CURVE key file {path}: {e}") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CurveKeyError(f"write CURVE key file: {_os_text(e, path)}") from e
    with os.fdopen(fd, "w") as f:
        f.write(f"public {keys.public}\nsecret {keys.secret}\n")


def read_curve_key_file(path: str) -> CurveKeys:
    """Reads a key file written by write_curve_key_file (or Go's
    WriteCurveKeyFile). It refuses a file that others than its owner may
    read, as ssh does. Raises CurveKeyError naming the file."""

    def fail(why: str) -> CurveKeyError:
        return CurveKeyError(f"CURVE key file {path}: {why}")

    try:
        # Non-blocking: a FIFO in its place does not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise CurveKeyError(f"CURVE key file: {_os_text(e, path)}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail("not a regular file")
        perm = stat.S_IMODE(st.st_mode) & 0o777
        if perm & 0o077:
            raise fail(f"mode {perm:04o} lets others read the secret key: chmod 600 it")
        if st.st_size > MAX_KEY_FILE:
            raise fail(f"{st.st_size} bytes: a key file holds two lines")
        data = b""
        while len(data) <= MAX_KEY_FILE:
            chunk = os.read(fd, MAX_KEY_FILE + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_KEY_FILE:
            raise fail(f"more than {MAX_KEY_FILE} bytes: a key file holds two lines")
    except OSError as e:
        raise CurveKeyError(f"CURVE key file {path}: {_os_text(e)}") from e
    finally:
        os.close(fd)
    # Bytes that are not UTF-8 pass in a comment and fail a key, as in Go.
    text = data.decode(errors="surrogateescape")
    public = secret = ""
    for n, line in enumerate(text.split("\n"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        value = value.strip()
        if name == "public" and not public:
            public = value
        elif name == "secret" and not secret:
            secret = value
        else:
            raise fail(f"line {n}: expected `public KEY` then `secret KEY`, each once")
    if not public or not secret:
        raise fail("expected two lines, `public KEY` and `secret KEY`")
    keys = CurveKeys(public, secret)
    try:
        keys.check()
    except ValueError as e:
        raise fail(str(e)) from None
    return keys


def curve_from_env() -> Optional[CurveKeys]:
    """The keys of the file $PHASED_CURVE_KEY_FILE names; None when the
    variable is unset or empty. Raises CurveKeyError naming the variable
    and the file."""
    path = os.environ.get(CURVE_KEY_FILE_ENV, "")
    if not path:
        return None
    try:
        return read_curve_key_file(path)
    except CurveKeyError as e:
        raise CurveKeyError(f"transfer: ${CURVE_KEY_FILE_ENV}: {e}") from e.__cause__


def _os_text(e: OSError, path: Optional[str] = None) -> str:
    """An OSError as Go's *PathError prints it: "open PATH: no such file
    or directory"."""
    text = e.strerror or str(e)
    text = text[:1].lower() + text[1:]
    return f"open {path}: {text}" if path is not None else text


# --- sockets ---------------------------------------------------------------------

def curve_server(s, keys: CurveKeys) -> None:
    """Makes s, before it binds, a CURVE server with keys' secret key,
    whose clients the ZAP handler vets."""
    s.setsockopt(zmq.CURVE_SERVER, 1)
    s.setsockopt(zmq.CURVE_SECRETKEY, keys.secret.encode())
    s.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def curve_client(s, server: str, own: CurveKeys) -> None:
    """Makes s, before it connects, a CURVE client of a server whose
    public key is server, presenting the pair own."""
    s.setsockopt(zmq.CURVE_SERVERKEY, server.encode())
    s.setsockopt(zmq.CURVE_PUBLICKEY, own.public.encode())
    s.setsockopt(zmq.CURVE_SECRETKEY, own.secret.encode())


def _errno_text(value: int) -> str:
    """An errno as Go's syscall.Errno prints it."""
    if value <= 0:
        return f"errno {value}"
    text = os.strerror(value)
    if text.startswith("Unknown error"):
        return f"errno {value}"
    return text[:1].lower() + text[1:]


def handshake_failure(event: int, value: int, curve: bool) -> str:
    """Why a connection's handshake failed, from its monitor event, and
    what to do; curve tells whether this end uses CURVE."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return f"it refused this process's CURVE key, ZAP status {value}: {_FIX}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == MECHANISM_MISMATCH and curve:
        return f"it has no CURVE key: {_FIX}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == MECHANISM_MISMATCH:
        return f"it uses CURVE and this process has no key: {_FIX}"
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"libzmq protocol error {value:#x}"
    if curve:
        # A CURVE server that cannot open the client's hello (the client
        # expects another server key) closes the connection.
        return (f"the connection closed during the CURVE handshake ({_errno_text(value)}), as a peer with another "
                f"key pair closes it: {_FIX}")
    return f"the connection closed during the handshake ({_errno_text(value)})"


# --- the ZAP handler -------------------------------------------------------------

def zap_verdict(req: Sequence[bytes], key: bytes) -> Tuple[int, str]:
    """Answers a ZAP request (RFC 27: version, request id, domain, address,
    identity, mechanism, credentials): 200 for a CURVE client in our
    domain that presents key (32 bytes), 400 for any other client, 500 for
    a request it cannot read."""
    if len(req) < 6:
        return 500, f"a ZAP request of {len(req)} frames"
    if req[0] != b"1.0":
        return 500, f"ZAP version {_go_quote(req[0])}"
    if req[5] != b"CURVE":
        return 400, f"mechanism {_go_quote(req[5])}: only CURVE is allowed"
    if len(req) != 7 or len(req[6]) != 32:
        return 500, "CURVE credentials that are not one 32-byte key"
    if req[2] != ZAP_DOMAIN:
        return 400, f"ZAP domain {_go_quote(req[2])}"
    if req[6] != key:
        return 400, "not the cluster's CURVE key"
    return 200, "OK"


def zap_reply(parts: List[bytes], key: bytes) -> Tuple[Optional[List[bytes]], int, str, str]:
    """The reply to the message parts a ZAP handler's ROUTER received (the
    requester's routing id, an empty delimiter, the request): (reply parts
    or None when there is no one to answer, status code, status text, the
    request's address for the log)."""
    if len(parts) < 2 or len(parts[1]) != 0:
        return None, 500, "a ZAP request without its envelope", ""
    req = parts[2:]
    code, text = zap_verdict(req, key)
    rid = req[1] if len(req) > 1 else b""
    address = req[3].decode(errors="replace") if len(req) > 3 else ""
    return [parts[0], b"", b"1.0", rid, str(code).encode(), text.encode(), b"", b""], code, text, address


def _go_quote(b: bytes) -> str:
    """b as Go's strconv.Quote of a string prints it (for ASCII alike)."""
    return go_quote(b.decode("utf-8", errors="replace"))
