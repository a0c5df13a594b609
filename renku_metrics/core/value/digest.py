"""The weekly digest: one short message per ISO week that a person reads without opening anything.

``build_digest`` gathers, for one week, from the metrics storage:

* per deployment (and the ``all`` rollup): active users and each core action's users and
  share of active users this week, last week and the average of the 4 weeks before; the
  numbers are those ``read_metrics`` / ``read_active_users`` return. An arrow marks a change
  beyond the week-to-week noise: the change from last week is larger than twice the standard
  deviation of the previous 8 week-to-week changes (at least 4 of them needed; share in
  percentage points, active users as a count);
* targets whose status changed since the previous evaluation, and targets whose deadline is
  near (storage contract 2, table ``target_status``);
* release verdicts that became available this week (the release's after-window ends with
  this week), and releases made this week (storage contract 3, table ``release_impact``);
* data problems that need a person (days not extracted, a source that did not read its whole
  window or stopped, a day withheld by a failing check, an aggregate older than its data),
  each with what to do;
* links to the asset's page in the Dagster UI and to the notebook.

An absent table (targets or releases not set up) becomes one sentence, never an error.
Groups below the minimum size (``withheld_reason`` set in ``group_metrics_weekly``) never
appear. The ``Digest`` is rendered by ``to_markdown`` (stored, and Mattermost), ``to_html``
(stored, and e-mail), ``to_text`` (e-mail's plain part) and ``to_slack`` (Slack mrkdwn
blocks); ``check_no_personal_data`` refuses any rendering that carries an e-mail address or
a user key. Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from renku_metrics.core.charts import last_periods, metric_chart, png_bytes
from renku_metrics.core.config import Deployment
from renku_metrics.core.coverage import coverage_for
from renku_metrics.core.events import USER_KEY_PATTERN
from renku_metrics.core.layout import day_of_key, is_manifest_key, metrics_key, metrics_prefix, raw_events_prefix
from renku_metrics.core.periods import week_start
from renku_metrics.core.readers import read_active_users, read_metrics
from renku_metrics.core.storage import Storage
from renku_metrics.core.value.digest_config import DigestSettings
from renku_metrics.core.value.releases import ImpactSettings

ASSET_NAME = "weekly_digest"
NOISE_SDS = 2.0  # arrows: a change beyond this many standard deviations of recent changes
NOISE_WEEKS = 8  # ... of the previous this many week-to-week changes
NOISE_MIN_CHANGES = 4  # fewer known changes: no arrow
AVERAGE_WEEKS = 4
CHART_WEEKS = 12
STALE_DAYS = 2  # a deployment's newest extracted day older than this: its extract is failing
UP, DOWN = "↑", "↓"
TARGET_STATUS_TABLE = "target_status"
RELEASE_IMPACT_KEY = "metrics/release_impact/release_impact.parquet"
GROUP_METRICS_TABLE = "group_metrics_weekly"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    """A titled part of the digest. Text uses a small markup every renderer converts:
    ``**bold**`` and ``[text](url)``; values from data are stripped of markup characters."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (caption, table)
    bullets: list[str] = field(default_factory=list)


@dataclass
class Digest:
    week: dt.date
    title: str
    sections: list[Section]
    links: list[tuple[str, str]]  # (label, url)
    headline: dict[str, float | int]  # numeric metadata: <deployment>/<measure> -> value
    problems: int = 0
    chart_png: bytes | None = None


# ---------------------------------------------------------------------------- reading


def _clean(value) -> str:
    """Text from data, safe inside every renderer's markup (no markup characters)."""
    return re.sub(r"[*`|<>\[\]]", "", " ".join(str(value).split()))


def read_table_file(storage: Storage, key: str) -> pd.DataFrame | None:
    """One Parquet object as a DataFrame, None when it is not stored."""
    if not storage.exists(key):
        return None
    return storage.read_parquet(key).to_pandas()


