"""Sending an e-mail over SMTP with STARTTLS, with retries.

``build_message`` makes a ``multipart/alternative`` message: a plain-text part, then
an HTML part that is ``multipart/related`` with its images inline by Content-ID
(``<img src="cid:...">``). ``send_message`` connects, requires STARTTLS (a server
that does not offer it is refused: the password would cross in clear), logs in when
a username is given and sends. Temporary failures (connection refused or dropped,
4xx replies) are retried with exponential backoff; permanent ones (5xx: recipients
or sender refused, authentication failed) fail at once. Errors name the channel and
the server's reply, never the password or the recipients.
Plain Python, no Dagster, no metrics.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate

from renku_metrics.core.delivery.webhook import DeliveryError


def build_message(
    subject: str,
    sender: str,
    recipients: list[str],
    plain: str,
    html: str,
    images: Mapping[str, bytes] | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    """multipart/alternative (text/plain, multipart/related (text/html, image/png by cid)).

    ``images`` maps a Content-ID (without angle brackets) to PNG bytes; the HTML refers
    to each as ``cid:<id>``.
    """
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(plain)
    msg.add_alternative(html, subtype="html")
    html_part = msg.get_payload()[1]
    for cid, png in (images or {}).items():
        html_part.add_related(png, maintype="image", subtype="png", cid=f"<{cid}>", filename=f"{cid.split('@')[0]}.png")
    return msg


def _temporary(exc: Exception) -> bool:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError))


def _describe(exc: Exception) -> str:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = sorted({f"{code} {reply.decode(errors='replace')}" for code, reply in exc.recipients.values()})
        return f"recipients refused ({'; '.join(codes)})"
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{type(exc).__name__}: {exc.smtp_code} {' '.join(reply.split())}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def send_message(
    msg: EmailMessage,
    host: str,
    port: int,
    channel: str,
    username: str | None = None,
    password: str | None = None,
    context: ssl.SSLContext | None = None,
    attempts: int = 4,
    backoff: float = 2.0,
    timeout: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send ``msg`` through ``host:port`` with STARTTLS; return the number of attempts it took."""
    context = context or ssl.create_default_context()
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            with smtplib.SMTP(host, port, timeout=timeout) as smtp:
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(f"channel {channel!r}: {host}:{port} does not offer STARTTLS; not sent")
                smtp.starttls(context=context)
                smtp.ehlo()
                if username:
                    smtp.login(username, password or "")
                smtp.send_message(msg)
            return attempt
        except DeliveryError:
            raise
        except ssl.SSLError as exc:
            raise DeliveryError(f"channel {channel!r}: TLS with {host}:{port} failed: {exc.reason or exc}") from None
        except (smtplib.SMTPException, OSError) as exc:
            last = _describe(exc)
            if not _temporary(exc):
                raise DeliveryError(f"channel {channel!r}: {host}:{port} refused the message: {last}") from None
        if attempt < attempts:
            sleep(backoff * 2 ** (attempt - 1))
    raise DeliveryError(f"channel {channel!r}: not sent through {host}:{port} after {attempts} attempts: {last}")
