//! claude-sso-gateway: a Proxy-Wasm filter that authenticates Claude Code users with the
//! company's OpenID Provider, limits each person to their tier's models, and forwards requests
//! to the provider with a key the person never sees.
//!
//! Only [`host`] touches `proxy_wasm`; every other module is plain Rust tested natively.
//!
//! Modules are `pub(crate)` unless an example, an integration test or the fuzz crate uses them,
//! so the compiler reports what nothing calls. The host layer exists only on wasm32, so only the
//! wasm32 build can tell dead code apart (`make lint` runs clippy there with warnings denied).
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

// Every request body is scanned with simd128 (.cargo/config.toml turns it on for wasm32). A
// `RUSTFLAGS` in the environment replaces that setting, and the filter would still build, with a
// scanner three times slower; so such a build stops here instead.
#[cfg(all(target_arch = "wasm32", not(target_feature = "simd128")))]
compile_error!(
    "build for wasm32 with `-C target-feature=+simd128` (the repository's .cargo/config.toml sets it; \
     a RUSTFLAGS in the environment replaces it, so add the flag there)"
);

pub(crate) mod allocator;
pub(crate) mod answer_end;
pub(crate) mod answer_headers;
pub mod bedrock;
pub(crate) mod body_watch;
pub mod budget;
pub mod config;
pub(crate) mod credential_refusal;
pub(crate) mod error_page;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub(crate) mod gateway;
pub(crate) mod header_map;
pub mod jwks;
pub(crate) mod jwt;
pub(crate) mod keystore;
pub(crate) mod metering;
pub(crate) mod record;
pub(crate) mod refused_tokens;
pub(crate) mod reply;
pub(crate) mod request;
pub mod routing;
pub mod scan;
pub mod shared;
pub(crate) mod sse;
pub mod store_sync;
pub(crate) mod strict_json;
pub(crate) mod tier;
pub(crate) mod token_cache;
pub(crate) mod url;
pub(crate) mod usage;
pub mod validated_elements;

#[cfg(target_arch = "wasm32")]
mod host;
