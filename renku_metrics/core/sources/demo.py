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
    )


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
        sessions = active[rng.random(len(active)) < pop.p_session[active]]
        emit(np.repeat(sessions, 1 + rng.poisson(0.3, len(sessions))), "start_session")
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
