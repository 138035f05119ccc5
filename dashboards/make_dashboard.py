#!/usr/bin/env python3
"""Writes claude-sso-gateway.json, the Grafana dashboard of the gateway's Prometheus metrics.

The JSON is generated so every query uses the same metric selector; edit this file, run it, and
commit both. `check_dashboard.py` validates the result.
"""
import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def m(name, filters='tier=~"$tier",model=~"$model"'):
    """Selector that matches the metric as Envoy (no prefix or `envoy_`) and Kong (`pw_<filter>_`) export it."""
    sel = f'__name__=~"(envoy_|pw_claude_sso_gateway_)?claude_sso_gateway_{name}"'
    return "{" + sel + ("," + filters if filters else "") + "}"


def buckets(name, filters='tier=~"$tier",model=~"$model"'):
    """Selector of a histogram's buckets: `<name>_bucket` on Envoy; Kong's Prometheus plugin
    (kong/plugins/prometheus/wasmx.lua) prints them under the histogram's bare name with `le`, and
    only its `_sum` and `_count` with their suffixes."""
    sel = (f'__name__=~"(envoy_)?claude_sso_gateway_{name}_bucket|pw_claude_sso_gateway_claude_sso_gateway_{name}"'
           ',le!=""')
    return "{" + sel + ("," + filters if filters else "") + "}"


NEXT_ID = [0]


def panel(title, kind, targets, x, y, w, h, unit=None, desc="", **extra):
    NEXT_ID[0] += 1
    p = {
        "id": NEXT_ID[0],
        "title": title,
        "description": desc,
        "type": kind,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend,
             **({"instant": True} if kind in ("stat", "bargauge", "piechart") else {"range": True})}
            for i, (expr, legend) in enumerate(targets)
        ],
        "fieldConfig": {"defaults": {"unit": unit or "short"}, "overrides": []},
        "options": {},
    }
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "auto"}
    elif kind == "bargauge":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "orientation": "horizontal", "displayMode": "basic", "showUnfilled": True}
    elif kind == "piechart":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "pieType": "donut", "legend": {"displayMode": "table", "placement": "right",
                                                       "values": ["percent", "value"]}}
    elif kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1}
    p.update(extra)
    return p


