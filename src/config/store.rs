//! The `budget_store` part of the configuration: the shared Redis (through an HTTP bridge)
//! that the nodes of a cluster sync their budget counters with (issue #12).

use serde::Deserialize;

use super::ConfigError;

/// The HTTP bridge in front of Redis and the wire format it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// Webdis: `PUT /EVAL/<script>/0` with the batch as the request body, answers
    /// `{"EVAL": [...]}`. (An Upstash-style REST bridge would be a second variant.)
    Webdis,
}

/// What admission does while the store is unreachable, slow or answering garbage (and before
/// a starting node has pulled the cluster totals once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreFailure {
    /// Each limit is divided by this many nodes and counted against this node's own spend
    /// only: the cluster as a whole stays within its limits, as long as at most this many
    /// nodes serve.
    DivideByNodes(u32),
    /// Limits stay as configured, counted against the last cluster totals pulled plus this
    /// node's own spend: every node may spend what is left, so the cluster can overshoot up to
    /// its node count times for as long as the store is down.
    KeepLimits,
}

/// The `budget_store` object as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudgetStore {
    kind: StoreKind,
    upstream: String,
    #[serde(default)]
    authority: Option<String>,
    #[serde(default = "default_sync_ms")]
    sync_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    stale_after_ms: Option<u64>,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    on_failure: OnStoreFailure,
}

fn default_sync_ms() -> u64 {
    500
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_key_prefix() -> String {
    "csg".to_owned()
}

/// Shortest sync interval accepted, milliseconds.
const MIN_SYNC_MS: u64 = 100;
/// How often the filter's root context ticks, milliseconds: syncs start on ticks, so no two are
/// closer than this whatever `sync_ms` says.
pub const TICK_MS: u64 = 500;

/// Most nodes `on_failure.divide_by_nodes` may name.
const MAX_NODES: u32 = 10_000;
/// Longest key prefix accepted, bytes.
const MAX_PREFIX: usize = 32;

/// The compiled `budget_store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorePlan {
    /// Wire format of the bridge.
    pub kind: StoreKind,
    /// Callout upstream (`host:port`, the Envoy cluster name / Kong upstream).
    pub upstream: String,
    /// `:authority` of the callouts (default: `upstream`).
    pub authority: String,
    /// Least time between two syncs of this node, milliseconds.
    pub sync_ms: u64,
    /// Timeout of one sync callout, milliseconds.
    pub timeout_ms: u64,
    /// How long after the last successful sync the node counts as cut off from the store and
    /// admission switches to [`OnStoreFailure`], milliseconds.
    pub stale_after_ms: u64,
    /// Prefix of every Redis key (`<prefix>:<counter key>:<window start>`).
    pub key_prefix: String,
    /// Admission while cut off.
    pub on_failure: OnStoreFailure,
}

/// Longest sync period or staleness: an hour.
pub(crate) const MAX_PERIOD_MS: u64 = 3_600_000;

