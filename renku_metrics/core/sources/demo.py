"""A synthetic Renku deployment: realistic, deterministic activity for trying things out.

Same settings and day give the same events, and every day is generated on its
own (from the seed and the day), so any partition can be rebuilt alone.

The population is fixed by the seed: users sign up over time with growth,
stay for a heavy-tailed lifetime and then churn; each has a heavy-tailed
propensity to be active and personal rates for each action. Each day, activity
follows a weekday/weekend rhythm and a semester rhythm (lecture periods
mid-February to May and mid-September to mid-December). Logins are far more
frequent than commits; dataset creations and workflow runs are rarer and, as in
Renku 1, each comes with a commit. One service account (``bot_user_id``) commits
every weekday, which is what ``excluded_users`` in deployments.yaml is for.

A release effect can be planted: from the Wednesday ``session_boost_weeks_ago`` ISO
weeks before the current week, each user's chance to start a session on an active day
is multiplied by ``session_boost``. That date moves with the clock (so that it stays
inside the demo's last 12 weeks, where the demo's release list puts a release on the
same day): the one input besides settings and day, and only with the boost configured.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from renku_metrics.core.events import EVENT_COLUMNS, SourceResult, TimeWindow, make_event_id, pseudonymize_user
from renku_metrics.core.ownership import ProjectRecord
from renku_metrics.core.periods import weeks_ago_date
from renku_metrics.core.sources.base import SettingsBase

SOURCE_NAME = "demo"
# The Keycloak id of the demo's service account (left out through excluded_users).
DEMO_BOT_KEYCLOAK_ID = "00000000-0000-4000-8000-0000000b0700"


class Settings(SettingsBase):
    seed: int = 42
    users: int = 6000  # everyone who ever signs up over the simulated horizon
    launch_date: dt.date = dt.date(2022, 1, 1)  # sign-ups begin here
    horizon_days: int = 6 * 365  # sign-ups spread over this many days, growing
    projects_per_user: int = 3
    bot: bool = True
    # Groups (docs/groups.md): an "Academic Team" of this many members (0: the demo has no groups),
    # a few of whom leave it and a few others join it between team_changes_from and team_changes_to,
    # and a "Data Stewards" team of small_team members. Users get e-mail domains of Swiss institutions.
    academic_team: int = 0
    small_team: int = 3
    team_changes_from: dt.date = dt.date(2025, 3, 1)
    team_changes_to: dt.date = dt.date(2026, 10, 31)
    session_boost: float = 1.0  # planted release effect on session starts (1.0: none)
    session_boost_weeks_ago: int | None = None
    project_ownership: bool = True  # answer project_owners (see Source.project_owners)


@dataclass(frozen=True)
class Population:
    keycloak_ids: np.ndarray  # str
    user_keys: np.ndarray  # str, md5 hex
    signup: np.ndarray  # day ordinal
    churn: np.ndarray  # day ordinal (exclusive)
    propensity: np.ndarray  # base daily activity probability
    p_login: np.ndarray
    p_commit: np.ndarray
    p_dataset: np.ndarray
    p_workflow: np.ndarray
    p_session: np.ndarray
    projects: np.ndarray  # (users, projects_per_user) project ids
    project_visibility: dict[int, str]
    teams: dict[str, list[tuple[int, int, int]]]  # group path -> (user index, joined, left) day ordinals


@functools.lru_cache(maxsize=8)
def build_population(settings: Settings) -> Population:
    rng = np.random.default_rng(settings.seed)
    n = settings.users
    # Growth: sign-up density rises over the horizon (u**0.6 front-loads fewer users).
    signup = settings.launch_date.toordinal() + (rng.random(n) ** 0.6 * settings.horizon_days).astype(int)
    # Churn: most users leave within months, a core stays for years.
    lifetime = np.where(rng.random(n) < 0.25, rng.exponential(900, n), rng.exponential(90, n))
    churn = signup + 7 + lifetime.astype(int)
    # Heavy-tailed activity propensity (lognormal), capped.
    propensity = np.minimum(0.85, 0.07 * rng.lognormal(0.0, 1.1, n))
    p_login = np.clip(rng.normal(0.9, 0.08, n), 0.3, 1.0)
    coder = rng.random(n) < 0.45
    p_commit = np.where(coder, rng.uniform(0.15, 0.6, n), rng.uniform(0.0, 0.05, n))
    p_dataset = np.where(coder, rng.uniform(0.0, 0.06, n), 0.002)
    p_workflow = np.where(coder & (rng.random(n) < 0.4), rng.uniform(0.02, 0.15, n), 0.0)
    p_session = rng.uniform(0.15, 0.7, n)
    keycloak_ids = np.array(
        [
            str(uuid.UUID(bytes=hashlib.sha256(f"demo:{settings.seed}:{i}".encode()).digest()[:16], version=4))
            for i in range(n)
        ]
    )
    user_keys = np.array([pseudonymize_user(k) for k in keycloak_ids])
    teams = _build_teams(settings, signup, churn, propensity, p_login, p_session)
    k = settings.projects_per_user
    projects = np.arange(n * k).reshape(n, k) + 1000
    vis_draw = rng.random(n * k)
    visibility = np.where(vis_draw < 0.6, "private", np.where(vis_draw < 0.95, "public", "internal"))
    return Population(
        keycloak_ids=keycloak_ids,
        user_keys=user_keys,
        signup=signup,
        churn=churn,
        propensity=propensity,
        p_login=p_login,
        p_commit=p_commit,
        p_dataset=p_dataset,
        p_workflow=p_workflow,
        p_session=p_session,
        projects=projects,
        project_visibility=dict(zip(projects.ravel().tolist(), visibility.tolist(), strict=False)),
        teams=teams,
    )


ACADEMIC_TEAM = "/SDSC/Academic Team"
SMALL_TEAM = "/SDSC/Data Stewards"
_NEVER = dt.date(9999, 1, 1).toordinal()
# E-mail domains of the demo's users (shares): Swiss institutions, a subdomain, and others.
DEMO_EMAIL_DOMAINS = (
    ("ethz.ch", 0.10),
    ("inf.ethz.ch", 0.04),
    ("epfl.ch", 0.14),
    ("uzh.ch", 0.08),
    ("unibas.ch", 0.05),
    ("psi.ch", 0.04),
    ("gmail.com", 0.35),
    ("example.org", 0.20),
)


def _build_teams(settings, signup, churn, propensity, p_login, p_session) -> dict[str, list[tuple[int, int, int]]]:
    """The demo's teams, drawn from early users with their own generator (other users are unchanged).

    Team members stay on the platform; about half of the Academic Team works on it every week and
    the others only now and then, so that roughly half of the team starts a session in a month.
    The arrays are changed in place (before the population is frozen).
    """
    if settings.academic_team <= 0:
        return {}
    rng = np.random.default_rng([settings.seed, 20_251_031])
    n = len(signup)
    changers = max(2, settings.academic_team // 8)
    wanted = settings.academic_team + changers + settings.small_team
    early = np.argsort(signup, kind="stable")[: max(wanted, int(0.4 * n))]
    chosen = rng.choice(early, size=min(wanted, len(early)), replace=False)
    lo, hi = settings.team_changes_from.toordinal(), settings.team_changes_to.toordinal()
    academic, small = [], []
    for rank, user in enumerate(chosen.tolist()):
        churn[user] = _NEVER
        if rank < settings.academic_team + changers:
            regular = rank % 2 == 0
            propensity[user] = 0.22 if regular else 0.012
            p_login[user] = 0.9
            p_session[user] = 0.6 if regular else 0.3
            joined, left = int(signup[user]), _NEVER
            if rank < changers:  # leaves the team on a day between the change dates
                left = int(rng.integers(lo, hi))
            elif rank >= settings.academic_team:  # joins it on such a day
                joined = max(joined, int(rng.integers(lo, hi)))
            academic.append((user, joined, left))
        else:
            small.append((user, int(signup[user]), _NEVER))
    return {ACADEMIC_TEAM: academic, SMALL_TEAM: small}


class DemoDirectory:
    """The demo's users and teams as Keycloak would list them on ``day`` (membership has history)."""

    def __init__(self, settings: Settings, day: dt.date) -> None:
        self.settings = settings
        self.day = day
        self.population = build_population(settings)

    def group_members(self, path: str, subgroups: bool) -> set[str]:
        from renku_metrics.core.sources.base import SourceError

        ordinal = self.day.toordinal()
        found = False
        members: set[str] = set()
        for team, rows in self.population.teams.items():
            if team == path or (subgroups and team.startswith(path.rstrip("/") + "/")):
                found = True
                members |= {
                    str(self.population.keycloak_ids[u]) for u, joined, left in rows if joined <= ordinal < left
                }
        if not found:
            raise SourceError(f"source 'demo': group {path!r} not found (the demo has {sorted(self.population.teams)})")
        return members

    def organizations(self) -> dict[str, set[str]]:
        return {}

    def users(self):
        """Every user signed up by ``day``, with a synthetic e-mail address (made here, never stored)."""
        pop = self.population
        rng = np.random.default_rng([self.settings.seed, 4_242])
        names = [d for d, _ in DEMO_EMAIL_DOMAINS]
        shares = np.array([w for _, w in DEMO_EMAIL_DOMAINS])
        domains = rng.choice(len(names), size=len(pop.signup), p=shares / shares.sum())
        team = {u for rows in pop.teams.values() for u, _, _ in rows}
        ordinal = self.day.toordinal()
        for i in np.flatnonzero(pop.signup <= ordinal).tolist():
            domain = ("sdsc.ethz.ch" if i % 2 else "epfl.ch") if i in team else names[domains[i]]
            yield str(pop.keycloak_ids[i]), f"user{i}@{domain.upper() if i % 7 == 0 else domain}"


