//! A proxy's error page in place of the provider's answer: nginx's own HTML 502 or 504 when it
//! could not reach the provider or waited too long, Envoy's plain-text 503 where no
//! `local_reply_config` shapes it, or a CDN's page in front of the provider. The API itself
//! always answers JSON. Claude Code shows such a page's text as the error, so it becomes
//! Anthropic's error shape with the same status, saying what happened. (On nginx the filter
//! must see this answer to settle the request: an `error_page` for 502 or 504 would send the
//! request to another location, past the filter, and lose its record.)

use crate::answer_end::AnswerEnd;
use crate::reply::Reply;

/// One error page being replaced.
#[derive(Debug)]
pub struct ErrorPage {
    status: u32,
    /// Where the page ends: a host that does not mark the end of such an answer (ngx) still
    /// gets the replacement.
    end: AnswerEnd,
}

impl ErrorPage {
    /// `Some` when an answer with `status` and `content_type` is a proxy's error page: a 5xx in
    /// HTML (nginx's, a CDN's) or plain text (Envoy's own, where no `local_reply_config` shapes it).
    pub fn of(status: Option<u32>, content_type: &str, content_length: Option<u64>) -> Option<ErrorPage> {
        let status = status.filter(|s| (500..600).contains(s))?;
        let kind = content_type.trim_start();
        let page =
            ["text/html", "text/plain"].iter().any(|t| kind.get(..t.len()).is_some_and(|k| k.eq_ignore_ascii_case(t)));
        page.then_some(ErrorPage { status, end: AnswerEnd::new(content_length) })
    }

    /// Response headers to set, and to remove (the replacement has another length and is not
    /// encoded).
    pub fn headers() -> (Vec<(String, String)>, Vec<String>) {
        let set = vec![("content-type".to_owned(), "application/json".to_owned())];
        (set, crate::credential_refusal::replaced_body_removes())
    }

    /// Takes a chunk of the page; returns what the client gets instead: nothing until the page
    /// ends, then the whole answer, once.
    pub fn on_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Vec<u8> {
        if !self.end.ends_at(chunk.len(), end_of_stream) {
            return Vec::new();
        }
        let status = self.status;
        let what = match status {
            502 | 503 => "could not be reached",
            504 => "did not answer in time",
            _ => "answered with an error page",
        };
        let message =
            format!("gateway: the AI provider {what} ({status}). This is on the gateway side; try again shortly.");
        Reply::error(status, "provider_error_page", "api_error", &message).body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> String {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "api_error");
        v["error"]["message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn only_html_server_errors_are_pages() {
        assert!(ErrorPage::of(Some(502), "text/html", Some(10)).is_some());
        assert!(ErrorPage::of(Some(504), " Text/HTML; charset=utf-8", None).is_some());
        assert!(ErrorPage::of(Some(500), "text/html", None).is_some());
        // Envoy's own "upstream connect error or disconnect/reset before headers" without a
        // `local_reply_config`.
        assert!(ErrorPage::of(Some(503), "text/plain", Some(91)).is_some());
        // The API's own errors are JSON; client errors and successes are never replaced.
        assert!(ErrorPage::of(Some(529), "application/json", None).is_none());
        assert!(ErrorPage::of(Some(404), "text/html", None).is_none());
        assert!(ErrorPage::of(Some(200), "text/html", None).is_none());
        assert!(ErrorPage::of(None, "text/html", None).is_none());
        assert!(ErrorPage::of(Some(502), "text/htm", None).is_none());
    }

    #[test]
    fn the_page_is_replaced_once_at_its_end() {
        let html = b"<html><head><title>502 Bad Gateway</title></head></html>";
        // By the end of stream, or by the announced length when the host marks no end (ngx).
        for (expected, eos) in [(None, true), (Some(html.len() as u64), false)] {
            let mut page = ErrorPage::of(Some(502), "text/html", expected).unwrap();
            assert!(page.on_body(&html[..10], false).is_empty(), "held until the end");
            let body = page.on_body(&html[10..], eos);
            assert_eq!(
                message(&body),
                "gateway: the AI provider could not be reached (502). This is on the gateway side; try again shortly."
            );
            assert!(page.on_body(b"more", true).is_empty(), "once");
        }
        let mut page = ErrorPage::of(Some(504), "text/html", None).unwrap();
        assert!(message(&page.on_body(b"", true)).contains("did not answer in time (504)"));
        let mut page = ErrorPage::of(Some(500), "text/html", None).unwrap();
        assert!(message(&page.on_body(b"x", true)).contains("answered with an error page (500)"));
    }
}