def target_status_weeks(storage: Storage) -> list[dt.date]:
    """Evaluation weeks stored in the target_status table (contract 2), oldest first."""
    weeks = []
    for key in storage.list_keys(metrics_prefix(TARGET_STATUS_TABLE)):
        match = re.search(r"/period=(\d{4}-\d{2}-\d{2})/", key)
        if match and key.endswith(".parquet"):
            weeks.append(dt.date.fromisoformat(match.group(1)))
    return sorted(set(weeks))


def withheld_groups(storage: Storage, week: dt.date) -> set[str]:
    """Groups below the minimum size in the week's group metrics (contract 1): never named."""
    frame = read_table_file(storage, metrics_key(GROUP_METRICS_TABLE, week))
    if frame is None or "withheld_reason" not in frame:
        return set()
    return set(frame.loc[frame["withheld_reason"].notna(), "group"].astype(str))


def _as_date(value) -> dt.date | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return pd.Timestamp(value).date()


# ---------------------------------------------------------------------------- numbers


def beyond_noise(series: list[float], index: int) -> str:
    """The arrow for the change into ``series[index]`` (UP, DOWN or ""), see the module docstring."""
    if index < 1 or series[index] is None or series[index - 1] is None:
        return ""
    changes = []
    for i in range(max(1, index - NOISE_WEEKS), index):
        if series[i] is not None and series[i - 1] is not None:
            changes.append(series[i] - series[i - 1])
    if len(changes) < NOISE_MIN_CHANGES:
        return ""
    change = series[index] - series[index - 1]
    spread = statistics.stdev(changes)
    if change == 0 or abs(change) <= NOISE_SDS * spread:
        return ""
    return UP if change > 0 else DOWN


def _fmt_num(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if digits else f"{int(round(value))}"


def _fmt_users_pct(users, pct) -> str:
    return f"{_fmt_num(users)} ({_fmt_num(pct, 1)}%)" if pct is not None and not pd.isna(pct) else _fmt_num(users)


def _fmt_average(users: float | None, pct: float | None) -> str:
    if users is None:
        return "-"
    return f"{users:.1f} ({pct:.1f}%)" if pct is not None else f"{users:.1f}"


def _weeks_back(week: dt.date, count: int) -> list[dt.date]:
    """``count`` week starts ending with ``week``, oldest first."""
    return [week - dt.timedelta(weeks=count - 1 - i) for i in range(count)]


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None and not pd.isna(v)]
    return sum(present) / len(present) if present else None


def deployment_table(
    deployment: str, active: pd.DataFrame, metrics: pd.DataFrame, week: dt.date
) -> tuple[Table | None, dict]:
    """This week, last week, the 4-week average and the arrow of active users and each metric."""
    weeks = _weeks_back(week, NOISE_WEEKS + 2)
    act = active[active["deployment"] == deployment].set_index("period_start")
    if week not in act.index:
        return None, {}
    au = [float(act.loc[w, "active_users"]) if w in act.index else None for w in weeks]
    previous = weeks[-1 - AVERAGE_WEEKS : -1]
    rows = [
        [
            "active users",
            _fmt_num(au[-1]),
            _fmt_num(au[-2]),
            _fmt_num(_mean(au[-1 - AVERAGE_WEEKS : -1]), 1),
            beyond_noise(au, len(au) - 1),
        ]
    ]
    headline: dict = {f"{deployment}/active_users": int(au[-1])}
    mine = metrics[metrics["deployment"] == deployment]
    for metric in list(dict.fromkeys(mine["metric"])):
        m = mine[mine["metric"] == metric].set_index("period_start")

        def val(w, col, m=m):
            return None if w not in m.index or pd.isna(m.loc[w, col]) else float(m.loc[w, col])

        users = [val(w, "users") for w in weeks]
        pct = [val(w, "pct") for w in weeks]
        avg_users = _mean([val(w, "users") for w in previous])
        avg_pct = _mean([val(w, "pct") for w in previous])
        rows.append(
            [
                _clean(metric),
                _fmt_users_pct(users[-1], pct[-1]),
                _fmt_users_pct(users[-2], pct[-2]),
                _fmt_average(avg_users, avg_pct),
                beyond_noise(pct, len(pct) - 1),
            ]
        )
        if users[-1] is not None:
            headline[f"{deployment}/{metric}/users"] = int(users[-1])
        if pct[-1] is not None:
            headline[f"{deployment}/{metric}/pct"] = pct[-1]
    columns = [deployment, "this week", "last week", f"{AVERAGE_WEEKS}-week average", "change"]
    return Table(columns, rows), headline


