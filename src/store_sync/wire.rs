//! The wire format of one sync: a Lua script run by `EVAL` that, for every bucket of the
//! batch, writes this node's own spend into the bucket's hash (field = node id, so a repeated
//! or lost-then-retried push never counts twice), refreshes the expiry and returns the sum of
//! all nodes' fields. One request per batch, atomic in Redis.
//!
//! Webdis maps `PUT /EVAL/<script>/0` to `EVAL <script> 0 <request body>` (a PUT body is the
//! last argument and, unlike a path segment, is never cut at a `.json`-like extension) and
//! answers `{"EVAL": [total, ...]}`, or `{"EVAL": [false, "ERR ..."]}` when Redis refuses,
//! or 503 with no body when Redis is down. Webdis keeps no connection per client, so
//! `MULTI`/`EXEC` across requests is not available; a script is.

use serde::Serialize;
use serde_json::Value;

use super::{Batch, SyncError};
use crate::config::{StoreKind, StorePlan};

/// The script: `ARGV[1]` is `{"n": "<node>", "e": [["<redis key>", <ttl s>, "<own>"], ...]}`;
/// returns one total per entry, in order. Own spend is sent as a string because Lua numbers
/// are doubles that would print `1e+15`; totals come back as Redis integers.
pub const SCRIPT: &str = "local b = cjson.decode(ARGV[1])
local out = {}
for i, e in ipairs(b.e) do
  local key, ttl, own = e[1], e[2], e[3]
  if own ~= '0' or redis.call('HEXISTS', key, b.n) == 1 then
    redis.call('HSET', key, b.n, own)
    redis.call('EXPIRE', key, ttl)
  end
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key)) do total = total + tonumber(v) end
  out[i] = total
end
return out
";

/// One HTTP callout that syncs a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// Callout upstream (`host:port`, the Envoy cluster name / Kong upstream).
    pub upstream: String,
    /// Headers including `:method`, `:path`, `:authority` and `:scheme`.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
    /// Callout timeout, milliseconds.
    pub timeout_ms: u64,
    /// What was sent; give it back with the answer.
    pub batch: Batch,
}

