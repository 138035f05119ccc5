//! Every Proxy-Wasm host function the filter calls, and nothing else. Each is declared here by
//! hand with plain integers (the `abi` block below), so whatever status a host returns is a
//! value, never a panic: the SDK's `hostcalls` panic on any status they do not expect, and hosts
//! do return such statuses (Envoy answers `BadArgument` for the headers of a callout that failed
//! after its headers, and for a header value it will not take). Only `proxy_http_call` goes
//! through the SDK, which must note the callout's token to route its answer; it maps every
//! status Envoy and ngx_wasm_module return for it. None of the functions that ngx_wasm_module
//! (Kong) links but traps on is reachable from here: `proxy_close_stream`, `proxy_grpc_*`,
//! `proxy_get_log_level`, `proxy_done`, `proxy_resolve_shared_queue`. `tests/test_kong.py`
//! keeps this list honest.

use std::ptr::{null, null_mut};
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};

use crate::keystore::Callout;
use crate::reply::Reply;
use crate::request::{Host, HostProfile};
use crate::routing::BodyEdit;
use crate::shared::{self, CreateRule, RawShared, SharedStore, StoreError};

/// The host functions, as the ABI declares them (the SDK's declarations with plain integers
/// for its enums: a status the SDK's `Status` does not list is then a number, not undefined
/// behaviour). Each returns a status; `0` is Ok.
mod abi {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
        pub fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            buffer_data: *const u8,
            buffer_size: usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_property(
            path_data: *const u8,
            path_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
            return_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_define_metric(
            metric_type: u32,
            name_data: *const u8,
            name_size: usize,
            return_id: *mut u32,
        ) -> u32;
        pub fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
        pub fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    }
}

/// A status other than Ok from a host function (the ABI's number: 1 not found, 2 bad argument,
/// 8 CAS mismatch, 10 internal failure, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostStatus(pub u32);

const OK: u32 = Status::Ok as u32;
const NOT_FOUND: u32 = Status::NotFound as u32;
const CAS_MISMATCH: u32 = Status::CasMismatch as u32;

fn status(code: u32) -> Result<(), HostStatus> {
    if code == OK {
        Ok(())
    } else {
        Err(HostStatus(code))
    }
}

/// Bytes the host returned through a pointer and a size: `None` when it returned none (not
/// found, or no pointer).
fn returned(code: u32, data: *mut u8, size: usize) -> Result<Option<Vec<u8>>, HostStatus> {
    match code {
        OK if !data.is_null() => {
            // SAFETY: the host allocated `size` bytes at `data` through the SDK's
            // `proxy_on_memory_allocate` (a `Vec<u8>` of that capacity, forgotten) and hands them
            // over; the SDK's own wrappers take them back the same way.
            Ok(Some(unsafe { Vec::from_raw_parts(data, size, size) }))
        }
        OK | NOT_FOUND => Ok(None),
        code => Err(HostStatus(code)),
    }
}

