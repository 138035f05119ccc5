//! Bedrock's streamed answer (event-stream frames whose `chunk` events carry base64 Anthropic
//! stream events) back into Anthropic SSE, chunk by chunk.

use super::eventstream::{EventStreamDecoder, Frame};
use super::translate::anthropic_error_type;
use super::BedrockError;
use crate::reply::Reply;
use crate::usage::{ReportedUsage, Usage};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

#[derive(Deserialize)]
struct Chunk {
    bytes: String,
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "amazon-bedrock-invocationMetrics", default)]
    metrics: Option<Metrics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metrics {
    input_token_count: Option<u64>,
    output_token_count: Option<u64>,
    cache_read_input_token_count: Option<u64>,
    cache_write_input_token_count: Option<u64>,
}

impl Metrics {
    /// The counts given; `None` for a block with neither input nor output (it reports nothing,
    /// and the stream's own events are metered instead).
    fn usage(&self) -> Option<ReportedUsage> {
        if self.input_token_count.is_none() && self.output_token_count.is_none() {
            return None;
        }
        Some(ReportedUsage {
            input: self.input_token_count,
            output: self.output_token_count,
            cache_write: self.cache_write_input_token_count,
            cache_read: self.cache_read_input_token_count,
        })
    }
}

#[derive(Deserialize)]
struct ExceptionBody {
    #[serde(alias = "Message")]
    message: Option<String>,
}

/// Turns one Bedrock event stream into Anthropic SSE. Holds back at most one partial frame.
#[derive(Debug, Default)]
pub struct BedrockStreamTranslator {
    decoder: EventStreamDecoder,
    metrics: Option<ReportedUsage>,
    error: Option<BedrockError>,
    /// An `event: error` was sent (for a corrupt stream or a Bedrock exception): nothing follows.
    ended: bool,
}

impl BedrockStreamTranslator {
    /// A translator at the start of an answer.
    pub fn new() -> BedrockStreamTranslator {
        BedrockStreamTranslator::default()
    }

    /// Feeds a chunk of the answer; returns the SSE bytes to send in its place.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if self.ended {
            return out;
        }
        let decoded = self.decoder.push(chunk);
        for frame in decoded.frames {
            self.frame(&frame, &mut out);
            if self.ended {
                return out;
            }
        }
        if let Some(e) = decoded.error {
            self.fail(e, &mut out);
        }
        out
    }

    /// Ends the answer; returns the SSE bytes still to send (an error event when the stream was
    /// cut inside a frame).
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.ended {
            if let Err(e) = self.decoder.finish() {
                self.fail(e, &mut out);
            }
        }
        out
    }

    /// Token counts from `amazon-bedrock-invocationMetrics`, when the stream carried them.
    pub fn metrics(&self) -> Option<ReportedUsage> {
        self.metrics
    }

    /// The stream's corruption, if it was corrupt.
    pub fn error(&self) -> Option<&BedrockError> {
        self.error.as_ref()
    }

    fn frame(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        match frame.header_str(":message-type") {
            Some("event") if frame.header_str(":event-type") == Some("chunk") => {
                if let Err(e) = self.chunk(&frame.payload, out) {
                    self.fail(e, out);
                }
            }
            Some("exception") => {
                let kind = frame.header_str(":exception-type").unwrap_or("exception");
                let message = serde_json::from_slice::<ExceptionBody>(&frame.payload)
                    .ok()
                    .and_then(|b| b.message)
                    .unwrap_or_else(|| String::from_utf8_lossy(&frame.payload).into_owned());
                self.end_with(anthropic_error_type(Some(kind), None), &format!("bedrock {kind}: {message}"), out);
            }
            Some("error") => {
                let code = frame.header_str(":error-code").unwrap_or("error");
                let message = frame.header_str(":error-message").unwrap_or("");
                self.end_with("api_error", &format!("bedrock {code}: {message}"), out);
            }
            // Other events (e.g. an initial-response) carry nothing for the client.
            _ => {}
        }
    }

    fn chunk(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), BedrockError> {
        let bad = |why: &str| BedrockError::EventStream(format!("chunk event {why}"));
        let chunk: Chunk = serde_json::from_slice(payload).map_err(|_| bad("is not {\"bytes\": ...}"))?;
        let data = STANDARD.decode(chunk.bytes.as_bytes()).map_err(|_| bad("bytes are not base64"))?;
        let event: AnthropicEvent = serde_json::from_slice(&data).map_err(|_| bad("is not an Anthropic event"))?;
        // The type becomes an SSE field: a line break in it would forge events.
        if event.kind.is_empty() || event.kind.bytes().any(|b| b.is_ascii_control()) {
            return Err(bad("has an unusable type"));
        }
        if let Some(metrics) = event.metrics.as_ref().and_then(Metrics::usage) {
            self.metrics = Some(metrics);
        }
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        // One `data:` line per event. `data` parsed as JSON above, so a raw line break in it can
        // only be whitespace between tokens (inside strings JSON escapes it): a space is the same.
        out.extend(data.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
        out.extend_from_slice(b"\n\n");
        Ok(())
    }

    fn fail(&mut self, e: BedrockError, out: &mut Vec<u8>) {
        self.end_with("api_error", &format!("gateway: {e}"), out);
        self.error = Some(e);
    }

    fn end_with(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        // The same body the gateway's own errors have (and the same code in the .wasm).
        out.extend_from_slice(b"event: error\ndata: ");
        out.extend_from_slice(&Reply::error(500, "bedrock_exception", kind, message).body);
        out.extend_from_slice(b"\n\n");
        self.ended = true;
    }
}

