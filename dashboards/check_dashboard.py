#!/usr/bin/env python3
"""Checks the Grafana dashboard's structure and lists its PromQL queries.

    python3 dashboards/check_dashboard.py [dashboards/claude-sso-gateway.json]

prints one `panel title<TAB>expr` line per query (variables substituted) and exits non-zero
with the problems found. Tests import `queries(path)` to run every query against Prometheus.
"""
import json
import re
import sys
from pathlib import Path

DEFAULT = Path(__file__).with_name("claude-sso-gateway.json")

#: Values a query's Grafana variables take when it is run outside Grafana.
SUBSTITUTIONS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "tier": ".*",
    "model": ".*",
}

PANELS_WITHOUT_QUERIES = {"row", "text"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def substitute(expr):
    """Replaces `$name` and `${name}` by SUBSTITUTIONS; an unknown variable raises KeyError."""
    def value(match):
        name = match.group(1) or match.group(2)
        if name not in SUBSTITUTIONS:
            raise KeyError(f"unknown variable ${name} in {expr!r}")
        return SUBSTITUTIONS[name]
    return VARIABLE.sub(value, expr)


def _panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def problems(dashboard):
    """Everything wrong with the dashboard's structure, as sentences (empty when it is fine)."""
    found = []
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        found.append("schemaVersion missing or older than 36")
    for key in ("uid", "title"):
        if not dashboard.get(key):
            found.append(f"dashboard has no {key}")
    names = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus"
               for v in dashboard.get("templating", {}).get("list", [])):
        found.append("no datasource variable of type prometheus")
    ids = set()
    for panel in _panels(dashboard):
        title = panel.get("title") or f"panel {panel.get('id')}"
        pid = panel.get("id")
        if not isinstance(pid, int):
            found.append(f"{title}: id is not an integer")
        elif pid in ids:
            found.append(f"{title}: id {pid} is used twice")
        ids.add(pid)
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            found.append(f"{title}: gridPos needs integer x, y, w, h")
        elif grid["x"] + grid["w"] > 24:
            found.append(f"{title}: gridPos is wider than 24 columns")
        if panel.get("type") in PANELS_WITHOUT_QUERIES:
            continue
        targets = panel.get("targets") or []
        if not targets:
            found.append(f"{title}: no targets")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            found.append(f"{title}: refIds repeat")
        for target in targets:
            expr = target.get("expr", "")
            if not expr.strip():
                found.append(f"{title}: target {target.get('refId')} has no expr")
                continue
            try:
                substitute(expr)
            except KeyError as e:
                found.append(f"{title}: {e.args[0]}")
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                found.append(f"{title}: unbalanced brackets in {expr!r}")
        for var in re.findall(r"\$\{?(\w+)", json.dumps(panel.get("datasource", {}))):
            if var not in names:
                found.append(f"{title}: datasource uses undefined variable ${var}")
    return found


def queries(dashboard_path=DEFAULT):
    """`[(panel title, expr)]` of every query, variables substituted; raises ValueError when
    the dashboard's structure is wrong."""
    dashboard = json.loads(Path(dashboard_path).read_text())
    found = problems(dashboard)
    if found:
        raise ValueError("; ".join(found))
    return [(panel["title"], substitute(t["expr"]))
            for panel in _panels(dashboard) if panel.get("type") not in PANELS_WITHOUT_QUERIES
            for t in panel.get("targets", [])]


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT
    try:
        found = queries(path)
    except (OSError, ValueError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        return 1
    for title, expr in found:
        print(f"{title}\t{expr}")
    print(f"{path}: {len(found)} queries OK", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