/// A map serialized as the ABI takes it: the count, each name's and value's length, then each
/// name and value followed by a NUL.
fn serialize_map(map: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + map.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    bytes.extend_from_slice(&len(map.len()));
    for (name, value) in map {
        bytes.extend_from_slice(&len(name.len()));
        bytes.extend_from_slice(&len(value.len()));
    }
    for (name, value) in map {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// A property path serialized as the ABI takes it: the parts joined by NULs.
fn serialize_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

/// Writes a log line. Callers never pass a key or a token.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: the pointer and length describe `message`, alive for the call.
    let _ = unsafe { abi::proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Host time in nanoseconds since the epoch (0 if the host cannot tell).
fn now_ns() -> u64 {
    let mut ns = 0;
    // SAFETY: the host writes the time through a pointer to a live local.
    let code = unsafe { abi::proxy_get_current_time_nanoseconds(&mut ns) };
    if code == OK {
        ns
    } else {
        0
    }
}

/// Host time in whole seconds since the epoch (0 if the host cannot tell).
pub fn now() -> u64 {
    now_ns() / 1_000_000_000
}

/// Host time in milliseconds since the epoch (0 if the host cannot tell).
pub fn now_ms() -> u64 {
    now_ns() / 1_000_000
}

/// Sets the root context's tick period; false when the host has no timer.
pub fn set_tick_period(period: Duration) -> bool {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    status(unsafe { abi::proxy_set_tick_period_milliseconds(ms) }).is_ok()
}

/// Bytes of a host buffer from `start`, at most `max`.
fn buffer(kind: BufferType, start: usize, max: usize) -> Result<Option<Vec<u8>>, HostStatus> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes a pointer and a size through pointers to live locals.
    let code = unsafe { abi::proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    returned(code, data, size)
}

/// Replaces `size` bytes of a host buffer from `start` with `bytes`.
fn set_buffer(kind: BufferType, start: usize, size: usize, bytes: &[u8]) -> Result<(), HostStatus> {
    // SAFETY: the pointer and length describe `bytes`, alive for the call.
    status(unsafe { abi::proxy_set_buffer_bytes(kind as u32, start, size, bytes.as_ptr(), bytes.len()) })
}

/// The plugin configuration bytes.
pub fn plugin_configuration() -> Option<Vec<u8>> {
    buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten()
}

/// A header map as the host serializes it (read it with [`crate::header_map::pairs`]); empty
/// when the host has none to give. (The SDK's `get_map` also panics on a value that is not
/// UTF-8: see `crate::header_map`.)
fn header_map(map_type: MapType) -> Vec<u8> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the host writes a pointer and a size through pointers to live locals.
    let code = unsafe { abi::proxy_get_header_map_pairs(map_type as u32, &mut data, &mut size) };
    returned(code, data, size).ok().flatten().unwrap_or_default()
}

/// One header's value (`None` when absent, not UTF-8, or the host has no such map).
fn header(map_type: MapType, name: &str) -> Option<String> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the name's pointer and length describe `name`; the host writes a pointer and a
    // size through pointers to live locals.
    let code =
        unsafe { abi::proxy_get_header_map_value(map_type as u32, name.as_ptr(), name.len(), &mut data, &mut size) };
    String::from_utf8(returned(code, data, size).ok().flatten()?).ok()
}

/// Sets (replaces) a header.
fn set_header(map_type: MapType, name: &str, value: &str) -> Result<(), HostStatus> {
    // SAFETY: the pointers and lengths describe `name` and `value`, alive for the call.
    status(unsafe {
        abi::proxy_replace_header_map_value(map_type as u32, name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Removes a header.
fn remove_header(map_type: MapType, name: &str) -> Result<(), HostStatus> {
    // SAFETY: the pointer and length describe `name`, alive for the call.
    status(unsafe { abi::proxy_remove_header_map_value(map_type as u32, name.as_ptr(), name.len()) })
}

/// All request headers, serialized, in the host's order, repeated names repeated (one host call).
pub fn request_headers() -> Vec<u8> {
    header_map(MapType::HttpRequestHeaders)
}

/// Which host runs the filter: only nginx has `ngx.*` properties (read in a request, where
/// ngx_wasm_module can resolve nginx variables; Envoy answers "not found").
pub fn host_profile() -> HostProfile {
    // A version such as `1.27.2`: a host answering with nothing, or with anything else, is
    // not nginx (the Ngx profile lets request headers go on before the body is decided).
    match property(&["ngx", "nginx_version"]) {
        Some(v) if v.first().is_some_and(u8::is_ascii_digit) && v.iter().all(|b| b.is_ascii_digit() || *b == b'.') => {
            HostProfile::Ngx
        }
        _ => HostProfile::Envoy,
    }
}

/// nginx's request URI as the client sent it (`$request_uri`): what nginx's proxy module
/// forwards, whereas the `:path` ngx_wasm_module lists is nginx's decoded, normalised `$uri`.
pub fn ngx_request_uri() -> Option<Vec<u8>> {
    property(&["ngx", "request_uri"])
}

/// A host property's value; `None` when the host has none (or answers with an error).
fn property(path: &[&str]) -> Option<Vec<u8>> {
    let path = serialize_path(path);
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the path's pointer and length describe `path`; the host writes a pointer and a
    // size through pointers to live locals.
    let code = unsafe { abi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    returned(code, data, size).ok().flatten()
}

/// Makes the request `context_id` the one the next host calls act on (from the root context's
/// timer). False when the host no longer knows it.
pub fn set_effective_context(context_id: u32) -> bool {
    proxy_wasm::hostcalls::set_effective_context(context_id).is_ok()
}

/// Sets (replaces) a request header; false (and an error logged) when the host refuses.
pub fn set_request_header(name: &str, value: &str) -> bool {
    let done = set_header(MapType::HttpRequestHeaders, name, value).is_ok();
    if !done {
        log(LogLevel::Error, &format!("claude-sso-gateway: could not set request header {name}"));
    }
    done
}

/// Removes a request header; false (and an error logged) when the host refuses.
pub fn remove_request_header(name: &str) -> bool {
    let done = remove_header(MapType::HttpRequestHeaders, name).is_ok();
    if !done {
        log(LogLevel::Error, &format!("claude-sso-gateway: could not remove request header {name}"));
    }
    done
}

/// All response headers, serialized, in the host's order (one host call).
pub fn response_headers() -> Vec<u8> {
    header_map(MapType::HttpResponseHeaders)
}

/// A response header (`None` when absent or not UTF-8).
pub fn response_header(name: &str) -> Option<String> {
    header(MapType::HttpResponseHeaders, name)
}

/// Sets (replaces) a response header.
pub fn set_response_header(name: &str, value: &str) {
    let _ = set_header(MapType::HttpResponseHeaders, name, value);
}

/// Removes a response header.
pub fn remove_response_header(name: &str) {
    let _ = remove_header(MapType::HttpResponseHeaders, name);
}

/// Replaces the response body chunk being delivered (size: the larger of old and new, as for
/// the request body; ngx_wasm_module truncates to it).
pub fn replace_response_chunk(old_size: usize, bytes: &[u8]) {
    if set_buffer(BufferType::HttpResponseBody, 0, old_size.max(bytes.len()), bytes).is_err() {
        log(LogLevel::Warn, "claude-sso-gateway: could not replace a response chunk");
    }
}

/// The response body chunk being delivered.
pub fn response_chunk(size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    buffer(BufferType::HttpResponseBody, 0, size).ok().flatten().unwrap_or_default()
}

/// The buffered request body; `None` when the host has none to give (nginx hands none for a
/// body it spilled to a temp file).
pub fn request_body(size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()
}

/// Replaces the start of the request body: Envoy drains `edit.replaced` bytes and prepends
/// `edit.bytes`; ngx_wasm_module takes `edit.bytes` as the whole body (cut to `edit.replaced`,
/// which for ngx is at least their length: [`BodyEdit::whole`]).
pub fn edit_request_body(edit: &BodyEdit) -> bool {
    set_buffer(BufferType::HttpRequestBody, 0, edit.replaced, &edit.bytes).is_ok()
}

/// Sends a local response.
pub fn send_reply(reply: &Reply) {
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let headers = serialize_map(&headers);
    let body = &reply.body;
    // SAFETY: the pointers and lengths describe `body` and `headers`, alive for the call; no
    // details string (null, 0).
    let code = unsafe {
        abi::proxy_send_local_response(
            reply.status,
            null(),
            0,
            if body.is_empty() { null() } else { body.as_ptr() },
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    if status(code).is_err() {
        log(LogLevel::Error, "claude-sso-gateway: could not send a local response");
    }
}

/// Lets a paused request continue.
pub fn resume_request() {
    // SAFETY: no pointers.
    if status(unsafe { abi::proxy_continue_stream(StreamType::HttpRequest as u32) }).is_err() {
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

/// Status and body of the callout being answered, and the host's reason when there is no
/// status. A callout can fail after its headers came (a reset, or a body slower than the
/// timeout): Envoy then has no headers to give (`BadArgument`); ngx_wasm_module keeps the status
/// line it read, says why in `:dispatch_status` (otherwise "ok"), and aborts the worker if the
/// body is asked for. So a failure is told apart first, and the body is read only without one.
///
/// At most `max + 1` bytes of the body are read: a longer answer is refused by its reader as too
/// long, without the whole of it ever being copied into the VM (whose memory never shrinks).
pub fn call_response(body_size: usize, max: usize) -> (Option<u32>, Vec<u8>, Option<String>) {
    let failed = |reason: String| (None, Vec::new(), Some(reason));
    if let Some(reason) = header(MapType::HttpCallResponseHeaders, ":dispatch_status").filter(|s| s != "ok") {
        return failed(reason);
    }
    let status = header(MapType::HttpCallResponseHeaders, ":status").and_then(|s| s.trim().parse().ok());
    let Some(status) = status else {
        return failed("no response (the callout failed)".to_owned());
    };
    let body = if body_size == 0 {
        Vec::new()
    } else {
        let size = body_size.min(max.saturating_add(1));
        buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten().unwrap_or_default()
    };
    (Some(status), body, None)
}

/// Sets a property for the host (Envoy: filter state for the access log); false when the host
/// has no place for it.
pub fn set_property(name: &str, value: &str) -> bool {
    // SAFETY: the pointers and lengths describe `name` (a one-part path) and `value`, alive for
    // the call.
    status(unsafe { abi::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) }).is_ok()
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

thread_local! {
    /// How this VM's host creates a shared-data key, learnt once for every context.
    static CREATE_RULE: CreateRule = const { CreateRule::new() };
}

impl SharedStore for HostCalls {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        self.raw_get(key)
    }

    fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        CREATE_RULE.with(|rule| shared::cas_set_raw(self, rule, key, value, cas))
    }
}

impl RawShared for HostCalls {
    fn raw_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
        let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
        // SAFETY: the key's pointer and length describe `key`; the host writes a pointer, a size
        // and a CAS through pointers to live locals.
        let code = unsafe { abi::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
        let cas = (code == OK && cas != 0).then_some(cas);
        match returned(code, data, size) {
            Ok(value) => Ok((value, cas)),
            Err(s) => Err(StoreError::Host(format!("{s:?}"))),
        }
    }

    fn raw_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        // SAFETY: the pointers and lengths describe `key` and `value`, alive for the call.
        let code = unsafe { abi::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
        match code {
            OK => Ok(()),
            CAS_MISMATCH => Err(StoreError::CasMismatch),
            code => Err(StoreError::Host(format!("{:?}", HostStatus(code)))),
        }
    }
}

/// Sets a shared-data flag every worker can read (its value `1`).
pub fn set_shared_flag(key: &str) {
    let _ = HostCalls::default().cas_set(key, b"1", None);
}

/// Whether a shared-data flag is set.
pub fn shared_flag(key: &str) -> bool {
    matches!(HostCalls::default().get(key), Ok((Some(value), _)) if value == b"1")
}

/// Defines a metric; `None` if the host refuses the name.
pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the pointer and length describe `name`; the host writes the id through a pointer
    // to a live local.
    let code = unsafe { abi::proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) };
    status(code).ok().map(|()| id)
}

/// Records a value in a histogram metric.
pub fn record_metric(id: u32, value: u64) {
    // SAFETY: no pointers.
    let _ = unsafe { abi::proxy_record_metric(id, value) };
}

/// Adds to a counter metric.
pub fn increment_counter(id: u32, value: u64) {
    // SAFETY: no pointers.
    let _ = unsafe { abi::proxy_increment_metric(id, i64::try_from(value).unwrap_or(i64::MAX)) };
}
