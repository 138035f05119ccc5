"""Kong's Wasm runtime without Kong: nginx 1.27.2 + ngx_wasm_module 9136e463 + Wasmtime 26 (the pair and
the runtime Kong 3.9 ships), built by scripts/kong-runtime.sh, running the built filter.

`Nginx` takes the same arguments as `Envoy` (tests/harness/envoy.py) and offers the same attributes
and methods, so a test can run against either host (see tests/harness/hosts.py). What Kong does and
this class imitates:
* the filter config reaches the filter as lua-cjson would encode it (compact, `/` escaped as `\\/`);
* the filter runs in `location /` before `proxy_pass` to the upstream, with `shm_kv * 16m`, request
  bodies kept in memory (`client_body_buffer_size 16m`) and responses streamed (`proxy_buffering off`,
  Kong's `response_buffering: false`);
* callouts go to the `host:port` strings of `idp_upstreams` directly (ngx_wasm_module needs no cluster).
* `env` keys become nginx `env NAME;` directives: nginx clears the environment of its workers except
  for those, and ngx_wasm_module's WASI `environ_get` hands the worker's `environ` to the filter.
  (In Kong: `nginx_main_env = NAME` in kong.conf.)
Differences from Envoy a test must expect: a config the filter refuses kills the workers, not the
master (`exited()` reports it; Kong answers 500 instead), the log is nginx's error log at `info`
(the filter's info-and-above lines, each prefixed `[proxy-wasm]["claude_sso_gateway" #N]`), and
there is no stats endpoint (`stats()` raises: plain nginx has no reader for proxy-wasm metrics).
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.envoy import ROOT, WASM, HostProcess, free_port

FILTER = "claude_sso_gateway"
RUNTIME_SCRIPT = ROOT / "scripts" / "kong-runtime.sh"
BODY_BUFFER = "16m"


def nginx_binary() -> str:
    """The nginx built by scripts/kong-runtime.sh (`$NGINX_BIN` overrides). Does not build."""
    if os.environ.get("NGINX_BIN"):
        return os.environ["NGINX_BIN"]
    out = subprocess.run(["bash", str(RUNTIME_SCRIPT), "--print-path"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise FileNotFoundError("Kong's Wasm runtime is not built: run `make kong-runtime` first")
    return out.stdout.strip()


def kong_json(config) -> str:
    """The filter config as Kong hands it over: lua-cjson's compact encoding, which escapes `/`."""
    if isinstance(config, str):
        return config
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")


