//! Every Proxy-Wasm host function the filter calls, and nothing else. Each call handles the
//! `Err` the SDK returns (its trait helpers would `unwrap` it and abort the VM); a status the
//! SDK itself does not map still panics inside `proxy_wasm::hostcalls`, which no host has been
//! seen to return for these calls. None of the functions that ngx_wasm_module (Kong) links but
//! traps on is reachable from here: `proxy_close_stream`, `proxy_grpc_*`, `proxy_get_log_level`,
//! `proxy_done`, `proxy_resolve_shared_queue`. `tests/test_kong.py` keeps this list honest.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

use crate::keystore::Callout;
use crate::reply::Reply;
use crate::request::{Host, HostProfile};
use crate::routing::BodyEdit;
use crate::shared::{SharedStore, StoreError};

/// Writes a log line. Callers never pass a key or a token.
pub fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Host time in whole seconds since the epoch (0 if the host cannot tell).
pub fn now() -> u64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

/// Host time in milliseconds since the epoch (0 if the host cannot tell).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sets the root context's tick period.
pub fn set_tick_period(period: Duration) {
    if hostcalls::set_tick_period(period).is_err() {
        log(LogLevel::Error, "claude-sso-gateway: could not set the tick period");
    }
}

/// The plugin configuration bytes.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten()
}

#[link(wasm_import_module = "env")]
extern "C" {
    // The SDK's own declaration, with plain integers: the SDK's `get_map` panics on a value
    // that is not UTF-8 (see `crate::header_map`) and on a status it does not know.
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
}

/// A header map as the host serializes it (read it with [`crate::header_map::pairs`]); empty
/// when the host has none to give.
fn header_map(map_type: MapType) -> Vec<u8> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer and a size through the two out-pointers, which point to
    // live locals.
    let status = unsafe { proxy_get_header_map_pairs(map_type as u32, &mut data, &mut size) };
    if status != Status::Ok as u32 || data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host allocated `size` bytes at `data` through the SDK's
    // `proxy_on_memory_allocate` (a `Vec<u8>` of that capacity, forgotten) and hands them over;
    // the SDK's `get_map` takes them back the same way.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// All request headers, serialized, in the host's order, repeated names repeated (one host call).
pub fn request_headers() -> Vec<u8> {
    header_map(MapType::HttpRequestHeaders)
}

/// Which host runs the filter: only nginx has `ngx.*` properties (read in a request, where
/// ngx_wasm_module can resolve nginx variables; Envoy answers "not found").
pub fn host_profile() -> HostProfile {
    match hostcalls::get_property(vec!["ngx", "nginx_version"]) {
        Ok(Some(_)) => HostProfile::Ngx,
        _ => HostProfile::Envoy,
    }
}

/// Sets (replaces) a request header.
pub fn set_request_header(name: &str, value: &str) {
    if hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value)).is_err() {
        log(LogLevel::Warn, &format!("claude-sso-gateway: could not set request header {name}"));
    }
}

/// Removes a request header.
pub fn remove_request_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name);
}

/// All response headers, serialized, in the host's order (one host call).
pub fn response_headers() -> Vec<u8> {
    header_map(MapType::HttpResponseHeaders)
}

/// A response header (`None` when absent or not UTF-8).
pub fn response_header(name: &str) -> Option<String> {
    let bytes = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// Sets (replaces) a response header.
pub fn set_response_header(name: &str, value: &str) {
    let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, Some(value));
}

/// Removes a response header.
pub fn remove_response_header(name: &str) {
    let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, name);
}

/// Replaces the response body chunk being delivered (size: the larger of old and new, as for
/// the request body; ngx_wasm_module truncates to it).
pub fn replace_response_chunk(old_size: usize, bytes: &[u8]) {
    if hostcalls::set_buffer(BufferType::HttpResponseBody, 0, old_size.max(bytes.len()), bytes).is_err() {
        log(LogLevel::Warn, "claude-sso-gateway: could not replace a response chunk");
    }
}

/// The response body chunk being delivered.
pub fn response_chunk(size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten().unwrap_or_default()
}

/// The buffered request body; `None` when the host has none to give (nginx hands none for a
/// body it spilled to a temp file).
pub fn request_body(size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()
}