def season_factor(day: dt.date) -> float:
    """Activity multiplier: weekends quiet, lecture periods busy, holidays quieter."""
    weekday = 1.0 if day.weekday() < 5 else 0.3
    md = (day.month, day.day)
    in_semester = ((2, 17) <= md <= (5, 31)) or ((9, 15) <= md <= (12, 20))
    holidays = md >= (12, 23) or md <= (1, 5)
    semester = 1.0 if in_semester else (0.35 if holidays else 0.65)
    return weekday * semester


class Source:
    name = SOURCE_NAME

    def __init__(self, deployment: str, settings: Settings, env=None) -> None:
        self.deployment = deployment
        self.settings = settings

    def extract(self, window: TimeWindow) -> SourceResult:
        frames = [self.generate_day(day) for day in window.days()]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(EVENT_COLUMNS))
        start, end = pd.Timestamp(window.start), pd.Timestamp(window.end)
        frame = frame[(frame["occurred_at"] >= start) & (frame["occurred_at"] < end)].reset_index(drop=True)
        return SourceResult(source=SOURCE_NAME, frame=frame, stats={"generated_days": len(frames)})

    def session_probability(self, day: dt.date) -> np.ndarray:
        """Each user's chance to start a session on an active day (boosted from the planted release on)."""
        s, p = self.settings, build_population(self.settings).p_session
        if s.session_boost_weeks_ago is None or s.session_boost == 1.0:
            return p
        boost_from = weeks_ago_date(s.session_boost_weeks_ago, dt.datetime.now(dt.timezone.utc).date())
        return np.minimum(0.95, p * s.session_boost) if day >= boost_from else p

    def generate_day(self, day: dt.date) -> pd.DataFrame:
        s = self.settings
        pop = build_population(s)
        ordinal = day.toordinal()
        rng = np.random.default_rng([s.seed, ordinal])
        alive = (pop.signup <= ordinal) & (ordinal < pop.churn)
        # New users are keener: activity decays over the first weeks after sign-up.
        age = np.maximum(ordinal - pop.signup, 0)
        keen = 1.0 + 1.5 * np.exp(-age / 21.0)
        p_active = np.minimum(0.95, pop.propensity * keen * season_factor(day))
        active = np.flatnonzero(alive & (rng.random(len(alive)) < p_active))

        rows_user: list[np.ndarray] = []
        rows_action: list[str] = []
        rows_count: list[int] = []

        def emit(users: np.ndarray, action: str) -> None:
            rows_user.append(users)
            rows_action.extend([action] * len(users))
            rows_count.append(len(users))

        # Logins: most active users log in once or a few times a day.
        logs_in = active[rng.random(len(active)) < pop.p_login[active]]
        emit(np.repeat(logs_in, 1 + rng.poisson(1.8, len(logs_in))), "login")
        draw = rng.random(len(active))
        sessions = active[draw < pop.p_session[active]]
        emit(np.repeat(sessions, 1 + rng.poisson(0.3, len(sessions))), "start_session")
        # The planted release effect: more users start a session (added at the end, from a
        # stream of their own, so that every other event stays exactly as without it).
        boosted = active[(draw >= pop.p_session[active]) & (draw < self.session_probability(day)[active])]
        datasets = active[rng.random(len(active)) < pop.p_dataset[active]]
        workflows = active[rng.random(len(active)) < pop.p_workflow[active]]
        committers = active[rng.random(len(active)) < pop.p_commit[active]]
        # In Renku 1 a dataset creation or a workflow run is itself a commit.
        emit(np.repeat(committers, 1 + rng.poisson(1.2, len(committers))), "commit")
        emit(datasets, "commit")
        emit(datasets, "create_dataset")
        emit(workflows, "commit")
        emit(workflows, "run_workflow")

        users = np.concatenate(rows_user) if rows_user else np.array([], dtype=int)
        n = len(users)
        # Working-hours skew: mixture of a daytime bump and uniform noise.
        seconds = np.where(
            rng.random(n) < 0.8,
            np.clip(rng.normal(13 * 3600, 3 * 3600, n), 0, 86399),
            rng.uniform(0, 86400, n),
        ).astype(np.int64) * 1_000_000 + rng.integers(0, 1_000_000, n)
        project_slot = rng.integers(0, pop.projects.shape[1], n)
        project_ids = pop.projects[users, project_slot]
        actions = np.array(rows_action, dtype=object)
        no_project = actions == "login"

        frame = pd.DataFrame(
            {
                "user_id": pop.user_keys[users],
                "action": actions,
                "project_id": np.where(no_project, None, project_ids.astype(str)),
                "offset_us": seconds,
            }
        )
        frame["project_visibility"] = [
            None if np_ else pop.project_visibility[int(p)] for np_, p in zip(no_project, project_ids, strict=False)
        ]
        if s.bot and day.weekday() < 5:
            bot = pd.DataFrame(
                {
                    "user_id": pseudonymize_user(DEMO_BOT_KEYCLOAK_ID),
                    "action": "commit",
                    "project_id": "999",
                    "project_visibility": "internal",
                    "offset_us": np.arange(4) * 3600 * 1_000_000 + 2 * 3600 * 1_000_000,
                }
            )
            frame = pd.concat([frame, bot], ignore_index=True)
        if len(boosted):
            extra = np.random.default_rng([s.seed, ordinal, 1])
            users_b = np.repeat(boosted, 1 + extra.poisson(0.3, len(boosted)))
            projects_b = pop.projects[users_b, extra.integers(0, pop.projects.shape[1], len(users_b))]
            frame = pd.concat(
                [
                    frame,
                    pd.DataFrame(
                        {
                            "user_id": pop.user_keys[users_b],
                            "action": "start_session",
                            "project_id": projects_b.astype(str),
                            "offset_us": np.clip(extra.normal(13 * 3600, 3 * 3600, len(users_b)), 0, 86399).astype(
                                np.int64
                            )
                            * 1_000_000,
                            "project_visibility": [pop.project_visibility[int(p)] for p in projects_b],
                        }
                    ),
                ],
                ignore_index=True,
            )
        midnight = pd.Timestamp(day.isoformat(), tz="UTC")
        frame["occurred_at"] = midnight + pd.to_timedelta(frame["offset_us"], unit="us")
        frame["deployment"] = self.deployment
        frame["source"] = SOURCE_NAME
        seq = range(len(frame))
        day_text = day.isoformat()
        frame["event_id"] = [make_event_id(self.deployment, SOURCE_NAME, day_text, i) for i in seq]
        return frame.loc[:, list(EVENT_COLUMNS)]

    def project_owners(self, project_ids: list[str]) -> dict[str, ProjectRecord | None]:
        """Deterministic ownership of the demo's projects (user i's project slots j = 0..k-1):
        the last slot is a fork, owned by user i, of the first project of user i+1; the slot
        before it (with 3 or more slots) is owned by user i+1, whom user i collaborates with;
        the others are user i's own. The bot's project 999 is the bot's. Other ids: unknown."""
        s = self.settings
        if not s.project_ownership:
            return {p: None for p in project_ids}
        pop = build_population(s)
        n, k = pop.projects.shape
        out: dict[str, ProjectRecord | None] = {}
        for project_id in project_ids:
            if project_id == "999" and s.bot:
                out[project_id] = ProjectRecord("999", pseudonymize_user(DEMO_BOT_KEYCLOAK_ID), None, "internal")
                continue
            number = int(project_id) - 1000 if project_id.isdigit() else -1
            if not 0 <= number < n * k:
                out[project_id] = None
                continue
            user, slot = divmod(number, k)
            partner = (user + 1) % n
            owner, upstream = user, None
            if slot == k - 1 and k >= 2:
                upstream = str(1000 + partner * k)
            elif slot == k - 2 and k >= 3:
                owner = partner
            out[project_id] = ProjectRecord(
                project_id, str(pop.user_keys[owner]), upstream, pop.project_visibility[int(project_id)]
            )
        return out


def settings_with(settings: Settings, **changes) -> Settings:
    return settings.model_copy(update=changes)
