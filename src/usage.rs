//! Token usage of one answer, counted while the answer passes through: from SSE
//! (`message_start` then cumulative `message_delta`) or from a JSON body's `usage`.
//!
//! Each field takes the last value the provider reported for it, once. Summing
//! `message_start` and `message_delta` (double counting output) and dropping the cache fields
//! are the bugs other gateways shipped; the tests below pin both down.

use serde::Deserialize;

use crate::sse::{Event, Framer};

/// Most tokens of one kind a single answer is believed to have (context windows are at most a
/// few million tokens).
pub const MAX_PLAUSIBLE_TOKENS: u64 = 100_000_000;

/// Most web searches one answer is believed to have made (a request sets `max_uses` per tool;
/// a few dozen is a lot).
pub const MAX_PLAUSIBLE_SEARCHES: u64 = 1_000_000;

/// Tokens of one request, and the server-side web searches it made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// `input_tokens`: uncached prompt tokens.
    pub input: u64,
    /// `output_tokens`.
    pub output: u64,
    /// `cache_creation_input_tokens`: every cache write, whatever its lifetime.
    pub cache_write: u64,
    /// `cache_read_input_tokens`.
    pub cache_read: u64,
    /// `cache_creation.ephemeral_1h_input_tokens`: the part of `cache_write` cached for an hour,
    /// which is priced higher than the five-minute writes (zero when not reported).
    pub cache_write_1h: u64,
    /// `server_tool_use.web_search_requests`: searches the provider ran for the answer (Claude
    /// Code's WebSearch tool), priced per search on top of the tokens; not tokens.
    pub web_searches: u64,
    /// `speed` is `fast`: the provider ran the request in fast mode, priced apart.
    pub fast: bool,
}

impl Usage {
    /// Prompt tokens including cache writes and reads.
    pub fn prompt(&self) -> u64 {
        self.input.saturating_add(self.cache_write).saturating_add(self.cache_read)
    }

    /// The one-hour cache writes, at most all the writes (a provider that reports more is not
    /// believed past that).
    pub fn cache_write_1h(&self) -> u64 {
        self.cache_write_1h.min(self.cache_write)
    }

    /// Prompt and completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt().saturating_add(self.output)
    }

    /// Whether every field is a count a real answer can have. A larger one is an upstream
    /// fault (or a hostile upstream) and is not believed.
    pub fn is_plausible(&self) -> bool {
        // The one-hour share counts only up to all the writes, as it is priced (and as Bedrock's
        // total clamps it): a share above them alone does not make the usage unbelievable.
        [self.input, self.output, self.cache_write, self.cache_read, self.cache_write_1h()]
            .iter()
            .all(|n| *n <= MAX_PLAUSIBLE_TOKENS)
            && self.web_searches <= MAX_PLAUSIBLE_SEARCHES
    }
}

/// Counts a provider reported apart from the answer's body (Bedrock's invocation metrics), each
/// `None` where it said nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportedUsage {
    /// Uncached prompt tokens.
    pub input: Option<u64>,
    /// Output tokens.
    pub output: Option<u64>,
    /// Cache writes, whatever their lifetime.
    pub cache_write: Option<u64>,
    /// Cache reads.
    pub cache_read: Option<u64>,
}

