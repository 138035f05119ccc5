//! Answers the gateway makes itself, in the Anthropic error shape so Claude Code shows the message.

use serde_json::json;

/// A local response: status, extra headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u32,
    /// Headers besides `content-type`.
    pub headers: Vec<(String, String)>,
    /// Body bytes (empty for `HEAD` answers).
    pub body: Vec<u8>,
    /// Stable short code of why (metrics label, usage record); never shown as the message.
    pub reason: &'static str,
}

impl Reply {
    /// An empty answer with the given status.
    pub fn empty(status: u32) -> Reply {
        Reply { status, headers: Vec::new(), body: Vec::new(), reason: "ok" }
    }

    /// An Anthropic-shaped error: `{"type":"error","error":{"type":..,"message":..}}`, with the
    /// stable `reason` code for metrics and records.
    pub fn error(status: u32, reason: &'static str, error_type: &str, message: &str) -> Reply {
        let body = json!({"type": "error", "error": {"type": error_type, "message": message}});
        Reply {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
            reason,
        }
    }

    /// A JSON answer the gateway makes itself.
    pub fn json(status: u32, reason: &'static str, body: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
            reason,
        }
    }

    /// The answer of a worker whose configuration was refused: the operator must fix it, so
    /// Claude Code is told not to retry.
    pub fn unconfigured() -> Reply {
        Reply::error(
            503,
            "unconfigured",
            "api_error",
            "gateway: the gateway's configuration was refused (see the proxy's log); tell your administrator",
        )
        .with_header("x-should-retry", "false")
    }

    /// The host's clock could not be read: no token's expiry can be checked, so none is
    /// accepted. Only the operator can fix the host.
    pub fn clock_unavailable() -> Reply {
        Reply::error(
            503,
            "clock_unavailable",
            "api_error",
            "gateway: the proxy could not tell the time, so no access token can be checked; tell your administrator",
        )
        .with_header("x-should-retry", "false")
    }

    /// The host refused to change the request (`what`: its headers or its body): it goes
    /// nowhere. A retry would most likely meet the same refusal.
    pub fn rewrite_failed(what: &str) -> Reply {
        Reply::error(
            500,
            "rewrite_failed",
            "api_error",
            &format!("gateway: could not rewrite the request {what}; tell your administrator"),
        )
        .with_header("x-should-retry", "false")
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_owned(), value.into()));
        self
    }
}

/// An error that becomes a gateway answer.
pub trait ToReply {
    /// The answer the client gets.
    fn to_reply(&self) -> Reply;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_anthropic_shape_and_escapes() {
        let r = Reply::error(400, "model_not_allowed", "invalid_request_error", "model \"x\" not configured");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "model \"x\" not configured");
        assert_eq!(r.headers, vec![("content-type".to_owned(), "application/json".to_owned())]);
    }
}
