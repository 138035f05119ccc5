"""Kong: the filter's JSON Schema (kong/claude_sso_gateway.meta.json) and the filter's own parser
give the same verdict on every sample config and on a table of invalid ones; the built .wasm
imports only host functions ngx_wasm_module provides; and the code never calls one it traps on."""
import copy
import ctypes
import functools
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.harness.envoy import ROOT, WASM

META = json.loads((ROOT / "kong" / "claude_sso_gateway.meta.json").read_text())
SCHEMA = META["config_schema"]

BASE = {
    "oidc": {"issuer": "https://idp.example.com/oauth2/default", "audiences": ["claude-sso-gateway"]},
    "targets": {"anthropic": {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}},
    "models": [
        {"alias": "claude-sonnet-4-6", "target": "anthropic", "model_id": "claude-sonnet-4-6",
         "price": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}},
        {"alias": "claude-opus-4-7", "target": "anthropic", "model_id": "claude-opus-4-7"},
    ],
    "tiers": [
        {"name": "power", "groups": ["claude-power-users"], "models": ["claude-opus-4-7", "claude-sonnet-4-6"]},
        {"name": "standard", "groups": ["claude-standard-users"], "models": ["claude-sonnet-4-6"],
         "limits": [{"limit": 20000, "window_seconds": 60}]},
    ],
}

DELETE = object()


def edited(changes: dict) -> dict:
    """BASE with `changes` applied; keys are paths like `tiers[1].limits[0].limit`."""
    config = copy.deepcopy(BASE)
    for path, value in changes.items():
        parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
        node = config
        for p in parts[:-1]:
            node = node[p]
        if value is DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return config


