"""A local SMTP server that requires STARTTLS (aiosmtpd), with a certificate made at test time.

``start_smtp_sim(tmp_path)`` generates a self-signed certificate for 127.0.0.1 (the
``cryptography`` package), writes it to ``tmp_path/smtp-ca.pem`` (the ``ca_file`` a
channel trusts), and runs an aiosmtpd ``Controller`` with ``require_starttls=True`` and
LOGIN/PLAIN authentication (only after STARTTLS) for one user and password. Messages
are recorded (``messages``: mail_from, rcpt_tos, content); ``plan(*codes)`` makes the
next DATA commands answer the given replies ("451 ..." temporary, "550 ..." refused).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from renku_metrics_tests.conftest import free_port

USER, PASSWORD = "metrics-bot", "test-smtp-password"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files for 127.0.0.1 and localhost, self-signed, valid one day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp-ca.pem", directory / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes


@dataclass
class SmtpSim:
    controller: Controller
    ca_file: Path
    messages: list[Received] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    data_commands: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.controller.port

    def plan(self, *replies: str) -> None:
        with self.lock:
            self.planned.extend(replies)

    def close(self) -> None:
        self.controller.stop()


class _Handler:
    def __init__(self, sim_ref: list) -> None:
        self.sim_ref = sim_ref

    async def handle_DATA(self, server, session, envelope):
        sim: SmtpSim = self.sim_ref[0]
        with sim.lock:
            sim.data_commands += 1
            reply = sim.planned.pop(0) if sim.planned else None
        if reply:
            return reply
        with sim.lock:
            sim.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USER.encode()
        and auth_data.password == PASSWORD.encode()
    )
    return AuthResult(success=ok)


def start_smtp_sim(directory: Path) -> SmtpSim:
    cert_file, key_file = make_certificate(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    ref: list = []
    controller = Controller(
        _Handler(ref),
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
        auth_required=True,
    )
    sim = SmtpSim(controller, cert_file)
    ref.append(sim)
    controller.start()
    return sim
