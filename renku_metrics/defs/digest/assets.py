"""The weekly digest asset: one short message per ISO week, stored and delivered once per channel.

``weekly_digest`` (weekly partitions, after the week's aggregates, target statuses and
release verdicts) builds the week's digest (``core/value/digest.py``), writes
``reports/digest/<week>/digest.md``, ``digest.html`` and ``digest.png`` in the metrics
storage, shows it on the asset's page (markdown metadata with the chart inline, so a
preview never needs a channel), then delivers it to the channels of the digest
configuration (``core/value/digest_delivery.py``): once per (week, channel), the latest
complete week only unless the run config asks for backfilled weeks. A channel that
fails does not stop the others; the run then fails naming it, after the digest is stored.
"""

import base64
import datetime as dt

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from renku_metrics.core.config import MetricsConfig
from renku_metrics.core.layout import digest_key
from renku_metrics.core.value.digest import ASSET_NAME, build_digest, check_no_personal_data, to_html, to_markdown
from renku_metrics.core.value.digest_config import DigestSettings
from renku_metrics.core.value.digest_delivery import deliver_digest
from renku_metrics.defs.clock import run_now
from renku_metrics.defs.digest.checks import delivered_result, digest_check_specs
from renku_metrics.defs.keys import OWNERS, active_users_name, core_actions_name
from renku_metrics.defs.partitions import weekly_partitions
from renku_metrics.defs.resources import MetricsStorageResource

KEY = AssetKey(ASSET_NAME)
# Upstream by asset key: the week's aggregates, and the value-loop tables (contracts 2 and 3),
# so the graph orders the digest after them.
UPSTREAM = [
    AssetKey(active_users_name("week")),
    AssetKey(core_actions_name("week")),
    AssetKey("target_status"),
    AssetKey("release_impact"),
]


class DigestRunConfig(Config):
    send_backfilled: bool = Field(
        default=False,
        description="Also send a week older than the latest complete week (a backfilled week is otherwise only stored).",
    )
    resend: list[str] = Field(
        default_factory=list,
        description="Channels to send to again although their delivery record says sent (or interrupted).",
    )


def build_digest_asset(metrics_config: MetricsConfig, settings: DigestSettings) -> AssetsDefinition:
    channels = ", ".join(f"{c.name} ({c.type})" for c in settings.channels) or "none configured"

    @asset(
        key=KEY,
        deps=UPSTREAM,
        partitions_def=weekly_partitions(metrics_config.earliest_start),
        group_name="digest",
        owners=OWNERS,
        kinds={"python", "markdown"},
        check_specs=digest_check_specs(KEY),
        description=(
            "The weekly digest: per deployment, active users and each core action this week against last week and "
            "the 4-week average (arrows only beyond the week-to-week noise), target statuses that changed and "
            "deadlines near, release verdicts that became available, data problems with what to do, links to "
            "this page and the notebook. Written to `reports/digest/<week>/` (digest.md, digest.html, digest.png) "
            f"and shown here; delivered once per week and channel (channels: {channels}), the latest complete week "
            "only (run config `send_backfilled: true` sends an older one). Cannot see: what the aggregates, "
            "target_status and release_impact do not hold (an absent table is said so in the digest)."
        ),
    )
    def weekly_digest(context: AssetExecutionContext, config: DigestRunConfig, metrics_storage: MetricsStorageResource):
        storage = metrics_storage.get_storage()
        week = dt.date.fromisoformat(context.partition_key)
        now = run_now(context)
        digest = build_digest(storage, week, list(metrics_config.deployments), settings, now)
        markdown, page = (
            to_markdown(digest, "digest.png" if digest.chart_png else None),
            to_html(digest, "digest.png" if digest.chart_png else None),
        )
        check_no_personal_data(markdown + page, f"{ASSET_NAME} {week}")
        if digest.chart_png:
            storage.write_bytes(digest_key(week, "digest.png"), digest.chart_png)
        storage.write_bytes(digest_key(week, "digest.html"), page.encode())
        storage.write_bytes(digest_key(week, "digest.md"), markdown.encode())  # last: its presence means all three
        inline = f"data:image/png;base64,{base64.b64encode(digest.chart_png).decode()}" if digest.chart_png else None
        outcomes = deliver_digest(
            storage, digest, settings, now, send_backfilled=config.send_backfilled, resend=tuple(config.resend)
        )
        for o in outcomes:
            log = context.log.error if o.failed else context.log.info
            log("digest %s, channel %s: %s %s", week, o.channel, o.outcome, o.detail)
        yield MaterializeResult(
            metadata={
                "digest": MetadataValue.md(to_markdown(digest, inline)),
                "digest_uri": MetadataValue.path(storage.uri(digest_key(week, "digest.md"))),
                "data_problems": digest.problems,
                "deliveries": MetadataValue.md(
                    "\n".join(f"- {o.channel}: {o.outcome} {o.detail}" for o in outcomes) or "no channel configured"
                ),
                **{f"week/{k}": v for k, v in digest.headline.items()},
            },
            check_results=[delivered_result(KEY, outcomes)],
        )
        failed = [o for o in outcomes if o.failed]
        if failed:
            raise Failure(
                description=(
                    f"{ASSET_NAME} {week}: not delivered to channel(s) {', '.join(o.channel for o in failed)}; "
                    "the digest is stored and the other channels were served. " + " | ".join(o.detail for o in failed)
                ),
                allow_retries=False,
            )

    return weekly_digest
