#!/usr/bin/env python3
"""A stand-in for the Anthropic Messages API and for Amazon Bedrock, for the demo and the tests.

Anthropic mode speaks the wire format Claude Code expects: `POST /v1/messages` answers SSE when the
body asks for `stream`, JSON otherwise; `POST /v1/messages/count_tokens` answers
`{"input_tokens": N}`. It requires `x-api-key` to be the configured key (so tests prove the gateway
injected it) and records every request. Tests use it in-process (`StubUpstream`); the demo runs it
as a program.

Bedrock mode (`POST /model/<id>/invoke` and `/invoke-with-response-stream`, on when the stub is
given `bedrock=BedrockAccount(...)`) checks the AWS SigV4 signature by recomputing it with
botocore, refuses betas outside its allow-list and body fields Bedrock refuses, and answers JSON or
`application/vnd.amazon.eventstream` frames carrying the same Anthropic events base64-encoded.
"""
import argparse
import base64
import calendar
import hashlib
import hmac
import json
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sse_events(model, usage, text="Hello from the stand-in upstream.", pause=0.0):
    """The events of one streamed answer, as (name, data) pairs."""
    start_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": 1,
    }
    if "cache_creation" in usage:  # the writes by lifetime, as the API reports them
        start_usage["cache_creation"] = usage["cache_creation"]
    if "speed" in usage:  # the speed the request ran at (fast mode), as the API reports it
        start_usage["speed"] = usage["speed"]
    words = text.split(" ")
    yield "message_start", {"type": "message_start", "message": {
        "id": "msg_stub", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}}
    yield "content_block_start", {"type": "content_block_start", "index": 0,
                                  "content_block": {"type": "text", "text": ""}}
    yield "ping", {"type": "ping"}
    for i, word in enumerate(words):
        chunk = word if i == 0 else " " + word
        yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": chunk}}
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    last_usage = {"output_tokens": usage["output_tokens"]}
    if "server_tool_use" in usage:  # web searches the API ran, cumulative in the last usage
        last_usage["server_tool_use"] = usage["server_tool_use"]
    if "iterations" in usage:  # the sampling steps (threshold compaction), in the last usage
        last_usage["iterations"] = usage["iterations"]
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": last_usage}
    yield "message_stop", {"type": "message_stop"}


# --- Amazon Bedrock ------------------------------------------------------------------------------

# Betas Bedrock's InvokeModel accepts for Claude (AWS docs, Bedrock user guide, "Anthropic Claude
# Messages API"); anything else is answered 400 "invalid beta flag", as Bedrock does.
BEDROCK_BETAS = (
    "computer-use-2024-10-22", "computer-use-2025-01-24", "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14", "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14", "context-1m-2025-08-07", "context-management-2025-06-27",
    "effort-2025-11-24", "tool-search-tool-2025-10-19", "tool-examples-2025-10-29",
    "fine-grained-tool-streaming-2025-05-14",
)

# Event-stream header types, from the AWS event-stream specification.
_HEADER_TYPES = {"bool": None, "byte": 2, "short": 3, "int": 4, "long": 5, "bytes": 6, "string": 7,
                 "timestamp": 8, "uuid": 9}


def encode_header(name, kind, value):
    """One event-stream header: name length u8, name, type u8, typed value."""
    raw_name = name.encode()
    out = struct.pack(">B", len(raw_name)) + raw_name
    if kind == "bool":
        return out + struct.pack(">B", 0 if value else 1)
    code = _HEADER_TYPES[kind]
    out += struct.pack(">B", code)
    if kind == "byte":
        return out + struct.pack(">b", value)
    if kind == "short":
        return out + struct.pack(">h", value)
    if kind == "int":
        return out + struct.pack(">i", value)
    if kind in ("long", "timestamp"):
        return out + struct.pack(">q", value)
    if kind == "uuid":
        assert len(value) == 16
        return out + value
    data = value.encode() if kind == "string" else value
    return out + struct.pack(">H", len(data)) + data


def encode_frame(headers, payload):
    """One event-stream message: total length u32, headers length u32, prelude CRC32, headers,
    payload, message CRC32 (all big-endian; CRC32 as zlib). `headers` is [(name, kind, value)]."""
    raw_headers = b"".join(encode_header(*h) for h in headers)
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + raw_headers + payload
    return message + struct.pack(">I", zlib.crc32(message))