def nginx_string(value: str) -> str:
    """A single-quoted nginx config string. nginx turns `\\\\`, `\\'`, `\\"` into the character and `\\n`,
    `\\t`, `\\r` into control characters, so every backslash is doubled (JSON escapes survive)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def nginx_conf(filter_config, listen_port: int, upstream_port: int, prefix: Path, env_keys=(),
               with_filter=True, workers=2, wasm_path=WASM, log_level="info", location_extra="",
               http_extra="", server_extra="", wasm_extra="") -> str:
    """An nginx.conf shaped like the one Kong renders for a route with the filter attached;
    `http_extra` goes into `http {}` as it is (Kong: `nginx_http_include`), `server_extra` into the
    gateway's `server {}`, `wasm_extra` into `wasm {}` (Kong: `nginx_wasm_*`)."""
    envs = "".join(f"env {k};\n" for k in env_keys)
    wasm = (f"wasm {{\n    module {FILTER} {wasm_path};\n    shm_kv * 16m;\n"
            f"    socket_connect_timeout 5s;\n    socket_read_timeout 10s;\n    socket_send_timeout 10s;\n"
            f"{wasm_extra}}}\n"
            if with_filter else "")
    proxy_wasm = f"            proxy_wasm {FILTER} {nginx_string(kong_json(filter_config))};\n" if with_filter else ""
    return f"""# written by tests/harness/nginx.py
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log {log_level};
{envs}
events {{
    worker_connections 1024;
}}

{wasm}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;

    # Bodies spilled to a temp file are invisible to Wasm filters: keep them in memory.
    client_body_buffer_size {BODY_BUFFER};
    # Room for a bearer token up to the filter's oidc.max_token_bytes (16 KiB) in a header line.
    large_client_header_buffers 4 32k;
    client_max_body_size {BODY_BUFFER};
    keepalive_timeout 75s;
    keepalive_requests 10000;

    upstream anthropic {{
        server 127.0.0.1:{upstream_port};
        keepalive 32;
    }}
{http_extra}
    server {{
        listen 127.0.0.1:{listen_port};
        server_name gateway;

        # A body over client_max_body_size is refused by nginx before the filter sees it: answered
        # as the filter answers one over its max_body_bytes, a 400 naming the limit (Claude Code
        # shows every 413 as the API's own "Request too large (max 32MB)").
        error_page 413 =400 @body_too_large;
        location @body_too_large {{
            default_type application/json;
            return 400 '{{"type":"error","error":{{"type":"invalid_request_error","message":"gateway: the request is larger than this gateway\\'s limit of 16 MiB; compact the conversation (/compact) or leave out large attachments"}}}}';
        }}

        # nginx's own answers when the provider cannot be reached or times out (its HTML 502 and
        # 504) pass through the filter, which turns them into Anthropic's error shape so Claude
        # Code shows a clear message, and settles the request. No `error_page` for them: it would
        # send the request to another location, past the filter.
{server_extra}
        location / {{
{proxy_wasm}            proxy_pass http://anthropic;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            # The filter empties the client's Authorization, Cookie and Proxy-Authorization (ngx
            # cannot remove request headers); these drop the empty headers, as the sample
            # nginx.conf does.
            proxy_set_header Authorization "";
            proxy_set_header Cookie "";
            proxy_set_header Proxy-Authorization "";
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_connect_timeout 5s;
{location_extra}        }}
    }}
}}
"""


