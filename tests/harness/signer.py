"""A test identity provider: signing keys of every accepted type, discovery and JWKS over HTTP,
with knobs to rotate keys, go down, cut the JWKS answer short and count fetches, and a minter for good and forged tokens."""
import base64
import json
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

AUDIENCE = "claude-sso-gateway"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


class Key:
    """A private key with its kid and algorithm, and its public JWK."""

    def __init__(self, kid: str, alg: str):
        self.kid, self.alg = kid, alg
        if alg.startswith(("RS", "PS")):
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pub = self.private.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "n": _int(pub.n), "e": _int(pub.e)}
        elif alg in ("ES256", "ES384"):
            self.private = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
            pub = self.private.public_key().public_numbers()
            size = 32 if alg == "ES256" else 48
            self.jwk = {"kty": "EC", "crv": "P-256" if alg == "ES256" else "P-384",
                        "x": b64url(pub.x.to_bytes(size, "big")), "y": b64url(pub.y.to_bytes(size, "big"))}
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            raw = self.private.public_key().public_bytes_raw()
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw)}
        else:
            raise ValueError(alg)
        self.jwk.update({"kid": kid, "use": "sig", "alg": alg})


class _Server(ThreadingHTTPServer):
    request_queue_size = 256
    daemon_threads = True


class Signer:
    """The IdP: `issuer` is `http://127.0.0.1:<port>`; `upstream` is the callout name."""

    ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")

    def __init__(self, tls=None):
        """`tls`: an `ssl.SSLContext` to serve HTTPS with (the issuer is then `https://…`)."""
        self.keys = {alg: Key(f"{alg.lower()}-1", alg) for alg in self.ALGS}
        self.published = list(self.keys.values())
        self.down = False
        self.delay = 0.0  # seconds before each answer (a slow IdP)
        # The JWKS answer cut after its headers and 10 bytes of body: "reset" (a TCP reset) or
        # "slow" (the rest 3 s later, past a short callout timeout).
        self.jwks_cut: str | None = None
        self.fetches = {"discovery": 0, "jwks": 0}
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.issuer = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.upstream = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def rotate(self, alg="RS256") -> Key:
        """Publishes a new key of `alg` and withdraws the old one of that algorithm."""
        old = self.keys[alg]
        new = Key(f"{alg.lower()}-{int(time.time() * 1000)}", alg)
        with self.lock:
            self.keys[alg] = new
            self.published = [k for k in self.published if k is not old] + [new]
        return new

    def jwks(self) -> dict:
        return {"keys": [k.jwk for k in self.published]}

    def claims(self, **overrides) -> dict:
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": AUDIENCE, "sub": "alice", "email": "alice@example.com",
                  "groups": ["claude-standard-users"], "iat": now, "exp": now + 600}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, alg="RS256", key: Key | None = None, headers: dict | None = None, **claims) -> str:
        key = key or self.keys[alg]
        return jwt.encode(self.claims(**claims), key.private, algorithm=key.alg,
                          headers={"kid": key.kid, **(headers or {})})

    def forged(self, header: dict, claims: dict | None = None, signature: bytes = b"sig") -> str:
        """A token with any header, signed with nothing real."""
        payload = claims if claims is not None else self.claims()
        return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(signature)])

    def _handler(signer):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if signer.delay:
                    time.sleep(signer.delay)
                if signer.down:
                    self.send_response(503)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path == "/.well-known/openid-configuration":
                    kind, body = "discovery", {"issuer": signer.issuer, "jwks_uri": f"{signer.issuer}/jwks",
                                               "id_token_signing_alg_values_supported": list(Signer.ALGS)}
                elif self.path == "/jwks":
                    kind, body = "jwks", signer.jwks()
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                with signer.lock:
                    signer.fetches[kind] += 1
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                cut = signer.jwks_cut if kind == "jwks" else None
                if cut is None:
                    self.wfile.write(data)
                    return
                self.wfile.write(data[:10])
                self.wfile.flush()
                if cut == "slow":
                    time.sleep(3.0)
                    self.wfile.write(data[10:])
                    return
                time.sleep(0.2)
                # A reset, not a close: linger on, with no time to linger.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

        return Handler
