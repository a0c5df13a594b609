"""What extraction costs each upstream (not a test): requests and time per day and source.

    python -m renku_metrics_tests.bench_upstream_cost --root <storage root> [--deployment D]
        [--limit gitlab=2000/60] [--limit keycloak=...] [--days 1095]

Reads the manifests of a store (each source's ``requests``, retries included, and
``seconds`` of every extracted day) and prints, per deployment and source: the days
measured, requests per day (mean, 95th percentile, max) and seconds per day; then,
for each ``--limit SOURCE=REQUESTS/SECONDS`` given, the time a backfill of ``--days``
days (default 3 years) needs at that rate limit, against the time the requests
themselves took. Rate limits depend on the installation (a self-managed GitLab has
its user rate limits off by default; GitLab.com allows 2,000 authenticated API
requests a minute; Keycloak documents none): give the ones that apply.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict

from renku_metrics.core.layout import is_manifest_key
from renku_metrics.core.manifest import Manifest
from renku_metrics.core.storage import open_storage

THREE_YEARS = 1095


def _limit(text: str) -> tuple[str, float]:
    source, _, rate = text.partition("=")
    count, _, seconds = rate.partition("/")
    return source, float(count) / float(seconds or 1)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def costs(root: str, deployment: str | None = None) -> dict[tuple[str, str], dict[str, list[float]]]:
    """{(deployment, source): {"requests": [per day], "seconds": [per day]}} of the days that recorded them."""
    storage = open_storage(root)
    prefix = f"raw_events/deployment={deployment}/" if deployment else "raw_events/"
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {"requests": [], "seconds": []})
    for key in storage.list_keys(prefix):
        if not is_manifest_key(key):
            continue
        manifest = Manifest.read_key(storage, key)
        for source, info in manifest.sources.items():
            if "requests" in info:
                out[manifest.deployment, source]["requests"].append(float(info["requests"]))
                out[manifest.deployment, source]["seconds"].append(float(info.get("seconds", 0.0)))
    return dict(out)


def report(found: dict, limits: dict[str, float], days: int) -> list[str]:
    lines = [
        "| deployment | source | days | requests/day mean | p95 | max | seconds/day mean | max |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (deployment, source), values in sorted(found.items()):
        req, sec = values["requests"], values["seconds"]
        lines.append(
            f"| {deployment} | {source} | {len(req)} | {statistics.fmean(req):.1f} | {_p95(req):.0f} | {max(req):.0f} "
            f"| {statistics.fmean(sec):.2f} | {max(sec):.2f} |"
        )
    for (deployment, source), values in sorted(found.items()):
        total = statistics.fmean(values["requests"]) * days
        work = statistics.fmean(values["seconds"]) * days
        rate = limits.get(source)
        at_limit = f"{total / rate / 3600:.1f} h at {rate * 60:g} requests/min" if rate else "no rate limit given"
        lines.append(
            f"{deployment}/{source}: a {days}-day backfill makes about {total:,.0f} requests: {at_limit}; "
            f"the requests themselves took {work / 3600:.1f} h"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="storage root (a directory or s3://bucket/prefix)")
    parser.add_argument("--deployment")
    parser.add_argument("--limit", action="append", default=[], help="SOURCE=REQUESTS/SECONDS, e.g. gitlab=2000/60")
    parser.add_argument("--days", type=int, default=THREE_YEARS, help="backfill length (default: 3 years)")
    args = parser.parse_args(argv)
    found = costs(args.root, args.deployment)
    if not found:
        print("no day in this store records its requests (extracted before they were counted)", file=sys.stderr)
        return 1
    print("\n".join(report(found, dict(_limit(x) for x in args.limit), args.days)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
