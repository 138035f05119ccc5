"""Requests no well-behaved client library sends: HTTP/2 with trailers, repeated headers, and
HTTP/1.1 requests cut off mid-way."""
import socket
import time

import h2.config
import h2.connection
import h2.events


def h2_request(port: int, headers: list, chunks: list, trailers: list | None = None, timeout=15.0):
    """One HTTP/2 (prior knowledge) request: HEADERS, DATA frames without END_STREAM, then a
    trailers HEADERS frame with END_STREAM (or END_STREAM on the last DATA without trailers).
    Returns (status, headers dict, body)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, headers, end_stream=False)
    for i, chunk in enumerate(chunks):
        conn.send_data(sid, chunk, end_stream=trailers is None and i == len(chunks) - 1)
    if trailers is not None:
        conn.send_headers(sid, trailers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, got, body, done = None, {}, b"", False
    try:
        while not done:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    got = dict(event.headers)
                    status = int(got[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return status, got, body


def http1(port: int, head: str | bytes, body: bytes = b"", timeout=15.0) -> tuple[int, bytes]:
    """Sends `head` (request line and headers, CRLF-joined, without the blank line; bytes go as
    they are) and `body`; returns the status and the raw answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((head if isinstance(head, bytes) else head.encode()) + b"\r\n\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
        return int(answer.split(b" ", 2)[1]), answer


def send_and_hang_up(port: int, head: str, body: bytes, after: float) -> None:
    """Sends a whole request, then closes the connection `after` seconds later, before any answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    time.sleep(after)
    sock.close()
