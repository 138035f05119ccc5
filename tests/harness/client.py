"""Requests to the gateway, and the captured Claude Code fixtures."""
import http.client
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "claude-code"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def with_model(body: bytes, model: str) -> bytes:
    """The fixture body with only its top-level `model` value replaced (byte-exact elsewhere)."""
    current = json.loads(body)["model"]
    old, new = json.dumps(current).encode(), json.dumps(model).encode()
    assert body.count(old) >= 1
    return body.replace(old, new, 1)


@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes
    chunks: list = field(default_factory=list)  # (monotonic time, bytes) as they arrived
    header_list: list = field(default_factory=list)  # (lowercase name, value), repeats kept

    def all(self, name: str) -> list:
        """Every value of the header `name`, in order."""
        return [v for k, v in self.header_list if k == name]

    def json(self):
        return json.loads(self.body)

    @property
    def error_message(self) -> str:
        return self.json()["error"]["message"]


def call(port: int, token: str | None = None, body: bytes = b"", path="/v1/messages?beta=true", method="POST",
         headers: dict | None = None, api_key: str | None = "same", timeout=30.0, chunked=False) -> Answer:
    """Sends one request as Claude Code does (token in both Authorization and x-api-key)."""
    h = {"content-type": "application/json", "anthropic-version": "2023-06-01",
         "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14"}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
        if api_key == "same":
            h["x-api-key"] = token
    if api_key not in (None, "same"):
        h["x-api-key"] = api_key
    h.update(headers or {})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if chunked:
            pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
            conn.request(method, path, body=iter(pieces), headers=h, encode_chunked=True)
        else:
            conn.request(method, path, body=body if method != "HEAD" else None, headers=h)
        resp = conn.getresponse()
        chunks = []
        if method != "HEAD":
            while True:
                piece = resp.read1(65536)
                if not piece:
                    break
                chunks.append((time.monotonic(), piece))
        data = b"".join(c for _, c in chunks)
        pairs = [(k.lower(), v) for k, v in resp.getheaders()]
        return Answer(resp.status, dict(pairs), data, chunks, pairs)
    finally:
        conn.close()


def cut_after(port: int, token: str, body: bytes, seen_marker: bytes = b"message_start"):
    """Sends a streamed request and hangs up (both directions) once `seen_marker` came: Claude
    Code's Esc in the middle of an answer."""
    import socket

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/messages?beta=true", body=body, headers={
        "content-type": "application/json", "anthropic-version": "2023-06-01",
        "authorization": f"Bearer {token}", "x-api-key": token})
    answer = conn.getresponse()
    assert answer.status == 200
    seen = b""
    while seen_marker not in seen:
        piece = answer.read1(4096)
        assert piece, seen
        seen += piece
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
