"""Did a release change behaviour? A verdict per release, deployment and metric.

For each release and deployment, each metric's complete ISO weeks before the release
week are compared with the complete weeks after it (4 and 4 by default, the release
week itself skipped; ``ImpactSettings``):

* **headline**: the pooled difference. For a share of active users (``pct``), the
  users of the window over its active users, after minus before in percentage
  points, with Newcombe's hybrid score interval (method 10, from the two Wilson
  intervals). For a count (``users``: distinct users a week, and active users), the
  mean per week after minus before, with a Poisson normal interval.
* **verdict**: from a model of the weekly values, because weeks are not independent
  draws and weekly shares vary beyond binomial noise: a quasi-binomial GLM of the
  weekly share (statsmodels GLM, Binomial family, ``var_weights`` = the week's active
  users, Pearson chi-square scale ``scale="X2"``, t intervals) with an indicator of the
  after-window and the academic-calendar term of each week (lecture / exams / break,
  ``CalendarSettings``) where the weeks allow it; for counts the quasi-Poisson
  analogue. Once the same weeks a year earlier are stored, they enter as a control
  (difference in differences: the effect is after x this-year). The p-values of a
  release's metrics at one deployment are adjusted by Benjamini-Hochberg; ``up`` or
  ``down`` when the adjusted p-value is below ``alpha``, else ``no_change`` with the
  model's interval ("no detectable change, could be -6 to +9 points").
* ``not_enough_data``: fewer than ``min_weeks`` complete weeks on a side, fewer than
  ``min_active_users`` active users a week on average, nobody doing the action, or a
  model that cannot be fitted; ``confounded``: another release of the deployment falls
  inside the windows (named); ``too_early``: the after-window has not ended yet.
* ``as_expected``: on the metric a release declared it would move, whether the verdict
  went the declared direction.

Plain Python, no Dagster.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from renku_metrics.core.periods import week_start
from renku_metrics.core.value.releases import CalendarSettings, ImpactSettings

IMPACT_COLUMNS = [
    "release",
    "deployment",
    "metric",
    "measure",
    "group",
    "release_date",
    "before",
    "after",
    "diff",
    "ci_low",
    "ci_high",
    "model_low",
    "model_high",
    "p_value",
    "p_adjusted",
    "verdict",
    "as_expected",
    "confounded_by",
    "explanation",
    "computed_at",
]
VERDICTS = ("up", "down", "no_change", "not_enough_data", "confounded", "too_early")
_Z95 = 1.959963984540054
_WEEK = dt.timedelta(days=7)
_YEAR = dt.timedelta(weeks=52)  # the same ISO weekday, 52 weeks earlier


# -- intervals ------------------------------------------------------------------


def wilson(x: float, n: float, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion x/n."""
    if n <= 0:
        return 0.0, 1.0
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(x1: float, n1: float, x2: float, n2: float, z: float = _Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (method 10) of p2 - p1, from the Wilson intervals."""
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1, z)
    l2, u2 = wilson(x2, n2, z)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone, at most 1), in input order."""
    m = len(p_values)
    if m == 0:
        return []
    order = np.argsort(p_values)
    ranked = np.asarray(p_values, dtype=float)[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


# -- the model ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFit:
    effect: float  # log odds ratio (pct) or log rate ratio (counts) of after vs before
    low: float
    high: float
    p_value: float
    control: bool  # the year-earlier weeks were used
    calendar: bool  # the academic-calendar term was used
    se: float = math.nan  # standard error of ``effect``
    df: float = math.inf  # residual degrees of freedom (t intervals)

    def interval(self, alpha: float) -> tuple[float, float]:
        """The (1 - alpha) t interval of the effect."""
        from scipy.stats import t

        half = float(t.ppf(1 - alpha / 2, self.df)) * self.se
        return self.effect - half, self.effect + half


def fit_effect(weeks: pd.DataFrame, measure: str) -> ModelFit | None:
    """Fit the quasi-binomial (``pct``) or quasi-Poisson (``users``) model of weekly values.

    ``weeks``: one row per week with ``users``, ``base`` (active users; ``pct`` only),
    ``after`` (bool), ``current`` (bool: False for year-earlier control weeks) and ``term``.
    None when the model cannot be fitted.
    """
    import statsmodels.api as sm

    after = weeks["after"].to_numpy(dtype=float)
    current = weeks["current"].to_numpy(dtype=float)
    control = bool((current == 0).any())
    columns = [np.ones(len(weeks))]
    if control:
        columns += [after, current]
    columns.append(after * current)  # the effect: its coefficient is reported
    effect_index = len(columns) - 1
    X = np.column_stack(columns)
    calendar = False
    for term in ("exams", "break"):
        dummy = (weeks["term"] == term).to_numpy(dtype=float)
        candidate = np.column_stack([X, dummy])
        if np.linalg.matrix_rank(candidate) == candidate.shape[1] and len(weeks) - candidate.shape[1] >= 3:
            X, calendar = candidate, True
    if len(weeks) - X.shape[1] < 1:
        return None
    users = weeks["users"].to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if measure == "pct":
                base = weeks["base"].to_numpy(dtype=float)
                model = sm.GLM(users / base, X, family=sm.families.Binomial(), var_weights=base)
            else:
                model = sm.GLM(users, X, family=sm.families.Poisson())
            result = model.fit(scale="X2", use_t=True)
        except Exception:  # a perfect separation or a singular fit: no verdict from this model
            return None
    b = float(result.params[effect_index])
    low, high = (float(v) for v in np.asarray(result.conf_int(alpha=0.05))[effect_index])
    p = float(result.pvalues[effect_index])
    if not all(math.isfinite(v) for v in (b, low, high, p)):
        return None
    se = float(result.bse[effect_index])
    return ModelFit(b, low, high, p, control, calendar, se, float(result.df_resid))


def _expit(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v > -700 else 0.0


def _logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def model_interval(fit: ModelFit, measure: str, before: float) -> tuple[float, float]:
    """The model's interval of the effect on the headline scale: points of share, or users a week."""
    if measure == "pct":
        p0 = before / 100
        return 100 * (_expit(_logit(p0) + fit.low) - p0), 100 * (_expit(_logit(p0) + fit.high) - p0)
    return before * (math.exp(min(fit.low, 50)) - 1), before * (math.exp(min(fit.high, 50)) - 1)


def headline(before: pd.DataFrame, after: pd.DataFrame, measure: str) -> tuple[float, float, float, float, float]:
    """(before, after, diff, ci_low, ci_high): pooled shares in percent with Newcombe's
    interval in points, or mean users a week with a Poisson interval."""
    if measure == "pct":
        x1, n1 = before["users"].sum(), before["base"].sum()
        x2, n2 = after["users"].sum(), after["base"].sum()
        low, high = newcombe(x1, n1, x2, n2)
        b, a = 100 * x1 / n1, 100 * x2 / n2
        return b, a, a - b, 100 * low, 100 * high
    b, a = float(before["users"].mean()), float(after["users"].mean())
    se = math.sqrt(b / len(before) + a / len(after))
    return b, a, a - b, a - b - _Z95 * se, a - b + _Z95 * se


# -- the table ------------------------------------------------------------------


def weekly_series(weekly: pd.DataFrame, groups: pd.DataFrame | None = None) -> pd.DataFrame:
    """The weekly values to judge, one row per (deployment, group, metric, measure, week):
    columns deployment, group, metric, measure, period_start, users, base, complete.

    ``weekly`` is ``read_metrics("week")``; ``groups`` the group_metrics_weekly table
    (or None). Each core action gives ``pct`` and ``users``, active users ``users``;
    groups the same over their active members.
    """
    parts = []
    if not weekly.empty:
        w = weekly.rename(columns={"active_users": "base"})
        for measure in ("pct", "users"):
            parts.append(w.assign(measure=measure, group=None))
        active = w.drop_duplicates(["deployment", "period_start"]).assign(
            metric="active_users", measure="users", users=lambda f: f["base"], group=None
        )
        parts.append(active)
    if groups is not None and not groups.empty:
        g = groups.rename(columns={"active_members": "base"})
        g = g[g["users"].notna() & g["base"].notna()]
        parts.append(g.assign(measure="users"))
        parts.append(g[g["metric"] != "active_users"].assign(measure="pct"))
    if not parts:
        return pd.DataFrame(columns=["deployment", "group", "metric", "measure", "period_start", "users", "base"])
    cols = ["deployment", "group", "metric", "measure", "period_start", "users", "base", "complete"]
    frame = pd.concat([p[cols] for p in parts], ignore_index=True)
    frame["period_start"] = pd.to_datetime(frame["period_start"]).dt.date
    frame["users"] = frame["users"].astype(float)
    frame["base"] = frame["base"].astype(float)
    frame["complete"] = frame["complete"].astype(bool)
    return frame


@dataclass(frozen=True)
class Windows:
    release_week: dt.date
    before: list[dt.date]
    after: list[dt.date]

    @classmethod
    def of(cls, date: dt.date, settings: ImpactSettings) -> Windows:
        w0 = week_start(date)
        first_after = w0 + _WEEK if settings.skip_release_week else w0
        return cls(
            release_week=w0,
            before=[w0 - _WEEK * k for k in range(settings.weeks_before, 0, -1)],
            after=[first_after + _WEEK * k for k in range(settings.weeks_after)],
        )

    @property
    def span(self) -> tuple[dt.date, dt.date]:
        return self.before[0], self.after[-1]

    def complete_by(self) -> dt.date:
        """The day from which the after-window is complete (the Monday after its last week)."""
        return self.after[-1] + _WEEK


def _number(value: float, measure: str, signed: bool = True) -> str:
    value = value + 0.0 if round(value, 1) != 0 else 0.0  # no "-0.0"
    if measure == "pct":
        return f"{value:+.1f}" if signed else f"{value:.1f}%"
    return f"{value:+.0f}" if signed else f"{value:.0f}"


def _unit(measure: str) -> str:
    return "points" if measure == "pct" else "users a week"


def _label(metric: str, measure: str, group: str | None) -> str:
    if group:
        if metric == "active_users":
            return f"active members of {group}"
        return f"{metric} share of active members of {group}" if measure == "pct" else f"{metric} users in {group}"
    if metric == "active_users":
        return "active users"
    return f"{metric} share of active users" if measure == "pct" else f"{metric} users"


def judge_release(
    release: Mapping,
    others: pd.DataFrame,
    series: pd.DataFrame,
    settings: ImpactSettings,
    calendar: CalendarSettings,
    today: dt.date,
) -> list[dict]:
    """The rows of one release at one deployment (BH across its metrics, verdicts set)."""
    windows = Windows.of(release["date"], settings)
    lo, hi = windows.span
    clash = others[(others["week"] >= lo) & (others["week"] <= hi) & (others["release"] != release["release"])]
    confounded_by = ", ".join(f"{r.release} ({r.date})" for r in clash.itertuples()) or None
    too_early = windows.complete_by() > today
    rows, to_adjust = [], []
    keys = ["group", "metric", "measure"]
    grouped = series.groupby(keys, dropna=False, sort=True)
    for (group, metric, measure), weeks in grouped:
        group = None if group is None or (isinstance(group, float) and math.isnan(group)) else group
        done = weeks[weeks["complete"]].set_index("period_start")
        before = done.loc[done.index.isin(windows.before)]
        after = done.loc[done.index.isin(windows.after)]
        row = dict.fromkeys(IMPACT_COLUMNS)
        row.update(
            release=release["release"],
            deployment=release["deployment"],
            metric=metric,
            measure=measure,
            group=group,
            release_date=release["date"],
            confounded_by=confounded_by,
        )
        label = _label(metric, measure, group)
        usable = (
            len(before) > 0
            and len(after) > 0
            and (measure != "pct" or (before["base"].sum() > 0 < after["base"].sum()))
        )
        if usable:
            row["before"], row["after"], row["diff"], row["ci_low"], row["ci_high"] = headline(before, after, measure)
        rows.append(row)
        if too_early:
            # Only the before-window is final: the after-window's numbers would change.
            row.update(after=None, diff=None, ci_low=None, ci_high=None)
            row["verdict"] = "too_early"
            row["explanation"] = (
                f"Too early: the after-window ends with the week of {windows.after[-1]}; the verdict appears "
                f"once that week is complete ({windows.complete_by()})."
            )
            continue
        if confounded_by:
            row["verdict"] = "confounded"
            row["explanation"] = (
                f"Confounded: release {confounded_by} falls inside the windows ({lo} to {hi + dt.timedelta(days=6)}), "
                "so a change cannot be told apart."
            )
            continue
        short = [
            (side, len(part)) for side, part in (("before", before), ("after", after)) if len(part) < settings.min_weeks
        ]
        if short:
            side, count = short[0]
            row["verdict"] = "not_enough_data"
            row["explanation"] = (
                f"Not enough data: {count} complete week(s) {side} the release ({settings.min_weeks} needed)."
            )
            continue
        fewest = min(before["base"].mean(), after["base"].mean())
        if not fewest >= settings.min_active_users:
            row["verdict"] = "not_enough_data"
            row["explanation"] = (
                f"Not enough data: {fewest:.1f} active users a week on a side ({settings.min_active_users} needed)."
            )
            continue
        if before["users"].sum() + after["users"].sum() == 0:
            row["verdict"] = "not_enough_data"
            row["explanation"] = "Not enough data: nobody did this before or after the release."
            continue
        model_weeks = [
            before.assign(after=False, current=True),
            after.assign(after=True, current=True),
        ]
        control_b = done.loc[done.index.isin([w - _YEAR for w in windows.before])]
        control_a = done.loc[done.index.isin([w - _YEAR for w in windows.after])]
        if len(control_b) >= settings.min_weeks and len(control_a) >= settings.min_weeks:
            model_weeks += [control_b.assign(after=False, current=False), control_a.assign(after=True, current=False)]
        data = pd.concat(model_weeks).reset_index()
        data["term"] = [calendar.term(w) for w in data["period_start"]]
        fit = fit_effect(data, measure)
        if fit is None:
            row["verdict"] = "not_enough_data"
            row["explanation"] = "Not enough data: the weekly values do not allow the model to be fitted."
            continue
        row["p_value"] = fit.p_value
        row["_sign"] = fit.effect
        row["_label"] = label
        row["_fit"] = fit
        to_adjust.append(row)
    adjusted = benjamini_hochberg([r["p_value"] for r in to_adjust])
    # Benjamini-Yekutieli's false-coverage-rate intervals: with R of m metrics called, each
    # interval at level 1 - R*alpha/m (1 - alpha/m when none is). A called metric's interval
    # then excludes no change and every other one includes it: interval and verdict agree.
    called = sum(p < settings.alpha for p in adjusted)
    level = max(called, 1) * settings.alpha / max(len(to_adjust), 1)
    for row, p_adj in zip(to_adjust, adjusted, strict=True):
        row["p_adjusted"] = p_adj
        measure, label, fit = row["measure"], row.pop("_label"), row.pop("_fit")
        sign = row.pop("_sign")
        low, high = fit.interval(level)
        adjusted_fit = ModelFit(fit.effect, low, high, fit.p_value, fit.control, fit.calendar, fit.se, fit.df)
        row["model_low"], row["model_high"] = model_interval(adjusted_fit, measure, row["before"])
        interval = f"{_number(row['model_low'], measure)} to {_number(row['model_high'], measure)} {_unit(measure)}"
        extras = ", ".join(
            x
            for x in ("calendar term" if fit.calendar else "", "a year earlier as control" if fit.control else "")
            if x
        )
        model = f"model interval {interval}" + (f", with {extras}" if extras else "")
        if p_adj < settings.alpha:
            row["verdict"] = "up" if sign > 0 else "down"
            row["explanation"] = (
                f"{label[0].upper() + label[1:]} went {row['verdict']} by {_number(abs(row['diff']), measure, True)[1:]} "
                f"{_unit(measure)} (from {_number(row['before'], measure, False)} to "
                f"{_number(row['after'], measure, False)}; {model}; adjusted p {p_adj:.3f})."
            )
        else:
            row["verdict"] = "no_change"
            row["explanation"] = f"No detectable change in {label}, could be {interval} (adjusted p {p_adj:.2f})."
    for row in rows:
        for key in ("_sign", "_label", "_fit"):
            row.pop(key, None)
    _expectation(release, rows)
    return rows


def _expectation(release: Mapping, rows: list[dict]) -> None:
    metric, measure, direction = (release.get(k) for k in ("expected_metric", "expected_measure", "expected_direction"))
    if not isinstance(metric, str) or not isinstance(direction, str):
        return
    size = release.get("expected_size")
    for row in rows:
        if row["metric"] != metric or row["measure"] != (measure or "pct") or row["group"] is not None:
            continue
        if row["verdict"] not in ("up", "down", "no_change"):
            continue
        row["as_expected"] = row["verdict"] == direction
        about = (
            f" by about {size:g} {_unit(row['measure'])}"
            if isinstance(size, (int, float)) and not (isinstance(size, float) and math.isnan(size))
            else ""
        )
        row["explanation"] += (
            f" Expected {direction}{about}: {'as expected' if row['as_expected'] else 'not as expected'}."
        )


def release_impact(
    releases: pd.DataFrame,
    series: pd.DataFrame,
    settings: Mapping[str, tuple[ImpactSettings, CalendarSettings]],
    today: dt.date,
    computed_at: dt.datetime | None = None,
) -> pd.DataFrame:
    """The release_impact table: one row per release, deployment, metric, measure and group.

    ``releases``: the releases table; ``series``: ``weekly_series(...)``; ``settings``:
    per deployment its impact and calendar settings (deployments without are skipped).
    """
    computed_at = computed_at or dt.datetime.now(dt.timezone.utc)
    rows: list[dict] = []
    if not releases.empty:
        releases = releases.assign(week=[week_start(d) for d in releases["date"]])
    for deployment, group in releases.groupby("deployment", sort=True) if not releases.empty else []:
        if deployment not in settings:
            continue
        impact, calendar = settings[deployment]
        data = series[series["deployment"] == deployment]
        for release in group.sort_values(["date", "release"]).to_dict("records"):
            if data.empty:
                continue
            rows += judge_release(release, group, data, impact, calendar, today)
    frame = pd.DataFrame(rows, columns=IMPACT_COLUMNS)
    frame["computed_at"] = pd.Timestamp(computed_at)
    for col in ("before", "after", "diff", "ci_low", "ci_high", "model_low", "model_high", "p_value", "p_adjusted"):
        frame[col] = frame[col].astype("float64")
    frame["as_expected"] = frame["as_expected"].astype("boolean")
    frame["release_date"] = pd.to_datetime(frame["release_date"]).dt.date
    for col in ("release", "deployment", "metric", "measure", "group", "verdict", "confounded_by", "explanation"):
        frame[col] = frame[col].astype("object")
    return frame


GROUP_TABLE = "group_metrics_weekly"


def load_group_weekly(storage) -> pd.DataFrame | None:
    """The group_metrics_weekly table (storage contract 1) when its files exist, else None.

    Only the columns the impact needs are kept: period_start, deployment, group, metric,
    users, active_members, complete. Rows withheld for a small group (null counts) are dropped.
    """
    import duckdb

    from renku_metrics.core.layout import metrics_prefix

    keys = [k for k in storage.list_keys(metrics_prefix(GROUP_TABLE)) if k.endswith(".parquet")]
    if not keys:
        return None
    with storage.local_paths(keys) as paths:
        con = duckdb.connect()
        try:
            frame = con.execute(
                'SELECT period_start, deployment, "group", metric, users, active_members, complete '
                "FROM read_parquet($paths, union_by_name = true) "
                "WHERE users IS NOT NULL AND active_members IS NOT NULL",
                {"paths": paths},
            ).df()
        finally:
            con.close()
    frame["period_start"] = pd.to_datetime(frame["period_start"]).dt.date
    return frame