impl ReportedUsage {
    /// This report over what the meter read in the body: each count it gives replaces the one
    /// read, the others are kept (a report without the cache counts does not wipe those the
    /// stream's `message_start` gave). The one-hour share of the writes comes from the body,
    /// since the report gives only their total.
    pub fn over(self, read: &Usage) -> Usage {
        let cache_write = self.cache_write.unwrap_or(read.cache_write);
        Usage {
            input: self.input.unwrap_or(read.input),
            output: self.output.unwrap_or(read.output),
            cache_write,
            cache_read: self.cache_read.unwrap_or(read.cache_read),
            cache_write_1h: read.cache_write_1h().min(cache_write),
            web_searches: read.web_searches,
            fast: read.fast,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    /// `Some(None)` for `"cache_creation": null`: present, so it says there were no one-hour
    /// writes; `None` when absent, which leaves what an earlier event said.
    #[serde(default, deserialize_with = "present")]
    cache_creation: Option<Option<CacheCreation>>,
    /// Like `cache_creation`: `Some(None)` for `null`, which says no server tool ran.
    #[serde(default, deserialize_with = "present")]
    server_tool_use: Option<Option<ServerToolUse>>,
    /// `"fast"` when the request ran in fast mode (`"standard"` otherwise); a value of another
    /// type says nothing: a field the counts do not depend on never makes them unreadable.
    #[serde(default, deserialize_with = "lenient_text")]
    speed: Option<String>,
    /// The sampling steps of a request that ran more than one (threshold compaction's summary,
    /// then the answer): the top-level counts leave the other steps out, and every step is billed.
    iterations: Option<Vec<Iteration>>,
}

/// One sampling step of `usage.iterations`.
#[derive(Debug, Default, Deserialize)]
struct Iteration {
    /// `compaction`, `message`, …
    #[serde(rename = "type", default, deserialize_with = "lenient_text")]
    kind: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

/// A string member read whatever its type: `None` for a value of another type.
fn lenient_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Any::deserialize(d)? {
        Any::Text(text) => Some(text),
        Any::Other(_) => None,
    })
}

/// `usage.server_tool_use`: what the provider's own tools did.
#[derive(Debug, Default, Deserialize)]
struct ServerToolUse {
    web_search_requests: Option<u64>,
}

/// A field that is present, `null` included.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `usage.cache_creation`: the cache writes by lifetime.
#[derive(Debug, Default, Deserialize)]
struct CacheCreation {
    ephemeral_1h_input_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct StreamEvent {
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    usage: Option<RawUsage>,
}

#[derive(Debug, Deserialize)]
struct Message {
    #[serde(default)]
    usage: Option<RawUsage>,
}

/// Bytes of streamed text counted as one output token when a stream's own count never came
/// (about what English text and code average; JSON escapes make it a little more).
pub const BYTES_PER_TOKEN: u64 = 4;

/// Most tokens one image costs (current models read images up to about 2,576 px on the long
/// edge: 4,784 tokens; older ones scale them to about 1,600).
pub const IMAGE_TOKENS: u64 = 4_800;

/// Bodies shorter than this are not searched for images: their bytes over four stand. Claude
/// Code's turns without images are ~130 KB; one carrying a screenshot (in every later turn of
/// the conversation) is several hundred KB and more.
const IMAGE_SEARCH_FROM: usize = 256 * 1024;

/// The prompt's tokens as admission reckons them from the request body: its bytes over
/// [`BYTES_PER_TOKEN`], except that a base64 image (`"media_type":"image/…"` beside a `"data"`
/// string) counts at most [`IMAGE_TOKENS`]: a 2 MB screenshot would otherwise be held (and, for
/// a request cut before any usage, charged) as 500,000 tokens. The body was checked as JSON
/// before: a `"data":"` found here is a member's name and its string's start, and base64 has no
/// quote, so the string ends at the next one. Strings written with spaces around the colon are
/// not found and keep their bytes' count (never less than before).
pub fn input_estimate(body: &[u8]) -> u64 {
    let bytes = body.len() as u64 / BYTES_PER_TOKEN;
    if body.len() < IMAGE_SEARCH_FROM {
        return bytes;
    }
    const DATA: &[u8] = b"\"data\":\"";
    const MEDIA: &[u8] = b"\"media_type\":\"image/";
    // Within an image's `source`: `type`, `media_type` and `data`, in any order.
    const NEAR: usize = 256;
    let finder = memchr::memmem::Finder::new(DATA);
    let (mut images, mut image_bytes, mut at) = (0u64, 0u64, 0usize);
    while let Some(found) = finder.find(body.get(at..).unwrap_or_default()) {
        let start = at + found + DATA.len();
        let Some(len) = memchr::memchr(b'"', body.get(start..).unwrap_or_default()) else {
            break;
        };
        let end = start + len;
        // The media type in the same object: no brace between it and the `data` member.
        let before = body.get(start.saturating_sub(DATA.len() + NEAR)..start - DATA.len()).unwrap_or_default();
        let after = body.get(end..(end + NEAR).min(body.len())).unwrap_or_default();
        let braceless = |s: &[u8]| memchr::memchr2(b'{', b'}', s).is_none();
        let image = memchr::memmem::rfind(before, MEDIA).is_some_and(|i| braceless(&before[i..]))
            || memchr::memmem::find(after, MEDIA).is_some_and(|i| braceless(&after[..i]));
        if image && len as u64 > IMAGE_TOKENS * BYTES_PER_TOKEN && is_base64(body.get(start..end).unwrap_or_default()) {
            images += 1;
            image_bytes += len as u64;
        }
        at = end + 1;
    }
    (body.len() as u64 - image_bytes) / BYTES_PER_TOKEN + images * IMAGE_TOKENS
}

/// Whether a string is base64, judged from 64 bytes at each of 33 points along it, its ends
/// included (checking every byte of megabytes would cost more than the estimate is worth; text
/// has spaces and punctuation every few bytes, which the samples find).
fn is_base64(s: &[u8]) -> bool {
    const SAMPLES: usize = 32;
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_');
    let last = s.len().saturating_sub(64);
    // The last sample starts at `last` exactly, so the string's final bytes are always looked at.
    (0..=SAMPLES).all(|i| {
        let from = last * i / SAMPLES;
        s.get(from..(from + 64).min(s.len())).is_some_and(|run| run.iter().all(ok))
    })
}

/// Largest SSE event kept for parsing. Usage events are a few hundred bytes, but `message_delta`
/// echoes the stop sequence that matched, which the client chose: it can be as large as a
/// request body (`max_body_bytes`, 10 MiB by default). Only usage events are kept at all.
const MAX_EVENT: usize = 16 * 1024 * 1024;
/// Largest JSON answer kept whole; beyond it only the tail (where `usage` sits) is kept.
const MAX_JSON: usize = 4 * 1024 * 1024;
const JSON_TAIL: usize = 64 * 1024;

/// The events that carry usage. Only they (and `error`) are kept: an event without a name
/// (which Anthropic never sends) is framed and dropped, so a faulty upstream cannot make the meter
/// hold 16 MiB of it.
fn usage_event(name: &[u8]) -> bool {
    matches!(name, b"message_start" | b"message_delta")
}

/// The events the meter frames: those with usage, and `error` (an overload or a failure
/// reported inside a `200` stream).
fn metered_event(name: &[u8]) -> bool {
    usage_event(name) || name == b"error"
}

/// How the answer is encoded.
#[derive(Debug)]
enum Body {
    Sse(Framer),
    Json { bytes: Vec<u8>, truncated: bool },
}

/// Counts usage over the chunks of one answer.
#[derive(Debug)]
pub struct Meter {
    body: Body,
    seen: Seen,
}

/// How many counts [`Seen`] keeps.
const FIELDS: usize = 7;

/// What the answer has said so far.
#[derive(Debug, Default)]
struct Seen {
    /// Input, output, cache writes, cache reads, one-hour cache writes, web searches, and fast
    /// mode (1) or not (0).
    fields: [Option<u64>; FIELDS],
    /// Whether any usage was reported at all.
    reported: bool,
    /// Whether a stream's last usage (`message_delta`, cumulative) came.
    final_usage: bool,
    /// Whether a stream reported an error event.
    error: bool,
    /// Why some of the usage could not be read (the first reason), when it could not.
    unreadable: Option<&'static str>,
}

impl Meter {
    /// A meter for an answer with this `content-type`.
    pub fn new(content_type: &str) -> Meter {
        let body = if content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream") {
            Body::Sse(Framer::new(metered_event, MAX_EVENT).measuring(|name| name == b"content_block_delta"))
        } else {
            Body::Json { bytes: Vec::new(), truncated: false }
        };
        Meter { body, seen: Seen::default() }
    }