def bedrock_chunk_frame(event, pad="abcdefghijklmnopqrstuvwxyzABCDEFGH"):
    """A `chunk` event carrying one Anthropic stream event, as Bedrock sends it (with the random
    `p` padding field Bedrock adds against length side channels)."""
    data = event if isinstance(event, bytes) else json.dumps(event, separators=(",", ":")).encode()
    payload = json.dumps({"bytes": base64.b64encode(data).decode(), "p": pad}, separators=(",", ":")).encode()
    headers = [(":event-type", "string", "chunk"), (":content-type", "string", "application/json"),
               (":message-type", "string", "event")]
    return encode_frame(headers, payload)


def bedrock_exception_frame(exception_type, message):
    """An exception frame, e.g. `throttlingException` in the middle of a stream."""
    headers = [(":exception-type", "string", exception_type), (":content-type", "string", "application/json"),
               (":message-type", "string", "exception")]
    return encode_frame(headers, json.dumps({"message": message}).encode())


@dataclass
class BedrockAccount:
    """The AWS account the Bedrock mode accepts signatures from."""
    access_key_id: str = "AKIDSTUBEXAMPLE"
    secret_access_key: str = "stub/secret/key/EXAMPLEKEY"
    session_token: str = None
    region: str = "us-east-1"
    betas: tuple = BEDROCK_BETAS
    max_skew_seconds: int = 300
    invocation_metrics: bool = True
    exceptions: list = field(default_factory=list)  # (after_n_events, type, message) to inject


def sigv4_check(account, method, path, headers, body, now=None):
    """Recomputes the SigV4 signature of a received request with botocore. Returns None when it
    is valid, else (status, error type, message) as AWS answers it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    lower = {}
    for k, v in headers:
        lower.setdefault(k.lower(), []).append(v)
    auth = (lower.get("authorization") or [""])[0]
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
    parts = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(",") if "=" in p)
    try:
        key_id, date, region, service, terminal = parts["Credential"].split("/")
        signed = parts["SignedHeaders"].split(";")
        given = parts["Signature"]
    except (KeyError, ValueError):
        return 403, "IncompleteSignatureException", "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders'."
    if key_id != account.access_key_id:
        return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
    if account.session_token and (lower.get("x-amz-security-token") or [""])[0] != account.session_token:
        return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
    if region != account.region or service != "bedrock" or terminal != "aws4_request":
        return 403, "InvalidSignatureException", f"Credential should be scoped to a valid region and service bedrock, not {region}/{service}."
    amz_date = (lower.get("x-amz-date") or [""])[0]
    if not amz_date.startswith(date) or "x-amz-date" not in signed or "host" not in signed:
        return 403, "IncompleteSignatureException", "x-amz-date and host must be signed, and match the credential date."
    try:
        when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return 403, "IncompleteSignatureException", "x-amz-date is not a valid ISO 8601 basic timestamp."
    now = time.time() if now is None else now
    if abs(now - when) > account.max_skew_seconds:
        return 403, "InvalidSignatureException", "Signature expired: the request time is too far from the server time."
    content_sha = (lower.get("x-amz-content-sha256") or [None])[0]
    if content_sha is not None and content_sha != hashlib.sha256(body).hexdigest():
        return 400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was computed."
    request = AWSRequest(method=method, url="https://" + lower.get("host", [""])[0] + path, data=body,
                         headers={name: ",".join(lower.get(name, [])) for name in signed if name in lower})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(account.access_key_id, account.secret_access_key, account.session_token),
                       "bedrock", account.region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, given) or sorted(signer.headers_to_sign(request)) != sorted(signed):
        return 403, "InvalidSignatureException", (
            "The request signature we calculated does not match the signature you provided. Check your AWS "
            "Secret Access Key and signing method. Consult the service documentation for details.")
    return None


def bedrock_body_check(account, request, beta_header_present):
    """What Bedrock's InvokeModel refuses in an Anthropic body, as (status, error type, message)."""
    for key in ("model", "stream"):
        if key in request:
            return 400, "ValidationException", (
                f"Malformed input request: #: extraneous key [{key}] is not permitted, please reformat your input "
                "and try again.")
    if request.get("anthropic_version") != "bedrock-2023-05-31":
        return 400, "ValidationException", "Malformed input request: anthropic_version must be bedrock-2023-05-31"
    betas = request.get("anthropic_beta", [])
    if beta_header_present or not isinstance(betas, list) or any(b not in account.betas for b in betas):
        return 400, "ValidationException", "invalid beta flag"
    return None