/// Token counts from a non-streamed answer's `x-amzn-bedrock-*-token-count` headers (names
/// in any case); `None` when Bedrock sent none.
pub fn usage_from_headers(headers: &[(&str, &str)]) -> Option<Usage> {
    let get = |name: &str| {
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.trim().parse::<u64>().ok())
    };
    let input = get("x-amzn-bedrock-input-token-count");
    let output = get("x-amzn-bedrock-output-token-count");
    let cache_read = get("x-amzn-bedrock-cache-read-input-token-count");
    let cache_write = get("x-amzn-bedrock-cache-write-input-token-count");
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(Usage {
        input: input.unwrap_or(0),
        output: output.unwrap_or(0),
        cache_write: cache_write.unwrap_or(0),
        cache_read: cache_read.unwrap_or(0),
        cache_write_1h: 0,
        web_searches: 0,
        fast: false,
    })
}

#[cfg(test)]
mod tests {
    use super::super::eventstream::tests::unhex;
    use super::*;
    use crate::sse::Framer;
    use crate::usage::Meter;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Counts {
        input: u64,
        output: u64,
        cache_write: u64,
        cache_read: u64,
    }

    impl From<&Counts> for Usage {
        fn from(c: &Counts) -> Usage {
            Usage {
                input: c.input,
                output: c.output,
                cache_write: c.cache_write,
                cache_read: c.cache_read,
                cache_write_1h: 0,
                web_searches: 0,
                fast: false,
            }
        }
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        stream_hex: String,
        events: Vec<(String, String)>,
        error: Option<(String, String)>,
        metrics: Option<Counts>,
        usage: Counts,
    }