# ---------------------------------------------------------------------------- targets


def _latest_per_target(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["period_start"] = pd.to_datetime(frame["period_start"]).dt.date
    keys = ["target", "deployment", "group"] if "group" in frame else ["target", "deployment"]
    frame = frame.sort_values("period_start").groupby(keys, dropna=False, sort=True).tail(1)
    return frame.reset_index(drop=True)


def _group_of(row) -> str | None:
    group = row.get("group")
    return group if isinstance(group, str) and group else None


def _target_label(row, hidden: set[str]) -> str | None:
    group = row.get("group")
    if isinstance(group, str) and group in hidden:
        return None
    where = _clean(row.get("deployment", ""))
    if isinstance(group, str) and group:
        where += f", {_clean(group)}"
    measure = "%" if row.get("measure") in ("pct", "pct_of_members") else " users"
    goal = row.get("goal")
    goal_text = f" {float(goal):g}{measure}" if goal is not None and not pd.isna(goal) else ""
    return f"**{_clean(row['target'])}** ({_clean(row.get('metric', ''))}{goal_text}, {where})"


def _fmt_value(row) -> str:
    value = row.get("value")
    if value is None or pd.isna(value):
        return "no data"
    unit = "%" if row.get("measure") in ("pct", "pct_of_members") else " users"
    return f"{float(value):.1f}{unit}" if unit == "%" else f"{float(value):.0f}{unit}"


def targets_section(storage: Storage, week: dt.date, settings: DigestSettings, hidden: set[str]) -> Section:
    section = Section("Targets")
    weeks = target_status_weeks(storage)
    if not weeks:
        section.paragraphs.append("No target status stored yet (table target_status): no targets to report.")
        return section
    if week not in weeks:
        section.paragraphs.append(f"Targets were not evaluated for this week (latest evaluation: {weeks[-1]}).")
        return section
    current = _latest_per_target(storage.read_parquet(metrics_key(TARGET_STATUS_TABLE, week)).to_pandas())
    earlier = [w for w in weeks if w < week]
    before = (
        _latest_per_target(storage.read_parquet(metrics_key(TARGET_STATUS_TABLE, earlier[-1])).to_pandas())
        if earlier
        else None
    )
    previous: dict = {}
    if before is not None:
        for row in before.to_dict("records"):
            previous[(row["target"], row.get("deployment"), _group_of(row))] = row["status"]
    week_end = week + dt.timedelta(days=7)
    changed, near = [], []
    for row in current.to_dict("records"):
        label = _target_label(row, hidden)
        if label is None:
            continue
        was = previous.get((row["target"], row.get("deployment"), _group_of(row)))
        status = str(row["status"])
        if was is not None and was != status:
            changed.append(f"{label}: {_clean(was)} → **{_clean(status)}**, now {_fmt_value(row)}")
        elif was is None and before is not None and status in ("met", "missed", "off_track"):
            changed.append(f"{label}: first evaluated, **{_clean(status)}**, now {_fmt_value(row)}")
        by = _as_date(row.get("by"))
        if (
            by is not None
            and status not in ("met", "missed")
            and week_end <= by <= week_end + dt.timedelta(days=settings.deadline_near_days)
        ):
            owner = row.get("owner")
            owner_text = f", owner {_clean(owner)}" if isinstance(owner, str) and owner and "@" not in owner else ""
            near.append(f"{label}: due {by}, {_clean(status)}, now {_fmt_value(row)}{owner_text}")
    if changed:
        section.paragraphs.append("Status changed since the previous evaluation:")
        section.bullets.extend(changed)
    else:
        section.paragraphs.append(f"No target changed status ({len(current)} evaluated).")
    if near:
        section.bullets.extend(f"Deadline near: {line}" for line in near)
    return section


# ---------------------------------------------------------------------------- releases


def _verdict_due(deployment: Deployment | None) -> dt.timedelta:
    """From a release's week to the last week of its after-window: the deployment's own impact
    settings (``releases.impact`` in deployments.yaml), exactly as the release impact uses them."""
    impact = deployment.releases.impact if deployment is not None and deployment.releases else ImpactSettings()
    return dt.timedelta(weeks=int(impact.skip_release_week) + impact.weeks_after - 1)


def releases_section(storage: Storage, week: dt.date, deployments: Sequence[Deployment]) -> Section:
    section = Section("Releases")
    frame = read_table_file(storage, RELEASE_IMPACT_KEY)
    if frame is None:
        section.paragraphs.append("No release impact stored yet (table release_impact): no verdicts to report.")
        return section
    if frame.empty:
        section.paragraphs.append("No releases known.")
        return section
    if "group" in frame:
        frame = frame[frame["group"].isna()]  # the deployment-wide verdicts; per group on the asset's page
    frame = frame.assign(release_week=pd.to_datetime(frame["release_date"]).dt.date.map(week_start))
    by_name = {d.name: d for d in deployments}
    verdict_weeks = [
        release_week + _verdict_due(by_name.get(str(name)))
        for release_week, name in zip(frame["release_week"], frame["deployment"], strict=True)
    ]
    due = frame[[w == week for w in verdict_weeks]]
    new = frame[frame["release_week"] == week]
    for (release, deployment), rows in due.groupby(["release", "deployment"], sort=True):
        section.bullets.append(_verdict_line(str(release), str(deployment), rows))
    for (release, deployment), rows in new.groupby(["release", "deployment"], sort=True):
        verdict_week = week + _verdict_due(by_name.get(str(deployment)))
        section.bullets.append(
            f"**{_clean(release)}** went live on {_clean(deployment)} {_as_date(rows['release_date'].iloc[0])}: "
            f"its verdict comes with the digest of the week of {verdict_week}."
        )
    if not section.bullets:
        section.paragraphs.append("No release verdict became available this week.")
    return section


def _diff_text(row) -> str:
    unit = " points" if row.get("measure") == "pct" else " users"
    diff, low, high = row.get("diff"), row.get("ci_low"), row.get("ci_high")
    if diff is None or pd.isna(diff):
        return ""
    text = f"{float(diff):+.1f}{unit}"
    if low is not None and high is not None and not pd.isna(low) and not pd.isna(high):
        text += f" (95% interval {float(low):+.1f} to {float(high):+.1f})"
    return text


def _verdict_line(release: str, deployment: str, rows: pd.DataFrame) -> str:
    head = f"**{_clean(release)}** on {_clean(deployment)}: "
    verdicts = list(rows["verdict"].astype(str))
    if set(verdicts) == {"too_early"}:
        return head + "still too early (its after-window is not complete yet)."
    parts, quiet = [], 0
    for row in rows.to_dict("records"):
        name = f"{_clean(row['metric'])} {_clean(row.get('measure', ''))}".strip()
        verdict = str(row["verdict"])
        expected = row.get("as_expected")
        expected_text = (
            "" if expected is None or pd.isna(expected) else (", as expected" if expected else ", NOT as expected")
        )
        if verdict in ("up", "down"):
            parts.append(f"{name} **{verdict}** {_diff_text(row)}{expected_text}")
        elif verdict == "confounded":
            parts.append(f"{name} confounded by {_clean(row.get('confounded_by') or 'another release')}")
        elif verdict == "no_change" and expected_text:
            parts.append(f"{name} no detectable change {_diff_text(row)}{expected_text}")
        elif verdict == "not_enough_data":
            parts.append(f"{name} not enough data")
        else:
            quiet += 1
    if quiet:
        parts.append(f"no detectable change in {quiet} other measure{'s' if quiet != 1 else ''}")
    return head + "; ".join(parts) + "."


# ---------------------------------------------------------------------------- data problems


def newest_extracted_day(storage: Storage, deployment: str) -> dt.date | None:
    days = [day_of_key(k) for k in storage.list_keys(raw_events_prefix(deployment)) if is_manifest_key(k)]
    return max(days) if days else None


def problems_section(
    storage: Storage,
    week: dt.date,
    deployments: list[Deployment],
    active: pd.DataFrame,
    today: dt.date,
    check_stale: bool,
) -> Section:
    section = Section("Data problems")
    end = week + dt.timedelta(days=7)
    for d in deployments:
        if d.start_date >= end:
            continue
        coverage = coverage_for(storage, d, week, end, today)
        name = d.name
        if coverage.missing_days:
            days = ", ".join(str(x) for x in coverage.missing_days)
            section.bullets.append(
                f"**{name}**: {len(coverage.missing_days)} day(s) not extracted ({days}). What to do: run "
                f"{name}_daily_extract for those days (a backfill of raw_events/{name}); the weekly_metrics "
                "schedule then recomputes the week."
            )
        for note in coverage.incomplete_sources:
            text = _clean(note)
            if "withheld" in note:
                section.bullets.append(
                    f"**{name}**: a failing check: {text}. What to do: look at the day's rejected/ files and the "
                    f"raw_events/{name} checks, fix the source or the check, then rerun the day's extract."
                )
            else:
                section.bullets.append(
                    f"**{name}**: a source did not read its whole day: {text}. What to do: rerun the day's extract "
                    "once the source has caught up; the week is recomputed by the weekly_metrics schedule."
                )
        stored = (
            active[(active["deployment"] == name) & (active["period_start"] == week)] if not active.empty else active
        )
        if stored.empty:
            section.bullets.append(
                f"**{name}**: no weekly aggregate for this week. What to do: materialize weekly_metrics for {week}."
            )
        elif not bool(stored["complete"].iloc[0]) and coverage.is_complete(today >= end):
            section.bullets.append(
                f"**{name}**: the stored weekly aggregate is incomplete but all its days are now extracted in full. "
                f"What to do: rerun weekly_metrics for {week}."
            )
        if check_stale:
            newest = newest_extracted_day(storage, name)
            if newest is None or (today - newest).days > STALE_DAYS:
                section.bullets.append(
                    f"**{name}**: no day extracted since {newest or 'ever'}: the daily extract is failing or "
                    f"stopped. What to do: look at the latest runs of {name}_daily_extract."
                )
    if not section.bullets:
        section.paragraphs.append("None: every day of the week was extracted in full and passed its checks.")
    return section


# ---------------------------------------------------------------------------- the digest


def build_digest(
    storage: Storage,
    week: dt.date,
    deployments: list[Deployment],
    settings: DigestSettings,
    now: dt.datetime,
    chart: bool = True,
) -> Digest:
    """The digest of the ISO week starting on ``week`` (a Monday), as of ``now``."""
    if week.weekday() != 0:
        raise ValueError(f"week must be a Monday (an ISO week's start), got {week}")
    today = now.astimezone(dt.timezone.utc).date()
    metrics = read_metrics("week", storage=storage)
    active = read_active_users("week", storage=storage)
    sections = []
    headline: dict = {}
    tables = []
    order = [d.name for d in deployments] + ["all"]
    for name in order:
        if active.empty:
            break
        table, numbers = deployment_table(name, active, metrics, week)
        if table is not None:
            rows = active[(active["deployment"] == name) & (active["period_start"] == week)]
            caption = "" if bool(rows["complete"].iloc[0]) else f"provisional: {_clean(rows['coverage_note'].iloc[0])}"
            tables.append((caption, table))
            headline.update(numbers)
    usage = Section("Usage", tables=tables)
    if not tables:
        usage.paragraphs.append(f"No weekly aggregates stored for the week of {week}.")
    else:
        usage.paragraphs.append(
            f"Users (share of active users). {UP}/{DOWN}: a change from last week beyond the week-to-week noise "
            f"(more than {NOISE_SDS:g} standard deviations of the previous {NOISE_WEEKS} weekly changes)."
        )
    sections.append(usage)
    sections.append(targets_section(storage, week, settings, withheld_groups(storage, week)))
    sections.append(releases_section(storage, week, deployments))
    latest_complete = week_start(today) - dt.timedelta(weeks=1)
    problems = problems_section(storage, week, deployments, active, today, check_stale=week >= latest_complete)
    sections.append(problems)
    links = []
    if settings.dagster_ui_url:
        links.append(("This digest in Dagster", f"{settings.dagster_ui_url}/assets/{ASSET_NAME}?partition={week}"))
    if settings.notebook_url:
        links.append(("The metrics notebook", settings.notebook_url))
    png = None
    if chart and not metrics.empty:
        shown = last_periods(metrics[metrics["period_start"] <= week], CHART_WEEKS)
        fig = metric_chart(shown, "pct", f"Share of active users per core action, {CHART_WEEKS} weeks to {week}")
        png = png_bytes(fig)
    week_end = week + dt.timedelta(days=6)
    return Digest(
        week=week,
        title=f"Renku metrics, week {week.isocalendar()[1]} ({week} to {week_end})",
        sections=sections,
        links=links,
        headline=headline,
        problems=len(problems.bullets),
        chart_png=png,
    )


# ---------------------------------------------------------------------------- renderers

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]]+)\]\((\S+?)\)")