class _Server(ThreadingHTTPServer):
    # Bursts of parallel requests must not be refused at the listen queue (default 5).
    request_queue_size = 256
    daemon_threads = True


class StubUpstream:
    """The server, its recorded requests and its knobs."""

    def __init__(self, port=0, api_key="test-upstream-key", host="127.0.0.1", bedrock=None):
        self.api_key = api_key
        self.bedrock = bedrock  # a BedrockAccount turns on the Bedrock paths
        self.requests = []
        self.lock = threading.Lock()
        self.usage = {"input_tokens": 120, "output_tokens": 30,
                      "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000}
        self.event_pause = 0.0
        self.first_byte_delay = 0.0  # seconds before the answer's status line
        self.down = False  # drop every request's connection without an answer
        self.forced = []  # (status, body dict, headers) answers to give next, in order
        self.server = _Server((host, port), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def reset(self):
        with self.lock:
            self.requests.clear()
            self.forced.clear()

    def force(self, status, body, headers=None):
        """Answer the next request with this status and JSON body (bytes: that body, as it is),
        and `headers` (a dict, or (name, value) pairs)."""
        with self.lock:
            self.forced.append((status, body, headers or {}))

    def _handler(stub):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send_json(self, status, body, headers=None):
                # None: an answer without a body (content-length: 0); bytes: sent as they are,
                # with the content-type the headers give.
                raw = isinstance(body, bytes)
                data = b"" if body is None else body if raw else json.dumps(body).encode()
                self.send_response(status)
                if body is not None and not raw:
                    self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                # A dict, or a list of (name, value) pairs that may repeat a name.
                for k, v in headers.items() if isinstance(headers, dict) else headers or []:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_HEAD(self):
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self):
                if self.path == "/__stub/requests":
                    with stub.lock:
                        out = [{"method": r["method"], "path": r["path"], "headers": r["headers"],
                                "body": r["body"].decode("utf-8", "replace")} for r in stub.requests]
                    return self._send_json(200, out)
                self._send_json(404, {"type": "error", "error": {"type": "not_found_error", "message": "stub: no such path"}})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if self.path == "/__stub/reset":
                    stub.reset()
                    return self._send_json(200, {"ok": True})
                if stub.down:  # a provider gone: the connection drops before any answer
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                with stub.lock:
                    stub.requests.append({"method": "POST", "path": self.path, "headers": list(self.headers.items()),
                                          "body": body, "time": time.monotonic()})
                    forced = stub.forced.pop(0) if stub.forced else None
                if stub.first_byte_delay:
                    time.sleep(stub.first_byte_delay)
                if stub.bedrock is not None and self.path.startswith("/model/"):
                    return self._bedrock(body, forced)
                if self.headers.get("x-api-key") != stub.api_key:
                    return self._send_json(401, {"type": "error", "error": {
                        "type": "authentication_error", "message": "stub: invalid x-api-key"}})
                if forced:
                    return self._send_json(*forced)
                try:
                    request = json.loads(body)
                except ValueError:
                    return self._send_json(400, {"type": "error", "error": {
                        "type": "invalid_request_error", "message": "stub: body is not JSON"}})
                if self.path.split("?")[0] == "/v1/messages/count_tokens":
                    return self._send_json(200, {"input_tokens": max(1, len(body) // 4)})
                model = request.get("model", "")
                if request.get("stream"):
                    return self._stream(model)
                self._send_json(200, {
                    "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": "Hello from the stand-in upstream."}],
                    "stop_reason": "end_turn", "stop_sequence": None, "usage": dict(stub.usage)})

            def _stream(self, model):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for name, data in sse_events(model, stub.usage):
                    event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    if stub.event_pause:
                        time.sleep(stub.event_pause)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _bedrock_error(self, status, error_type, message):
                self._send_json(status, {"message": message}, {
                    "x-amzn-ErrorType": f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                    "x-amzn-RequestId": "00000000-0000-4000-8000-stubrequest0"})

            def _bedrock(self, body, forced):
                account = stub.bedrock
                path = self.path.split("?")[0]
                parts = path.split("/")
                if len(parts) != 4 or parts[3] not in ("invoke", "invoke-with-response-stream"):
                    return self._bedrock_error(404, "UnknownOperationException", "stub: unknown Bedrock operation")
                refusal = sigv4_check(account, "POST", self.path, list(self.headers.items()), body)
                if refusal:
                    return self._bedrock_error(*refusal)
                if forced:
                    status, answer, headers = forced
                    return self._send_json(status, answer, headers)
                try:
                    request = json.loads(body)
                except ValueError:
                    return self._bedrock_error(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
                refusal = bedrock_body_check(account, request, "anthropic-beta" in self.headers)
                if refusal:
                    return self._bedrock_error(*refusal)
                model = urllib.parse.unquote(parts[2])
                usage = dict(stub.usage)
                metrics_headers = {
                    "x-amzn-bedrock-input-token-count": str(usage["input_tokens"]),
                    "x-amzn-bedrock-output-token-count": str(usage["output_tokens"]),
                    "x-amzn-bedrock-invocation-latency": "321",
                    "x-amzn-RequestId": "00000000-0000-4000-8000-stubrequest0",
                }
                if parts[3] == "invoke":
                    return self._send_json(200, {
                        "id": "msg_bdrk_stub", "type": "message", "role": "assistant", "model": model,
                        "content": [{"type": "text", "text": "Hello from the stand-in upstream."}],
                        "stop_reason": "end_turn", "stop_sequence": None, "usage": usage}, metrics_headers)
                self.send_response(200)
                self.send_header("content-type", "application/vnd.amazon.eventstream")
                self.send_header("x-amzn-bedrock-content-type", "application/json")
                self.send_header("x-amzn-RequestId", "00000000-0000-4000-8000-stubrequest0")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                exceptions = list(account.exceptions)
                for n, (name, data) in enumerate(sse_events(model, usage)):
                    if exceptions and exceptions[0][0] == n:
                        _, kind, message = exceptions.pop(0)
                        self._chunk(bedrock_exception_frame(kind, message))
                        break
                    if name == "message_stop" and account.invocation_metrics:
                        data = dict(data)
                        data["amazon-bedrock-invocationMetrics"] = {
                            "inputTokenCount": usage["input_tokens"], "outputTokenCount": usage["output_tokens"],
                            "invocationLatency": 321, "firstByteLatency": 123,
                            "cacheReadInputTokenCount": usage["cache_read_input_tokens"],
                            "cacheWriteInputTokenCount": usage["cache_creation_input_tokens"]}
                    self._chunk(bedrock_chunk_frame(data))
                    if stub.event_pause:
                        time.sleep(stub.event_pause)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

            def _chunk(self, data):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

        return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--api-key", default="demo-upstream-key")
    parser.add_argument("--bedrock", action="store_true", help="also answer Bedrock /model/<id>/invoke paths")
    parser.add_argument("--bedrock-access-key-id", default=BedrockAccount.access_key_id)
    parser.add_argument("--bedrock-secret-access-key", default=BedrockAccount.secret_access_key)
    parser.add_argument("--bedrock-region", default=BedrockAccount.region)
    args = parser.parse_args()
    bedrock = None
    if args.bedrock:
        bedrock = BedrockAccount(args.bedrock_access_key_id, args.bedrock_secret_access_key, region=args.bedrock_region)
    stub = StubUpstream(args.port, args.api_key, args.host, bedrock=bedrock)
    print(f"stand-in Anthropic API on http://{args.host}:{stub.port} (x-api-key {args.api_key!r})", flush=True)
    if bedrock:
        print(f"stand-in Bedrock ({bedrock.region}, access key {bedrock.access_key_id}) on the same port", flush=True)
    stub.server.serve_forever()


if __name__ == "__main__":
    main()
