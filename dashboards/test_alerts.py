"""dashboards/alerts.yml: valid rules (promtool check), each alert firing on the series it is for and
staying silent otherwise (promtool test, dashboards/alerts.test.yml), and every metric and label value
they name one the filter defines (src/host/metrics.rs)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed")


def promtool(*args):
    return subprocess.run([PROMTOOL, *args], cwd=HERE, capture_output=True, text=True, timeout=60)


def test_rules_are_valid_and_prometheus_yml_loads_them():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0 and "alerts.yml" in config.stdout, config.stdout + config.stderr


def test_each_alert_fires_on_what_it_is_for():
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    rules = yaml.safe_load((HERE / "alerts.yml").read_text())["groups"][0]["rules"]
    cases = yaml.safe_load((HERE / "alerts.test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == {r["alert"] for r in rules}, "every alert has a test where it fires"


def test_alerts_name_only_what_the_filter_defines():
    source = (ROOT / "src" / "host" / "metrics.rs").read_text()
    text = (HERE / "alerts.yml").read_text()
    for metric in set(re.findall(r"claude_sso_gateway_(\w+)\"", text)):
        assert f"claude_sso_gateway_{metric}" in source, metric
    for values in re.findall(r'(?:reason|outcome)=~?"([^"]+)"', text):
        for value in values.split("|"):
            assert f'"{value}"' in source, value
    assert re.findall(r'status_class="(\w+)"', text) == ["5xx"] and '"5xx"' in source