def _links_line(digest: Digest) -> str:
    return " · ".join(f"[{label}]({url})" for label, url in digest.links)


def _aligned(table: Table) -> str:
    rows = [table.columns, *table.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(table.columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_markdown(digest: Digest, image: str | None = None) -> str:
    """Markdown with tables (stored as digest.md; Mattermost renders it as is)."""
    out = [f"#### {digest.title}", ""]
    for s in digest.sections:
        out += [f"**{s.title}**", ""]
        for p in s.paragraphs:
            out += [p, ""]
        for caption, t in s.tables:
            if caption:
                out += [f"_{caption}_", ""]
            out.append("| " + " | ".join(t.columns) + " |")
            out.append("|" + "|".join([" --- "] + [" ---: "] * (len(t.columns) - 1)) + "|")
            out += ["| " + " | ".join(r) + " |" for r in t.rows]
            out.append("")
        out += [f"- {b}" for b in s.bullets]
        if s.bullets:
            out.append("")
    if image:
        out += [f"![Share of active users per core action]({image})", ""]
    if digest.links:
        out += [_links_line(digest), ""]
    return "\n".join(out)


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = _LINK.sub(lambda m: f'<a href="{html.escape(html.unescape(m.group(2)))}">{m.group(1)}</a>', text)
    return _BOLD.sub(r"<strong>\1</strong>", text)


def to_html(digest: Digest, image_src: str | None = None) -> str:
    """A standalone HTML page (stored as digest.html; the e-mail's HTML part with ``cid:`` image)."""
    out = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>' + html.escape(digest.title) + "</title></head>",
        '<body style="font-family: sans-serif; max-width: 52em">',
        f"<h2>{html.escape(digest.title)}</h2>",
    ]
    for s in digest.sections:
        out.append(f"<h3>{html.escape(s.title)}</h3>")
        out += [f"<p>{_inline_html(p)}</p>" for p in s.paragraphs]
        for caption, t in s.tables:
            out.append('<table style="border-collapse: collapse" cellpadding="4">')
            if caption:
                out.append(f"<caption>{html.escape(caption)}</caption>")
            out.append("<tr>" + "".join(f"<th align='left'>{html.escape(c)}</th>" for c in t.columns) + "</tr>")
            for r in t.rows:
                cells = [f"<td>{html.escape(r[0])}</td>"] + [f"<td align='right'>{html.escape(c)}</td>" for c in r[1:]]
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</table>")
        if s.bullets:
            out.append("<ul>" + "".join(f"<li>{_inline_html(b)}</li>" for b in s.bullets) + "</ul>")
    if image_src:
        out.append(
            f'<p><img src="{html.escape(image_src)}" alt="Share of active users per core action" width="800"></p>'
        )
    if digest.links:
        out.append(f"<p>{_inline_html(_links_line(digest))}</p>")
    out.append("</body></html>")
    return "\n".join(out)


def _plain_inline(text: str) -> str:
    return _BOLD.sub(r"\1", _LINK.sub(r"\1 (\2)", text))


def to_text(digest: Digest) -> str:
    """Plain text (the e-mail's text part): tables aligned in columns."""
    out = [digest.title, "=" * len(digest.title), ""]
    for s in digest.sections:
        out += [s.title, "-" * len(s.title)]
        out += [_plain_inline(p) for p in s.paragraphs]
        for caption, t in s.tables:
            out += [""] + ([caption] if caption else []) + [_aligned(t)]
        out += [f"* {_plain_inline(b)}" for b in s.bullets]
        out.append("")
    out += [f"{label}: {url}" for label, url in digest.links]
    return "\n".join(out).rstrip() + "\n"


SLACK_SECTION_CHARS = 3000
SLACK_MAX_BLOCKS = 50


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_inline(text: str) -> str:
    text = _slack_escape(text)
    text = _LINK.sub(lambda m: f"<{m.group(2)}|{m.group(1)}>", text)
    return _BOLD.sub(r"*\1*", text)


def _chunks(lines: list[str], limit: int) -> list[str]:
    """Lines joined into texts of at most ``limit`` characters (a longer line is cut)."""
    out, current = [], ""
    for line in lines:
        line = line if len(line) <= limit else line[: limit - 1] + "…"
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            out.append(current)
            current = line
        else:
            current = candidate
    if current:
        out.append(current)
    return out


def to_slack(digest: Digest) -> dict:
    """A Slack incoming-webhook payload: ``text`` (notification fallback) and mrkdwn ``blocks``
    (section texts at most 3,000 characters, at most 50 blocks)."""
    blocks: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": digest.title[:150]}}]
    for s in digest.sections:
        lines = [f"*{_slack_escape(s.title)}*"] + [_slack_inline(p) for p in s.paragraphs]
        texts = _chunks(lines, SLACK_SECTION_CHARS)
        for caption, t in s.tables:
            code = _slack_escape(_aligned(t))
            head = f"_{_slack_escape(caption)}_\n" if caption else ""
            texts += [head + "```" + part + "```" for part in _chunks(code.split("\n"), SLACK_SECTION_CHARS - 40)]
        texts += _chunks([f"• {_slack_inline(b)}" for b in s.bullets], SLACK_SECTION_CHARS)
        blocks += [{"type": "section", "text": {"type": "mrkdwn", "text": t}} for t in texts]
    if digest.links:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _slack_inline(_links_line(digest))}]})
    if len(blocks) > SLACK_MAX_BLOCKS:
        link = f" See {_slack_inline(_links_line(digest))}." if digest.links else ""
        blocks = blocks[: SLACK_MAX_BLOCKS - 1] + [
            {"type": "section", "text": {"type": "mrkdwn", "text": "_The rest of the digest is left out._" + link}}
        ]
    fallback = f"{digest.title}: {digest.problems} data problem(s)"
    return {"text": fallback, "blocks": blocks}


MATTERMOST_MAX_CHARS = 16_000  # Mattermost splits posts over 16,383 characters


def to_mattermost(digest: Digest, channel: str | None = None, username: str | None = None) -> dict:
    """A Mattermost incoming-webhook payload: Markdown ``text`` with tables (one post)."""
    text = to_markdown(digest)
    if len(text) > MATTERMOST_MAX_CHARS:
        tail = "\n\n_The rest of the digest is left out._ " + _links_line(digest)
        text = text[: MATTERMOST_MAX_CHARS - len(tail)].rsplit("\n", 1)[0] + tail
    payload: dict = {"text": text}
    if channel:
        payload["channel"] = channel
    if username:
        payload["username"] = username
    return payload


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_USER_KEY = re.compile(rf"\b({USER_KEY_PATTERN})\b")


def check_no_personal_data(text: str, where: str) -> None:
    """Raise ValueError if ``text`` holds an e-mail address or a user key (never sent or stored)."""
    for pattern, what in ((_EMAIL, "an e-mail address"), (_USER_KEY, "a user key")):
        if pattern.search(text):
            raise ValueError(f"{where}: the digest would contain {what}; it is not stored or sent")
