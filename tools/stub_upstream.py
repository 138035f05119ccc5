#!/usr/bin/env python3
"""A stand-in for the Anthropic Messages API, for the demo and the tests.

It speaks the wire format Claude Code expects: `POST /v1/messages` answers SSE when the body asks
for `stream`, JSON otherwise; `POST /v1/messages/count_tokens` answers `{"input_tokens": N}`.
It requires `x-api-key` to be the configured key (so tests prove the gateway injected it) and
records every request. Tests use it in-process (`StubUpstream`); the demo runs it as a program.
"""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sse_events(model, usage, text="Hello from the stand-in upstream.", pause=0.0):
    """The events of one streamed answer, as (name, data) pairs."""
    start_usage = {
        "input_tokens": usage["input_tokens"],
        "cache_creation_input_tokens": usage["cache_creation_input_tokens"],
        "cache_read_input_tokens": usage["cache_read_input_tokens"],
        "output_tokens": 1,
    }
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
    yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                            "usage": {"output_tokens": usage["output_tokens"]}}
    yield "message_stop", {"type": "message_stop"}


class _Server(ThreadingHTTPServer):
    # Bursts of parallel requests must not be refused at the listen queue (default 5).
    request_queue_size = 256
    daemon_threads = True


class StubUpstream:
    """The server, its recorded requests and its knobs."""

    def __init__(self, port=0, api_key="test-upstream-key", host="127.0.0.1"):
        self.api_key = api_key
        self.requests = []
        self.lock = threading.Lock()
        self.usage = {"input_tokens": 120, "output_tokens": 30,
                      "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 2000}
        self.event_pause = 0.0
        self.first_byte_delay = 0.0  # seconds before the answer's status line
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
        """Answer the next request with this status and JSON body."""
        with self.lock:
            self.forced.append((status, body, headers or {}))

    def _handler(stub):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send_json(self, status, body, headers=None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in (headers or {}).items():
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
                with stub.lock:
                    stub.requests.append({"method": "POST", "path": self.path, "headers": list(self.headers.items()),
                                          "body": body, "time": time.monotonic()})
                    forced = stub.forced.pop(0) if stub.forced else None
                if stub.first_byte_delay:
                    time.sleep(stub.first_byte_delay)
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

        return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--api-key", default="demo-upstream-key")
    args = parser.parse_args()
    stub = StubUpstream(args.port, args.api_key, args.host)
    print(f"stand-in Anthropic API on http://{args.host}:{stub.port} (x-api-key {args.api_key!r})", flush=True)
    stub.server.serve_forever()


if __name__ == "__main__":
    main()
