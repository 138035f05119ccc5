#!/usr/bin/env bash
# The compose stack (docker-compose.yml) with whichever engine this machine has:
#
#   scripts/compose.sh up       start it in the background, wait until every service answers
#                               (a service that stops instead fails this with its log)
#   scripts/compose.sh down     stop and remove every container it started
#   scripts/compose.sh engine   print the engine and compose files `up` would use
#   scripts/compose.sh logs [SERVICE]   the services' logs
#
# COMPOSE_PROFILES=cluster adds the `cluster` profile: Redis (6390) behind Webdis (7379) and two
# Envoy gateway nodes sharing budgets through them, envoy-a on 10001 (admin 9911) and envoy-b on 10002
# (admin 9912); `up` then waits for those too. `down` removes the cluster profile's containers whether
# or not COMPOSE_PROFILES names it.
#
# Docker with a running daemon and the compose plugin: `docker compose` on docker-compose.yml, pulling
# the public images (kong:3.9.1, envoyproxy/envoy:v1.40.0, ...). Otherwise Podman (installed from
# Debian when missing) with podman-compose 1.6.0 (from PyPI, in a venv under ~/.cache), on images
# built locally by scripts/compose-images.sh, plus docker-compose.local.yml (the `kong` service runs
# Kong 3.9's Wasm runtime, nginx + ngx_wasm_module, in place of Kong).
#
# Environment: COMPOSE_ENGINE=docker|podman to choose; COMPOSE_LOCAL=1 to use the locally built
# images with Docker too; COMPOSE_OVERRIDE=FILE adds one more compose file; COMPOSE_WAIT (seconds,
# default 90) bounds the wait for `up`; COMPOSE_PROFILES (comma-separated) as for `docker compose`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PROJECT=claude-sso-gateway
PODMAN_COMPOSE_VERSION=1.6.0
PODMAN_COMPOSE_VENV="${PODMAN_COMPOSE_VENV:-$HOME/.cache/claude-sso-gateway/podman-compose-$PODMAN_COMPOSE_VERSION}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/containers/containers.conf}"
SUDO=$([[ $(id -u) == 0 ]] || echo sudo)
log() { echo "compose: $*" >&2; }
die() { log "error: $*"; exit 1; }

# What each service answers once it is up: service, method, URL, the HTTP statuses that count
# (the gateways: the filter's 401 to a request without a token).
READY=(
    "idp GET http://127.0.0.1:9100/.well-known/openid-configuration 200"
    "upstream GET http://127.0.0.1:9200/ 404"
    "envoy GET http://127.0.0.1:9901/ready 200"
    "envoy POST http://127.0.0.1:10000/v1/messages 401"
    "kong POST http://127.0.0.1:8000/v1/messages 401"
)
PORTS=(9100 9200 9901 10000 8000 8001)
# The cluster profile's: Webdis answers PING once Redis does; each node's filter its 401.
CLUSTER=0
[[ ,${COMPOSE_PROFILES:-}, == *,cluster,* ]] && CLUSTER=1
if ((CLUSTER)); then
    READY+=(
        "webdis GET http://127.0.0.1:7379/PING 200"
        "envoy-a GET http://127.0.0.1:9911/ready 200"
        "envoy-a POST http://127.0.0.1:10001/v1/messages 401"
        "envoy-b GET http://127.0.0.1:9912/ready 200"
        "envoy-b POST http://127.0.0.1:10002/v1/messages 401"
    )
    PORTS+=(6390 7379 10001 9911 10002 9912)
fi

ENGINE="${COMPOSE_ENGINE:-}"
if [[ -z $ENGINE ]]; then
    if command -v docker >/dev/null && docker compose version >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        ENGINE=docker
    else
        ENGINE=podman
    fi
fi
FILES=(-f docker-compose.yml)
LOCAL="${COMPOSE_LOCAL:-$([[ $ENGINE == podman ]] && echo 1 || echo 0)}"
[[ $LOCAL == 1 ]] && FILES+=(-f docker-compose.local.yml)
# One more override file, e.g. to change a service's command (tests/test_compose.py uses it).
[[ -n ${COMPOSE_OVERRIDE:-} ]] && FILES+=(-f "$COMPOSE_OVERRIDE")

install_podman_compose() {
    command -v podman >/dev/null || {
        log "installing podman"
        $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq podman runc catatonit >/dev/null
    }
    [[ -x $PODMAN_COMPOSE_VENV/bin/podman-compose ]] && return
    log "installing podman-compose $PODMAN_COMPOSE_VERSION into $PODMAN_COMPOSE_VENV"
    python3 -c 'import ensurepip' 2>/dev/null \
        || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv >/dev/null
    { python3 -m venv "$PODMAN_COMPOSE_VENV" \
        && "$PODMAN_COMPOSE_VENV/bin/pip" install --quiet "podman-compose==$PODMAN_COMPOSE_VERSION"; } \
        || { rm -rf "$PODMAN_COMPOSE_VENV"; die "could not install podman-compose"; }
}

compose() {
    if [[ $ENGINE == docker ]]; then
        docker compose -p "$PROJECT" "${FILES[@]}" "$@"
    else
        "$PODMAN_COMPOSE_VENV/bin/podman-compose" -p "$PROJECT" "${FILES[@]}" "$@"
    fi
}

# The project's containers: "name service" lines.
containers() {
    $ENGINE ps -a --filter "label=com.docker.compose.project=$PROJECT" \
        --format '{{.Names}} {{index .Labels "com.docker.compose.service"}}'
}

