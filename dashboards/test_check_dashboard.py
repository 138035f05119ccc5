"""Tests of check_dashboard.py: the shipped dashboard passes, broken ones are caught."""
import copy
import json
from pathlib import Path

import pytest

import check_dashboard as cd

DASH = json.loads(cd.DEFAULT.read_text())


def test_shipped_dashboard_has_every_query_substituted():
    found = cd.queries()
    assert len(found) >= 18
    for title, expr in found:
        assert "$" not in expr, title
        assert "claude_sso_gateway_" in expr, title
        # Envoy's and Kong's names (Kong's histogram buckets have no `_bucket` suffix).
        assert ('__name__=~"(envoy_|pw_claude_sso_gateway_)?claude_sso_gateway_' in expr
                or '__name__=~"(envoy_)?claude_sso_gateway_' in expr and "|pw_claude_sso_gateway_" in expr), title


def test_generator_output_is_committed():
    import make_dashboard
    assert json.loads(json.dumps(make_dashboard.dashboard)) == DASH


def broken(change):
    d = copy.deepcopy(DASH)
    change(d)
    return d


CASES = [
    ("duplicate id", lambda d: d["panels"][1].update(id=d["panels"][0]["id"]), "is used twice"),
    ("no expr", lambda d: d["panels"][0]["targets"][0].update(expr=""), "has no expr"),
    ("no targets", lambda d: d["panels"][0].update(targets=[]), "no targets"),
    ("no gridPos", lambda d: d["panels"][0].pop("gridPos"), "gridPos needs integer"),
    ("unknown variable", lambda d: d["panels"][0]["targets"][0].update(expr="rate(x[$colour])"), "unknown variable $colour"),
    ("unbalanced", lambda d: d["panels"][0]["targets"][0].update(expr="sum(rate(x[5m])"), "unbalanced brackets"),
    ("no datasource var", lambda d: d["templating"].update(list=[]), "no datasource variable"),
]


@pytest.mark.parametrize("name,change,message", CASES, ids=[c[0] for c in CASES])
def test_broken_dashboards_are_caught(name, change, message, tmp_path: Path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(broken(change)))
    with pytest.raises(ValueError, match=message.replace("$", r"\$")):
        cd.queries(path)
