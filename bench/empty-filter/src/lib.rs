//! A Proxy-Wasm filter that does nothing: every callback continues. `make bench` loads it to
//! measure what a Rust Wasm filter costs in Envoy before it does any work.
//!
//! With the plugin configuration `rewrite` it does the least a model-routing filter must: hold
//! the headers, buffer the body, replace the first `"model":"<alias>"` value by a byte search (no
//! JSON check), set the body and its length. That is the floor the 200 KiB target is
//! measured from.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// The plugin: hands each request an [`Empty`] or a [`Rewrite`] context.
#[derive(Default)]
struct Root {
    rewrite: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        self.rewrite = self.get_plugin_configuration().is_some_and(|c| c == b"rewrite");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.rewrite {
            Some(Box::new(Rewrite))
        } else {
            Some(Box::new(Empty))
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
        let Some(body) = self.get_http_request_body(0, size) else { return Action::Continue };
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
        self.set_http_request_body(0, size.max(out.len()), &out);
        self.set_http_request_header("content-length", Some(&out.len().to_string()));
        Action::Continue
    }
}