status_of() {  # METHOD URL -> HTTP status, 000 when nothing answers
    local data=()
    [[ $1 == POST ]] && data=(-H 'content-type: application/json' --data-binary '{}')
    curl -s -o /dev/null -m 2 -w '%{http_code}' -X "$1" "${data[@]}" "$2" 2>/dev/null || true
}

service_logs() {  # SERVICE: the last lines of its container's log
    local name svc
    while read -r name svc; do
        [[ $svc == "$1" ]] && $ENGINE logs "$name" 2>&1 | tail -n 60 | sed "s/^/[$svc] /" >&2
    done < <(containers)
}

wait_ready() {
    local deadline=$((SECONDS + ${COMPOSE_WAIT:-90})) pending line service method url codes name svc state
    while :; do
        # A container that stopped fails the start at once, with its log.
        while read -r name svc; do
            [[ -n $name ]] || continue
            state="$($ENGINE inspect --format '{{.State.Status}}' "$name" 2>/dev/null || echo gone)"
            if [[ $state != running ]]; then
                log "service $svc is $state; its log:"
                service_logs "$svc"
                return 1
            fi
        done < <(containers)
        pending=()
        for line in "${READY[@]}"; do
            read -r service method url codes <<<"$line"
            [[ ,$codes, == *,$(status_of "$method" "$url"),* ]] || pending+=("$service")
        done
        ((${#pending[@]})) || return 0
        if ((SECONDS >= deadline)); then
            for service in $(printf '%s\n' "${pending[@]}" | sort -u); do
                log "service $service did not answer within ${COMPOSE_WAIT:-90} s; its log:"
                service_logs "$service"
            done
            return 1
        fi
        sleep 0.5
    done
}

up() {
    [[ -f target/wasm32-wasip1/release/claude_sso_gateway.wasm ]] || die "run \`make build\` first (make compose-up does)"
    command -v curl >/dev/null || $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq curl >/dev/null
    [[ $ENGINE == podman ]] && install_podman_compose
    local busy=()
    if [[ -z $(containers) ]]; then
        for port in "${PORTS[@]}"; do
            ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && busy+=("$port")
        done
    fi
    ((${#busy[@]} == 0)) || die "ports ${busy[*]} are in use (is \`make demo\` running?)"
    if [[ $LOCAL == 1 ]]; then
        CONTAINER_ENGINE=$ENGINE bash scripts/compose-images.sh
    fi
    log "starting with $ENGINE: ${FILES[*]}"
    # Into a file: the containers' monitors (conmon) inherit the compose tool's stdout and stderr,
    # and a pipe there would stay open (a caller reading it would wait) until `down`.
    local out status=0
    out="$(mktemp)"
    if [[ $ENGINE == docker ]]; then
        compose up -d --build --remove-orphans </dev/null >"$out" 2>&1 || status=$?
    else
        compose up -d </dev/null >"$out" 2>&1 || status=$?
    fi
    # podman 4.3 without systemd runs no healthchecks (the IdP's is for Docker): that notice is noise.
    grep -vE 'systemd connection|condition check|^[0-9a-f]{64}$|^claude-sso-gateway_' "$out" >&2 || true
    rm -f "$out"
    ((status == 0)) || { log "\`compose up\` failed"; down >/dev/null 2>&1 || true; return 1; }
    if ! wait_ready; then
        log "stopping the stack"
        down >/dev/null 2>&1 || true
        return 1
    fi
    cat <<TXT
claude-sso-gateway compose stack ($ENGINE): 
  Envoy gateway  http://127.0.0.1:10000   (admin http://127.0.0.1:9901)
  Kong gateway   http://127.0.0.1:8000    ($([[ $LOCAL == 1 ]] && echo "Kong 3.9's Wasm runtime: nginx + ngx_wasm_module" || echo "Kong 3.9.1, admin http://127.0.0.1:8001"))
  demo IdP       http://127.0.0.1:9100    users alice (standard), bob (power), erin (both), carol (none); password demo
  upstream       http://127.0.0.1:9200    the stand-in Anthropic API (and Bedrock, for claude-sonnet-4-5 on Envoy)
TXT
    ((CLUSTER)) && cat <<TXT
  cluster        http://127.0.0.1:10001 and :10002 (admin :9911, :9912): two Envoy nodes sharing budgets
                 through Redis 127.0.0.1:6390 behind Webdis http://127.0.0.1:7379 (envoy/cluster.yaml)
TXT
    cat <<TXT
Token: make demo-token USER=alice    Logs: bash scripts/compose.sh logs [SERVICE]    Stop: make compose-down
TXT
}

down() {
    # The cluster profile's services too, whether or not `up` was asked for them.
    [[ ,${COMPOSE_PROFILES:-}, == *,cluster,* ]] || export COMPOSE_PROFILES="cluster${COMPOSE_PROFILES:+,$COMPOSE_PROFILES}"
    if [[ $ENGINE == podman ]]; then
        [[ -x $PODMAN_COMPOSE_VENV/bin/podman-compose ]] || { [[ -z $(containers 2>/dev/null) ]] && return 0; install_podman_compose; }
        local out
        out="$(mktemp)"
        compose down -t 5 </dev/null >"$out" 2>&1 || { cat "$out" >&2; rm -f "$out"; return 1; }
        rm -f "$out"
    else
        compose down -t 5 --remove-orphans
    fi
    # Anything the compose tool missed (a container left by an interrupted `up`).
    local left
    left="$(containers 2>/dev/null | cut -d' ' -f1)"
    [[ -z $left ]] || $ENGINE rm -f -t 0 $left >/dev/null
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    engine) echo "$ENGINE ${FILES[*]}" ;;
    logs) shift; compose logs "$@" ;;
    *) die "usage: $0 up|down|engine|logs [SERVICE]" ;;
esac
