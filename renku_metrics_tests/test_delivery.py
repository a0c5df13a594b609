"""Delivering the weekly digest for real: a local Slack/Mattermost webhook receiver and a local
SMTP server requiring STARTTLS. Each (week, channel) gets exactly one message across reruns
and retries; a failing channel does not stop the others and fails the run naming it;
backfilled weeks are not sent unless asked."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re

import pytest
import yaml
from dagster import DagsterInstance

from renku_metrics.core.catalog import load_catalog
from renku_metrics.core.delivery.webhook import DeliveryError, post_webhook, retry_after_seconds
from renku_metrics.core.layout import delivery_record_key, digest_key
from renku_metrics.core.readers import read_active_users, read_metrics
from renku_metrics.core.storage import open_storage
from renku_metrics.definitions import build_defs

from .simulators.smtp_sim import PASSWORD, USER, start_smtp_sim
from .simulators.webhook_sim import start_webhook_sim
from .test_digest import LAST_WEEK, RUN_NOW, run_digest, stored_weeks, stored_weeks_once  # noqa: F401

SLACK_PATH = "/services/T0001/B0001/abcdefabcdef"
MATTERMOST_PATH = "/hooks/mm0key0for0tests"
SENDER, RECIPIENT = "metrics@example.org", "renku-team@example.org"
CHANNELS = ("team_slack", "team_mattermost", "team_email")


@pytest.fixture
def webhook_sim():
    sim = start_webhook_sim()
    yield sim
    sim.close()


@pytest.fixture
def smtp_sim(tmp_path):
    sim = start_smtp_sim(tmp_path)
    yield sim
    sim.close()


@pytest.fixture
def channels(stored_weeks, webhook_sim, smtp_sim, tmp_path, monkeypatch):  # noqa: F811
    """Definitions whose digest goes to Slack, Mattermost and e-mail on the local servers."""
    config, root = stored_weeks
    monkeypatch.setenv("RM_TEST_SLACK_WEBHOOK", webhook_sim.url + SLACK_PATH)
    monkeypatch.setenv("RM_TEST_MATTERMOST_WEBHOOK", webhook_sim.url + MATTERMOST_PATH)
    monkeypatch.setenv("RM_TEST_SMTP_PASSWORD", PASSWORD)
    path = tmp_path / "digest-channels.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "dagster_ui_url": "http://dagster.test",
                "retry_backoff_seconds": 0.05,
                "channels": [
                    {"name": "team_slack", "type": "slack", "webhook_url_env": "RM_TEST_SLACK_WEBHOOK"},
                    {
                        "name": "team_mattermost",
                        "type": "mattermost",
                        "webhook_url_env": "RM_TEST_MATTERMOST_WEBHOOK",
                        "channel": "product-metrics",
                        "username": "renku-metrics",
                    },
                    {
                        "name": "team_email",
                        "type": "email",
                        "host": "127.0.0.1",
                        "port": smtp_sim.port,
                        "username": USER,
                        "password_env": "RM_TEST_SMTP_PASSWORD",
                        "sender": SENDER,
                        "recipients": [RECIPIENT],
                        "ca_file": str(smtp_sim.ca_file),
                    },
                ],
            }
        )
    )
    defs = build_defs(config=config, storage_root=root, env={"RENKU_METRICS_DIGEST_CONFIG": str(path)})
    return defs, root


def _record(root, week, channel):
    key = delivery_record_key(week, channel)
    storage = open_storage(root)
    return storage.read_json(key) if storage.exists(key) else None


def _failure_message(result) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "the run did not fail"
    data = failures[0].step_failure_data
    return (data.user_failure_data.description if data.user_failure_data else "") + " " + data.error.message


def test_each_week_and_channel_gets_one_message_across_reruns_and_retries(channels, webhook_sim, smtp_sim):
    defs, root = channels
    instance = DagsterInstance.ephemeral()
    webhook_sim.plan(SLACK_PATH, (429, "rate_limited", {"Retry-After": "1"}))
    webhook_sim.plan(MATTERMOST_PATH, (500, "internal error"))
    smtp_sim.plan("451 4.3.0 Try again later")
    assert run_digest(defs, LAST_WEEK, instance).success
    # Each channel was retried once and shows exactly one message.
    assert [r.status for r in webhook_sim.to(SLACK_PATH)] == [429, 200]
    assert [r.status for r in webhook_sim.to(MATTERMOST_PATH)] == [500, 200]
    assert smtp_sim.data_commands == 2 and len(smtp_sim.messages) == 1
    for channel in CHANNELS:
        record = _record(root, LAST_WEEK, channel)
        assert record["status"] == "sent" and record["attempts"] == 2, channel
        assert "http" not in str(record) and RECIPIENT not in str(record) and PASSWORD not in str(record)
    # Rerun of the week, and a re-execution as Dagster's retry does: nothing is sent again.
    assert run_digest(defs, LAST_WEEK, instance).success
    assert run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral()).success
    assert len(webhook_sim.to(SLACK_PATH)) == 2 and len(webhook_sim.to(MATTERMOST_PATH)) == 2
    assert len(smtp_sim.messages) == 1 and smtp_sim.data_commands == 2
    # The renderers: Slack's blocks with its markup, Mattermost's Markdown with tables.
    slack = webhook_sim.accepted(SLACK_PATH)[0].body
    assert slack["blocks"][0]["type"] == "header" and len(slack["blocks"]) <= 50
    slack_text = str(slack["blocks"])
    assert "*Usage*" in slack_text and "<http://dagster.test/assets/weekly_digest?partition=2025-03-10|" in slack_text
    mattermost = webhook_sim.accepted(MATTERMOST_PATH)[0].body
    assert mattermost["channel"] == "product-metrics" and mattermost["username"] == "renku-metrics"
    stored = open_storage(root).read_bytes(digest_key(LAST_WEEK, "digest.md")).decode()
    assert mattermost["text"] == stored.replace("![Share of active users per core action](digest.png)\n\n", "")
    assert "| alpha | this week | last week | 4-week average | change |" in mattermost["text"]


def _aligned_rows(text: str, deployment: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{deployment}\s+this week", line))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith("*"):
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells[1:]
    return rows


def test_email_is_multipart_alternative_with_the_chart_inline(channels, smtp_sim):
    defs, root = channels
    assert run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral()).success
    assert len(smtp_sim.messages) == 1
    received = smtp_sim.messages[0]
    assert received.mail_from == SENDER and received.rcpt_tos == [RECIPIENT]
    msg = email.message_from_bytes(received.content, policy=email.policy.default)
    assert msg["Subject"] == "Renku metrics, week 11 (2025-03-10 to 2025-03-16)"
    assert msg["Message-ID"] == "<digest-2025-03-10-team_email@renku-metrics>"
    assert msg.get_content_type() == "multipart/alternative"
    plain, related = list(msg.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html_part, image = list(related.iter_parts())
    assert html_part.get_content_type() == "text/html" and image.get_content_type() == "image/png"
    assert image["Content-ID"] == "<digest-chart@renku-metrics>"
    assert 'src="cid:digest-chart@renku-metrics"' in html_part.get_content()
    assert image.get_content() == open_storage(root).read_bytes(digest_key(LAST_WEEK, "digest.png"))
    # The plain text's numbers are read_metrics' / read_active_users'.
    text = plain.get_content()
    metrics, active = read_metrics("week", storage=root), read_active_users("week", storage=root)
    for deployment in ("alpha", "beta", "all"):
        rows = _aligned_rows(text, deployment)
        a = active[(active["deployment"] == deployment) & (active["period_start"] == LAST_WEEK)]
        assert rows["active users"][0] == str(int(a["active_users"].iloc[0]))
        week = metrics[(metrics["deployment"] == deployment) & (metrics["period_start"] == LAST_WEEK)]
        assert len(week) == len(load_catalog().computed())  # every computed metric, each in the text
        for r in week.itertuples():
            assert rows[r.metric][0] == f"{r.users} ({r.pct:.1f}%)", (deployment, r.metric)
    assert rows["active users"][0] == "23"  # all: 20 alpha + 3 beta, by hand


def test_a_failing_channel_does_not_stop_the_others_and_fails_the_run(channels, webhook_sim, smtp_sim):
    defs, root = channels
    webhook_sim.plan(SLACK_PATH, (404, "channel_not_found"))
    result = run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    message = _failure_message(result)
    assert "team_slack" in message and "channel_not_found" in message
    assert "team_mattermost" not in message and webhook_sim.url not in message
    assert [r.status for r in webhook_sim.to(SLACK_PATH)] == [404]  # a 404 is not retried
    assert len(webhook_sim.accepted(MATTERMOST_PATH)) == 1 and len(smtp_sim.messages) == 1
    assert _record(root, LAST_WEEK, "team_slack")["status"] == "failed"
    # The digest is stored and on the asset's page all the same; the check names the channel.
    assert [e.partition for e in result.get_asset_materialization_events()] == [str(LAST_WEEK)]
    check = result.get_asset_check_evaluations()[0]
    assert not check.passed and check.metadata["failed_channels"].value == "team_slack"
    # Once Slack is back, the next run sends to Slack only.
    assert run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral()).success
    assert len(webhook_sim.accepted(SLACK_PATH)) == 1
    assert len(webhook_sim.accepted(MATTERMOST_PATH)) == 1 and len(smtp_sim.messages) == 1


def test_backfilled_weeks_and_the_week_in_progress_are_not_sent(channels, webhook_sim, smtp_sim):
    defs, root = channels
    older = LAST_WEEK - dt.timedelta(weeks=1)
    assert run_digest(defs, older, DagsterInstance.ephemeral()).success
    assert open_storage(root).exists(digest_key(older, "digest.md"))
    # A week whose end has not come yet at the run's clock (Wednesday of that week).
    assert run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral(), now="2025-03-12T12:00:00+00:00").success
    assert webhook_sim.requests == [] and smtp_sim.messages == []
    assert all(_record(root, w, c) is None for w in (older, LAST_WEEK) for c in CHANNELS)
    # Asked for with the run config flag: sent, once.
    flag = {"ops": {"weekly_digest": {"config": {"send_backfilled": True}}}}
    for _ in range(2):
        assert run_digest(defs, older, DagsterInstance.ephemeral(), run_config=flag).success
    assert len(webhook_sim.accepted(SLACK_PATH)) == 1 and len(webhook_sim.accepted(MATTERMOST_PATH)) == 1
    assert len(smtp_sim.messages) == 1
    assert "week 10 (2025-03-03 to 2025-03-09)" in smtp_sim.messages[0].content.decode()


def test_smtp_refusal_interrupted_send_and_missing_secret_each_name_the_channel(
    channels, webhook_sim, smtp_sim, monkeypatch
):
    defs, root = channels
    smtp_sim.plan("550 5.7.1 Relaying denied")
    # A previous run died after marking Slack "sending": whether it arrived is unknown.
    open_storage(root).write_json(
        delivery_record_key(LAST_WEEK, "team_slack"),
        {"week": str(LAST_WEEK), "channel": "team_slack", "status": "sending", "started_at": "2025-03-17T06:30:00"},
    )
    monkeypatch.delenv("RM_TEST_MATTERMOST_WEBHOOK")
    result = run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral(), raise_on_error=False)
    message = _failure_message(result)
    assert "team_email" in message and "550 5.7.1 Relaying denied" in message
    assert smtp_sim.data_commands == 1  # a refusal (5xx) is not retried
    assert "team_mattermost" in message and "RM_TEST_MATTERMOST_WEBHOOK" in message
    assert "team_slack" in message and "resend: [team_slack]" in message
    assert webhook_sim.requests == []
    # Sending to Slack again is asked for explicitly; the others are fixed.
    monkeypatch.setenv("RM_TEST_MATTERMOST_WEBHOOK", webhook_sim.url + MATTERMOST_PATH)
    again = {"ops": {"weekly_digest": {"config": {"resend": ["team_slack"]}}}}
    assert run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral(), run_config=again).success
    assert len(webhook_sim.accepted(SLACK_PATH)) == 1 and len(webhook_sim.accepted(MATTERMOST_PATH)) == 1
    assert len(smtp_sim.messages) == 1


def test_webhook_sender_waits_for_retry_after_and_never_shows_the_url(webhook_sim):
    waits = []
    url = webhook_sim.url + SLACK_PATH
    webhook_sim.plan(SLACK_PATH, (429, "rate_limited", {"Retry-After": "3"}), (503, "unavailable"))
    assert post_webhook(url, {"text": "hi"}, "s", backoff=0.5, sleep=waits.append) == 3
    assert waits == [3.0, 1.0]  # Retry-After as asked, then the backoff of the second attempt
    webhook_sim.plan(SLACK_PATH, (429, "rate_limited", {"Retry-After": "3600"}))
    with pytest.raises(DeliveryError, match="channel 's': rate limited, Retry-After 3600s") as info:
        post_webhook(url, {"text": "hi"}, "s", sleep=waits.append)
    assert url not in str(info.value)
    with pytest.raises(DeliveryError, match="HTTP 400 invalid_payload"):
        post_webhook(url, {"nothing": 1}, "s", sleep=waits.append)
    with pytest.raises(DeliveryError, match="No text specified"):
        post_webhook(webhook_sim.url + MATTERMOST_PATH, {"blocks": []}, "m", sleep=waits.append)
    with pytest.raises(DeliveryError, match="not delivered after 2 attempts: connection failed"):
        post_webhook("http://127.0.0.1:9/x", {"text": "hi"}, "gone", attempts=2, sleep=waits.append)
    assert (
        retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", dt.datetime(2015, 10, 21, 7, 27, 30, tzinfo=dt.UTC)) == 30
    )


def test_digest_and_delivery_records_on_s3(
    stored_weeks_once,  # noqa: F811 (a fixture imported from test_digest)
    s3_bucket,
    s3_endpoint,
    webhook_sim,
    tmp_path,
    monkeypatch,
):
    """The same on an S3 root (moto server): files and delivery records in the bucket, one message."""
    from pathlib import Path

    config, local_root = stored_weeks_once
    root = f"s3://{s3_bucket}/renku-metrics"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3 = open_storage(root, endpoint_url=s3_endpoint)
    for path in Path(local_root).rglob("*"):
        if path.is_file():
            s3.write_bytes(path.relative_to(local_root).as_posix(), path.read_bytes())
    monkeypatch.setenv("RM_TEST_SLACK_WEBHOOK", webhook_sim.url + SLACK_PATH)
    digest_config = tmp_path / "digest.yaml"
    digest_config.write_text(
        yaml.safe_dump(
            {"channels": [{"name": "team_slack", "type": "slack", "webhook_url_env": "RM_TEST_SLACK_WEBHOOK"}]}
        )
    )
    defs = build_defs(config=config, storage_root=root, env={"RENKU_METRICS_DIGEST_CONFIG": str(digest_config)})
    for _ in range(2):
        assert run_digest(defs, LAST_WEEK, DagsterInstance.ephemeral()).success
    assert len(webhook_sim.to(SLACK_PATH)) == 1
    assert s3.read_json(delivery_record_key(LAST_WEEK, "team_slack"))["status"] == "sent"
    markdown = s3.read_bytes(digest_key(LAST_WEEK, "digest.md")).decode()
    local = open_storage(local_root)
    assert not local.exists(digest_key(LAST_WEEK, "digest.md"))  # written to the bucket, not the local copy
    assert "| active users | 20 | 10 | 10.5 | ↑ |" in markdown
