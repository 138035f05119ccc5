#!/usr/bin/env python3
"""Writes the test vectors the Rust Bedrock module checks itself against (tests/vectors/bedrock/).

- sigv4.json: requests signed by botocore's SigV4Auth (the signer the AWS CLI and boto3 use), at a
  fixed timestamp, with the payload hash computed here by hashlib.
- eventstream.json: frames encoded by the Python encoder in tools/stub_upstream.py (written from
  the event-stream specification, not from the Rust code), each stream decoded back with botocore's
  EventStreamBuffer before it is written, plus corrupted streams.
- stream.json: Bedrock streams of Anthropic events (the stand-in upstream's answer), with the SSE
  events a client must receive.

Run with botocore installed: python3 tests/vectors/make_bedrock_vectors.py
"""
import base64
import calendar
import datetime
import hashlib
import json
import sys
import urllib.parse
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from stub_upstream import (  # noqa: E402
    bedrock_chunk_frame, bedrock_exception_frame, encode_frame, sse_events)

OUT = ROOT / "tests" / "vectors" / "bedrock"


def write(name, doc):
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


# --- SigV4 ----------------------------------------------------------------------------------------

def botocore_sign(case):
    """Signs one case the way botocore's SigV4Auth.add_auth does, with the clock fixed."""
    body = case["body"].encode()
    timestamp = datetime.datetime.fromtimestamp(case["now"], datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = dict(case["headers"])
    headers["host"] = case["host"]
    headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    request = AWSRequest(method=case["method"], url=f"https://{case['host']}{case['path']}", data=body,
                         headers=headers)
    request.context["timestamp"] = timestamp
    creds = Credentials(case["access_key_id"], case["secret_access_key"], case["session_token"])
    signer = SigV4Auth(creds, "bedrock", case["region"])
    signer._modify_request_before_signing(request)  # sets X-Amz-Date and X-Amz-Security-Token
    canonical = signer.canonical_request(request)
    string_to_sign = signer.string_to_sign(request, canonical)
    signer._inject_signature_to_request(request, signer.signature(string_to_sign, request))
    assert calendar.timegm(datetime.datetime.strptime(timestamp, "%Y%m%dT%H%M%SZ").timetuple()) == case["now"]
    expected = {k.lower(): v for k, v in request.headers.items() if k.lower() != "host"}
    return {**case, "canonical_request": canonical, "string_to_sign": string_to_sign, "expected": expected}


def invoke_path(model_id, stream):
    # Path labels are percent-encoded whole (':' and '/' included), as the AWS SDKs do.
    op = "invoke-with-response-stream" if stream else "invoke"
    return f"/model/{urllib.parse.quote(model_id, safe='')}/{op}"


def sigv4_cases():
    stream_body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                              "messages": [{"role": "user", "content": "héllo"}]}, ensure_ascii=False)
    cases = [
        {"name": "streaming, session token, model id with a colon", "method": "POST",
         "model_id": "anthropic.claude-sonnet-4-20250514-v1:0", "stream": True, "region": "us-east-1",
         "headers": [["content-type", "application/json"], ["accept", "application/vnd.amazon.eventstream"]],
         "body": stream_body, "access_key_id": "ASIAEXAMPLEKEYID0001",
         "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         "session_token": "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token=",
         "now": 1767225600},
        {"name": "non-streaming, cross-region profile, no token", "method": "POST",
         "model_id": "eu.anthropic.claude-3-7-sonnet-20250219-v1:0", "stream": False, "region": "eu-central-1",
         "headers": [["content-type", "application/json"], ["accept", "application/json"]],
         "body": '{"anthropic_version":"bedrock-2023-05-31","max_tokens":1,"messages":[]}',
         "access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
         "session_token": None, "now": 1709251199},
        {"name": "application inference profile ARN, empty body, spaces in a header value", "method": "POST",
         "model_id": "arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/a1b2c3d4e5f6",
         "stream": True, "region": "us-west-2",
         "headers": [["content-type", "application/json"], ["x-gateway-note", "  two   spaces  here "]],
         "body": "", "access_key_id": "AKIDEXAMPLE2", "secret_access_key": "secret", "session_token": "tok",
         "now": 946684799},
    ]
    out = []
    for case in cases:
        case = dict(case)
        case["host"] = f"bedrock-runtime.{case['region']}.amazonaws.com"
        case["path"] = invoke_path(case["model_id"], case["stream"])
        out.append(botocore_sign(case))
    return {"cases": out}


# --- Event stream ---------------------------------------------------------------------------------

def botocore_decode(stream):
    buffer = EventStreamBuffer()
    buffer.add_data(stream)
    return [(m.headers, m.payload) for m in buffer]


