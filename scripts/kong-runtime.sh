#!/usr/bin/env bash
# Builds Kong's Wasm runtime from source: nginx 1.27.2 + ngx_wasm_module 9136e463 (the pair Kong 3.9
# pins) + the Wasmtime 26.0.0 C API (the runtime Kong 3.9 bundles) from crates.io.
#
#   scripts/kong-runtime.sh               build if needed, then print the nginx binary's path
#   scripts/kong-runtime.sh --print-path  print the path if it is built, exit 1 (printing nothing) if not
#
# The result is cached outside the work tree, in
#   ${KONG_RUNTIME_CACHE:-$HOME/.cache/claude-sso-gateway/kong-runtime}/<key>/sbin/nginx
# where <key> hashes the two source archives and this script, so a second run costs nothing.
# The Wasmtime C API (the slow part, ~8 minutes on 2 cores) has its own cache entry keyed by its
# crate manifest, so a change to the nginx part of this script does not rebuild it.
# Every entry is built in a temporary directory and renamed into place.
#
# Environment: KONG_RUNTIME_CACHE (cache root), KONG_WASM_VENDOR (directory of the two archives,
# default ../shared/vendor/kong-wasm relative to the repository root), KONG_RUNTIME_JOBS (parallel jobs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$ROOT/scripts/kong-runtime.sh"
VENDOR="${KONG_WASM_VENDOR:-$ROOT/../shared/vendor/kong-wasm}"
CACHE="${KONG_RUNTIME_CACHE:-$HOME/.cache/claude-sso-gateway/kong-runtime}"
JOBS="${KONG_RUNTIME_JOBS:-$(nproc 2>/dev/null || echo 2)}"

NGINX_TGZ="$VENDOR/nginx-1.27.2.tar.gz"
NGXWASM_TGZ="$VENDOR/ngx_wasm_module-9136e463.tar.gz"
NGINX_SHA256=ebe211a8fbb0223dea97982de00b96b464b78a0dcadcbc6cf5055a89de6d45bb
NGXWASM_SHA256=6adba94011e8b3106ac1f010b9697174138231e5bb839951e78fbc007bf749d9

log() { echo "kong-runtime: $*" >&2; }
die() { log "error: $*"; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# The Wasmtime C API crate: a static library named `wasmtime`, re-exporting wasmtime-c-api-impl.
# `threads` is needed (ngx_wasm_module calls wasmtime_config_wasm_threads_set). wasmtime-c-api-impl
# 26.0.0 accepts any wasmtime 26.0.x; the pins keep the engine at 26.0.0, the release Kong 3.9 ships.
WASMTIME_MANIFEST='[package]
name = "wasmtime-c-api-kong"
version = "26.0.0"
edition = "2021"
publish = false

[lib]
name = "wasmtime"
path = "lib.rs"
crate-type = ["staticlib"]

[dependencies]
wasmtime-c-api-impl = { version = "=26.0.0", default-features = false, features = ["cranelift", "wat", "wasi", "cache", "parallel-compilation", "threads"] }
wasmtime = { version = "=26.0.0", default-features = false }
wasmtime-wasi = { version = "=26.0.0", default-features = false }

[profile.release]
opt-level = 1
debug = false
strip = "debuginfo"
panic = "abort"

[workspace]
'
WASMTIME_LIBRS='pub use wasmtime_c_api::*;
'

# The archive hashes are pinned: the cache key is only sound for those exact sources.
[[ -f $NGINX_TGZ && -f $NGXWASM_TGZ ]] || die "source archives not found in $VENDOR"
key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
WASMTIME_KEY="wasmtime-26.0.0-$(key_of "$WASMTIME_MANIFEST" "$WASMTIME_LIBRS" conf-wat-1)"
KEY="nginx-1.27.2-$(key_of "$NGINX_SHA256" "$NGXWASM_SHA256" "$(sha "$SELF")")"
OUT="$CACHE/$KEY"
NGINX_BIN="$OUT/sbin/nginx"

if [[ ${1:-} == --print-path ]]; then
    [[ -x $NGINX_BIN ]] || { log "not built yet (run scripts/kong-runtime.sh or make kong-runtime)"; exit 1; }
    echo "$NGINX_BIN"
    exit 0
elif [[ -n ${1:-} ]]; then
    die "usage: $0 [--print-path]"
fi

if [[ -x $NGINX_BIN ]]; then
    echo "$NGINX_BIN"
    exit 0
fi

[[ $(sha "$NGINX_TGZ") == "$NGINX_SHA256" ]] || die "$NGINX_TGZ: unexpected sha256"
[[ $(sha "$NGXWASM_TGZ") == "$NGXWASM_SHA256" ]] || die "$NGXWASM_TGZ: unexpected sha256"

## Build dependencies (Debian/Ubuntu).
need=()
for p in build-essential libpcre2-dev zlib1g-dev libssl-dev cmake; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    command -v apt-get >/dev/null || die "missing packages: ${need[*]}"
    sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
    log "installing ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo not found (install Rust: https://rustup.rs)"

mkdir -p "$CACHE"
# Leftovers of builds that were killed (an exiting build removes its own).
find "$CACHE" -maxdepth 1 -name '.build-*' -mmin +720 -exec rm -rf {} + 2>/dev/null || true
TMP="$(mktemp -d "$CACHE/.build-XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

## 1. Wasmtime C API: $CACHE/$WASMTIME_KEY/{lib/libwasmtime.a,include/}
WASMTIME="$CACHE/$WASMTIME_KEY"
if [[ ! -f $WASMTIME/lib/libwasmtime.a ]]; then
    log "building the Wasmtime 26.0.0 C API (about 8 minutes on 2 cores)"
    crate="$TMP/wasmtime-crate"
    stage="$TMP/wasmtime"
    mkdir -p "$crate" "$stage/lib"
    printf '%s' "$WASMTIME_MANIFEST" >"$crate/Cargo.toml"
    printf '%s' "$WASMTIME_LIBRS" >"$crate/lib.rs"
    (cd "$crate" && CARGO_TARGET_DIR="$crate/target" cargo build --release --jobs "$JOBS" >&2)
    cp "$crate/target/release/libwasmtime.a" "$stage/lib/"
    cp "$crate/Cargo.lock" "$stage/"  # the crate versions actually built
    # The headers: the build script's out/include (with the generated wasmtime/conf.h).
    conf="$(find "$crate/target/release/build" -path '*/out/include/wasmtime/conf.h' | head -n1)"
    [[ -n $conf ]] || die "wasmtime/conf.h not found in the crate build"
    cp -R "$(dirname "$(dirname "$conf")")" "$stage/include"
    if [[ ! -f $stage/include/wasm.h ]]; then
        src="$(cd "$crate" && cargo metadata --format-version 1 2>/dev/null |
            python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="wasmtime-c-api-impl"))')"
        cp -Rn "$(dirname "$src")/include/." "$stage/include/"
    fi
    # wasmtime-c-api-impl 26.0.0's build script leaves WASMTIME_FEATURE_WAT undefined although the
    # `wat` feature is on; without it wasmtime.h hides wasmtime_wat2wasm, which ngx_wasm_module calls.
    conf="$stage/include/wasmtime/conf.h"
    if ! grep -q '^#define WASMTIME_FEATURE_WAT' "$conf"; then
        sed -i '/WASMTIME_FEATURE_WAT/d' "$conf"
        last="$(grep -n '^#endif' "$conf" | tail -n1 | cut -d: -f1)"
        sed -i "${last}i #define WASMTIME_FEATURE_WAT" "$conf"
    fi
    grep -q '^#define WASMTIME_FEATURE_WAT' "$conf" || die "could not define WASMTIME_FEATURE_WAT in conf.h"
    # Atomic: a concurrent build that finished first wins, ours is dropped with $TMP.
    mv -T "$stage" "$WASMTIME" 2>/dev/null || [[ -f $WASMTIME/lib/libwasmtime.a ]] || die "cannot create $WASMTIME"
