"""The stand-in upstream's Bedrock mode behaves as Bedrock does for what the gateway relies on:
botocore-signed requests pass and anything else gets AWS's 403, betas outside the allow-list get
400 "invalid beta flag", streamed answers are event-stream frames botocore decodes. Also: the
vectors the Rust unit tests load are what tests/vectors/make_bedrock_vectors.py writes today."""
import base64
import hashlib
import http.client
import json
import sys
import urllib.parse
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests" / "vectors"))

from stub_upstream import BedrockAccount, StubUpstream  # noqa: E402

MODEL = "us.anthropic.claude-sonnet-4-20250514-v1:0"


@pytest.fixture(scope="module")
def bedrock():
    account = BedrockAccount(session_token="stub-session-token")
    s = StubUpstream(api_key="anthropic-key", bedrock=account).start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def fresh(request):
    if "bedrock" in request.fixturenames:
        s = request.getfixturevalue("bedrock")
        s.reset()
        s.bedrock.exceptions.clear()
    yield


def body(**extra):
    doc = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
           "messages": [{"role": "user", "content": "hi"}], **extra}
    return json.dumps(doc).encode()


def signed(stub, data, stream=True, secret=None, headers=None, model=MODEL):
    account = stub.bedrock
    op = "invoke-with-response-stream" if stream else "invoke"
    path = f"/model/{urllib.parse.quote(model, safe='')}/{op}"
    host = f"bedrock-runtime.{account.region}.amazonaws.com"
    request = AWSRequest(method="POST", url=f"https://{host}{path}", data=data, headers={
        "host": host, "content-type": "application/json", "x-amz-content-sha256": hashlib.sha256(data).hexdigest(),
        **(headers or {})})
    creds = Credentials(account.access_key_id, secret or account.secret_access_key, account.session_token)
    SigV4Auth(creds, "bedrock", account.region).add_auth(request)
    return path, dict(request.headers.items())


def post(stub, path, data, headers):
    conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=10)
    conn.request("POST", path, body=data, headers=headers)
    response = conn.getresponse()
    out = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return out


def frames(raw):
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return list(buffer)


def test_signed_stream_answers_event_stream_frames(bedrock):
    path, headers = signed(bedrock, body(anthropic_beta=["interleaved-thinking-2025-05-14"]))
    status, resp_headers, raw = post(bedrock, path, body(anthropic_beta=["interleaved-thinking-2025-05-14"]), headers)
    assert status == 200, raw
    assert resp_headers["content-type"] == "application/vnd.amazon.eventstream"
    events = []
    for message in frames(raw):
        assert message.headers[":message-type"] == "event" and message.headers[":event-type"] == "chunk"
        events.append(json.loads(base64.b64decode(json.loads(message.payload)["bytes"])))
    assert [e["type"] for e in events][:3] == ["message_start", "content_block_start", "ping"]
    assert events[-1]["type"] == "message_stop"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == bedrock.usage["input_tokens"]
    assert events[0]["message"]["model"] == MODEL


def test_signed_invoke_answers_json_with_token_headers(bedrock):
    path, headers = signed(bedrock, body(), stream=False)
    status, resp_headers, raw = post(bedrock, path, body(), headers)
    assert status == 200, raw
    assert json.loads(raw)["usage"] == bedrock.usage
    assert resp_headers["x-amzn-bedrock-output-token-count"] == str(bedrock.usage["output_tokens"])


def refusal(stub, path, data, headers):
    status, resp_headers, raw = post(stub, path, data, headers)
    return status, resp_headers.get("x-amzn-errortype", "").split(":")[0], json.loads(raw)["message"]


def test_refuses_what_bedrock_refuses(bedrock):
    good = body()
    path, headers = signed(bedrock, good)
    cases = [
        ("wrong secret", good, signed(bedrock, good, secret="wrong")[1],
         (403, "InvalidSignatureException", "The request signature we calculated does not match the signature "
          "you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation "
          "for details.")),
        ("no signature", good, {"content-type": "application/json"},
         (403, "MissingAuthenticationTokenException", "Missing Authentication Token")),
        ("body changed after signing", body(max_tokens=65), headers,
         (400, "XAmzContentSHA256Mismatch", "The provided 'x-amz-content-sha256' header does not match what was "
          "computed.")),
        ("signed header changed", good, {**headers, "Content-Type": "text/plain"},
         (403, "InvalidSignatureException", None)),
        ("unknown beta", body(anthropic_beta=["claude-code-20250219"]),
         signed(bedrock, body(anthropic_beta=["claude-code-20250219"]))[1], (400, "ValidationException", "invalid beta flag")),
        ("beta header", good, signed(bedrock, good, headers={"anthropic-beta": "context-1m-2025-08-07"})[1],
         (400, "ValidationException", "invalid beta flag")),
        ("model left in the body", body(model="x"), signed(bedrock, body(model="x"))[1],
         (400, "ValidationException", "Malformed input request: #: extraneous key [model] is not permitted, "
          "please reformat your input and try again.")),
    ]
    for name, data, hdrs, (status, kind, message) in cases:
        got = refusal(bedrock, path, data, hdrs)
        assert got[:2] == (status, kind), (name, got)
        if message:
            assert got[2] == message, name