    /// Observes one chunk of the answer.
    pub fn push(&mut self, chunk: &[u8]) {
        let seen = &mut self.seen;
        match &mut self.body {
            Body::Sse(framer) => framer.push(chunk, &mut |e| seen.take(e)),
            Body::Json { bytes, truncated } => {
                bytes.extend_from_slice(chunk);
                if bytes.len() > MAX_JSON {
                    let cut = bytes.len() - JSON_TAIL;
                    bytes.drain(..cut);
                    *truncated = true;
                }
            }
        }
    }

    /// Why this answer's usage cannot be taken as what it cost, if it cannot: part of it could
    /// not be read, a successful answer reported none (the provider always reports usage with
    /// a 2xx; an answer compressed despite `accept-encoding: identity`, or mislabelled, reads as
    /// none), or a stream that had started ended in an error or without its last usage (the
    /// client got text the provider generated and bills). A `200` stream whose only news is an
    /// error (an overload before anything was generated) is an error answer: no problem, nothing
    /// charged. Other answers are not charged by their body. Read after [`Meter::finish`].
    pub fn problem(&self, status: Option<u32>) -> Option<&'static str> {
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            return None;
        }
        let seen = &self.seen;
        if let Some(why) = seen.unreadable {
            return Some(why);
        }
        let stream = matches!(self.body, Body::Sse(_));
        match (seen.reported, seen.error) {
            (false, true) => None,
            (false, false) => Some("a successful answer that reported no usage"),
            (true, true) => Some("a stream that ended in an error after it had started"),
            (true, false) if stream && !seen.final_usage => Some("a stream that ended before its final usage"),
            // A usage without its counts (`{}`, nulls) says nothing of what was billed.
            (true, false) if seen.fields[0].is_none() || seen.fields[1].is_none() => {
                Some("a usage that left out its input or output tokens")
            }
            (true, false) => None,
        }
    }

    /// Whether a stream's last usage (`message_delta`, with its output) came: nothing after it
    /// is generated, so the answer's cost is known even if the stream is cut after it.
    pub fn final_usage_read(&self) -> bool {
        self.seen.final_usage
    }

    /// Whether the answer reported its uncached input tokens (a stream does in `message_start`),
    /// so that its prompt is known even if the rest never came. Read after [`Meter::finish`].
    pub fn prompt_reported(&self) -> bool {
        self.seen.fields[0].is_some()
    }

    /// Ends the answer and returns its usage (what was reported; zeros where nothing was). A
    /// stream that ended before its final usage (cut by the client, an error in its middle)
    /// counts at least the output that passed: its deltas' text, at [`BYTES_PER_TOKEN`].
    pub fn finish(&mut self) -> Usage {
        let seen = &mut self.seen;
        let mut output_seen = 0;
        match &mut self.body {
            Body::Sse(framer) => {
                framer.finish(&mut |e| seen.take(e));
                if !seen.final_usage {
                    output_seen = framer.unkept_excess() / BYTES_PER_TOKEN;
                }
                if framer.dropped() > 0 {
                    seen.unreadable.get_or_insert("a usage event over 16 MiB");
                }
                // Its tokens are lost: the answer is charged as one whose usage cannot be read.
                if framer.undecodable() > 0 {
                    seen.unreadable.get_or_insert("a usage event that is not UTF-8");
                }
            }
            Body::Json { bytes, truncated } => {
                match json_usage(bytes, *truncated) {
                    Ok(Some(usage)) => {
                        merge(&mut seen.fields, &usage);
                        seen.reported = true;
                    }
                    Ok(None) => {}
                    Err(()) => {
                        seen.unreadable
                            .get_or_insert("a JSON answer that does not parse, or counts that are not whole numbers");
                    }
                }
                bytes.clear();
            }
        }
        let [input, output, cache_write, cache_read, cache_write_1h, web_searches, fast] =
            self.seen.fields.map(|f| f.unwrap_or(0));
        Usage {
            input,
            output: output.max(output_seen),
            cache_write,
            cache_read,
            cache_write_1h,
            web_searches,
            fast: fast == 1,
        }
    }
}

