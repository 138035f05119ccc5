"""Kong's Wasm runtime (nginx 1.27.2 + ngx_wasm_module 9136e463 + Wasmtime 26, `make kong-runtime`)
accepts the nginx directives this repository ships: the `nginx_*` injections of kong/kong.conf,
rendered into an nginx.conf the way Kong renders them, and the sample nginx/nginx.conf."""
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.harness.envoy import ROOT, WASM
from tests.harness.nginx import FILTER, check_config, nginx_conf

KONG_CONF = ROOT / "kong" / "kong.conf"
SAMPLE = ROOT / "nginx" / "nginx.conf"
META = json.loads((ROOT / "kong" / "claude_sso_gateway.meta.json").read_text())

# Kong's injected-directive namespaces (kong/conf_loader/constants.lua DYNAMIC_KEY_NAMESPACES) that
# this test renders, longest prefix first, and where Kong's templates put each one.
NAMESPACES = [
    ("nginx_wasm_wasmtime_", "wasmtime"),  # wasm { wasmtime { flag <name> <value>; } }
    ("nginx_wasm_", "wasm"),               # wasm { }
    ("nginx_main_", "main"),
    ("nginx_events_", "events"),
    ("nginx_http_", "http"),
    ("nginx_proxy_", "server"),            # Kong's proxy server { }
    ("nginx_location_", "location"),       # its location / { }
    ("nginx_upstream_", "upstream"),       # upstream kong_upstream { }
]


def kong_conf_entries(text: str) -> list:
    """`key = value` pairs of a kong.conf, as Kong's loader reads them (`#` starts a comment unless
    escaped as `\\#`)."""
    entries = []
    for line in text.splitlines():
        line = re.sub(r"(?<!\\)#.*", "", line).replace("\\#", "#").strip()
        if line:
            key, sep, value = line.partition("=")
            assert sep, f"not a key = value line: {line!r}"
            entries.append((key.strip(), value.strip()))
    return entries


def injected_directives(entries) -> dict:
    """Kong's `nginx_*` injections, by block: {block: [(directive, value)]}."""
    blocks = {block: [] for _, block in NAMESPACES}
    for key, value in entries:
        if not key.startswith("nginx_"):
            continue
        prefix, block = next(((p, b) for p, b in NAMESPACES if key.startswith(p)), (None, None))
        assert prefix, f"{key}: a namespace this test does not render yet (add it to NAMESPACES)"
        name = key[len(prefix):]
        if block == "wasm" and name == "shm_kv":
            name, value = "shm_kv", f"* {value}"            # nginx_wasm_shm_kv = 16m -> shm_kv * 16m
        elif block == "wasm" and name.startswith("shm_kv_"):
            name, value = "shm_kv", f"{name[7:]} {value}"   # nginx_wasm_shm_kv_<ns> -> shm_kv <ns> <size>
        elif block == "wasmtime":
            name, value = "flag", f"{name} {value}"
        blocks[block].append((name, value))
    return blocks


def render_kong_nginx_conf(entries, prefix: Path, listen_port=18000, upstream_port=19200) -> str:
    """An nginx.conf with the shape of Kong's (kong/templates/nginx.lua, nginx_kong.lua), holding the
    filter module and every injected directive."""
    d = injected_directives(entries)

    def lines(block, indent):
        return "".join(f"{' ' * indent}{name} {value};\n" for name, value in d[block])

    wasmtime = f"    wasmtime {{\n{lines('wasmtime', 8)}    }}\n" if d["wasmtime"] else ""
    # Kong's template starts with `worker_processes` (nginx_main_worker_processes, default auto). It
    # must precede wasm{}: ngx_wasm_module reads it while parsing wasm{} and nginx -t segfaults
    # (ngx_wa_metrics_define) when it is still unset.
    if not any(name == "worker_processes" for name, _ in d["main"]):
        d["main"].insert(0, ("worker_processes", "auto"))
    return f"""pid {prefix}/nginx.pid;
error_log stderr notice;
{lines('main', 0)}
events {{
{lines('events', 4)}}}

wasm {{
    module {FILTER} {WASM};
{lines('wasm', 4)}{wasmtime}}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body_temp;
    proxy_temp_path {prefix}/proxy_temp;
{lines('http', 4)}
    upstream kong_upstream {{
        server 127.0.0.1:{upstream_port};
{lines('upstream', 8)}    }}

    server {{
        listen 127.0.0.1:{listen_port};
{lines('server', 8)}
        location / {{
{lines('location', 12)}            proxy_pass http://kong_upstream;
        }}
    }}
}}
"""


def nginx_t(tmp_path, text) -> subprocess.CompletedProcess:
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return check_config(path, tmp_path)


@pytest.fixture(autouse=True)
def built_filter():
    assert WASM.exists(), f"{WASM} is missing: run `make build` first"


def test_kong_conf_injected_directives_pass_nginx_t(tmp_path):
    entries = kong_conf_entries(KONG_CONF.read_text())
    d = injected_directives(entries)
    assert ("shm_kv", "* 16m") in d["wasm"]
    assert {name for name, _ in d["http"]} >= {"client_body_buffer_size", "wasm_socket_connect_timeout",
                                              "wasm_socket_read_timeout"}
    text = render_kong_nginx_conf(entries, tmp_path)
    out = nginx_t(tmp_path, text)
    assert out.returncode == 0, f"nginx -t refused kong/kong.conf's directives:\n{out.stderr}\n{text}"
    assert "test is successful" in out.stderr


