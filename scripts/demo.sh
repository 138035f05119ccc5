#!/usr/bin/env bash
# `make demo`: the gateway on 127.0.0.1:10000 with a local OpenID Provider (127.0.0.1:9100) and the
# stand-in Anthropic API (127.0.0.1:9200), or the real API when ANTHROPIC_API_KEY is set.
# Runs in the foreground; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY="$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
USAGE_LOG=/tmp/claude-sso-gateway-usage.log  # where envoy/demo*.yaml write the usage records
# Each run starts its own usage log; the previous run's is kept beside it.
if [[ -s "$USAGE_LOG" ]]; then mv -f "$USAGE_LOG" "$USAGE_LOG.1"; fi
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

node demo/idp/server.mjs --port 9100 > >(sed 's/^/[idp] /') 2> >(grep -v WARNING | sed 's/^/[idp] /' >&2) &
pids+=($!)

if [[ -n "${ANTHROPIC_API_KEY:-}" ]]; then
  config=envoy/demo-anthropic.yaml
  upstream="the real Anthropic API (key from ANTHROPIC_API_KEY)"
else
  config=envoy/demo.yaml
  .venv/bin/python tools/stub_upstream.py --port 9200 --api-key demo-upstream-key --bedrock > >(sed 's/^/[upstream] /') 2>&1 &
  pids+=($!)
  upstream="the stand-in Anthropic API on 127.0.0.1:9200 (model claude-sonnet-4-5 goes to its Bedrock mode, SigV4-signed)"
fi

for _ in $(seq 50); do curl -sf http://127.0.0.1:9100/.well-known/openid-configuration >/dev/null && break; sleep 0.2; done
"$ENVOY" -c "$config" --concurrency 2 --log-level warn --component-log-level wasm:info 2> >(sed 's/^/[envoy] /' >&2) &
pids+=($!)

cat <<TXT

claude-sso-gateway demo
  gateway   http://127.0.0.1:10000   (Envoy admin http://127.0.0.1:9901)
  metrics   http://127.0.0.1:9901/stats/prometheus   (claude_sso_gateway_* series; dashboards/ for Grafana)
  usage log $USAGE_LOG   (one JSON record per request; the previous run's in .1)
  report    cargo run -q -p claude-sso-report -- $USAGE_LOG --by person,model --chart usage.svg
  IdP       http://127.0.0.1:9100    users alice (standard), bob (power), erin (both), carol (none); password demo
  upstream  $upstream

Get a token:   make demo-token USER=alice GROUPS=claude-standard-users
~/.claude/settings.json:
  {
    "apiKeyHelper": "make -s -C $PWD demo-token USER=alice",
    "env": {
      "ANTHROPIC_BASE_URL": "http://127.0.0.1:10000",
      "ANTHROPIC_MODEL": "claude-sonnet-4-6",
      "ANTHROPIC_DEFAULT_SONNET_MODEL": "claude-sonnet-4-6",
      "ANTHROPIC_DEFAULT_OPUS_MODEL": "claude-opus-4-7",
      "ANTHROPIC_DEFAULT_HAIKU_MODEL": "claude-haiku-4-5",
      "ANTHROPIC_DEFAULT_FABLE_MODEL": "claude-sonnet-4-6",
      "ANTHROPIC_SMALL_FAST_MODEL": "claude-haiku-4-5"
    }
  }
Ctrl-C stops the demo.
TXT
wait -n "${pids[@]}"
