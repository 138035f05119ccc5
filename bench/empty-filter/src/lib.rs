//! A Proxy-Wasm filter that does nothing: every callback continues. `make bench` loads it to
//! measure what a Rust Wasm filter costs in Envoy before it does any work.
//!
//! With the plugin configuration `rewrite` it does the least a model-routing filter must: hold
//! the headers, buffer the body, replace the first `"model":"<alias>"` value by a byte search (no
//! JSON check), set the body and its length. That is the floor the issue's 200 KiB target is
//! measured from.
//!
//! With `calls` it does the floor's work and, on top, every host call the gateway makes for a
//! request with a cached token (bench/hostcalls.py lists them), with fixed values and no
//! decisions: the header map read, the client's credentials taken away, a budget counter read
//! and written at admission and again at settlement, the provider key and the identity and
//! routing headers set, the response headers read and three rate-limit headers set, the answer's
//! chunk read, two histogram samples and the usage record set as a property. Between the floor
//! and the gateway, it splits what the gateway adds into what Envoy charges for the calls and
//! what the gateway's own code costs.
//!
//! With `calls+read` it does what `calls` does and reads one request header more: what one host
//! call that hands data to the filter costs (bench/instructions.py counts it).

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// What each request's context does.
#[derive(Default, Clone, Copy, PartialEq)]
enum Mode {
    #[default]
    Empty,
    Rewrite,
    Calls,
    /// [`Mode::Calls`] and one header read more.
    CallsAndRead,
}

/// The plugin: hands each request an [`Empty`], a [`Rewrite`] or a [`Calls`] context.
#[derive(Default)]
struct Root {
    mode: Mode,
    /// The two histograms [`Calls`] records into.
    histograms: [u32; 2],
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.mode = match self.get_plugin_configuration().as_deref() {
            Some(b"rewrite") => Mode::Rewrite,
            Some(b"calls") => Mode::Calls,
            Some(b"calls+read") => Mode::CallsAndRead,
            _ => Mode::Empty,
        };
        if matches!(self.mode, Mode::Calls | Mode::CallsAndRead) {
            let define = |name| hostcalls::define_metric(MetricType::Histogram, name).unwrap_or(0);
            self.histograms = [define("bench_calls_latency_ms"), define("bench_calls_ttft_ms")];
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        match self.mode {
            Mode::Empty => Some(Box::new(Empty)),
            Mode::Rewrite => Some(Box::new(Rewrite)),
            Mode::Calls | Mode::CallsAndRead => Some(Box::new(Calls {
                histograms: self.histograms,
                read_more: self.mode == Mode::CallsAndRead,
                ..Calls::default()
            })),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A request the filter lets through untouched.
struct Empty;

impl Context for Empty {}

impl HttpContext for Empty {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        Action::Continue
    }

    fn on_http_request_body(&mut self, _: usize, _: bool) -> Action {
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        Action::Continue
    }

    fn on_http_response_body(&mut self, _: usize, _: bool) -> Action {
        Action::Continue
    }
}

/// A request whose `model` is rewritten with the least work.
struct Rewrite;

impl Context for Rewrite {}

const MODEL: &[u8] = b"\"model\"";
const NEW_MODEL: &[u8] = b"claude-sonnet-4-6-20250929";

impl HttpContext for Rewrite {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            return Action::Continue;
        }
        self.set_http_request_header("content-length", None);
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        rewrite(self, size);
        Action::Continue
    }
}

/// The floor's body step: the first `"model"` value replaced, found by a byte search; the body
/// and its length set.
fn rewrite(context: &dyn HttpContext, size: usize) {
    let Some(body) = context.get_http_request_body(0, size) else { return };
    // `"model"`, then spaces and the colon, then the value's quotes.
    let found = body.windows(MODEL.len()).position(|w| w == MODEL).and_then(|at| {
        let after = at + MODEL.len();
        let open = after + body[after..].iter().position(|&b| !matches!(b, b' ' | b':'))?;
        let start = open + 1;
        (body.get(open) == Some(&b'"'))
            .then(|| body[start..].iter().position(|&b| b == b'"').map(|len| (start, start + len)))
            .flatten()
    });
    let out = match found {
        Some((start, end)) => [&body[..start], NEW_MODEL, &body[end..]].concat(),
        None => body,
    };
    context.set_http_request_body(0, size.max(out.len()), &out);
    context.set_http_request_header("content-length", Some(&out.len().to_string()));
}