def test_exception_frame_ends_the_stream(bedrock):
    bedrock.bedrock.exceptions.append((3, "throttlingException", "Too many tokens, please wait."))
    path, headers = signed(bedrock, body())
    status, _, raw = post(bedrock, path, body(), headers)
    assert status == 200
    messages = frames(raw)
    assert len(messages) == 4
    last = messages[-1]
    assert last.headers[":message-type"] == "exception"
    assert last.headers[":exception-type"] == "throttlingException"
    assert json.loads(last.payload) == {"message": "Too many tokens, please wait."}


def test_anthropic_mode_is_unchanged(bedrock):
    data = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 1, "messages": []}).encode()
    status, _, raw = post(bedrock, "/v1/messages", data, {"x-api-key": "anthropic-key", "content-type": "application/json"})
    assert status == 200 and json.loads(raw)["type"] == "message"
    status, _, _ = post(bedrock, "/v1/messages", data, {"x-api-key": "wrong"})
    assert status == 401


def test_rust_vectors_are_current():
    import make_bedrock_vectors as make
    for name, doc in [("sigv4.json", make.sigv4_cases()), ("eventstream.json", make.eventstream_vectors()),
                      ("stream.json", make.stream_vectors())]:
        committed = json.loads((ROOT / "tests" / "vectors" / "bedrock" / name).read_text())
        assert json.loads(json.dumps(doc)) == committed, f"{name} is stale: run tests/vectors/make_bedrock_vectors.py"


@pytest.fixture(scope="module")
def roundtrip():
    """The Rust module as a program (examples/bedrock_roundtrip.rs)."""
    import subprocess
    subprocess.run(["cargo", "build", "--quiet", "--example", "bedrock_roundtrip"], cwd=ROOT, check=True, timeout=900)
    return ROOT / "target" / "debug" / "examples" / "bedrock_roundtrip"


def rust(program, args, stdin, env=None):
    import subprocess
    done = subprocess.run([str(program), *args], input=stdin, capture_output=True, timeout=60, env=env, check=True)
    return done.stdout, done.stderr


def test_rust_signed_requests_pass_the_stand_in(bedrock, roundtrip):
    import os
    import time
    account = bedrock.bedrock
    env = {**os.environ, "AWS_ACCESS_KEY_ID": account.access_key_id,
           "AWS_SECRET_ACCESS_KEY": account.secret_access_key, "AWS_SESSION_TOKEN": account.session_token}
    anthropic_body = json.dumps({"model": "claude-sonnet-4-6", "stream": True, "max_tokens": 64,
                                 "messages": [{"role": "user", "content": "héllo"}]}).encode()
    betas = ["claude-code-20250219,interleaved-thinking-2025-05-14", "oauth-2025-04-20"]
    out, _ = rust(roundtrip, ["request", account.region, MODEL, str(int(time.time())), *betas], anthropic_body, env)
    req = json.loads(out)
    assert req["dropped_betas"] == ["claude-code-20250219", "oauth-2025-04-20"]
    headers = {"host": req["host"], **dict(req["headers"])}
    status, resp_headers, raw = post(bedrock, req["path"], req["body"].encode(), headers)
    assert status == 200, raw
    assert resp_headers["content-type"] == "application/vnd.amazon.eventstream"
    sent = json.loads(bedrock.requests[-1]["body"])
    assert sent["anthropic_beta"] == ["interleaved-thinking-2025-05-14"] and "model" not in sent

    for size in (1, 7, 4096):
        sse, summary = rust(roundtrip, ["stream", str(size)], raw)
        events = [block.split("\n") for block in sse.decode().split("\n\n") if block]
        names = [lines[0].removeprefix("event: ") for lines in events]
        assert names[0] == "message_start" and names[-1] == "message_stop", names
        assert all(lines[1].startswith("data: {") and len(lines) == 2 for lines in events)
        u = bedrock.usage
        assert json.loads(summary) == {"metrics": [u["input_tokens"], u["output_tokens"],
                                                   u["cache_creation_input_tokens"], u["cache_read_input_tokens"]],
                                       "error": None}

    wrong = {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    out, _ = rust(roundtrip, ["request", account.region, MODEL, str(int(time.time()))], anthropic_body, wrong)
    req = json.loads(out)
    status, _, raw = post(bedrock, req["path"], req["body"].encode(), {"host": req["host"], **dict(req["headers"])})
    assert status == 403 and b"signature we calculated does not match" in raw


def test_rust_translates_an_exception_mid_stream(bedrock, roundtrip):
    bedrock.bedrock.exceptions.append((4, "throttlingException", "Too many tokens, please wait."))
    path, headers = signed(bedrock, body())
    _, _, raw = post(bedrock, path, body(), headers)
    sse, _ = rust(roundtrip, ["stream", "5"], raw)
    last = sse.decode().rstrip("\n").split("\n\n")[-1]
    assert last == ('event: error\ndata: {"error":{"message":"bedrock throttlingException: Too many tokens, '
                    'please wait.","type":"rate_limit_error"},"type":"error"}')
