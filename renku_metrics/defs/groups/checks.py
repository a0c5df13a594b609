"""Checks of the group metrics: counts that cannot be right block downstream use."""

import pandas as pd
from dagster import MetadataValue

# name -> (description, blocking)
GROUP_CHECKS = {
    "group_counts_consistent": (
        "For every group row: users <= active_members <= members; pct_of_members lies within 0..100; a group "
        "below its minimum size has no counts and says why (withheld_reason).",
        True,
    ),
}


def check_group_metrics(frame: pd.DataFrame) -> dict[str, tuple[bool, dict]]:
    shown = frame[frame["withheld_reason"].isna()]
    bad = shown[
        (shown["users"] > shown["active_members"])
        | (shown["active_members"] > shown["members"])
        | (shown["pct_of_members"] < 0)
        | (shown["pct_of_members"] > 100)
    ]
    hidden = frame[frame["withheld_reason"].notna()]
    leaked = hidden[hidden[["members", "active_members", "users"]].notna().any(axis=1)]
    problems = [
        f"- {r.period_start} {r.deployment} {r.group} {r.metric}" for r in pd.concat([bad, leaked]).itertuples()
    ]
    return {
        "group_counts_consistent": (
            not problems,
            {
                "rows_checked": len(frame),
                "withheld_rows": len(hidden),
                "problems": MetadataValue.md("\n".join(problems[:50]) or "none"),
            },
        )
    }