/// The floor plus the gateway's host calls, with fixed values.
#[derive(Default)]
struct Calls {
    histograms: [u32; 2],
    /// The key the client sent, set again as the provider key (the stand-in upstream wants it).
    key: Option<String>,
    answered: bool,
    /// Reads one request header more ([`Mode::CallsAndRead`]).
    read_more: bool,
}

impl Context for Calls {}

/// A budget counter read and written back, as admission and settlement do (the gateway's
/// compact counter: 42 bytes and its key).
fn budget_update() {
    const KEY: &str = "csg/b/bench-calls/t60sp/0123456789abcdef";
    let (value, cas) = hostcalls::get_shared_data(KEY).unwrap_or((None, None));
    let mut value = value.unwrap_or_else(|| vec![0; 42 + KEY.len()]);
    value[10] = value[10].wrapping_add(1);
    let _ = hostcalls::set_shared_data(KEY, Some(&value), cas);
}

fn read_clock() {
    let _ = hostcalls::get_current_time();
}

/// A usage record of the gateway's size.
const RECORD: &str = concat!(
    r#"{"time":"2026-11-30T12:00:00.000Z","sub":"person-0001","email":"person-0001@example.com","#,
    r#""tier":"standard","model":"claude-sonnet-4-6","provider_model":"claude-sonnet-4-6-20250929","#,
    r#""provider":"anthropic","status":200,"input_tokens":120,"output_tokens":30,"#,
    r#""cache_write_tokens":1000,"cache_read_tokens":2000,"cost_usd":0.005316,"latency_ms":1,"#,
    r#""ttft_ms":1,"session":null,"refusal":null}"#
);

impl HttpContext for Calls {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            return Action::Continue;
        }
        read_clock();
        if self.read_more {
            let _ = self.get_http_request_header("content-type");
        }
        let headers = self.get_http_request_headers_bytes();
        self.key = headers
            .into_iter()
            .find(|(name, _)| name == "x-api-key")
            .and_then(|(_, value)| String::from_utf8(value).ok());
        self.set_http_request_header("authorization", None);
        self.set_http_request_header("x-api-key", None);
        self.set_http_request_header("content-length", None);
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        rewrite(self, size);
        read_clock();
        budget_update();
        self.set_http_request_header("x-api-key", self.key.as_deref());
        self.set_http_request_header("x-authenticated-user", Some("person-0001"));
        self.set_http_request_header("x-user-tier", Some("standard"));
        self.set_http_request_header("x-gateway-target", Some("anthropic"));
        // The bench's token has no email, so the gateway sets no email header either.
        self.set_http_request_header("accept-encoding", Some("identity"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = self.get_http_response_headers_bytes();
        self.set_http_response_header("x-ai-ratelimit-limit-60-anthropic", Some("1000000000000000"));
        self.set_http_response_header("x-ai-ratelimit-remaining-60-anthropic", Some("999999999996850"));
        self.set_http_response_header("ratelimit-reset", Some("42"));
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _: bool) -> Action {
        if size == 0 || std::mem::replace(&mut self.answered, true) {
            return Action::Continue;
        }
        let _ = self.get_http_response_body(0, size);
        read_clock();
        budget_update();
        for id in self.histograms {
            let _ = hostcalls::record_metric(id, 1);
        }
        let _ = hostcalls::set_property(vec!["claude_sso_gateway_usage"], Some(RECORD.as_bytes()));
        Action::Continue
    }
}