impl Seen {
    /// One framed SSE event.
    fn take(&mut self, event: Event<'_>) {
        let name = event.name.as_bytes();
        if name == b"error" {
            self.error = true;
            return;
        }
        let parsed = match serde_json::from_str::<StreamEvent>(event.data) {
            Ok(parsed) => parsed,
            // Counts that are not whole numbers up to 2^64 - 1 (2^64, 1e30, -5, 1.0, "5000") fail
            // the parse: such an event is not believed, and its tokens are not taken as zero either.
            Err(_) if usage_event(name) => {
                self.unreadable
                    .get_or_insert("a usage event that does not parse, or counts that are not whole numbers");
                return;
            }
            Err(_) => return,
        };
        let usage = parsed.usage.or(parsed.message.and_then(|m| m.usage));
        if let Some(usage) = usage {
            merge(&mut self.fields, &usage);
            self.reported = true;
            // The last usage is the one that tells the output; a delta without it is not.
            self.final_usage |= name == b"message_delta" && usage.output_tokens.is_some();
        }
    }
}

fn merge(fields: &mut [Option<u64>; FIELDS], usage: &RawUsage) {
    let top =
        [usage.input_tokens, usage.output_tokens, usage.cache_creation_input_tokens, usage.cache_read_input_tokens];
    // Every step is billed: the steps' sum, with the top-level counts (this report's, else the
    // last ones) added when the steps list no `message` step of their own.
    let [input, output, cache_write, cache_read] = match usage.iterations.as_deref() {
        Some(steps) if !steps.is_empty() => {
            let answered = steps.iter().any(|s| s.kind.as_deref() == Some("message"));
            let mut sum = if answered { [0; 4] } else { std::array::from_fn(|i| top[i].or(fields[i]).unwrap_or(0)) };
            for step in steps {
                let counts = [
                    step.input_tokens,
                    step.output_tokens,
                    step.cache_creation_input_tokens,
                    step.cache_read_input_tokens,
                ];
                for (total, n) in sum.iter_mut().zip(counts) {
                    *total = total.saturating_add(n.unwrap_or(0));
                }
            }
            sum.map(Some)
        }
        _ => top,
    };
    let new = [
        input,
        output,
        cache_write,
        cache_read,
        // The breakdown is one report: a `cache_creation` without a one-hour count says none.
        usage.cache_creation.as_ref().map(|c| c.as_ref().and_then(|c| c.ephemeral_1h_input_tokens).unwrap_or(0)),
        // Cumulative in a stream, like the other counts: the last report is the answer's.
        usage.server_tool_use.as_ref().map(|t| t.as_ref().and_then(|t| t.web_search_requests).unwrap_or(0)),
        // Fast mode as 1, standard as 0: the last report that says tells.
        usage.speed.as_deref().map(|speed| u64::from(speed == "fast")),
    ];
    for (field, value) in fields.iter_mut().zip(new) {
        if value.is_some() {
            *field = value;
        }
    }
}