/// Replaces the start of the request body: Envoy drains `edit.replaced` bytes and prepends
/// `edit.bytes`; ngx_wasm_module takes `edit.bytes` as the whole body (cut to `edit.replaced`,
/// which for ngx is at least their length: [`BodyEdit::whole`]).
pub fn edit_request_body(edit: &BodyEdit) -> bool {
    hostcalls::set_buffer(BufferType::HttpRequestBody, 0, edit.replaced, &edit.bytes).is_ok()
}

/// Sends a local response.
pub fn send_reply(reply: &Reply) {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let body = (!reply.body.is_empty()).then_some(reply.body.as_slice());
    if hostcalls::send_http_response(reply.status, headers, body).is_err() {
        log(LogLevel::Error, "claude-sso-gateway: could not send a local response");
    }
}

/// Lets a paused request continue.
pub fn resume_request() {
    if hostcalls::resume_http_request().is_err() {
        log(LogLevel::Error, "claude-sso-gateway: could not resume the request");
    }
}

/// Dispatches a GET callout; the answer comes to the calling context's `on_http_call_response`.
pub fn dispatch(callout: &Callout, timeout: Duration) -> Result<u32, Status> {
    let headers = vec![
        (":method", "GET"),
        (":path", callout.path.as_str()),
        (":authority", callout.authority.as_str()),
        (":scheme", callout.scheme.as_str()),
        ("accept", "application/json"),
    ];
    hostcalls::dispatch_http_call(&callout.upstream, headers, None, vec![], timeout)
}

/// Dispatches a callout with these headers (pseudo-headers included) and body.
pub fn dispatch_request(
    upstream: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    hostcalls::dispatch_http_call(upstream, headers, Some(body), vec![], Duration::from_millis(timeout_ms))
}

/// Status and body of the callout being answered. ngx_wasm_module reports a failed callout
/// with no `:status` and a `:dispatch_status` reason instead; that reason is returned too.
pub fn call_response(body_size: usize) -> (Option<u32>, Vec<u8>, Option<String>) {
    let header = |name: &str| {
        let bytes = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten()?;
        String::from_utf8(bytes).ok()
    };
    let status = header(":status").and_then(|s| s.parse().ok());
    let reason = match status {
        Some(_) => None,
        None => header(":dispatch_status"),
    };
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default();
    (status, body, reason)
}

/// Sets a property for the host (Envoy: filter state for the access log). A host that has no
/// place for it refuses; that is not an error here.
pub fn set_property(name: &str, value: &str) {
    let _ = hostcalls::set_property(vec![name], Some(value.as_bytes()));
}

/// The host as the plain-Rust code sees it: time, key callouts and shared data. The clock is
/// read at most once per value: make one for each host callback, so that the callback's steps
/// share one time and one host call.
#[derive(Default)]
pub struct HostCalls {
    now_ms: std::cell::Cell<Option<u64>>,
}

impl Host for HostCalls {
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }

    fn now_ms(&self) -> u64 {
        match self.now_ms.get() {
            Some(ms) => ms,
            None => {
                let ms = now_ms();
                self.now_ms.set(Some(ms));
                ms
            }
        }
    }

    fn dispatch(&self, callout: &Callout, timeout_ms: u64) -> Result<u32, String> {
        dispatch(callout, Duration::from_millis(timeout_ms)).map_err(|status| {
            let reason = format!("upstream {} refused the callout: {status:?}", callout.upstream);
            log(LogLevel::Warn, &format!("claude-sso-gateway: key fetch: {reason}"));
            reason
        })
    }
}

impl SharedStore for HostCalls {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        hostcalls::get_shared_data(key).map_err(|s| StoreError::Host(format!("{s:?}")))
    }

    fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(s) => Err(StoreError::Host(format!("{s:?}"))),
        }
    }
}

/// Defines a metric; `None` if the host refuses the name.
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

/// Records a value in a histogram metric.
pub fn record_metric(id: u32, value: u64) {
    let _ = hostcalls::record_metric(id, value);
}

/// Adds to a counter metric.
pub fn increment_counter(id: u32, value: u64) {
    let _ = hostcalls::increment_metric(id, i64::try_from(value).unwrap_or(i64::MAX));
}