R = "$__rate_interval"
ERRORS = 'tier=~"$tier",model=~"$model",status_class=~"4xx|5xx"'
TIER_ONLY = 'tier=~"$tier"'
panels = [
    panel("Total cost", "stat", [(f"sum(increase({m('cost_usd_micros_total')}[$__range])) / 1e6", "USD")],
          0, 0, 4, 4, "currencyUSD", "Cost of the priced requests in the time range."),
    panel("Tokens", "stat", [(f"sum(increase({m('tokens_total')}[$__range]))", "tokens")],
          4, 0, 4, 4, "short", "Input, output and cache tokens in the time range."),
    panel("Requests", "stat", [(f"sum(increase({m('requests_total')}[$__range]))", "requests")],
          8, 0, 4, 4, "short"),
    panel("Error share", "stat",
          [(f"sum(increase({m('requests_total', ERRORS)}[$__range]))"
            f" / sum(increase({m('requests_total')}[$__range]))", "errors")],
          12, 0, 4, 4, "percentunit", "Requests answered 4xx or 5xx."),
    panel("Average latency", "stat",
          [(f"sum(rate({m('latency_ms_sum')}[$__range])) / sum(rate({m('latency_ms_count')}[$__range]))", "latency")],
          16, 0, 4, 4, "ms"),
    panel("Average time to first token", "stat",
          [(f"sum(rate({m('ttft_ms_sum')}[$__range])) / sum(rate({m('ttft_ms_count')}[$__range]))", "ttft")],
          20, 0, 4, 4, "ms"),
    panel("Cost per hour by model (model trend)", "timeseries",
          [(f"sum by (model) (rate({m('cost_usd_micros_total')}[{R}])) * 3600 / 1e6", "{{model}}")],
          0, 4, 12, 8, "currencyUSD"),
    panel("Top models by tokens", "bargauge",
          [(f"topk(10, sum by (model) (increase({m('tokens_total')}[$__range])))", "{{model}}")],
          12, 4, 6, 8, "short"),
    panel("Cost by tier (budget use)", "bargauge",
          [(f"sum by (tier) (increase({m('cost_usd_micros_total')}[$__range])) / 1e6", "{{tier}}")],
          18, 4, 6, 8, "currencyUSD", "Spend per tier in the time range."),
    panel("Tokens per second by kind", "timeseries",
          [(f"sum by (kind) (rate({m('tokens_total')}[{R}]))", "{{kind}}")],
          0, 12, 8, 8, "short"),
    panel("Status mix", "timeseries",
          [(f"sum by (status_class) (rate({m('requests_total')}[{R}]))", "{{status_class}}")],
          8, 12, 8, 8, "reqps"),
    panel("Provider share", "piechart",
          [(f"sum by (provider) (increase({m('requests_total')}[$__range]))", "{{provider}}")],
          16, 12, 8, 8, "short"),
    panel("Latency (average and p95)", "timeseries",
          [(f"sum(rate({m('latency_ms_sum')}[{R}])) / sum(rate({m('latency_ms_count')}[{R}]))", "average"),
           (f"histogram_quantile(0.95, sum by (le) (rate({buckets('latency_ms')}[{R}])))", "p95")],
          0, 20, 12, 8, "ms"),
    panel("Time to first token (average and p95)", "timeseries",
          [(f"sum(rate({m('ttft_ms_sum')}[{R}])) / sum(rate({m('ttft_ms_count')}[{R}]))", "average"),
           (f"histogram_quantile(0.95, sum by (le) (rate({buckets('ttft_ms')}[{R}])))", "p95")],
          12, 20, 12, 8, "ms"),
    panel("Budget refusals per tier", "timeseries",
          [(f"sum by (tier) (increase({m('budget_refusals_total', TIER_ONLY)}[{R}]))", "{{tier}}")],
          0, 28, 6, 8, "short", "Requests refused because the tier's or the person's token budget was spent."),
    panel("Refusals (4xx) by reason", "timeseries",
          [(f"sum by (reason) (increase({m('refusals_total', '')}[{R}]))", "{{reason}}")],
          6, 28, 6, 8, "short", "Requests the gateway refused itself, by stable reason code."),
    panel("Auth failures by reason", "timeseries",
          [(f"sum by (reason) (increase({m('auth_failures_total', '')}[{R}]))", "{{reason}}")],
          12, 28, 6, 8, "short", "Token checks that failed (expired, bad signature, wrong audience, ...)."),
    panel("JWKS fetches by outcome", "timeseries",
          [(f"sum by (outcome) (increase({m('jwks_fetches_total', '')}[{R}]))", "{{outcome}}")],
          18, 28, 6, 8, "short"),
]


def var_query(label):
    q = f'label_values({{__name__=~"(envoy_|pw_claude_sso_gateway_)?claude_sso_gateway_requests_total"}}, {label})'
    return {"type": "query", "name": label, "label": label.capitalize(), "datasource": DS,
            "query": {"query": q, "refId": f"{label}-values"}, "definition": q,
            "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


dashboard = {
    "uid": "claude-sso-gateway",
    "title": "Claude SSO gateway",
    "description": "Usage, cost, latency and refusals of claude-sso-gateway (Envoy or Kong).",
    "tags": ["claude-sso-gateway", "envoy", "kong"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "graphTooltip": 1,
    "time": {"from": "now-24h", "to": "now"},
    "refresh": "1m",
    "timezone": "utc",
    "templating": {"list": [
        {"type": "datasource", "name": "DS_PROMETHEUS", "label": "Prometheus", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": ""},
        var_query("tier"),
        var_query("model"),
    ]},
    "annotations": {"list": []},
    "panels": panels,
}

if __name__ == "__main__":
    out = Path(__file__).with_name("claude-sso-gateway.json")
    out.write_text(json.dumps(dashboard, indent=2) + "\n")
    print(f"wrote {out} ({len(panels)} panels)")
