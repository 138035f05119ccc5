//! The configuration document exactly as an operator writes it: serde types with
//! `deny_unknown_fields` and the defaults. [`super::Plan`] compiles them.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::limits::{self, RawPrice};
use super::Provider;
use crate::budget::{Counts, Per, WindowType};

// Kong serialises an empty Lua table as `{}`, so every list also accepts an empty object.
pub(super) fn list<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ListVisitor<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for ListVisitor<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Vec<T>, A::Error> {
            match map.next_key::<de::IgnoredAny>()? {
                None => Ok(Vec::new()),
                Some(_) => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
            }
        }
    }

    deserializer.deserialize_any(ListVisitor(std::marker::PhantomData))
}

/// A JSON object as a map, refusing a name given twice (serde's own map keeps the last silently:
/// a second `targets.anthropic` would replace the first without a word).
fn unique_map<'de, D, V>(deserializer: D) -> Result<HashMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct MapVisitor<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> de::Visitor<'de> for MapVisitor<V> {
        type Value = HashMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut map = HashMap::new();
            while let Some(name) = access.next_key::<String>()? {
                if map.contains_key(&name) {
                    return Err(de::Error::custom(format!("{name:?} is given twice")));
                }
                let value = access.next_value()?;
                map.insert(name, value);
            }
            Ok(map)
        }
    }

    deserializer.deserialize_map(MapVisitor(std::marker::PhantomData))
}

/// The configuration document exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) oidc: RawOidc,
    #[serde(default)]
    pub(super) identity_headers: RawIdentityHeaders,
    // u64, as on the wasm32 target a usize could not even hold what the limit refuses.
    #[serde(default = "default_max_body_bytes")]
    pub(super) max_body_bytes: u64,
    #[serde(default = "default_validation_cache_bytes")]
    pub(super) validation_cache_bytes: u64,
    #[serde(deserialize_with = "unique_map")]
    pub(super) targets: HashMap<String, RawTarget>,
    #[serde(deserialize_with = "list")]
    pub(super) models: Vec<RawModel>,
    #[serde(deserialize_with = "list")]
    pub(super) tiers: Vec<RawTier>,
    #[serde(default)]
    pub(super) budgets: limits::RawBudgets,
    #[serde(default)]
    pub(super) access: RawAccess,
    #[serde(default)]
    pub(super) budget_store: Option<super::store::RawBudgetStore>,
}

/// What a person without access is told.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccess {
    #[serde(default)]
    pub(super) contact: Option<String>,
    #[serde(default)]
    pub(super) show_groups: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    pub(super) issuer: String,
    #[serde(deserialize_with = "list")]
    pub(super) audiences: Vec<String>,
    #[serde(default)]
    pub(super) upstream: Option<String>,
    #[serde(default)]
    pub(super) jwks_uri: Option<String>,
    #[serde(default)]
    pub(super) jwks_upstream: Option<String>,
    #[serde(default = "default_groups_claim")]
    pub(super) groups_claim: String,
    #[serde(default = "default_audience_claim")]
    pub(super) audience_claim: String,
    #[serde(default = "default_leeway")]
    pub(super) leeway_seconds: u64,
    #[serde(default)]
    pub(super) max_token_age_seconds: Option<u64>,
    #[serde(default = "default_keys_fail_fast")]
    pub(super) keys_fail_fast_seconds: u64,
    #[serde(default = "default_max_token_bytes")]
    pub(super) max_token_bytes: u64,
    #[serde(default = "default_refresh")]
    pub(super) jwks_refresh_seconds: u64,
    #[serde(default = "default_max_age")]
    pub(super) jwks_max_age_seconds: u64,
    #[serde(default = "default_unknown_kid")]
    pub(super) unknown_kid_refetch_seconds: u64,
    #[serde(default = "default_callout_timeout")]
    pub(super) callout_timeout_ms: u64,
    #[serde(default = "default_token_cache")]
    pub(super) token_cache_entries: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentityHeaders {
    #[serde(default = "default_user_header")]
    pub(super) user: String,
    #[serde(default = "default_email_header")]
    pub(super) email: String,
    #[serde(default = "default_tier_header")]
    pub(super) tier: String,
}