# (name, changes, the parser's exact error). The schema must refuse each of these too.
INVALID = [
    ("unknown top-level field", {"tier": []}, "config error: tier: unknown field `tier`"),
    ("unknown oidc field", {"oidc.isuer": "x"}, "config error: oidc.isuer: unknown field `isuer`"),
    ("missing issuer", {"oidc.issuer": DELETE}, "config error: oidc: missing field `issuer`"),
    ("issuer not a URL", {"oidc.issuer": "idp.example.com"}, "config error: oidc.issuer: must be an http:// or https:// URL"),
    ("issuer port 0", {"oidc.issuer": "https://idp.example.com:0/"}, "config error: oidc.issuer: must be an http:// or https:// URL"),
    ("issuer port above 65535", {"oidc.issuer": "https://idp.example.com:65536/"}, "config error: oidc.issuer: must be an http:// or https:// URL"),
    ("issuer ending in a newline", {"oidc.issuer": "https://idp.example.com/\n"}, "config error: oidc.issuer: must be an http:// or https:// URL"),
    ("no audiences", {"oidc.audiences": []}, "config error: oidc.audiences: at least one non-empty audience is required"),
    ("audiences as empty object", {"oidc.audiences": {}}, "config error: oidc.audiences: at least one non-empty audience is required"),
    ("audience not a string", {"oidc.audiences": [5]}, "config error: oidc.audiences[0]: invalid type: integer `5`"),
    ("upstream with a path", {"oidc.upstream": "idp/x"}, "config error: oidc.upstream: must be host:port"),
    ("upstream ending in a newline", {"oidc.upstream": "idp.example.com:443\n"}, "config error: oidc.upstream: must be host:port"),
    ("negative leeway", {"oidc.leeway_seconds": -1}, "config error: oidc.leeway_seconds: invalid value: integer `-1`"),
    ("fractional refresh", {"oidc.jwks_refresh_seconds": 1.5}, "config error: oidc.jwks_refresh_seconds: invalid type: floating point `1.5`"),
    ("zero refresh", {"oidc.jwks_refresh_seconds": 0}, "config error: oidc.jwks_refresh_seconds: must be greater than 0"),
    ("empty groups claim", {"oidc.groups_claim": "a..b"}, "config error: oidc.groups_claim: must be a claim name or a dotted path"),
    ("bad header name", {"identity_headers": {"user": "x user"}}, "config error: identity_headers.user: \"x user\" is not a usable header name"),
    ("header name ending in a newline", {"identity_headers": {"user": "x-user\n"}}, "config error: identity_headers.user: \"x-user\\n\" is not a usable header name"),
    ("reserved header name", {"identity_headers": {"user": "Authorization"}}, "config error: identity_headers.user: \"authorization\" is not a usable header name"),
    ("reserved header name, other case", {"identity_headers": {"tier": "Content-Length"}}, "config error: identity_headers.tier: \"content-length\" is not a usable header name"),
    ("framing header name", {"identity_headers": {"user": "Transfer-Encoding"}}, "config error: identity_headers.user: \"transfer-encoding\" is not a usable header name"),
    ("routing header name", {"identity_headers": {"email": "x-gateway-target"}}, "config error: identity_headers.email: \"x-gateway-target\" is not a usable header name"),
    ("provider header name", {"identity_headers": {"tier": "Anthropic-Beta"}}, "config error: identity_headers.tier: \"anthropic-beta\" is not a usable header name"),
    ("callout timeout a host would wrap", {"oidc.callout_timeout_ms": 4294967297}, "config error: oidc.callout_timeout_ms: must be at most 300000"),
    ("leeway of years", {"oidc.leeway_seconds": 100000000}, "config error: oidc.leeway_seconds: must be at most 600"),
    ("unknown kids refetching without a pause", {"oidc.unknown_kid_refetch_seconds": 0}, "config error: oidc.unknown_kid_refetch_seconds: must be greater than 0"),
    ("window over a year", {"tiers[1].limits[0].window_seconds": 31622401}, "config error: tiers[1].limits[0].window_seconds: must be greater than 0 and at most 31622400"),
    ("a limit that is no limit", {"tiers[1].limits[0].limit": 1e30}, "config error: tiers[1].limits[0].limit: must be between 1 and 9007199254740992 tokens"),
    ("zero max body", {"max_body_bytes": 0}, "config error: max_body_bytes: must be greater than 0"),
    ("a validation cache over 256 MiB", {"validation_cache_bytes": 268435457}, "config error: validation_cache_bytes: must be at most 268435456"),
    ("no targets", {"targets": {}}, "config error: targets: at least one target is required"),
    ("a target name that is not a header value", {"targets": {"anthropic eu": {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}}, "models[0].target": "anthropic eu", "models[1].target": "anthropic eu"},
     "config error: targets.anthropic eu: a target's name must be letters, digits, '-', '_' or '.'"),
    ("unknown provider", {"targets.anthropic.provider": "openai"}, "config error: targets.anthropic.provider: unknown variant `openai`"),
    ("both key forms", {"targets.anthropic.api_key": "k"}, "config error: targets.anthropic: give api_key or api_key_env, not both"),
    ("no key", {"targets.anthropic.api_key_env": DELETE}, "config error: targets.anthropic: api_key or api_key_env is required"),
    ("a value with a space or '=' in api_key_env", {"targets.anthropic.api_key_env": "sk-ant api03=pasted"}, "config error: targets.anthropic.api_key_env: must be the name of an environment variable"),
    ("api key with a control character", {"targets.anthropic": {"provider": "anthropic", "api_key": "sk-ant\u0007x"}}, "config error: targets.anthropic.api_key: the api key contains control characters"),
    ("blank api key", {"targets.anthropic": {"provider": "anthropic", "api_key": "  "}}, "config error: targets.anthropic.api_key: the api key is empty"),
    ("issuer with a query", {"oidc.issuer": "http://idp.example.com:65535/x?y=z"}, "config error: oidc.issuer: must not have a query or fragment"),
    ("issuer with a fragment after the host", {"oidc.issuer": "https://idp.example.com#f"}, "config error: oidc.issuer: must be an http:// or https:// URL"),
    ("issuer port with a plus sign", {"oidc.issuer": "https://idp.example.com:+443/o"}, "config error: oidc.issuer: must be an http:// or https:// URL"),
    ("token cache beyond its bound", {"oidc.token_cache_entries": 2000000}, "config error: oidc.token_cache_entries: must be at most 1048576"),
    ("groups claim with a space", {"oidc.groups_claim": " groups"}, "config error: oidc.groups_claim: must be a claim name or a dotted path"),
    ("an audience claim every token carries", {"oidc.audience_claim": "iss"}, "config error: oidc.audience_claim: \"iss\" does not name the application"),
    ("an audience claim naming the person", {"oidc.audience_claim": "sub"}, "config error: oidc.audience_claim: \"sub\" does not name the application"),
    ("an audience claim with a tab", {"oidc.audience_claim": "a\tb"}, "config error: oidc.audience_claim: must be a claim name"),
    ("tracing header as identity header", {"identity_headers": {"user": "X-Request-Id"}}, "config error: identity_headers.user: \"x-request-id\" is not a usable header name"),
    ("forwarding header as identity header", {"identity_headers": {"email": "X-Forwarded-For"}}, "config error: identity_headers.email: \"x-forwarded-for\" is not a usable header name"),
    ("W3C trace header as identity header", {"identity_headers": {"user": "TraceParent"}}, "config error: identity_headers.user: \"traceparent\" is not a usable header name"),
    ("B3 trace header as identity header", {"identity_headers": {"tier": "X-B3-TraceId"}}, "config error: identity_headers.tier: \"x-b3-traceid\" is not a usable header name"),
    ("Origin as identity header", {"identity_headers": {"email": "origin"}}, "config error: identity_headers.email: \"origin\" is not a usable header name"),
    ("api key with a trailing space", {"targets.anthropic": {"provider": "anthropic", "api_key": "sk-ant-x "}}, "config error: targets.anthropic.api_key: the api key has spaces around it"),
    ("api key that is not ASCII", {"targets.anthropic": {"provider": "anthropic", "api_key": "sk-ant-\u00e9"}}, "config error: targets.anthropic.api_key: the api key has spaces around it or characters that are not ASCII"),
    ("a price beyond its bound", {"models[0].price": {"input": 2000000, "output": 15, "cache_write": 3.75, "cache_read": 0.3}}, "config error: models[0].price: prices must be at most 1000000"),
    ("an output reserve beyond its bound", {"budgets": {"reserve_output_tokens": 200000000}}, "config error: budgets.reserve_output_tokens: must be at most 100000000"),
    ("more nodes than any deployment", {"budget_store": {"kind": "webdis", "upstream": "webdis:7379", "on_failure": {"divide_by_nodes": 20000}}}, "config error: budget_store.on_failure.divide_by_nodes: must be at most 10000"),
    ("budget store authority not ASCII", {"budget_store": {"kind": "webdis", "upstream": "webdis:7379", "authority": "webd\u00efs", "on_failure": "keep_limits"}}, "config error: budget_store.authority: must be a host name or host:port"),
    ("model target empty", {"models[0].target": ""}, "config error: models[0].target: unknown target \"\""),
    ("no models", {"models": []}, "config error: models: at least one model is required"),
    ("model without id", {"models[0].model_id": DELETE}, "config error: models[0]: missing field `model_id`"),
    ("negative price", {"models[0].price.input": -1}, "config error: models[0].price: prices must be non-negative"),
    ("a long-context threshold of nothing", {"models[0].price": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3, "long_context": {"above_prompt_tokens": 0, "input": 6, "output": 22.5, "cache_write": 7.5, "cache_read": 0.6}}}, "config error: models[0].price.long_context.above_prompt_tokens: must be from 1 to 100000000 tokens"),
    ("a web search price beyond its bound", {"models[0].price": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3, "web_search_per_1k": 200000}}, "config error: models[0].price.web_search_per_1k: must be a number from 0 to 100000"),
    ("price missing a field", {"models[0].price": {"input": 1}}, "config error: models[0].price: missing field `output`"),
    ("no tiers", {"tiers": {}}, "config error: tiers: at least one tier is required"),
    ("tier without groups", {"tiers[0].groups": []}, "config error: tiers[0].groups: at least one group is required"),
    ("tier name with a newline", {"tiers[0].name": "a\nb"}, "config error: tiers[0].name: must be a non-empty printable name"),
    ("tier name of spaces", {"tiers[0].name": "   "}, "config error: tiers[0].name: must be a non-empty printable name"),
    ("tier name with a space after it", {"tiers[0].name": "power "}, "config error: tiers[0].name: must be a non-empty printable name"),
    ("alias with a space after it", {"models[0].alias": "claude-sonnet-4-6 "}, "config error: models[0].alias: must not have spaces"),
    ("model id with a space before it", {"models[0].model_id": " claude-sonnet-4-6"}, "config error: models[0].model_id: must not have spaces"),
    ("audience with a space after it", {"oidc.audiences": ["claude-sso-gateway "]}, "config error: oidc.audiences[0]: must not have spaces around it"),
    ("audience with a newline inside", {"oidc.audiences": ["a\nb"]}, "config error: oidc.audiences[0]: must not have spaces around it or control characters"),
    ("tier name ending in a newline", {"tiers[0].name": "power\n"}, "config error: tiers[0].name: must be a non-empty printable name"),
    ("limit zero", {"tiers[1].limits[0].limit": 0}, "config error: tiers[1].limits[0].limit: must be greater than 0"),
    ("limit window missing", {"tiers[1].limits[0].window_seconds": DELETE}, "config error: tiers[1].limits[0]: missing field `window_seconds`"),
    ("unknown window type", {"tiers[1].window_type": "rolling"}, "config error: tiers[1].window_type: unknown variant `rolling`"),
    ("unknown counts", {"tiers[1].limits[0].counts": "bytes"}, "config error: tiers[1].limits[0].counts: unknown variant `bytes`"),
    ("unknown per", {"tiers[1].per": "team"}, "config error: tiers[1].per: unknown variant `team`"),
    ("warning share above 1", {"budgets": {"warning_share": 1.5}}, "config error: budgets.warning_share: must be greater than 0 and at most 1"),
    ("unknown reserve", {"budgets": {"reserve": "all"}}, "config error: budgets.reserve: unknown variant `all`"),
    ("unknown budget store", {"budget_store": {"kind": "redis", "upstream": "webdis:7379", "on_failure": "keep_limits"}},
     "config error: budget_store.kind: unknown variant `redis`"),
    ("budget store divided by 0 nodes", {"budget_store": {"kind": "webdis", "upstream": "webdis:7379",
                                                          "on_failure": {"divide_by_nodes": 0}}},
     "config error: budget_store.on_failure.divide_by_nodes: must be at least 1"),
    ("budget store syncing too often", {"budget_store": {"kind": "webdis", "upstream": "webdis:7379", "sync_ms": 10,
                                                         "on_failure": "keep_limits"}},
     "config error: budget_store.sync_ms: must be at least 100"),
    # PCRE's `$` matches before a final newline too (a YAML `|` block ends in one): the schema ends its
    # patterns with `$(?!\n)`, so Kong refuses these as the parser does.
    ("an environment variable name ending in a newline", {"targets.anthropic.api_key_env": "ANTHROPIC_API_KEY\n"}, "config error: targets.anthropic.api_key_env:"),
    ("a groups claim ending in a newline", {"oidc.groups_claim": "groups\n"}, "config error: oidc.groups_claim:"),
    ("an audience claim ending in a newline", {"oidc.audience_claim": "aud\n"}, "config error: oidc.audience_claim:"),
    ("a region ending in a newline", {"targets.b": {"provider": "bedrock", "region": "us-east-1\n", "access_key_id": "AKID", "secret_access_key_env": "ANTHROPIC_API_KEY"}}, "config error: targets.b.region:"),
    # serde would fill these by position (60 tokens per 100,000 s); the schema wants objects, and so does the parser.
    ("a limit written as an array", {"tiers[1].limits": [[60, 100000]]}, "config error: tiers[1].limits[0]: invalid type: array"),
    ("a price written as an array", {"models[1].price": [3, 15, 3.75, 0.3]}, "config error: models[1].price: invalid type: array"),
    ("a bedrock secret with a space after it", {"targets.b": {"provider": "bedrock", "region": "us-east-1", "access_key_id": "AKID", "secret_access_key": "s3cr3t "}}, "config error: targets.b.secret_access_key"),
    ("a bedrock session token not ASCII", {"targets.b": {"provider": "bedrock", "region": "us-east-1", "access_key_id": "AKID", "secret_access_key": "s", "session_token": "t\u00e9"}}, "config error: targets.b.session_token"),
    ("a bedrock beta with a comma", {"targets.b": {"provider": "bedrock", "region": "us-east-1", "access_key_id": "AKID", "secret_access_key": "s", "betas": ["a,b"]}}, "config error: targets.b.betas[0]: must be a beta name"),
    ("an empty bedrock beta", {"targets.b": {"provider": "bedrock", "region": "us-east-1", "access_key_id": "AKID", "secret_access_key": "s", "betas": [""]}}, "config error: targets.b.betas[0]: must be a beta name"),
    ("a token bound no header line reaches", {"oidc.max_token_bytes": 5000000000}, "config error: oidc.max_token_bytes: must be at most 1048576"),
    ("an access key id ending in a newline", {"targets.b": {"provider": "bedrock", "region": "us-east-1", "access_key_id": "AKID\n", "secret_access_key_env": "ANTHROPIC_API_KEY"}}, "config error: targets.b.access_key_id:"),
]