@pytest.mark.parametrize("key, value", [
    ("nginx_http_proxy_wasm_socket_connect_timeout", "5s"),  # what kong.conf once had: no such directive
    ("nginx_wasm_wasm_socket_read_timeout", "5s"),           # http{}'s name inside wasm{}
])
def test_an_invalid_injected_directive_fails_nginx_t(tmp_path, key, value):
    entries = kong_conf_entries(KONG_CONF.read_text()) + [(key, value)]
    out = nginx_t(tmp_path, render_kong_nginx_conf(entries, tmp_path))
    assert out.returncode != 0, out.stderr
    assert "unknown directive" in out.stderr or "is not allowed here" in out.stderr, out.stderr


def test_sample_nginx_conf_passes_nginx_t(tmp_path):
    # Run from the repository root, as its header says (the module path is relative to it).
    out = check_config(SAMPLE, tmp_path, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "test is successful" in out.stderr


def sample_filter_config() -> dict:
    text = SAMPLE.read_text()
    match = re.search(r"proxy_wasm\s+" + FILTER + r"\s+'((?:[^'\\]|\\.)*)'", text)
    assert match, "no proxy_wasm line with a single-quoted config in nginx/nginx.conf"
    # nginx unescapes \\ \' \" in quoted strings; the sample has none of them.
    return json.loads(match.group(1))


def test_sample_nginx_conf_filter_config_matches_the_schema():
    config = sample_filter_config()
    jsonschema.Draft4Validator(META["config_schema"]).validate(config)
    assert config["targets"]["anthropic"]["api_key_env"] == "ANTHROPIC_API_KEY"
    assert re.search(r"^env ANTHROPIC_API_KEY;$", SAMPLE.read_text(), re.M), \
        "the workers only see environment variables named by `env`"


def test_harness_nginx_conf_passes_nginx_t(tmp_path):
    config = {"oidc": {"issuer": "http://127.0.0.1:9100/", "audiences": ["a'b"]}}
    text = nginx_conf(config, 18001, 19201, tmp_path, env_keys=["ANTHROPIC_API_KEY"])
    assert "\\\\/" in text, "the config must reach the filter with lua-cjson's \\/ escapes"
    out = nginx_t(tmp_path, text)
    assert out.returncode == 0, f"{out.stderr}\n{text}"


def sample_wasm_tls_directives(trusted: Path) -> str:
    """The sample's `tls_*` lines of `wasm {}`, trusting `trusted` instead of the system's CAs."""
    block = re.search(r"^wasm \{(.*?)^\}", SAMPLE.read_text(), re.M | re.S).group(1)
    lines = [line.strip() for line in block.splitlines() if line.strip().startswith("tls_")]
    assert {line.split()[0] for line in lines} == {"tls_trusted_certificate", "tls_verify_cert", "tls_verify_host"}
    assert "tls_verify_cert on;" in lines and "tls_verify_host on;" in lines
    return "".join("    " + re.sub(r"^(tls_trusted_certificate)\s+\S+;", rf"\1 {trusted};", line) + "\n"
                   for line in lines)


def certificate(name: str, issuer=None):
    """A certificate for `name` (DNS and IP SAN), signed by `issuer` ((cert, key)) or by itself, and
    its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(signer_cert.subject if signer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if issuer is None and name.startswith("Test CA"):
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        sans = [x509.DNSName(name)]
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            pass
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer_key, hashes.SHA256()), key


def tls_context(tmp_path: Path, cert, key, name: str):
    import ssl

    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.mark.parametrize("idp_cert", ["signed by the trusted CA", "self-signed", "for another name"])
def test_the_samples_wasm_block_verifies_the_idps_certificate(tmp_path, stub, idp_cert):
    """With the sample's `tls_*` lines (trusting a test CA in place of the system's), nginx takes keys
    from an https IdP only when its certificate is the CA's and names the IdP: otherwise the key
    fetch fails and nothing goes upstream (ngx_wasm_module alone verifies nothing, and a network
    attacker could serve keys of their own)."""
    from cryptography.hazmat.primitives import serialization

    from tests.conftest import UPSTREAM_KEY, gateway_config
    from tests.harness.client import call
    from tests.harness.nginx import Nginx
    from tests.harness.signer import Signer

    if not WASM.exists():
        pytest.skip("run `make build` first")
    ca = certificate("Test CA for the IdP")
    (tmp_path / "ca.crt").write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    # A name, not an address: TLS sends no address as the server's name (RFC 6066), and ngx refuses.
    cert, key = {"signed by the trusted CA": lambda: certificate("localhost", ca),
                 "self-signed": lambda: certificate("localhost"),
                 "for another name": lambda: certificate("idp.example.com", ca)}[idp_cert]()
    idp = Signer(tls=tls_context(tmp_path, cert, key, "idp"))
    idp.issuer = f"https://localhost:{idp.port}"  # reached at `oidc.upstream`, 127.0.0.1:<port>
    gateway = None
    try:
        config = gateway_config(idp, oidc__keys_fail_fast_seconds=1)
        gateway = Nginx(config, stub.port, [idp.upstream], env={"ANTHROPIC_API_KEY": UPSTREAM_KEY},
                        wasm_extra=sample_wasm_tls_directives(tmp_path / "ca.crt"))
        answer = call(gateway.port, idp.token(), json.dumps(
            {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}).encode())
        if idp_cert == "signed by the trusted CA":
            assert answer.status == 200, answer.body
            assert len(stub.requests) == 1
        else:
            assert answer.status == 503, answer.body
            assert stub.requests == []
            assert idp.fetches["jwks"] == 0, "no key was taken from an IdP the gateway cannot trust"
            assert "tls handshake failure" in gateway.log_path.read_text()
    finally:
        if gateway:
            gateway.stop()
        idp.stop()
