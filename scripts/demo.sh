#!/usr/bin/env bash
# `make demo`: the gateway on 127.0.0.1:10000 with a local OpenID Provider (127.0.0.1:9100) and the
# stand-in Anthropic API (127.0.0.1:9200), or the real API when ANTHROPIC_API_KEY is set.
# Runs in the foreground; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVOY="$(.venv/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"

# The fixed ports, checked before anything starts: a process that finds its port taken dies with
# its own error in the middle of the others' logs, and a curl that reaches someone else's IdP on
# 9100 would take it for ours. (The stand-in's 9200 only when it runs.)
declare -A PORTS=([9100]="the demo IdP" [10000]="the gateway" [9901]="Envoy's admin")
[[ -n "${ANTHROPIC_API_KEY:-}" ]] || PORTS[9200]="the stand-in Anthropic API"
listening() {  # PORT: whether something listens on it (ss, or a connection where ss is missing)
  if command -v ss >/dev/null; then
    ss -Hltn "sport = :$1" | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
busy=()
for port in $(printf '%s\n' "${!PORTS[@]}" | sort -n); do
  listening "$port" && busy+=("$port (${PORTS[$port]})")
done
if ((${#busy[@]})); then
  printf -v list '%s, ' "${busy[@]}"
  echo "demo: error: ports in use: ${list%, }" >&2
  echo "demo: is another \`make demo\`, \`make compose-up\` or a test run using them? (\`ss -ltnp\` shows which process)" >&2
  exit 1
fi

USAGE_LOG=/tmp/claude-sso-gateway-usage.log  # where envoy/demo*.yaml write the usage records
# Each run starts its own usage log; the previous run's is kept beside it.
if [[ -s "$USAGE_LOG" ]]; then mv -f "$USAGE_LOG" "$USAGE_LOG.1"; fi

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
# Line-buffered filters: each log line shows when it is written, not when a pipe buffer fills.
node demo/idp/server.mjs --port 9100 > >(sed -u 's/^/[idp] /') 2> >(grep --line-buffered -v WARNING | sed -u 's/^/[idp] /' >&2) &
pids+=($!)

if [[ -n "${ANTHROPIC_API_KEY:-}" ]]; then
  config=envoy/demo-anthropic.yaml
  upstream="the real Anthropic API (key from ANTHROPIC_API_KEY)"
else
  config=envoy/demo.yaml
  .venv/bin/python tools/stub_upstream.py --port 9200 --api-key demo-upstream-key --bedrock > >(sed -u 's/^/[upstream] /') 2>&1 &
  pids+=($!)
  upstream="the stand-in Anthropic API on 127.0.0.1:9200 (model claude-sonnet-4-5 goes to its Bedrock mode, SigV4-signed)"
fi

# Waits until URL answers; fails as soon as one of the demo's processes has stopped.
wait_for() {  # URL WHAT
  local pid
  for _ in $(seq 150); do
    curl -sf -o /dev/null "$1" && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "demo: error: a process stopped before $2 answered (its log is above)" >&2; return 1; }
    done
    sleep 0.2
  done
  echo "demo: error: $2 did not answer on $1 within 30 s" >&2
  return 1
}
wait_for http://127.0.0.1:9100/.well-known/openid-configuration "the demo IdP"
# --base-id: Envoys sharing a network namespace clash on the default hot-restart id 0 (the tests and
# `make demo-cluster` give each Envoy its gateway port as its id, as here).
"$ENVOY" -c "$config" --concurrency 2 --base-id 10000 --log-level warn --component-log-level wasm:info \
  2> >(sed -u 's/^/[envoy] /' >&2) &
pids+=($!)
wait_for http://127.0.0.1:9901/ready "Envoy"

cat <<TXT

claude-sso-gateway demo
  gateway   http://127.0.0.1:10000   (Envoy admin http://127.0.0.1:9901)
  metrics   http://127.0.0.1:9901/stats/prometheus   (claude_sso_gateway_* series; dashboards/ for Grafana)
  usage log $USAGE_LOG   (one JSON record per request; the previous run's in .1)
  report    cargo run -q -p claude-sso-report -- $USAGE_LOG --by person,model --chart /tmp/claude-sso-gateway-usage.svg
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
Run claude with ANTHROPIC_API_KEY and ANTHROPIC_AUTH_TOKEN unset: Claude Code sends either of them in
place of the apiKeyHelper's token, and the gateway refuses it (401). In a shell that has them:
  env -u ANTHROPIC_API_KEY -u ANTHROPIC_AUTH_TOKEN claude
Ctrl-C stops the demo.
TXT
wait -n "${pids[@]}"