# Rules that need more than one field or the VM's environment: draft-4 JSON Schema cannot say
# them, so Kong accepts these and the filter refuses them when it loads (Kong then answers 500).
PARSER_ONLY = [
    ("tier names an unknown alias", {"tiers[1].models": ["claude-opus-9"]}, "config error: tiers[1].models[0]: unknown model alias \"claude-opus-9\""),
    ("model names an unknown target", {"models[1].target": "bedrock"}, "config error: models[1].target: unknown target \"bedrock\""),
    ("environment variable not set", {"targets.anthropic.api_key_env": "NO_SUCH_VAR"}, "config error: targets.anthropic.api_key_env: environment variable NO_SUCH_VAR is not set in the VM"),
    ("a key pasted into api_key_env is not repeated", {"targets.anthropic.api_key_env": "sk-ant-api03-pasted"}, "config error: targets.anthropic.api_key_env: the environment variable it names is not set in the VM (the name is not repeated"),
    ("the groups claim as the audience claim", {"oidc.groups_claim": "roles", "oidc.audience_claim": "roles"}, "config error: oidc.audience_claim: \"roles\" does not name the application"),
    ("duplicate alias", {"models[1].alias": "claude-sonnet-4-6"}, "config error: models[1].alias: duplicate alias \"claude-sonnet-4-6\""),
    ("duplicate tier", {"tiers[1].name": "power"}, "config error: tiers[1].name: duplicate tier \"power\""),
    ("fractional token limit", {"tiers[1].limits[0].limit": 1.5}, "config error: tiers[1].limits[0].limit: a token limit must be a whole number"),
    ("cost limit on an unpriced model", {"tiers[0].limits": [{"limit": 5, "window_seconds": 60, "counts": "cost"}]}, "config error: tiers[0].limits[0]: counts cost, but a model of this tier has no price"),
    ("max age below refresh", {"oidc.jwks_max_age_seconds": 10}, "config error: oidc.jwks_max_age_seconds: must not be less than oidc.jwks_refresh_seconds"),
    ("a JWKS on another host without its upstream", {"oidc.jwks_uri": "https://keys.example.com/jwks"}, "config error: oidc.jwks_upstream: required when oidc.jwks_uri is on another host than the issuer"),
    ("budget store stale between two ticks", {"budget_store": {"kind": "webdis", "upstream": "webdis:7379", "sync_ms": 100, "timeout_ms": 100, "stale_after_ms": 200, "on_failure": "keep_limits"}}, "config error: budget_store.stale_after_ms: must be at least budget_store.sync_ms (or the 500 ms tick, if longer) + budget_store.timeout_ms"),
]