impl Default for RawIdentityHeaders {
    fn default() -> Self {
        Self { user: default_user_header(), email: default_email_header(), tier: default_tier_header() }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) provider: Provider,
    #[serde(default)]
    pub(super) api_key: Option<String>,
    #[serde(default)]
    pub(super) api_key_env: Option<String>,
    /// Bedrock only (see `super::bedrock`).
    #[serde(default)]
    pub(super) region: Option<String>,
    #[serde(default)]
    pub(super) access_key_id: Option<String>,
    #[serde(default)]
    pub(super) access_key_id_env: Option<String>,
    #[serde(default)]
    pub(super) secret_access_key: Option<String>,
    #[serde(default)]
    pub(super) secret_access_key_env: Option<String>,
    #[serde(default)]
    pub(super) session_token: Option<String>,
    #[serde(default)]
    pub(super) session_token_env: Option<String>,
    #[serde(default, deserialize_with = "optional_list")]
    pub(super) betas: Option<Vec<String>>,
}

// `list` for a field that may be absent or null (its default then applies).
fn optional_list<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Listed<T>(Vec<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Listed<T> {
        fn deserialize<D2: Deserializer<'de>>(deserializer: D2) -> Result<Self, D2::Error> {
            list(deserializer).map(Listed)
        }
    }

    Ok(Option::<Listed<T>>::deserialize(deserializer)?.map(|l| l.0))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) alias: String,
    pub(super) target: String,
    pub(super) model_id: String,
    #[serde(default)]
    pub(super) price: Option<RawPrice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTier {
    pub(super) name: String,
    #[serde(deserialize_with = "list")]
    pub(super) groups: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub(super) models: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    pub(super) limits: Vec<limits::RawLimit>,
    #[serde(default)]
    pub(super) window_type: Option<WindowType>,
    #[serde(default)]
    pub(super) counts: Option<Counts>,
    #[serde(default)]
    pub(super) per: Option<Per>,
}

fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_validation_cache_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_audience_claim() -> String {
    "aud".to_owned()
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_leeway() -> u64 {
    60
}
fn default_max_token_bytes() -> u64 {
    16384
}
fn default_refresh() -> u64 {
    300
}
fn default_max_age() -> u64 {
    86_400
}
fn default_keys_fail_fast() -> u64 {
    60
}
fn default_unknown_kid() -> u64 {
    1
}
fn default_callout_timeout() -> u64 {
    5000
}
fn default_token_cache() -> usize {
    4096
}
fn default_user_header() -> String {
    "x-authenticated-user".to_owned()
}
fn default_email_header() -> String {
    "x-user-email".to_owned()
}
fn default_tier_header() -> String {
    "x-user-tier".to_owned()
}

/// A step of the path to a value in the configuration document.
#[derive(Clone, Copy)]
enum PathStep<'a> {
    Key(&'a str),
    Index(usize),
}

/// Whether the value at `path` is a list in the configuration (everywhere else an array is refused).
fn holds_a_list(path: &[PathStep<'_>]) -> bool {
    use PathStep::{Index, Key};
    matches!(
        path,
        [Key("oidc"), Key("audiences")]
            | [Key("models" | "tiers")]
            | [Key("tiers"), Index(_), Key("groups" | "models" | "limits")]
            | [Key("targets"), Key(_), Key("betas")]
    )
}

/// `path` written as the parser's errors write a field: `tiers[1].limits[0]`.
fn field(path: &[PathStep<'_>]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            PathStep::Key(key) if out.is_empty() => out.push_str(key),
            PathStep::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            PathStep::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Refuses an array where the configuration has an object (or a name, a number): serde fills a
/// struct from an array by position, so `"limits": [[60, 100000]]` would load as 60 tokens per
/// 100,000 s, and `"price": [15, 3, 0.3, 3.75]` would swap prices, without a word.
pub(super) fn no_positional_objects(document: &serde_json::Value) -> Result<(), super::ConfigError> {
    fn walk<'a>(value: &'a serde_json::Value, path: &mut Vec<PathStep<'a>>) -> Result<(), super::ConfigError> {
        match value {
            serde_json::Value::Array(_) if !holds_a_list(path) => {
                Err(super::ConfigError::new(field(path), "invalid type: array, expected an object with named fields"))
            }
            serde_json::Value::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
                path.push(PathStep::Index(i));
                let walked = walk(item, path);
                path.pop();
                walked
            }),
            serde_json::Value::Object(members) => members.iter().try_for_each(|(key, member)| {
                path.push(PathStep::Key(key));
                let walked = walk(member, path);
                path.pop();
                walked
            }),
            _ => Ok(()),
        }
    }
    walk(document, &mut Vec::new())
}