class Nginx(HostProcess):
    """Runs nginx until `stop()`. Fails with nginx's log if it does not become ready."""

    def __init__(self, filter_config, upstream_port: int, idp_upstreams, env=None, concurrency=2,
                 with_filter=True, wait=True, reloadable=False, log_level="info", location_extra="",
                 http_extra="", server_extra="", wasm_extra=""):
        if with_filter and not WASM.exists():
            raise FileNotFoundError(f"{WASM} is missing: run `make build` first")
        self.binary = nginx_binary()
        self.port, self.admin_port = free_port(), None
        self.upstream_port, self.idp_upstreams = upstream_port, list(idp_upstreams)  # callouts need no setup
        self.dir = tempfile.TemporaryDirectory(prefix="csg-nginx-")
        self.prefix = Path(self.dir.name)
        self.config_path = self.prefix / "nginx.conf"
        self.log_path = self.prefix / "error.log"
        env = dict(env or {})
        self.env_keys, self.with_filter, self.concurrency = sorted(env), with_filter, concurrency
        self.log_level, self.location_extra, self.http_extra = log_level, location_extra, http_extra
        self.server_extra, self.wasm_extra = server_extra, wasm_extra
        self._write_conf(filter_config)
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(self.config_path), "-e", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env},
            start_new_session=True)  # its own process group: stop() ends the workers too
        if wait:
            self.wait_ready()

    def _write_conf(self, filter_config):
        text = nginx_conf(filter_config, self.port, self.upstream_port, self.prefix, self.env_keys,
                          self.with_filter, self.concurrency, log_level=self.log_level,
                          location_extra=self.location_extra, http_extra=self.http_extra,
                          server_extra=self.server_extra, wasm_extra=self.wasm_extra)
        tmp = self.prefix / "nginx.conf.tmp"
        tmp.write_text(text)
        tmp.rename(self.config_path)

    def workers(self) -> set:
        """The worker processes' pids (children of the master)."""
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text()
        except OSError:
            return set()
        return {int(p) for p in children.split()}

    def _filter_answers(self) -> bool:
        """Whether the filter answers `HEAD /api/hello` (its own endpoint, never forwarded)."""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("HEAD", "/api/hello")
            status = conn.getresponse().status
            conn.close()
            return status == 200
        except OSError:
            return False

    def _workers_ready(self, previous=frozenset()) -> bool:
        pids = self.workers() - set(previous)
        if len(pids) < self.concurrency:
            return False
        if not self.with_filter:
            return True
        if self.log_level not in ("debug", "info"):
            # The module's "loaded" line is at info: below that, the filter answering its own
            # endpoint on every worker's turn shows it started.
            return all(self._filter_answers() for _ in range(2 * self.concurrency))
        # A worker loads the module, then starts the filter (root context, on_configure) right after.
        logs = self.logs()
        loaded = {int(p) for p in re.findall(rf'(\d+)#\d+: \[wasm\] successfully loaded "{FILTER}" module', logs)}
        if not pids <= loaded:
            return False
        time.sleep(0.2)
        return True

    def _fatal_exits(self) -> list:
        """Exit codes of workers nginx could not respawn (a filter that fails to start kills its worker)."""
        return [int(c) for c in re.findall(r"worker process \d+ exited with fatal code (\d+)", self.logs())]

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.logs()}")
            if self._fatal_exits():
                raise RuntimeError(f"nginx workers exited:\n{self.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    if self._workers_ready():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nginx not ready after {timeout}s:\n{self.logs()}")

    def reload(self, filter_config, timeout=20.0):
        """Swaps the filter configuration in the running nginx (SIGHUP); waits for the new workers."""
        before = self.workers()
        self._write_conf(filter_config)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited on reload:\n{self.logs()}")
            if self._workers_ready(before) and not (self.workers() & before):
                return
            time.sleep(0.1)
        raise RuntimeError(f"reload not applied:\n{self.logs()}")

    def exited(self, timeout=15.0):
        """The exit code once nginx gives up, waiting up to `timeout`; None if it runs on. When the filter
        refuses its config, nginx's master stays up but every worker exits "with fatal code 2 and
        cannot be respawned" (requests then hang): that counts as giving up, the master is stopped and
        the workers' code returned. (Kong, which attaches filters from Lua, answers 500 instead.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return self.process.returncode
            fatal = self._fatal_exits()
            if len(fatal) >= self.concurrency and not self.workers():
                self.process.terminate()
                self.process.wait(10)
                return fatal[0]
            time.sleep(0.1)
        return None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def usage_records(self) -> list:
        """The usage records: nginx has no access log of filter state, so the filter logs each.
        nginx cuts a log message at 2,048 bytes (NGX_MAX_ERROR_STR): a record with long strings
        that was cut is left out, and a test counting records sees it missing."""
        marker = "claude-sso-gateway: usage "
        records = []
        for line in self.logs().splitlines():
            if marker in line:
                try:
                    records.append(json.JSONDecoder().raw_decode(line.split(marker, 1)[1])[0])
                except json.JSONDecodeError:
                    continue
        return records

    def stats(self, prefix="wasmcustom."):
        raise NotImplementedError("plain nginx has no reader for proxy-wasm metrics (Kong reads them from Lua)")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.dir.cleanup()


def check_config(path, prefix=None, cwd=None) -> subprocess.CompletedProcess:
    """`nginx -t` on a config file, with `-p prefix` (default: the file's directory), run in `cwd`."""
    path = Path(path).resolve()
    prefix = Path(prefix or path.parent)
    return subprocess.run([nginx_binary(), "-t", "-p", str(prefix), "-c", str(path), "-e", "stderr"],
                          cwd=cwd, capture_output=True, text=True, timeout=60)