VALID = [
    # Loaded (an update must not take a gateway down), and said in the log when they load.
    ("an alias twice in a tier", {"tiers[1].models": ["claude-sonnet-4-6", "claude-sonnet-4-6"]}),
    ("a blank group name", {"tiers[1].groups": ["claude-standard-users", " "]}),
    ("a tier no one can reach", {"tiers[1].groups": ["claude-power-users"]}),
    ("a body limit above 64 MiB (64 MiB is used)", {"max_body_bytes": 67108865}),
    ("the base", {}),
    ("every optional field", {"oidc.upstream": "idp.example.com:443", "oidc.jwks_uri": "https://keys.example.com/jwks",
                              "oidc.jwks_upstream": "keys.example.com:443", "oidc.groups_claim": "realm_access.roles",
                              "oidc.leeway_seconds": 0, "oidc.max_token_bytes": 16384, "oidc.callout_timeout_ms": 2000,
                              "identity_headers": {"user": "X-User", "email": "X-Email", "tier": "X-Tier"},
                              "max_body_bytes": 1048576, "validation_cache_bytes": 0, "budgets": {"reserve": "none", "reserve_output_tokens": 0, "warning_share": 1},
                              "tiers[1].per": "person", "tiers[1].window_type": "fixed", "tiers[1].counts": "prompt_tokens"}),
    ("Kong's {} for an empty limits list", {"tiers[1].limits": {}}),
    ("nulls where fields are optional", {"oidc.upstream": None, "oidc.jwks_uri": None, "models[1].price": None,
                                        "tiers[1].window_type": None}),
    ("a budget store with every field", {"budget_store": {
        "kind": "webdis", "upstream": "webdis:7379", "authority": "webdis", "sync_ms": 250, "timeout_ms": 500,
        "stale_after_ms": 2000, "key_prefix": "csg-prod", "on_failure": {"divide_by_nodes": 3}}}),
    ("cost limit on priced models", {"tiers[1].limits": [{"limit": 2.5, "window_seconds": 86400, "counts": "cost"}]}),
    ("literal api key", {"targets.anthropic": {"provider": "anthropic", "api_key": "sk-ant-x"}}),
    ("a null api_key beside api_key_env", {"targets.anthropic.api_key": None}),
    ("IPv6 issuer with a port", {"oidc.issuer": "https://[::1]:8443/realms/x", "oidc.upstream": "[::1]:8443"}),
    ("issuer with port 65535", {"oidc.issuer": "http://idp.example.com:65535/x"}),
    ("a JWKS address with a query", {"oidc.jwks_uri": "https://idp.example.com?keys=1"}),
    ("a one-hour cache price", {"models[1].price": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3,
                                                   "cache_write_1h": 6}}),
]


