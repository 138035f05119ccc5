//! claude-sso-gateway: a Proxy-Wasm filter that authenticates Claude Code users with the
//! company's OpenID Provider, limits each person to their tier's models, and forwards requests
//! to the provider with a key the person never sees.
//!
//! Only [`host`] touches `proxy_wasm`; every other module is plain Rust tested natively.

pub mod bedrock;
pub mod budget;
pub mod config;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod gateway;
pub mod jwks;
pub mod jwt;
pub mod keystore;
pub mod metering;
pub mod record;
pub mod reply;
pub mod request;
pub mod routing;
pub mod scan;
pub mod shared;
pub mod sse;
pub mod store_sync;
pub mod strict_json;
pub mod tier;
pub mod token_cache;
pub mod url;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod host;