pub(super) fn compile_store(raw: RawBudgetStore) -> Result<StorePlan, ConfigError> {
    let upstream = super::check_upstream("budget_store.upstream", raw.upstream)?;
    let authority = match raw.authority {
        Some(a) if a.is_empty() || a.bytes().any(|b| b <= 0x20 || b >= 0x7f || b == b'/') => {
            return Err(ConfigError::new("budget_store.authority", "must be a host name or host:port"));
        }
        Some(a) => a,
        None => upstream.clone(),
    };
    if raw.sync_ms < MIN_SYNC_MS {
        return Err(ConfigError::new("budget_store.sync_ms", format!("must be at least {MIN_SYNC_MS}")));
    }
    if raw.timeout_ms == 0 {
        return Err(ConfigError::new("budget_store.timeout_ms", "must be greater than 0"));
    }
    // A host takes a callout timeout as 32-bit milliseconds; a sync period or staleness beyond an
    // hour would leave nodes apart for longer than most budget windows.
    super::check_at_most(&[
        ("budget_store.timeout_ms", raw.timeout_ms, super::MAX_TIMEOUT_MS),
        ("budget_store.sync_ms", raw.sync_ms, MAX_PERIOD_MS),
        ("budget_store.stale_after_ms", raw.stale_after_ms.unwrap_or(0), MAX_PERIOD_MS),
    ])?;
    // Two syncs missed, at the pace ticks allow, before a node counts as cut off.
    let stale_after_ms = raw.stale_after_ms.unwrap_or(2 * raw.sync_ms.max(TICK_MS) + raw.timeout_ms);
    // Syncs start on ticks: a node fresher than a tick's pace would count as cut off between
    // every two of them.
    if stale_after_ms < raw.sync_ms.max(TICK_MS) + raw.timeout_ms {
        return Err(ConfigError::new(
            "budget_store.stale_after_ms",
            format!(
                "must be at least budget_store.sync_ms (or the {TICK_MS} ms tick, if longer) + budget_store.timeout_ms"
            ),
        ));
    }
    let prefix_ok = !raw.key_prefix.is_empty()
        && raw.key_prefix.len() <= MAX_PREFIX
        && raw.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !prefix_ok {
        return Err(ConfigError::new(
            "budget_store.key_prefix",
            format!("must be 1 to {MAX_PREFIX} letters, digits, '-', '_' or '.'"),
        ));
    }
    if raw.on_failure == OnStoreFailure::DivideByNodes(0) {
        return Err(ConfigError::new("budget_store.on_failure.divide_by_nodes", "must be at least 1"));
    }
    // More nodes than any deployment runs would leave one token per window while cut off.
    if matches!(raw.on_failure, OnStoreFailure::DivideByNodes(n) if n > MAX_NODES) {
        return Err(ConfigError::new(
            "budget_store.on_failure.divide_by_nodes",
            format!("must be at most {MAX_NODES}"),
        ));
    }
    Ok(StorePlan {
        kind: raw.kind,
        upstream,
        authority,
        sync_ms: raw.sync_ms,
        timeout_ms: raw.timeout_ms,
        stale_after_ms,
        key_prefix: raw.key_prefix,
        on_failure: raw.on_failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample;
    use crate::config::Plan;
    use serde_json::{json, Value};

    fn load(doc: &Value) -> Result<Plan, String> {
        Plan::from_json(doc.to_string().as_bytes(), &|_| Some("k".to_owned())).map_err(|e| e.to_string())
    }

    fn with_store(store: Value) -> Value {
        let mut doc = sample();
        doc["budget_store"] = store;
        doc
    }

    #[test]
    fn absent_by_default_and_defaults_when_present() {
        assert_eq!(load(&sample()).unwrap().budget_store, None);
        let doc = with_store(json!({"kind": "webdis", "upstream": "redis-http:7379", "on_failure": "keep_limits"}));
        let store = load(&doc).unwrap().budget_store.unwrap();
        assert_eq!(
            store,
            StorePlan {
                kind: StoreKind::Webdis,
                upstream: "redis-http:7379".into(),
                authority: "redis-http:7379".into(),
                sync_ms: 500,
                timeout_ms: 1000,
                stale_after_ms: 2000,
                key_prefix: "csg".into(),
                on_failure: OnStoreFailure::KeepLimits,
            }
        );
        let fast = with_store(json!({"kind": "webdis", "upstream": "w:1", "sync_ms": 200, "timeout_ms": 300,
                                     "on_failure": "keep_limits"}));
        let store = load(&fast).unwrap().budget_store.unwrap();
        assert_eq!(store.stale_after_ms, 2 * TICK_MS + 300, "two syncs at the pace of ticks, not of sync_ms");
        let doc = with_store(json!({
            "kind": "webdis", "upstream": "127.0.0.1:7379", "authority": "webdis", "sync_ms": 250,
            "timeout_ms": 300, "stale_after_ms": 5000, "key_prefix": "prod.csg",
            "on_failure": {"divide_by_nodes": 3}
        }));
        let store = load(&doc).unwrap().budget_store.unwrap();
        assert_eq!((store.authority.as_str(), store.sync_ms, store.timeout_ms), ("webdis", 250, 300));
        assert_eq!((store.stale_after_ms, store.on_failure), (5000, OnStoreFailure::DivideByNodes(3)));
    }

    #[test]
    fn invalid_store_configs_name_the_field() {
        let base = || json!({"kind": "webdis", "upstream": "127.0.0.1:7379", "on_failure": {"divide_by_nodes": 3}});
        type Edit = fn(&mut Value);
        let cases: &[(&str, Edit, &str)] = &[
            (
                "unknown kind",
                |s| s["kind"] = json!("upstash"),
                "config error: budget_store.kind: unknown variant `upstash`, expected `webdis`",
            ),
            (
                "unknown field",
                |s| s["sync_seconds"] = json!(1),
                "config error: budget_store.sync_seconds: unknown field `sync_seconds`, expected one of `kind`, \
                 `upstream`, `authority`, `sync_ms`, `timeout_ms`, `stale_after_ms`, `key_prefix`, `on_failure`",
            ),
            (
                "URL instead of host:port",
                |s| s["upstream"] = json!("http://127.0.0.1:7379/"),
                "config error: budget_store.upstream: must be host:port (the Envoy cluster name / Kong upstream)",
            ),
            (
                "failure mode missing",
                |s| {
                    s.as_object_mut().map(|o| o.remove("on_failure"));
                },
                "config error: budget_store: missing field `on_failure`",
            ),
            (
                "unknown failure mode",
                |s| s["on_failure"] = json!("local"),
                "config error: budget_store.on_failure: unknown variant `local`, expected `divide_by_nodes` or \
                 `keep_limits`",
            ),
            (
                "a timeout a host would take as 0 (none)",
                |s| s["timeout_ms"] = json!(4_294_967_296_u64),
                "config error: budget_store.timeout_ms: must be at most 300000",
            ),
            (
                "a sync period that overflows the staleness",
                |s| s["sync_ms"] = json!(u64::MAX),
                "config error: budget_store.sync_ms: must be at most 3600000",
            ),
            (
                "zero nodes",
                |s| s["on_failure"] = json!({"divide_by_nodes": 0}),
                "config error: budget_store.on_failure.divide_by_nodes: must be at least 1",
            ),
            (
                "negative nodes",
                |s| s["on_failure"] = json!({"divide_by_nodes": -2}),
                "config error: budget_store.on_failure.divide_by_nodes: invalid value: integer `-2`, expected u32",
            ),
            (
                "more nodes than any deployment",
                |s| s["on_failure"] = json!({"divide_by_nodes": 4_000_000_000_u64}),
                "config error: budget_store.on_failure.divide_by_nodes: must be at most 10000",
            ),
            (
                "an authority that is not ASCII",
                |s| s["authority"] = json!("webdis\u{e9}"),
                "config error: budget_store.authority: must be a host name or host:port",
            ),
            (
                "sync too often",
                |s| s["sync_ms"] = json!(50),
                "config error: budget_store.sync_ms: must be at least 100",
            ),
            (
                "zero timeout",
                |s| s["timeout_ms"] = json!(0),
                "config error: budget_store.timeout_ms: must be greater than 0",
            ),
            (
                "stale before a sync can answer",
                |s| s["stale_after_ms"] = json!(1000),
                "config error: budget_store.stale_after_ms: must be at least budget_store.sync_ms (or the 500 ms \
                 tick, if longer) + budget_store.timeout_ms",
            ),
            (
                "stale between two ticks",
                |s| {
                    s["sync_ms"] = json!(100);
                    s["timeout_ms"] = json!(100);
                    s["stale_after_ms"] = json!(200);
                },
                "config error: budget_store.stale_after_ms: must be at least budget_store.sync_ms (or the 500 ms \
                 tick, if longer) + budget_store.timeout_ms",
            ),
            (
                "prefix with a colon",
                |s| s["key_prefix"] = json!("csg:prod"),
                "config error: budget_store.key_prefix: must be 1 to 32 letters, digits, '-', '_' or '.'",
            ),
            (
                "empty authority",
                |s| s["authority"] = json!(""),
                "config error: budget_store.authority: must be a host name or host:port",
            ),
        ];
        for (name, edit, want) in cases {
            let mut store = base();
            edit(&mut store);
            let err = load(&with_store(store)).unwrap_err();
            // serde appends where in the document it stopped; the message before it is exact.
            assert_eq!(err.split(" at line ").next(), Some(*want), "{name}");
        }
    }
}