def sample_configs():
    """Every filter config shipped in the repository: Kong's (both forms) and Envoy's."""
    found = []
    for name in ("kong.yml", "kong-3.8.yml"):
        kong = yaml.safe_load((ROOT / "kong" / name).read_text())
        for service in kong["services"]:
            for route in service["routes"]:
                for plugin in route.get("plugins", []):
                    found.append((f"{name} {route['name']} plugin", plugin["config"]))
                for chain in route.get("filter_chains", []):
                    for f in chain["filters"]:
                        found.append((f"{name} {route['name']} filter chain", f["config"]))
    for path in sorted((ROOT / "envoy").glob("*.yaml")):
        text = path.read_text()
        for block in re.findall(r'value: \|\n((?:[ ]{28}.*\n)+)', text):
            found.append((f"envoy/{path.name}", json.loads(block)))
    assert len(found) >= 5, found
    return found


def parser_verdicts(configs, tmp_path):
    paths = []
    for i, config in enumerate(configs):
        p = tmp_path / f"config-{i}.json"
        p.write_text(json.dumps(config))
        paths.append(str(p))
    out = subprocess.run(["cargo", "run", "--quiet", "--example", "check_config", "--", *paths], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    verdicts = dict(line.split("\t", 1) for line in out.splitlines())
    return [verdicts[p] for p in paths]


class Pcre2:
    """PCRE2 through the system's libpcre2-8, used the way Kong's schema validator uses it: `pattern`
    goes to ngx.re.find(subject, pattern, "jo") (lua-resty-ljsonschema), byte-wise (no UTF mode). Python's
    `re` accepts what PCRE2 refuses (`\\u0041`), and a pattern PCRE2 cannot compile makes Kong refuse
    every config."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libpcre2-8.so.0")
        except OSError as e:
            raise AssertionError(f"libpcre2-8 is needed to check patterns as Kong runs them: {e}") from e
        self.lib.pcre2_compile_8.restype = ctypes.c_void_p
        self.lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32,
                                             ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.c_void_p]
        self.lib.pcre2_match_data_create_from_pattern_8.restype = ctypes.c_void_p
        self.lib.pcre2_match_data_create_from_pattern_8.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                           ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
        self.lib.pcre2_get_error_message_8.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        self.lib.pcre2_get_ovector_pointer_8.restype = ctypes.POINTER(ctypes.c_size_t)
        self.lib.pcre2_get_ovector_pointer_8.argtypes = [ctypes.c_void_p]

    @functools.lru_cache(maxsize=None)
    def compile(self, pattern: str):
        error, offset = ctypes.c_int(), ctypes.c_size_t()
        raw = pattern.encode()
        code = self.lib.pcre2_compile_8(raw, len(raw), 0, ctypes.byref(error), ctypes.byref(offset), None)
        if not code:
            message = ctypes.create_string_buffer(256)
            self.lib.pcre2_get_error_message_8(error.value, message, len(message))
            raise ValueError(f"PCRE2 cannot compile {pattern!r}: {message.value.decode()} (offset {offset.value})")
        return code, self.lib.pcre2_match_data_create_from_pattern_8(code, None)

    def search(self, pattern: str, subject: str) -> bool:
        return self.match(pattern, subject.encode()) is not None

    def match(self, pattern: str, raw: bytes, start: int = 0):
        """(start, end) of the whole match and of each group (None if unset), or None."""
        code, match_data = self.compile(pattern)
        count = self.lib.pcre2_match_8(code, raw, len(raw), start, 0, match_data, None)
        if count < 0:
            return None
        ovector = self.lib.pcre2_get_ovector_pointer_8(match_data)
        unset = ctypes.c_size_t(-1).value
        return [None if ovector[2 * i] == unset else (ovector[2 * i], ovector[2 * i + 1]) for i in range(count)]


PCRE2 = Pcre2()


def _kong_pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not PCRE2.search(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r} (PCRE2, as in Kong)")


# Draft 4 as Kong applies it: the same keywords, with `pattern` run by PCRE2.
KongDraft4Validator = jsonschema.validators.extend(jsonschema.Draft4Validator, {"pattern": _kong_pattern})


def schema_patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from schema_patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from schema_patterns(value)


def schema_verdict(config):
    errors = list(KongDraft4Validator(SCHEMA).iter_errors(config))
    return "ok" if not errors else "; ".join(e.message for e in errors)


def test_meta_schema_is_valid_draft_4():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema.Draft4Validator.check_schema(SCHEMA)


def test_every_pattern_compiles_in_pcre2_as_kong_needs():
    # Kong refuses every config when a pattern does not compile (ngx.re.find returns nil).
    patterns = list(schema_patterns(META))
    assert len(patterns) >= 10, patterns
    for pattern in patterns:
        PCRE2.compile(pattern)


def test_schema_and_parser_agree(tmp_path):
    cases = [(f"sample: {n}", c, "ok", True) for n, c in sample_configs()]
    cases += [(f"valid: {n}", edited(ch), "ok", True) for n, ch in VALID]
    cases += [(f"invalid: {n}", edited(ch), err, True) for n, ch, err in INVALID]
    cases += [(f"parser only: {n}", edited(ch), err, False) for n, ch, err in PARSER_ONLY]
    verdicts = parser_verdicts([c for _, c, _, _ in cases], tmp_path)
    problems = []
    for (name, config, expected, schema_can_say), parsed in zip(cases, verdicts):
        if expected == "ok" and parsed != "ok" or expected != "ok" and not parsed.startswith(expected):
            problems.append(f"{name}: parser said {parsed!r}, expected {expected!r}")
        schema = schema_verdict(config)
        schema_ok = schema == "ok"
        if schema_can_say and schema_ok != (parsed == "ok"):
            problems.append(f"{name}: schema said {schema!r} but the parser said {parsed!r}")
        if not schema_can_say and not schema_ok:
            problems.append(f"{name}: listed as parser-only, but the schema refuses it too ({schema}); move it")
    assert not problems, "\n".join(problems)


def test_operators_check_a_config_with_their_environment_before_a_reload(tmp_path):
    """Plain nginx keeps no worker at all after a reload with a configuration the filter refuses
    (and `nginx -t` does not run the filter); `make check-config` gives the filter's verdict first,
    with the shell's environment as the VM's, and fails when it refuses."""
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(edited({"targets.anthropic.api_key_env": "CHECK_KEY"})))
    bad.write_text(json.dumps(edited({"tiers[1].limits[0].window_second": 60})))

    def check(path, **env):
        base = {k: v for k, v in os.environ.items() if k != "CHECK_KEY"}
        return subprocess.run(["make", "-s", "check-config", f"CONFIG={path}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=600, env={**base, **env})

    ok = check(good, CHECK_KEY="sk-ant-operator")
    assert ok.returncode == 0 and ok.stdout.strip() == f"{good}\tok", ok.stdout + ok.stderr
    unset = check(good)
    assert unset.returncode != 0 and "environment variable CHECK_KEY is not set" in unset.stdout, unset.stdout
    typo = check(bad, CHECK_KEY="sk-ant-operator")
    assert typo.returncode != 0 and "tiers[1].limits[0].window_second: unknown field" in typo.stdout, typo.stdout


# --- the built .wasm and the host functions it may call ------------------------------------

# Host functions ngx_wasm_module links (src/common/proxy_wasm/ngx_proxy_wasm_host.c,
# ngx_proxy_wasm_hfuncs[]) and the WASI functions it provides; a module importing anything else
# does not load in Kong.
NGX_PROVIDED = {name for line in (ROOT / "kong" / "ngx_wasm_host_functions.txt").read_text().splitlines()
                if not line.startswith("#") for name in line.split()}

# Linked but not implemented in ngx_wasm_module: calling one traps and the request gets a 500
# (../shared/notes/kong-wasm.md, checked on Kong 3.9's module).
# Not listed because the filter needs them: proxy_define_metric and proxy_increment_metric were NYI
# stubs too until ngx_wasm_module's metrics (Kong/ngx_wasm_module PR #530, mid-2024), so on Kong 3.4 to
# 3.7 the filter traps in on_configure, where it defines its counters; it needs Kong 3.8 or later.
NGX_TRAPS = {
    "proxy_close_stream", "proxy_get_log_level", "proxy_done", "proxy_resolve_shared_queue",
    "proxy_continue_response", "proxy_get_status", "proxy_dispatch_grpc_call", "proxy_grpc_call",
    "proxy_open_grpc_stream", "proxy_grpc_stream", "proxy_send_grpc_stream_message", "proxy_grpc_send",
    "proxy_cancel_grpc_call", "proxy_grpc_cancel", "proxy_close_grpc_call", "proxy_grpc_close",
    "proxy_get_map_values", "proxy_set_map_values", "proxy_call_custom_function",
}

# The SDK's `hostcalls::<fn>` and the ABI function each calls (proxy-wasm 0.2.5, src/hostcalls.rs).
SDK_TO_ABI = {
    "log": "proxy_log", "get_log_level": "proxy_get_log_level",
    "get_current_time": "proxy_get_current_time_nanoseconds",
    "set_tick_period": "proxy_set_tick_period_milliseconds",
    "get_buffer": "proxy_get_buffer_bytes", "set_buffer": "proxy_set_buffer_bytes",
    "get_map": "proxy_get_header_map_pairs", "get_map_value": "proxy_get_header_map_value",
    "get_map_value_bytes": "proxy_get_header_map_value", "set_map_value": "proxy_replace_header_map_value",
    "remove_map_value": "proxy_remove_header_map_value", "add_map_value": "proxy_add_header_map_value",
    "send_http_response": "proxy_send_local_response", "resume_http_request": "proxy_continue_stream",
    "resume_http_response": "proxy_continue_stream", "reset_http_request": "proxy_close_stream",
    "reset_http_response": "proxy_close_stream", "dispatch_http_call": "proxy_http_call",
    "get_shared_data": "proxy_get_shared_data", "set_shared_data": "proxy_set_shared_data",
    "define_metric": "proxy_define_metric", "increment_metric": "proxy_increment_metric",
    "record_metric": "proxy_record_metric", "get_metric": "proxy_get_metric",
    "set_effective_context": "proxy_set_effective_context", "done": "proxy_done",
    "resolve_shared_queue": "proxy_resolve_shared_queue", "get_property": "proxy_get_property", "set_property": "proxy_set_property",
}


def wasm_functions(path: Path, section_id: int):
    """Names of the functions a .wasm imports (section 2: (module, name)) or exports (section 7: name)."""
    data = path.read_bytes()
    assert data[:4] == b"\0asm", "not a wasm module"

    def leb(pos):
        result = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return result, pos

    def name(pos):
        n, pos = leb(pos)
        return data[pos:pos + n].decode(), pos + n

    pos, found = 8, []
    while pos < len(data):
        section, size = data[pos], None
        size, pos = leb(pos + 1)
        if section == section_id == 2:
            count, p = leb(pos)
            for _ in range(count):
                module, p = name(p)
                field, p = name(p)
                kind = data[p]
                p += 1
                if kind == 0:
                    _, p = leb(p)
                    found.append((module, field))
                else:
                    raise AssertionError(f"unexpected import kind {kind} for {module}.{field}")
        elif section == section_id == 7:
            count, p = leb(pos)
            for _ in range(count):
                field, p = name(p)
                kind = data[p]
                _, p = leb(p + 1)
                if kind == 0:
                    found.append(field)
        pos += size
    return found


def wasm_imports(path: Path):
    """(module, name) of every function a .wasm imports (the binary format's import section)."""
    return wasm_functions(path, 2)


def test_hosts_allocate_through_the_filters_allocator():
    # Envoy and ngx_wasm_module call the module's `malloc`, when it exports one, rather than
    # `proxy_on_memory_allocate`.
    # The filter frees what a host allocated through its own allocator (src/allocator.rs), whose
    # free lists take a block for as large as its size class: a block from libc's `malloc` could
    # be smaller than that.
    assert WASM.exists(), f"{WASM} is missing: run `make build` first"
    exports = wasm_functions(WASM, 7)
    assert "proxy_on_memory_allocate" in exports and "proxy_on_request_headers" in exports, exports
    assert "malloc" not in exports, "the .wasm exports malloc: hosts would allocate past the filter's allocator"


def test_wasm_imports_only_what_ngx_wasm_module_provides():
    assert WASM.exists(), f"{WASM} is missing: run `make build` first"
    imports = wasm_imports(WASM)
    assert imports, "no imports found"
    missing = sorted(f"{m}.{n}" for m, n in imports if n not in NGX_PROVIDED)
    assert not missing, f"Kong would refuse to load the filter: {missing}"


def test_code_never_calls_a_host_function_kong_traps_on():
    sources = {p: p.read_text() for p in (ROOT / "src").rglob("*.rs")}
    outside = [str(p.relative_to(ROOT)) for p, text in sources.items()
               if "proxy_wasm" in text and p.parent.name != "host" and p.name != "lib.rs"]
    assert not outside, f"proxy_wasm used outside src/host: {outside}"
    calls = set()
    for p, text in sources.items():
        found = set(re.findall(r"hostcalls::(\w+)", text))
        if found:
            assert p.name == "calls.rs", f"{p} calls the host directly; go through src/host/calls.rs"
        calls |= found
    assert calls, "no host calls found"
    unknown = calls - SDK_TO_ABI.keys()
    assert not unknown, f"map these SDK calls to their ABI function in this test first: {unknown}"
    trapping = sorted(f"{c} -> {SDK_TO_ABI[c]}" for c in calls if SDK_TO_ABI[c] in NGX_TRAPS)
    assert not trapping, f"Kong traps on: {trapping}"
    # Host functions declared by hand (an `extern` block), not through the SDK.
    direct = {}
    for p, text in sources.items():
        for abi in re.findall(r"\bfn (proxy_\w+)\s*\(", text):
            direct.setdefault(abi, []).append(p.name)
    exports = {n for n in direct if n.startswith("proxy_on_")}
    assert not exports, f"the SDK exports the proxy_on_* callbacks, not our code: {exports}"
    assert all(files == ["calls.rs"] for files in direct.values()), f"host functions declared outside calls.rs: {direct}"
    assert not sorted(set(direct) & NGX_TRAPS), f"Kong traps on: {sorted(set(direct) & NGX_TRAPS)}"
    # The SDK's trait helpers call the host and unwrap; only `hostcalls` (whose errors we handle) is used.
    for p, text in sources.items():
        assert not re.search(r"self\.(get_http_request_header|send_http_response|dispatch_http_call|"
                             r"set_shared_data|get_shared_data|resume_http_request)\(", text), p


def kong_prometheus_name(filter_name: str, metric: str, label_patterns) -> tuple:
    """The metric name and labels Kong's Prometheus plugin prints for a filter metric: a port of
    `parse_pw_key` in kong/plugins/prometheus/wasmx.lua (Kong 3.9). The key is `pw:<filter>:<metric>`;
    each label pattern is searched from where the previous match ended (ngx.re.match with one ctx),
    group 1 is the part cut from the name and group 2 the label's value; then `:` becomes `_`.
    Nothing else is escaped, so any other character stays in the name."""
    key = f"pw:{filter_name}:{metric}".encode()
    first_label, position, labels = len(key), 0, {}
    for pair in label_patterns:
        groups = PCRE2.match(pair["pattern"], key, position)
        if groups:
            position = groups[0][1]
            first_label = min(first_label, position - (groups[1][1] - groups[1][0]))
            labels[pair["label"]] = key[groups[2][0]:groups[2][1]].decode()
    return key[:first_label].decode().replace(":", "_"), labels


@pytest.mark.envoy_only("reads the metric names from Envoy's stats endpoint")
def test_kong_exports_the_filter_metrics_under_valid_prometheus_names(gateway):
    # Every counter is defined at configure time, so Envoy lists them all (value 0) before any traffic.
    metrics = sorted(k.removeprefix("wasmcustom.") for k in gateway.stats() if k.startswith("wasmcustom.claude_sso"))
    assert len(metrics) > 8, metrics
    bad = []
    for metric in metrics:
        name, labels = kong_prometheus_name("claude_sso_gateway", metric, META["metrics"]["label_patterns"])
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
            bad.append(f"{metric} -> {name} {labels}")
    # A Prometheus server refuses the whole scrape (Kong's own metrics too) at the first invalid name.
    assert not bad, "Kong would export invalid Prometheus metric names (rename the filter's metrics so the " \
                    "part before the first label uses only [a-zA-Z0-9_]):\n" + "\n".join(bad)


def test_kong_38_sample_uses_only_filter_chains_with_the_same_config():
    """Kong 3.8 knows no plugin form of a Wasm filter, and DB-less Kong refuses a whole file that
    names an unknown plugin: its sample attaches the filter as a filter chain only."""
    def filter_configs(name):
        kong = yaml.safe_load((ROOT / "kong" / name).read_text())
        plugins = [p["name"] for p in kong.get("plugins", [])]
        plugins += [p["name"] for svc in kong["services"] for r in svc["routes"] for p in r.get("plugins", [])]
        chains = [f["config"] for svc in kong["services"] for r in svc["routes"]
                  for c in r.get("filter_chains", []) for f in c["filters"] if f["name"] == "claude_sso_gateway"]
        return plugins, chains
    plugins, chains = filter_configs("kong-3.8.yml")
    assert plugins == ["prometheus"], plugins
    _, chains_39 = filter_configs("kong.yml")
    assert chains and chains == chains_39[:1]


def test_kong_conf_has_what_the_filter_needs():
    conf = dict(re.findall(r"^(\w+)\s*=\s*(\S+)", (ROOT / "kong" / "kong.conf").read_text(), re.M))
    assert conf["wasm"] == "on" and conf["database"] == "off"
    assert conf["wasm_filters_path"] == "/opt/kong/wasm"
    assert conf["nginx_wasm_shm_kv"].endswith("m") and int(conf["nginx_wasm_shm_kv"][:-1]) >= 8
    body = conf["nginx_http_client_body_buffer_size"]
    largest = max(c.get("max_body_bytes", 10 * 1024 * 1024) for _, c in sample_configs())
    assert int(body[:-1]) * 1024 * 1024 > largest, "bodies spilled to a file are invisible to the filter"


def test_kong_callout_upstreams_are_host_port():
    for name, config in sample_configs():
        oidc = config["oidc"]
        for key in ("upstream", "jwks_upstream"):
            if oidc.get(key):
                assert re.fullmatch(r"[^/:\s]+:\d+", oidc[key]), (name, key)


def kong_series_names() -> set:
    """Every series name Kong's Prometheus plugin prints for the filter's metrics: the metric names
    (tier and model labels as in the sample) put through `kong_prometheus_name`; a histogram's
    buckets under its bare name and its `_sum` and `_count` with their suffixes (`serialize_metric`
    in kong/plugins/prometheus/wasmx.lua)."""
    source = (ROOT / "src" / "host" / "metrics.rs").read_text()
    histograms = set(re.findall(r'histograms\.push\(format!\("(claude_sso_gateway_\w+)\.', source))
    counters = set(re.findall(r'"(claude_sso_gateway_\w+)[".]', source)) - histograms
    assert len(histograms) == 2 and len(counters) > 8, (histograms, counters)
    scope = ".tier.standard.model.claude-sonnet-4-6"
    names = set()
    for metric in counters | histograms:
        name, _ = kong_prometheus_name("claude_sso_gateway", metric + scope, META["metrics"]["label_patterns"])
        names.add(name)
        if metric in histograms:
            names |= {name + "_sum", name + "_count"}
    return names


def test_every_dashboard_query_names_series_kong_prints():
    """The dashboard's queries answer on Kong too: every metric name they select is one Kong's
    Prometheus plugin prints (its histogram buckets carry no `_bucket` suffix)."""
    import sys

    sys.path.insert(0, str(ROOT / "dashboards"))
    from check_dashboard import queries

    kong = kong_series_names()
    missing = [(title, regex) for title, expr in queries() for regex in re.findall(r'__name__=~"([^"]+)"', expr)
               if not any(re.fullmatch(regex, name) for name in kong)]
    assert not missing, f"no Kong series for: {missing}\nKong prints: {sorted(kong)}"