def eventstream_vectors():
    frames = [
        ([(":event-type", "string", "chunk"), (":content-type", "string", "application/json"),
          (":message-type", "string", "event")],
         b'{"bytes":"eyJ0eXBlIjoicGluZyJ9","p":"abcd"}'),
        ([("flag-true", "bool", True), ("flag-false", "bool", False), ("byte", "byte", -7),
          ("short", "short", -300), ("int", "int", 123456789), ("long", "long", -(2 ** 40)),
          ("bytes", "bytes", b"\x00\x01\xfe\xff"), ("when", "timestamp", 1767225600123),
          ("id", "uuid", bytes(range(16))), ("utf8", "string", "héllo ✓")],
         "payload with UTF-8 ✓ and \x00 bytes".encode()),
        ([], b""),
        ([(":exception-type", "string", "throttlingException"), (":content-type", "string", "application/json"),
          (":message-type", "string", "exception")], b'{"message":"Too many requests, please wait."}'),
    ]
    stream = b"".join(encode_frame(h, p) for h, p in frames)
    decoded = botocore_decode(stream)
    assert len(decoded) == len(frames)
    for (headers, payload), (bheaders, bpayload) in zip(frames, decoded):
        assert bpayload == payload
        assert [n for n, _, _ in headers] == list(bheaders), bheaders
        for name, kind, value in headers:
            got = bheaders[name]
            assert got == value, (name, got, value)

    def jsonable(kind, value):
        return value.hex() if kind in ("bytes", "uuid") else value

    one = encode_frame(*frames[0])
    flip = lambda data, at: data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]  # noqa: E731
    corrupt = [
        ("prelude CRC flipped", flip(one, 9)),
        ("length changed, prelude CRC stale", flip(one, 3)),
        ("payload byte flipped", flip(one, len(one) - 6)),
        ("message CRC flipped", flip(one, len(one) - 1)),
        ("truncated frame", one[:-3]),
        ("headers length past the frame", encode_bad_lengths(len(one), len(one))),
        ("unknown header type", encode_raw_headers(b"\x01x\x0a")),
        ("header value past the headers section", encode_raw_headers(b"\x01x\x07\x00\x09ab")),
    ]
    return {
        "stream_hex": stream.hex(),
        "frames": [{"headers": [[n, k, jsonable(k, v)] for n, k, v in h],
                    "payload_b64": base64.b64encode(p).decode()} for h, p in frames],
        "corrupt": [[name, data.hex()] for name, data in corrupt],
    }


def encode_bad_lengths(total, headers_len):
    import struct
    import zlib
    prelude = struct.pack(">II", total, headers_len)
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + b"\x00" * (total - 16)
    return message + struct.pack(">I", zlib.crc32(message))


def encode_raw_headers(raw_headers):
    import struct
    import zlib
    total = 12 + len(raw_headers) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + raw_headers
    return message + struct.pack(">I", zlib.crc32(message))


# --- Stream translation ---------------------------------------------------------------------------

def stream_vectors():
    usage = {"input_tokens": 120, "output_tokens": 30, "cache_creation_input_tokens": 1000,
             "cache_read_input_tokens": 2000}
    metrics = {"inputTokenCount": 120, "outputTokenCount": 30, "invocationLatency": 321, "firstByteLatency": 123,
               "cacheReadInputTokenCount": 2000, "cacheWriteInputTokenCount": 1000}
    events = []
    for name, data in sse_events("anthropic.claude-sonnet-4-20250514-v1:0", usage, text="Grüße aus Bedrock ✓"):
        if name == "message_stop":
            data = dict(data, **{"amazon-bedrock-invocationMetrics": metrics})
        events.append((name, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()))
    frames = [bedrock_chunk_frame(data) for _, data in events]
    ok = b"".join(frames)
    assert [json.loads(p)["bytes"] for _, p in botocore_decode(ok)] == \
        [base64.b64encode(d).decode() for _, d in events]
    cut = b"".join(frames[:3]) + bedrock_exception_frame("throttlingException", "Too many tokens, please wait.")
    return {"cases": [
        {"name": "whole answer with invocation metrics", "stream_hex": ok.hex(),
         "events": [[n, d.decode()] for n, d in events], "error": None,
         "metrics": {"input": 120, "output": 30, "cache_write": 1000, "cache_read": 2000},
         "usage": {"input": 120, "output": 30, "cache_write": 1000, "cache_read": 2000}},
        {"name": "throttled after three events", "stream_hex": cut.hex(),
         "events": [[n, d.decode()] for n, d in events[:3]],
         "error": ["rate_limit_error", "bedrock throttlingException: Too many tokens, please wait."],
         "metrics": None,
         "usage": {"input": 120, "output": 1, "cache_write": 1000, "cache_read": 2000}},
    ]}


def main():
    write("sigv4.json", sigv4_cases())
    write("eventstream.json", eventstream_vectors())
    write("stream.json", stream_vectors())
    print(f"wrote {OUT}/sigv4.json, eventstream.json, stream.json")


if __name__ == "__main__":
    main()