/// The `usage` of a JSON answer: `Ok(None)` when it has none, `Err` when it does not parse.
fn json_usage(bytes: &[u8], truncated: bool) -> Result<Option<RawUsage>, ()> {
    #[derive(Deserialize)]
    struct Top {
        usage: Option<RawUsage>,
    }
    if !truncated {
        return serde_json::from_slice::<Top>(bytes).map(|top| top.usage).map_err(|_| ());
    }
    // Only the tail is left: parse the object that follows the last `"usage":`.
    let key = b"\"usage\"";
    let Some(at) = bytes.windows(key.len()).rposition(|w| w == key) else {
        return Ok(None);
    };
    let rest = &bytes[at + key.len()..];
    let start = rest.iter().position(|&b| b == b'{').ok_or(())?;
    match serde_json::Deserializer::from_slice(&rest[start..]).into_iter::<RawUsage>().next() {
        Some(Ok(usage)) => Ok(Some(usage)),
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/claude-code/response_stream_tool_use.sse");
        std::fs::read(path).unwrap()
    }

    fn count(content_type: &str, chunks: &[&[u8]]) -> Usage {
        let mut meter = Meter::new(content_type);
        for c in chunks {
            meter.push(c);
        }
        meter.finish()
    }

    /// What the captured stream (`fixture`) reports.
    const FIXTURE_USAGE: Usage = Usage {
        input: 2603,
        output: 32,
        cache_write: 29144,
        cache_read: 0,
        cache_write_1h: 0,
        web_searches: 0,
        fast: false,
    };

    #[test]
    fn captured_stream_counts_the_same_at_every_split() {
        let stream = fixture();
        let whole = count("text/event-stream", &[&stream]);
        assert_eq!(whole, FIXTURE_USAGE);
        for i in 0..=stream.len() {
            assert_eq!(count("text/event-stream", &[&stream[..i], &stream[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(count("text/event-stream; charset=utf-8", &bytes), whole, "one byte at a time");
    }

    #[test]
    fn cache_fields_merge_without_double_counting() {
        let cases: &[(&str, &str, Usage)] = &[
            (
                "delta output replaces start output",
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":7}}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":40}}\n\n",
                Usage { input: 10, output: 40, cache_write: 5, cache_read: 7, cache_write_1h: 0, web_searches: 0, fast: false },
            ),
            (
                "delta repeats cumulative cache fields: taken once",
                "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":7}}}\n\nevent: message_delta\ndata: {\"usage\":{\"input_tokens\":10,\"output_tokens\":40,\"cache_creation_input_tokens\":5,\"cache_read_input_tokens\":7}}\n\n",
                Usage { input: 10, output: 40, cache_write: 5, cache_read: 7, cache_write_1h: 0, web_searches: 0, fast: false },
            ),
            (
                "stream cut after message_start",
                "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"delta\":{\"text\":\"hal",
                Usage { input: 10, output: 1, cache_write: 0, cache_read: 0, cache_write_1h: 0, web_searches: 0, fast: false },
            ),
            (
                "error event after start keeps start usage",
                "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n",
                Usage { input: 3, output: 1, cache_write: 0, cache_read: 0, cache_write_1h: 0, web_searches: 0, fast: false },
            ),
        ];
        for (name, stream, want) in cases {
            assert_eq!(count("text/event-stream", &[stream.as_bytes()]), *want, "{name}");
        }
    }

    /// A usage event with a byte that is not UTF-8 cannot be read: the answer is one whose usage
    /// is unknown (charged at least the estimate), not one that reported its input as zero.
    #[test]
    fn a_usage_event_that_is_not_utf8_makes_the_usage_unreadable() {
        let mut stream = b"event: message_start\ndata: {\"message\":{\"model\":\"".to_vec();
        stream.push(0xff);
        stream.extend_from_slice(b"\",\"usage\":{\"input_tokens\":30000,\"output_tokens\":1}}}\n\n");
        stream.extend_from_slice(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":10}}\n\n");
        let mut meter = Meter::new("text/event-stream");
        meter.push(&stream);
        meter.finish();
        assert_eq!(meter.problem(Some(200)), Some("a usage event that is not UTF-8"));
        // An unwanted event that is not UTF-8 (a text delta) changes nothing.
        let mut meter = Meter::new("text/event-stream");
        meter.push(b"event: content_block_delta\ndata: {\"text\":\"\xff\"}\n\n");
        meter.push(&fixture());
        assert_eq!(meter.finish(), FIXTURE_USAGE);
        assert_eq!(meter.problem(Some(200)), None);
    }

    #[test]
    fn json_answers() {
        let message = br#"{"id":"m","type":"message","content":[{"type":"text","text":"<block>no"}],"usage":{"input_tokens":900,"output_tokens":4,"cache_creation_input_tokens":0,"cache_read_input_tokens":120}}"#;
        let want = Usage {
            input: 900,
            output: 4,
            cache_write: 0,
            cache_read: 120,
            cache_write_1h: 0,
            web_searches: 0,
            fast: false,
        };
        assert_eq!(count("application/json", &[&message[..50], &message[50..]]), want);
        // The same last usage, as a JSON answer and as a stream's last event, reads the same:
        // a breakdown without a one-hour count (or `null`) replaces the start's, absence keeps it.
        let last = r#"{"input_tokens":1,"output_tokens":5,"cache_creation_input_tokens":1000,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":1000}}"#;
        let start = r#"event: message_start
data: {"message":{"usage":{"input_tokens":1,"output_tokens":1,"cache_creation_input_tokens":1000,"cache_creation":{"ephemeral_5m_input_tokens":400,"ephemeral_1h_input_tokens":600}}}}

"#;
        for (last, want) in [
            (last.to_owned(), 0),
            (last.replace(r#"{"ephemeral_5m_input_tokens":1000}"#, "null"), 0),
            (last.replace(r#","cache_creation":{"ephemeral_5m_input_tokens":1000}"#, ""), 600),
        ] {
            let json = count("application/json", &[format!(r#"{{"usage":{last}}}"#).as_bytes()]);
            let sse = count(
                "text/event-stream",
                &[format!("{start}event: message_delta\ndata: {{\"usage\":{last}}}\n\n").as_bytes()],
            );
            assert_eq!(sse.cache_write_1h, want, "{last}");
            if want == 0 {
                assert_eq!(json.cache_write_1h, sse.cache_write_1h, "{last}");
            }
        }
        let hourly = br#"{"usage":{"input_tokens":9,"output_tokens":4,"cache_creation_input_tokens":70,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":20,"ephemeral_1h_input_tokens":50}}}"#;
        let want = Usage {
            input: 9,
            output: 4,
            cache_write: 70,
            cache_read: 0,
            cache_write_1h: 50,
            web_searches: 0,
            fast: false,
        };
        assert_eq!(count("application/json", &[hourly]), want, "one-hour writes are told apart");
        let error = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(count("application/json", &[error]), Usage::default());
        let mut big = br#"{"content":[{"type":"text","text":""#.to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_JSON + 10));
        big.extend_from_slice(br#""}],"usage":{"input_tokens":1,"output_tokens":99999}}"#);
        assert_eq!(count("application/json", &big.chunks(65536).collect::<Vec<_>>()).output, 99999, "tail kept");
    }

    /// A screenshot's base64 counts at most what an image costs, wherever it sits in the body;
    /// nothing else changes: other media, short images, strings that are no base64, members
    /// written with spaces, bodies under the search's threshold.
    #[test]
    fn an_image_counts_at_most_what_an_image_costs() {
        let image = |media: &str, data: &str| {
            format!(r#"{{"type":"image","source":{{"type":"base64","media_type":"{media}","data":"{data}"}}}}"#)
        };
        let body = |blocks: &[String]| {
            let text = "x".repeat(300_000);
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":[{},{{"type":"text","text":"{text}"}}]}}]}}"#,
                blocks.join(",")
            )
        };
        let shot = "iVBORw0KGgo".repeat(200_000); // 2.2 MB
        let one = body(&[image("image/png", &shot)]);
        assert_eq!(input_estimate(one.as_bytes()), (one.len() - shot.len()) as u64 / 4 + IMAGE_TOKENS);
        let two = body(&[image("image/png", &shot), image("image/jpeg", &shot)]);
        assert_eq!(input_estimate(two.as_bytes()), (two.len() - 2 * shot.len()) as u64 / 4 + 2 * IMAGE_TOKENS);
        let data_first = one.replace(
            &image("image/png", &shot),
            &format!(r#"{{"type":"image","source":{{"data":"{shot}","media_type":"image/png","type":"base64"}}}}"#),
        );
        assert_ne!(data_first, one);
        assert_eq!(input_estimate(data_first.as_bytes()), (data_first.len() - shot.len()) as u64 / 4 + IMAGE_TOKENS);
        let unchanged = [
            body(&[image("application/pdf", &shot)]),
            body(&[image("image/png", &"iVBORw0KGgo".repeat(1000))]),
            body(&[image("image/png", &format!("{shot}\\\"x"))]),
            one.replace(r#""data":""#, r#""data": ""#),
            // Text beside an image's media type (a tool's input), and a text document after a
            // small image: no base64, or not the same object.
            body(&[format!(
                r#"{{"type":"tool_use","input":{{"media_type":"image/png","data":"{}"}}}}"#,
                "some text, ".repeat(200_000)
            )]),
            body(&[
                image("image/png", "iVBORw0KGgo"),
                format!(
                    r#"{{"type":"document","source":{{"type":"text","data":"{}"}}}}"#,
                    "iVBORw0KGgo".repeat(200_000)
                ),
            ]),
            image("image/png", &"iVBORw0KGgo".repeat(20_000)),
        ];
        for b in unchanged {
            assert_eq!(input_estimate(b.as_bytes()), b.len() as u64 / 4, "{}", &b[..120]);
        }
    }

    /// Threshold compaction summarises the conversation in a step of its own, billed, which the
    /// top-level counts leave out (Anthropic's example: 23,000 in and 1,000 out at the top,
    /// 180,000 and 3,500 more for the summary): every step is counted, in a JSON answer and in a
    /// stream's last usage.
    #[test]
    fn every_sampling_step_is_counted() {
        let steps = r#""iterations":[{"type":"compaction","input_tokens":180000,"output_tokens":3500},{"type":"message","input_tokens":23000,"output_tokens":1000,"cache_read_input_tokens":40}]"#;
        let json = format!(
            r#"{{"usage":{{"input_tokens":23000,"output_tokens":1000,"cache_read_input_tokens":40,{steps}}}}}"#
        );
        let usage = count("application/json", &[json.as_bytes()]);
        assert_eq!((usage.input, usage.output, usage.cache_read), (203_000, 4500, 40));
        let start =
            "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":23000,\"output_tokens\":1}}}\n\n";
        let delta = format!("event: message_delta\ndata: {{\"usage\":{{\"output_tokens\":1000,{steps}}}}}\n\n");
        let usage = count("text/event-stream", &[start.as_bytes(), delta.as_bytes()]);
        assert_eq!((usage.input, usage.output, usage.cache_read), (203_000, 4500, 40));
        // Steps without the answer's own: added to the top-level counts (the last reported).
        let only = r#""iterations":[{"type":"compaction","input_tokens":180000,"output_tokens":3500}]"#;
        let delta = format!("event: message_delta\ndata: {{\"usage\":{{\"output_tokens\":1000,{only}}}}}\n\n");
        let usage = count("text/event-stream", &[start.as_bytes(), delta.as_bytes()]);
        assert_eq!((usage.input, usage.output), (203_000, 4500));
        // No steps, or an empty list: the top-level counts as ever.
        for steps in ["", r#","iterations":[]"#] {
            let json = format!(r#"{{"usage":{{"input_tokens":23000,"output_tokens":1000{steps}}}}}"#);
            let usage = count("application/json", &[json.as_bytes()]);
            assert_eq!((usage.input, usage.output), (23_000, 1000), "{steps}");
        }
    }

    /// `usage.speed` says whether the provider ran the request in fast mode (its price): read
    /// from a JSON answer and from a stream, the last report that says telling.
    #[test]
    fn the_speed_the_provider_ran_at_is_read() {
        let json = |speed: &str| format!(r#"{{"usage":{{"input_tokens":10,"output_tokens":5{speed}}}}}"#);
        for (speed, fast) in [(r#","speed":"fast""#, true), (r#","speed":"standard""#, false), ("", false)] {
            assert_eq!(count("application/json", &[json(speed).as_bytes()]).fast, fast, "{speed}");
        }
        // A value of another type says standard, and the counts still read.
        for odd in [r#","speed":"turbo""#, r#","speed":5"#, r#","speed":{"tier":"fast"}"#, r#","speed":null"#] {
            let usage = count("application/json", &[json(odd).as_bytes()]);
            assert_eq!((usage.input, usage.output, usage.fast), (10, 5, false), "{odd}");
        }
        let start = "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"speed\":\"fast\"}}}\n\n";
        for (delta, fast) in [
            (r#"{"output_tokens":40}"#, true),
            (r#"{"output_tokens":40,"speed":"fast"}"#, true),
            (r#"{"output_tokens":40,"speed":"standard"}"#, false),
        ] {
            let stream = format!("{start}event: message_delta\ndata: {{\"usage\":{delta}}}\n\n");
            assert_eq!(count("text/event-stream", &[stream.as_bytes()]).fast, fast, "{delta}");
        }
    }

    #[test]
    fn web_searches_are_the_last_count_reported() {
        let json = br#"{"usage":{"input_tokens":10,"output_tokens":5,"server_tool_use":{"web_search_requests":3}}}"#;
        assert_eq!(count("application/json", &[json]).web_searches, 3);
        let start = "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1,\"server_tool_use\":{\"web_search_requests\":0}}}}\n\n";
        for (delta, want) in [
            // Cumulative, as the other counts: the last report, never a sum.
            (r#"{"output_tokens":40,"server_tool_use":{"web_search_requests":2}}"#, 2),
            (r#"{"output_tokens":40}"#, 0),
            (r#"{"output_tokens":40,"server_tool_use":null}"#, 0),
            (r#"{"output_tokens":40,"server_tool_use":{"web_fetch_requests":4}}"#, 0),
        ] {
            let stream = format!("{start}event: message_delta\ndata: {{\"usage\":{delta}}}\n\n");
            let usage = count("text/event-stream", &[stream.as_bytes()]);
            assert_eq!((usage.web_searches, usage.output), (want, 40), "{delta}");
        }
        let twice = format!(
            "{}event: message_delta\ndata: {{\"usage\":{{\"output_tokens\":9,\"server_tool_use\":{{\"web_search_requests\":2}}}}}}\n\n\
             event: message_delta\ndata: {{\"usage\":{{\"output_tokens\":40,\"server_tool_use\":{{\"web_search_requests\":2}}}}}}\n\n",
            start.replace(":0}", ":2}")
        );
        assert_eq!(count("text/event-stream", &[twice.as_bytes()]).web_searches, 2, "taken once");
        // Not tokens; beyond belief, the usage is not believed.
        let usage = Usage { input: 1, web_searches: 7, ..Usage::default() };
        assert_eq!(usage.total(), 1);
        assert!(!Usage { web_searches: MAX_PLAUSIBLE_SEARCHES + 1, ..usage }.is_plausible());
    }
}