fi

## 2. nginx + ngx_wasm_module, linked statically against libwasmtime.a (the binary is relocatable).
log "building nginx 1.27.2 + ngx_wasm_module 9136e463 (about 2 minutes)"
tar -xzf "$NGINX_TGZ" -C "$TMP"
tar -xzf "$NGXWASM_TGZ" -C "$TMP"
NGINX_SRC="$TMP/nginx-1.27.2"
NGXWASM_SRC="$TMP/ngx_wasm_module"
[[ -f $NGINX_SRC/auto/configure && -f $NGXWASM_SRC/config ]] || die "unexpected archive layout in $TMP"
stage="$TMP/out"
(
    cd "$NGINX_SRC"
    NGX_WASM_RUNTIME=wasmtime \
    NGX_WASM_RUNTIME_INC="$WASMTIME/include" \
    NGX_WASM_RUNTIME_LIB="$WASMTIME/lib" \
    NGX_WASM_RUNTIME_LD_OPT="$WASMTIME/lib/libwasmtime.a -lpthread -ldl -lm -lrt -lgcc_s" \
        ./auto/configure \
            --prefix="$OUT" \
            --with-debug \
            --with-http_ssl_module \
            --with-http_realip_module \
            --with-http_auth_request_module \
            --with-http_v2_module \
            --add-module="$NGXWASM_SRC" \
            >"$TMP/configure.log" 2>&1 || { tail -n 40 "$TMP/configure.log" >&2; exit 1; }
    make -j"$JOBS" >"$TMP/make.log" 2>&1 || { tail -n 60 "$TMP/make.log" >&2; exit 1; }
    mkdir -p "$stage/sbin" "$stage/conf" "$stage/logs"
    cp objs/nginx "$stage/sbin/nginx"
    cp conf/mime.types "$stage/conf/"
)
"$stage/sbin/nginx" -V >"$stage/BUILD-INFO" 2>&1
{
    echo "nginx-1.27.2.tar.gz $NGINX_SHA256"
    echo "ngx_wasm_module-9136e463.tar.gz $NGXWASM_SHA256"
    echo "wasmtime-c-api-impl =26.0.0 ($WASMTIME_KEY): $(grep -A1 '^name = "wasmtime"$' "$WASMTIME/Cargo.lock" 2>/dev/null | tail -n1)"
    echo "script $(sha "$SELF")"
} >>"$stage/BUILD-INFO"
mv -T "$stage" "$OUT" 2>/dev/null || [[ -x $NGINX_BIN ]] || die "cannot create $OUT"
log "built $NGINX_BIN"
echo "$NGINX_BIN"
