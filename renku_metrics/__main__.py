"""Operator commands, without Dagster.

    python -m renku_metrics verify [--deployment D] [--since YYYY-MM-DD] [--storage ROOT]
        Scan the stored raw days: list every damaged or missing file with the command that
        repairs it; exit 1 when any was found, 0 when the store is sound.
    python -m renku_metrics extract --deployment D --day YYYY-MM-DD [--storage ROOT]
        Extract (again) one deployment-day, as the daily job does: replaces a damaged day.

The storage root defaults to $RENKU_METRICS_STORAGE, then ./data; the deployments
file to $RENKU_METRICS_DEPLOYMENTS (extract only; its sources read their secrets
from the environment).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys


def _verify(args: argparse.Namespace) -> int:
    from renku_metrics.core.integrity import verify_store
    from renku_metrics.core.storage import open_storage

    storage = open_storage(args.storage)
    checked, findings = verify_store(storage, args.deployment, args.since)
    for finding in findings:
        print(finding.line())
    scope = f"deployment {args.deployment}" if args.deployment else "all deployments"
    since = f" since {args.since}" if args.since else ""
    print(f"verify: {checked} day(s) of {scope}{since} under {storage.root}: {len(findings)} problem(s)")
    return 1 if findings else 0


def _extract(args: argparse.Namespace) -> int:
    from renku_metrics.core.config import load_config
    from renku_metrics.core.extract import extract_day
    from renku_metrics.core.storage import open_storage

    storage = open_storage(args.storage)
    config = load_config(args.deployments)
    if args.deployment not in config.names:
        known = ", ".join(config.names) or "none"
        raise ValueError(f"{config.path}: no deployment {args.deployment!r} (deployments: {known})")
    deployment = config.deployment(args.deployment)
    storage.check()
    result = extract_day(storage, deployment, args.day)
    state = "complete" if result.complete else "incomplete: " + "; ".join(result.incomplete)
    print(f"extract: {deployment.name} {args.day}: {result.row_count} events stored at {result.events_uri} ({state})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m renku_metrics", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="list damaged or missing stored files and how to repair each")
    verify.add_argument("--deployment", help="only this deployment (default: every deployment in the store)")
    verify.add_argument("--since", type=dt.date.fromisoformat, help="only days from this one (YYYY-MM-DD)")
    verify.add_argument("--storage", help="storage root (default: $RENKU_METRICS_STORAGE or ./data)")
    extract = commands.add_parser("extract", help="extract one deployment-day again (repairs a damaged day)")
    extract.add_argument("--deployment", required=True)
    extract.add_argument("--day", required=True, type=dt.date.fromisoformat, help="the UTC day, YYYY-MM-DD")
    extract.add_argument("--storage", help="storage root (default: $RENKU_METRICS_STORAGE or ./data)")
    extract.add_argument("--deployments", help="deployments file (default: $RENKU_METRICS_DEPLOYMENTS)")
    args = parser.parse_args(argv)
    try:
        return _verify(args) if args.command == "verify" else _extract(args)
    except Exception as exc:  # one clear line, no traceback, for an operator's command
        print(f"{args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