    #[derive(Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
    }

    fn cases() -> Vec<Case> {
        let v: Vectors = serde_json::from_str(include_str!("../../tests/vectors/bedrock/stream.json")).unwrap();
        v.cases
    }

    fn events(sse: &[u8]) -> Vec<(String, String)> {
        let mut framer = Framer::new(|_| true, 1 << 20);
        let mut out = Vec::new();
        let mut sink = |e: crate::sse::Event<'_>| out.push((e.name.to_owned(), e.data.to_owned()));
        framer.push(sse, &mut sink);
        framer.finish(&mut sink);
        out
    }

    fn translate(chunks: &[&[u8]]) -> (Vec<u8>, BedrockStreamTranslator) {
        let mut t = BedrockStreamTranslator::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(t.push(c));
        }
        out.extend(t.finish());
        (out, t)
    }

    #[test]
    fn vectors_translate_identically_at_every_split() {
        for case in cases() {
            let name = &case.name;
            let stream = unhex(&case.stream_hex);
            let (whole, t) = translate(&[&stream]);
            let mut want = case.events.clone();
            if let Some((kind, message)) = &case.error {
                let body = json!({"type": "error", "error": {"type": kind, "message": message}});
                want.push(("error".to_owned(), body.to_string()));
            }
            assert_eq!(events(&whole), want, "{name}");
            let exact: String = case.events.iter().map(|(n, d)| format!("event: {n}\ndata: {d}\n\n")).collect();
            assert!(whole.starts_with(exact.as_bytes()), "{name}: chunk data forwarded byte for byte");
            let metrics = t.metrics().map(|m| m.over(&Usage::default()));
            assert_eq!(metrics, case.metrics.as_ref().map(Usage::from), "{name}: metrics");
            assert!(t.error().is_none(), "{name}");
            let mut meter = Meter::new("text/event-stream");
            meter.push(&whole);
            assert_eq!(meter.finish(), Usage::from(&case.usage), "{name}: usage meter on the SSE");
            for i in 0..=stream.len() {
                assert_eq!(translate(&[&stream[..i], &stream[i..]]).0, whole, "{name}: split at {i}");
            }
        }
    }

    #[test]
    fn nothing_is_held_back_beyond_a_partial_frame() {
        let case = cases().into_iter().next().unwrap();
        let stream = unhex(&case.stream_hex);
        let mut t = BedrockStreamTranslator::new();
        let mut sent = Vec::new();
        let mut frame_ends = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            at += u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
            frame_ends.push(at);
        }
        for (i, b) in stream.iter().enumerate() {
            sent.extend(t.push(std::slice::from_ref(b)));
            let whole_frames = frame_ends.iter().filter(|&&end| end <= i + 1).count();
            assert_eq!(events(&sent).len(), whole_frames, "after byte {i}");
        }
    }

    #[test]
    fn corrupt_and_cut_streams_end_with_one_error_event() {
        let case = cases().into_iter().next().unwrap();
        let stream = unhex(&case.stream_hex);
        let first = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        let mut flipped = stream.clone();
        flipped[first + 20] ^= 0x40;
        let cut = &stream[..first + 5];
        for (name, bytes) in [("bit flipped in frame 2", &flipped[..]), ("cut inside frame 2", cut)] {
            let (out, t) = translate(&[bytes]);
            let got = events(&out);
            assert_eq!(got.len(), 2, "{name}: {got:?}");
            assert_eq!(got[0].0, case.events[0].0, "{name}");
            assert_eq!(got[1].0, "error", "{name}");
            let v: serde_json::Value = serde_json::from_str(&got[1].1).unwrap();
            assert_eq!(v["error"]["type"], "api_error", "{name}");
            assert!(v["error"]["message"].as_str().unwrap().starts_with("gateway: Bedrock event stream is corrupt"));
            assert!(matches!(t.error(), Some(BedrockError::EventStream(_))), "{name}");
        }
    }

    fn frame(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        super::super::eventstream::encode(headers, payload)
    }

    fn chunk(event: &[u8]) -> Vec<u8> {
        let payload = json!({"bytes": STANDARD.encode(event)}).to_string();
        frame(&[(":message-type", "event"), (":event-type", "chunk")], payload.as_bytes())
    }

    #[test]
    fn odd_frames() {
        type Case = (&'static str, Vec<u8>, &'static str);
        let cases: Vec<Case> = vec![
            (
                "pretty-printed event stays on one data line",
                chunk(b"{\r\n \"type\": \"ping\",\"x\":\"a\\nb\"\n}"),
                "event: ping\ndata: {   \"type\": \"ping\",\"x\":\"a\\nb\" }\n\n",
            ),
            (
                "a type with a line break is refused",
                chunk(br#"{"type":"ping\ndata: x"}"#),
                "event: error\ndata: {\"error\":{\"message\":\"gateway: Bedrock event stream is corrupt: chunk event has an unusable type\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n",
            ),
            ("other event types are skipped", frame(&[(":message-type", "event"), (":event-type", "initial-response")], b"{}"), ""),
            (
                "protocol error frame",
                frame(&[(":message-type", "error"), (":error-code", "InternalFailure"), (":error-message", "boom")], b""),
                "event: error\ndata: {\"error\":{\"message\":\"bedrock InternalFailure: boom\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n",
            ),
            (
                "exception, nothing after it",
                [frame(&[(":message-type", "exception"), (":exception-type", "modelStreamErrorException")], br#"{"message":"bad"}"#), chunk(br#"{"type":"ping"}"#)].concat(),
                "event: error\ndata: {\"error\":{\"message\":\"bedrock modelStreamErrorException: bad\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n",
            ),
        ];
        for (name, bytes, want) in cases {
            let (out, _) = translate(&[&bytes]);
            assert_eq!(sse_values(&String::from_utf8(out).unwrap()), sse_values(want), "{name}");
        }
    }

    /// Events as (name, data), with JSON data compared as values: member order depends on
    /// serde_json's `preserve_order`, which another workspace crate may switch on.
    fn sse_values(text: &str) -> Vec<(String, serde_json::Value)> {
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (head, data) = e.split_once("\ndata: ").unwrap_or((e, ""));
                let data = serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.to_owned()));
                (head.to_owned(), data)
            })
            .collect()
    }

    #[test]
    fn usage_from_invoke_headers() {
        let headers = [
            ("X-Amzn-Bedrock-Input-Token-Count", "120"),
            ("x-amzn-bedrock-output-token-count", " 30"),
            ("x-amzn-bedrock-cache-read-input-token-count", "2000"),
        ];
        assert_eq!(
            usage_from_headers(&headers),
            Some(Usage {
                input: 120,
                output: 30,
                cache_write: 0,
                cache_read: 2000,
                cache_write_1h: 0,
                web_searches: 0,
                fast: false
            })
        );
        assert_eq!(usage_from_headers(&[("content-type", "application/json")]), None);
    }
}
