#!/usr/bin/env bash
# Prints an access token for a demo user from the running demo IdP: demo-token.sh USER [GROUPS]
set -euo pipefail
cd "$(dirname "$0")/.."
user="${1:-alice}"
groups="${2:-}"
args=(--issuer "${DEMO_ISSUER:-http://127.0.0.1:9100}" --user "$user")
[[ -n "$groups" ]] && args+=(--groups "$groups")
exec node demo/idp/login.mjs "${args[@]}"
