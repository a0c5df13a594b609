"""The weekly digest's configuration file: links, thresholds and delivery channels.

The file is ``renku_metrics/core/digest.yaml`` (shipped: no channel, so nothing is
sent), or the file named by $RENKU_METRICS_DIGEST_CONFIG. It is validated against the
pydantic models below; a problem becomes one line naming the file, the channel and the
key. Secrets (webhook URLs, the SMTP password) are never in the file: a channel names
the environment variable that holds them, read only when the digest is delivered.

Keys::

    dagster_ui_url: https://metrics.example.org   # links to the asset's page (optional)
    notebook_url: https://renkulab.io/...          # the team's notebook (optional)
    deadline_near_days: 28                         # "deadline near": by-date within this many days
    retry_attempts: 4                              # tries per channel and run
    retry_backoff_seconds: 2.0                     # waits 2, 4, 8 s between them (429: its Retry-After)
    channels:
      - {name: team_slack, type: slack, webhook_url_env: RENKU_METRICS_SLACK_WEBHOOK}
      - {name: team_mattermost, type: mattermost, webhook_url_env: RENKU_METRICS_MATTERMOST_WEBHOOK,
         channel: product-metrics, username: renku-metrics}
      - {name: team_email, type: email, host: smtp.example.org, port: 587, username: metrics-bot,
         password_env: RENKU_METRICS_SMTP_PASSWORD, sender: metrics@example.org,
         recipients: [renku-team@example.org], ca_file: null}

No Dagster in here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from renku_metrics.core.errors import ConfigError
from renku_metrics.core.validation import YamlError, load_yaml, not_blank, one_line

DIGEST_CONFIG_ENV = "RENKU_METRICS_DIGEST_CONFIG"
DIGEST_CONFIG_FILE = Path(__file__).resolve().parents[1] / "digest.yaml"

_Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*$", max_length=63)]
_EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
_Text = Annotated[str, AfterValidator(not_blank)]
_Url = Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
_Address = Annotated[str, StringConstraints(pattern=r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")]


class _Channel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: _Name
    type: str


class WebhookChannel(_Channel):
    """A Slack or Mattermost incoming webhook; its URL (a secret) comes from ``webhook_url_env``."""

    type: Literal["slack", "mattermost"]
    webhook_url_env: _EnvName
    # Mattermost only: override the webhook's channel and display name.
    channel: _Text | None = None
    username: _Text | None = None


class EmailChannel(_Channel):
    """E-mail over SMTP with STARTTLS (always required: the password never crosses in clear)."""

    type: Literal["email"]
    host: _Text
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    username: _Text | None = None
    password_env: _EnvName | None = None
    sender: _Address
    recipients: Annotated[list[_Address], Field(min_length=1)]
    # A CA bundle for a server whose certificate a private CA signed (default: the system's).
    ca_file: _Text | None = None


class DigestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    dagster_ui_url: _Url | None = None
    notebook_url: _Url | None = None
    deadline_near_days: Annotated[int, Field(ge=0, le=366)] = 28
    retry_attempts: Annotated[int, Field(ge=1, le=10)] = 4
    retry_backoff_seconds: Annotated[float, Field(ge=0, le=600)] = 2.0
    channels: list[Any] | None = None


Channel = WebhookChannel | EmailChannel
_CHANNEL_MODELS: dict[str, type[_Channel]] = {
    "slack": WebhookChannel,
    "mattermost": WebhookChannel,
    "email": EmailChannel,
}

_MESSAGES = {
    "name": "name must match [a-z][a-z0-9_-]* (at most 63 characters), got {got}",
    "webhook_url_env": "webhook_url_env must name an environment variable (the URL itself is a secret), got {got}",
    "password_env": "password_env must name an environment variable, got {got}",
    "sender": "sender must be an e-mail address, got {got}",
    "recipients": "recipients must be a non-empty list of e-mail addresses",
    "recipients[]": "recipients[{item}] must be an e-mail address, got {got}",
    "port": "port must be an integer 1..65535, got {got}",
    "dagster_ui_url": "dagster_ui_url must be an http(s) URL, got {got}",
    "notebook_url": "notebook_url must be an http(s) URL, got {got}",
}


@dataclass(frozen=True)
class DigestSettings:
    path: str = ""
    dagster_ui_url: str | None = None
    notebook_url: str | None = None
    deadline_near_days: int = 28
    retry_attempts: int = 4
    retry_backoff_seconds: float = 2.0
    channels: tuple[Channel, ...] = field(default_factory=tuple)

    def channel(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)


def _channel(raw: Any, index: int, path: str) -> Channel:
    where = f"{path}: channels[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with name and type, got {raw!r}")
    if isinstance(raw.get("name"), str):
        where = f"{path}: channel {raw['name']!r}"
    kind = raw.get("type")
    if kind not in _CHANNEL_MODELS:
        raise ConfigError(f"{where}: type must be one of {', '.join(sorted(_CHANNEL_MODELS))}, got {kind!r}")
    model = _CHANNEL_MODELS[kind]
    try:
        channel = model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, where, model.model_fields, _MESSAGES)) from None
    if kind != "mattermost" and isinstance(channel, WebhookChannel) and (channel.channel or channel.username):
        raise ConfigError(
            f"{where}: channel and username are Mattermost keys (a Slack webhook posts where it was made)"
        )
    return channel


def parse_digest_config(raw: Any, path: str) -> DigestSettings:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of digest settings, got {type(raw).__name__}")
    try:
        file = DigestFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, path, DigestFile.model_fields, _MESSAGES)) from None
    channels = tuple(_channel(item, i, path) for i, item in enumerate(file.channels or []))
    seen: set[str] = set()
    for c in channels:
        if c.name in seen:
            raise ConfigError(f"{path}: channel {c.name!r}: name given twice")
        seen.add(c.name)
    return DigestSettings(
        path=path,
        dagster_ui_url=file.dagster_ui_url.rstrip("/") if file.dagster_ui_url else None,
        notebook_url=file.notebook_url,
        deadline_near_days=file.deadline_near_days,
        retry_attempts=file.retry_attempts,
        retry_backoff_seconds=file.retry_backoff_seconds,
        channels=channels,
    )


def load_digest_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> DigestSettings:
    """The digest settings of ``path``, else $RENKU_METRICS_DIGEST_CONFIG, else the shipped file."""
    env = os.environ if env is None else env
    if path is None:
        path = env.get(DIGEST_CONFIG_ENV) or DIGEST_CONFIG_FILE
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: digest configuration not found (set {DIGEST_CONFIG_ENV})") from None
    except YamlError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_digest_config(raw, str(path.name if path == DIGEST_CONFIG_FILE else path))