impl SyncRequest {
    /// The value of a header (the pseudo-headers too).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `ARGV[1]` of the script.
#[derive(Serialize)]
struct Body {
    n: String,
    e: Vec<(String, u64, String)>,
}

/// The Redis key of one bucket: `<prefix>:<counter key>:<window start>`.
pub fn bucket_key(prefix: &str, counter: &str, bucket: u64) -> String {
    format!("{prefix}:{counter}:{bucket}")
}

/// The callout for `batch`.
pub fn request(plan: &StorePlan, batch: Batch) -> SyncRequest {
    let body = Body {
        n: batch.node.to_string(),
        e: batch
            .entries
            .iter()
            .map(|e| (bucket_key(&plan.key_prefix, &e.key, e.bucket), 2 * e.window, e.own.to_string()))
            .collect(),
    };
    // Serialising strings and integers cannot fail; an empty body would be refused as garbage.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let (method, path) = match plan.kind {
        StoreKind::Webdis => ("PUT", format!("/EVAL/{}/0", percent_encode(SCRIPT))),
    };
    let headers = [
        (":method", method),
        (":path", path.as_str()),
        (":authority", plan.authority.as_str()),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("accept", "application/json"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    SyncRequest { upstream: plan.upstream.clone(), headers, body, timeout_ms: plan.timeout_ms, batch }
}

/// The longest answer to a batch of `entries` buckets: each total is at most 16 digits (2^53) and
/// a comma, around a short envelope (or a refusal's message). A longer answer is refused unread:
/// parsing it would cost the worker far more memory than its bytes.
pub fn max_answer_bytes(entries: usize) -> usize {
    entries.saturating_mul(24).saturating_add(4096)
}

/// The totals in an answer, one per entry of the batch, in order.
pub fn totals(kind: StoreKind, status: Option<u32>, body: &[u8], entries: usize) -> Result<Vec<u64>, SyncError> {
    match status {
        None => return Err(SyncError::Unreachable("no answer (timeout or reset)".to_owned())),
        Some(200) => {}
        Some(other) => return Err(SyncError::Status(other)),
    }
    if body.len() > max_answer_bytes(entries) {
        return Err(SyncError::Garbage(format!(
            "an answer over the {} bytes {entries} totals take",
            max_answer_bytes(entries)
        )));
    }
    let doc: Value = serde_json::from_slice(body).map_err(|e| SyncError::Garbage(format!("not JSON: {e}")))?;
    let reply = match kind {
        StoreKind::Webdis => doc.get("EVAL").ok_or_else(|| SyncError::Garbage("no EVAL member".to_owned()))?,
    };
    let items = reply.as_array().ok_or_else(|| SyncError::Garbage("EVAL is not a list".to_owned()))?;
    if let [Value::Bool(false), Value::String(message)] = items.as_slice() {
        return Err(SyncError::Refused(message.chars().take(200).collect()));
    }
    if items.len() != entries {
        return Err(SyncError::Garbage(format!("{} totals for {entries} buckets", items.len())));
    }
    // A total beyond any limit (2^53: the script sums in doubles) is a store fault, not spend: taken
    // as spend it would refuse a whole tier until its window ends.
    let count = |v: &Value| v.as_u64().filter(|n| *n <= crate::config::MAX_UNITS);
    items.iter().map(|v| count(v).ok_or_else(|| SyncError::Garbage(format!("total {v} is not a count")))).collect()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (Webdis decodes each path
/// segment, so `/` inside the script must be encoded too).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OnStoreFailure;
    use crate::store_sync::Entry;

    fn plan() -> StorePlan {
        crate::store_sync::tests::plan(OnStoreFailure::DivideByNodes(3))
    }

    #[test]
    fn request_is_one_put_with_the_batch_as_body() {
        let batch = Batch {
            id: 4,
            node: 77,
            entries: vec![
                Entry { key: "csg/b/T/t60sp/abc".into(), window: 60, bucket: 600, own: 12 },
                Entry { key: "csg/b/T/t60sp/abc".into(), window: 60, bucket: 540, own: 0 },
            ],
        };
        let req = request(&plan(), batch.clone());
        assert_eq!(req.header(":method"), Some("PUT"));
        assert_eq!(req.header(":authority"), Some("webdis"));
        let path = req.header(":path").unwrap_or_default();
        assert!(path.starts_with("/EVAL/local%20b%20%3D%20cjson.decode") && path.ends_with("/0"), "{path}");
        assert_eq!(path.matches('/').count(), 3, "the script is one path segment");
        assert_eq!(
            String::from_utf8(req.body).unwrap(),
            r#"{"n":"77","e":[["csg:csg/b/T/t60sp/abc:600",120,"12"],["csg:csg/b/T/t60sp/abc:540",120,"0"]]}"#
        );
        assert_eq!((req.upstream.as_str(), req.timeout_ms, req.batch), ("webdis:7379", 1000, batch));
    }

    #[test]
    fn answers_are_checked() {
        type Want = Result<Vec<u64>, SyncError>;
        let cases: &[(&str, Option<u32>, &str, Want)] = &[
            ("totals", Some(200), r#"{"EVAL":[5,0]}"#, Ok(vec![5, 0])),
            ("timeout", None, "", Err(SyncError::Unreachable("no answer (timeout or reset)".into()))),
            ("redis down behind webdis", Some(503), "", Err(SyncError::Status(503))),
            ("server error", Some(500), r#"{"EVAL":[1,2]}"#, Err(SyncError::Status(500))),
            (
                "not json",
                Some(200),
                "<html>",
                Err(SyncError::Garbage("not JSON: expected value at line 1 column 1".into())),
            ),
            ("other command", Some(200), r#"{"GET":"x"}"#, Err(SyncError::Garbage("no EVAL member".into()))),
            ("scalar", Some(200), r#"{"EVAL":3}"#, Err(SyncError::Garbage("EVAL is not a list".into()))),
            (
                "redis refuses",
                Some(200),
                r#"{"EVAL":[false,"ERR Error running script"]}"#,
                Err(SyncError::Refused("ERR Error running script".into())),
            ),
            ("too few totals", Some(200), r#"{"EVAL":[1]}"#, Err(SyncError::Garbage("1 totals for 2 buckets".into()))),
            (
                "negative total",
                Some(200),
                r#"{"EVAL":[1,-4]}"#,
                Err(SyncError::Garbage("total -4 is not a count".into())),
            ),
            ("fraction", Some(200), r#"{"EVAL":[1,2.5]}"#, Err(SyncError::Garbage("total 2.5 is not a count".into()))),
            (
                "a total beyond any limit (it would refuse a whole tier)",
                Some(200),
                r#"{"EVAL":[1,9223372036854775807]}"#,
                Err(SyncError::Garbage("total 9223372036854775807 is not a count".into())),
            ),
        ];
        for (name, status, body, want) in cases {
            assert_eq!(&totals(StoreKind::Webdis, *status, body.as_bytes(), 2), want, "{name}");
        }
    }

    /// The longest answer real totals make passes; one longer is refused before it is parsed
    /// (a JSON tree costs many times its bytes).
    #[test]
    fn an_answer_longer_than_its_totals_is_refused_unparsed() {
        let entries = 1000;
        let most = format!("{{\"EVAL\":[{}]}}", vec!["9007199254740992"; entries].join(","));
        assert!(most.len() <= max_answer_bytes(entries));
        assert_eq!(totals(StoreKind::Webdis, Some(200), most.as_bytes(), entries).map(|t| t.len()), Ok(entries));
        let padded = format!("{{\"EVAL\":[1,2],\"pad\":\"{}\"}}", " ".repeat(max_answer_bytes(2)));
        let Err(SyncError::Garbage(message)) = totals(StoreKind::Webdis, Some(200), padded.as_bytes(), 2) else {
            panic!("accepted")
        };
        assert!(message.starts_with("an answer over the 4144 bytes 2 totals take"), "{message}");
    }
}
