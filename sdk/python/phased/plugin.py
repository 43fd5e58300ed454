"""The plugin process: go-plugin's handshake, AutoMTLS, the gRPC server,
the controller's Shutdown, signals (docs/protocol.md section 1 and 9).

serve_services() is the transport: it knows nothing of phases. The phase
runtime (phased.runtime) gives it the Phase service's handlers.
"""

from __future__ import annotations

import base64
import datetime
import faulthandler
import os
import signal
import sys
import tempfile
import threading
from concurrent import futures

import grpc

MAGIC_COOKIE_KEY = "PHASED_PLUGIN_MAGIC_COOKIE"
MAGIC_COOKIE_VALUE = "f1c7b0d8e2a94b6c8d3e5f70a1b2c3d4e5f6a7b8c9d0e1f2phased"
CORE_PROTOCOL_VERSION = 1
APP_PROTOCOL_VERSION = 1

# How many RPCs may run at once. Run calls block while their inputs travel,
# so the pool must be larger than the requests an instance takes at once;
# the supervisor bounds those itself.
MAX_WORKERS = 256


class HandshakeError(SystemExit):
    """The process was not started by a phased supervisor (or one that
    speaks another protocol version): a message on stderr, exit non-zero."""


def check_environment(environ=os.environ) -> None:
    """Exit with a message unless started by a supervisor speaking protocol 1."""
    if environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        sys.stderr.write(
            "This binary is a phased plugin. It is not meant to be run directly: "
            "the phased supervisor starts it (put it in the plugin directory as "
            "phased-phase-NAME).\n")
        sys.stderr.flush()
        raise HandshakeError(1)
    offered = [v.strip() for v in environ.get("PLUGIN_PROTOCOL_VERSIONS", "").split(",") if v.strip()]
    if str(APP_PROTOCOL_VERSION) not in offered:
        sys.stderr.write(
            f"phased plugin: the supervisor offered protocol versions {offered or '(none)'}; "
            f"this plugin speaks version {APP_PROTOCOL_VERSION}\n")
        sys.stderr.flush()
        raise HandshakeError(1)


def make_certificate():
    """A fresh self-signed certificate for localhost and its key, both PEM,
    and the certificate's DER (go-plugin's AutoMTLS server side)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "HashiCorp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(seconds=30))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=True, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=True, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH,
                                                  ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM), cert.public_bytes(serialization.Encoding.DER)


def _raw(request_bytes: bytes) -> bytes:
    # Not None: gRPC takes a None from a deserializer as a failure.
    return request_bytes


def _no_bytes(_message):
    return b""


def controller_handler(shutdown):
    """plugin.GRPCController: Shutdown(Empty) returns (Empty)."""

    def handle(_request, _context):
        shutdown()
        return None

    return grpc.method_handlers_generic_handler("plugin.GRPCController", {
        "Shutdown": grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=_raw, response_serializer=_no_bytes),
    })


def health_handler():
    """grpc.health.v1.Health Check: SERVING (status 1) for every service name."""

    def check(_request, _context):
        return b"\x08\x01"

    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=_raw, response_serializer=lambda b: b),
    })


class Server:
    """One plugin's gRPC server on a unix socket, with mutual TLS."""

    def __init__(self, handlers, on_shutdown=None):
        self._handlers = list(handlers)
        self._on_shutdown = on_shutdown
        self._stopped = threading.Event()
        self._server = None
        self._socket_dir = None
        self.path = ""

    def start(self, environ=os.environ) -> str:
        """Listen, and return the handshake line (without its newline)."""
        key_pem, cert_pem, cert_der = make_certificate()
        client_cert = environ.get("PLUGIN_CLIENT_CERT", "").encode()
        if client_cert:
            creds = grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=client_cert,
                                                require_client_auth=True)
        else:
            creds = None  # go-plugin without AutoMTLS: plain connection
        parent = environ.get("PLUGIN_UNIX_SOCKET_DIR") or None
        self._socket_dir = tempfile.mkdtemp(prefix="plugin", dir=parent)
        self.path = os.path.join(self._socket_dir, "plugin.sock")
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=MAX_WORKERS,
                                                              thread_name_prefix="grpc"),
                                   handlers=self._handlers + [controller_handler(self.shutdown), health_handler()],
                                   options=[("grpc.max_receive_message_length", 64 << 20),
                                            ("grpc.so_reuseport", 0)])
        address = "unix:" + self.path
        port = self._server.add_secure_port(address, creds) if creds else self._server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        self._server.start()
        cert = base64.b64encode(cert_der).rstrip(b"=").decode() if client_cert else ""
        return f"{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|unix|{self.path}|grpc|{cert}"

    def shutdown(self) -> None:
        """Stop serving: called by the controller's Shutdown, or by SIGTERM."""
        if self._stopped.is_set():
            return
        self._stopped.set()

    def wait(self) -> None:
        """Wait for shutdown, release (on_shutdown), stop serving."""
        self.wait_stopped()
        self.release()
        self.close()

    def wait_stopped(self) -> None:
        self._stopped.wait()

    def release(self) -> None:
        if self._on_shutdown is not None:
            try:
                self._on_shutdown()
            except Exception:  # noqa: BLE001 - stopping anyway
                pass

    def close(self) -> None:
        """Stop the gRPC server and remove its socket."""
        # Answer the Shutdown call that brought us here before the server goes.
        self._server.stop(grace=0.5).wait(2)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        try:
            os.rmdir(self._socket_dir)
        except OSError:
            pass


def serve_services(handlers, on_shutdown=None, executor=None) -> None:
    """Serve handlers as a go-plugin plugin until the supervisor shuts it
    down; then return (the caller exits 0). With an executor, the calling
    (main) thread runs its work meanwhile, until on_shutdown has returned.
    The caller has checked the environment (check_environment)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A fatal signal (a torch phase writing into a read-only input lent
    # to it, docs/protocol.md 5.6; a crash in native code) prints every
    # thread's Python stack to stderr, which the supervisor logs.
    faulthandler.enable(file=sys.stderr)
    server = Server(handlers, on_shutdown)
    signal.signal(signal.SIGTERM, lambda *_: server.shutdown())
    line = server.start()
    out = sys.stdout
    out.write(line + "\n")
    out.flush()
    # Nothing else may reach stdout: send stray prints to stderr.
    sys.stdout = sys.stderr
    if executor is None:
        server.wait()
        return

    def stop():
        server.wait_stopped()
        try:
            server.release()  # waits for the work in progress, on this thread
        finally:
            executor.stop()

    threading.Thread(target=stop, name="phased-shutdown", daemon=True).start()
    executor.run_forever()
    server.close()
