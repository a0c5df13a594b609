"""Releases drawn on the charts: a labelled vertical marker per release inside a panel's span."""

import datetime as dt

import matplotlib.dates as mdates
import pandas as pd

from renku_metrics.core.charts import active_users_chart, lifecycle_chart, metric_chart, report_charts

WEEKS = [dt.date(2025, 3, 3) + dt.timedelta(weeks=i) for i in range(6)]


def weekly(deployments=("all", "demo", "other")) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "deployment": d,
                "period": "week",
                "period_start": w,
                "metric": "commit",
                "users": 10 + i,
                "active_users": 50,
                "pct": 20.0 + i,
                "complete": True,
            }
            for d in deployments
            for i, w in enumerate(WEEKS)
        ]
    )


RELEASES = pd.DataFrame(
    {
        "release": ["2.5.0", "2.5.0", "2.6.0", "1.0.0"],
        "deployment": ["demo", "other", "demo", "demo"],
        "date": [dt.date(2025, 3, 12), dt.date(2025, 3, 19), dt.date(2025, 3, 26), dt.date(2024, 1, 10)],
    }
)


def markers(ax) -> list[tuple[dt.date, str]]:
    """(date, label) of each release marker on a panel: a vertical line with a label at its x."""
    vertical = [line for line in ax.get_lines() if len(set(map(str, line.get_xdata()))) == 1]
    labelled = sorted(
        (mdates.num2date(mdates.date2num(t.get_position()[0])).date(), t.get_text().strip()) for t in ax.texts
    )
    lines_at = sorted(mdates.num2date(mdates.date2num(line.get_xdata()[0])).date() for line in vertical)
    assert lines_at == [when for when, _ in labelled]
    return labelled


def test_each_panel_marks_its_deployments_releases_inside_its_span():
    fig = metric_chart(weekly(), "pct", "t", RELEASES)
    by_title = {ax.get_title(loc="left"): ax for ax in fig.axes}
    assert markers(by_title["demo"]) == [(dt.date(2025, 3, 12), "2.5.0"), (dt.date(2025, 3, 26), "2.6.0")]
    assert markers(by_title["other"]) == [(dt.date(2025, 3, 19), "2.5.0")]
    # "all": each release once, at its earliest date; 1.0.0 lies outside the weeks shown
    assert markers(by_title["all"]) == [(dt.date(2025, 3, 12), "2.5.0"), (dt.date(2025, 3, 26), "2.6.0")]


def test_without_releases_the_charts_are_unchanged():
    plain = metric_chart(weekly(), "users", "t")
    empty = metric_chart(weekly(), "users", "t", RELEASES.iloc[0:0])
    for a, b in zip(plain.axes, empty.axes, strict=True):
        assert len(a.get_lines()) == len(b.get_lines()) and not b.texts
    assert set(report_charts(weekly(), weekly().assign(period="month"), releases=None)) == {
        "weekly_share",
        "weekly_users",
        "monthly_share",
        "monthly_users",
    }


def test_active_users_and_lifecycle_charts_mark_releases():
    active = weekly(("demo",)).drop(columns=["metric"])
    fig = active_users_chart(active, "t", RELEASES)
    assert [label for _, label in markers(fig.axes[0])] == ["2.5.0", "2.6.0"]
    life = weekly(("demo",)).assign(returning_users=5, new_users=3, resurrected_users=1, dormant_users=2)
    fig = lifecycle_chart(life, "t", RELEASES)
    assert markers(fig.axes[0]) == [(dt.date(2025, 3, 12), "2.5.0"), (dt.date(2025, 3, 26), "2.6.0")]
