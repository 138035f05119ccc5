//! The upstream's answer headers the client must not get: any named like the budget headers the
//! gateway sets itself (an upstream's would state a budget that is not the person's, and on ngx a
//! repeated one cancels the gateway's own value), any that carries a credential the gateway sent
//! (an upstream, or a proxy on its way, echoing what it was sent), and the mark the samples' Envoy
//! route puts on its refusal of a target without a route ([`NO_ROUTE`]), once read.

use crate::credential_refusal::SentCredentials;

/// The header the samples' last Envoy route adds to its 502 for a target without a route of its
/// own, so that the filter records and logs what happened (and takes the header away).
pub const NO_ROUTE: &str = "x-gateway-no-route";

/// Whether the answer is the proxy's refusal of a target it has no route for ([`NO_ROUTE`]).
pub fn no_route(headers: &[(&str, &str)]) -> bool {
    headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(NO_ROUTE))
}

/// Name prefixes of the budget headers the gateway sets (`x-ai-ratelimit-*`, `ratelimit-reset`),
/// with the rest of the IETF draft's family (`ratelimit`, `ratelimit-policy`).
const GATEWAY_PREFIXES: [&str; 2] = ["x-ai-ratelimit-", "ratelimit"];

/// The names among `headers` (the answer's, pseudo-headers included) to remove before the
/// gateway sets its own; each once, as the upstream wrote it.
pub fn unwanted(headers: &[(&str, &str)], sent: &SentCredentials) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for &(name, value) in headers {
        let gateways = GATEWAY_PREFIXES.iter().any(|p| name.get(..p.len()).is_some_and(|n| n.eq_ignore_ascii_case(p)))
            || name.eq_ignore_ascii_case(NO_ROUTE);
        if (gateways || sent.in_value(value))
            && !name.starts_with(':')
            && !out.iter().any(|o| o.eq_ignore_ascii_case(name))
        {
            out.push(name.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_headers_and_echoed_credentials_are_taken_away_and_nothing_else() {
        let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
        let sent = SentCredentials::new([key]);
        let echo = format!("got {key}");
        let headers = [
            (":status", "200"),
            ("content-type", "text/event-stream"),
            ("anthropic-ratelimit-unified-status", "allowed"),
            ("X-AI-RateLimit-Remaining-60-anthropic", "999999"),
            ("x-ai-ratelimit-remaining-60-anthropic", "5"),
            ("x-ai-ratelimit-warning", "none"),
            ("ratelimit-reset", "1"),
            ("RateLimit-Policy", "1;w=1"),
            ("x-echo", echo.as_str()),
            ("request-id", "req_011CUjxyz0123456789abcdef"),
            ("retry-after", "3"),
        ];
        assert_eq!(
            unwanted(&headers, &sent),
            [
                "X-AI-RateLimit-Remaining-60-anthropic",
                "x-ai-ratelimit-warning",
                "ratelimit-reset",
                "RateLimit-Policy",
                "x-echo"
            ]
        );
        // A part of the key is no echo of it; nothing unwanted, nothing taken.
        let part = [("x-echo", &key[..20])];
        assert!(unwanted(&part, &sent).is_empty());
        assert!(unwanted(&headers[..3], &SentCredentials::default()).is_empty());
        // The proxy's own mark on a refusal for a target without a route: read, then taken away.
        let refused = [(":status", "502"), ("X-Gateway-No-Route", "1")];
        assert!(no_route(&refused) && !no_route(&headers));
        assert_eq!(unwanted(&refused, &sent), ["X-Gateway-No-Route"]);
    }
}
