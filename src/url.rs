//! The small part of URL handling the filter needs: splitting an `http(s)://` URL into the
//! pieces an HTTP callout carries (`:scheme`, `:authority`, `:path`) and the upstream name.

/// An absolute `http://` or `https://` URL, split for callouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// Host and optional port as written, used as `:authority`.
    pub authority: String,
    /// Host without the port.
    pub host: String,
    /// Port, explicit or the scheme's default.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses an absolute URL. Userinfo and fragments are refused.
    pub fn parse(url: &str) -> Result<HttpUrl, &'static str> {
        const NOT_URL: &str = "must be an http:// or https:// URL";
        let (scheme, rest) = url.split_once("://").ok_or(NOT_URL)?;
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            _ => return Err(NOT_URL),
        };
        // The authority ends at the path, the query or the fragment, whichever comes first.
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.is_empty() || authority.contains('@') || path.contains('#') {
            return Err(NOT_URL);
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(NOT_URL);
        }
        let (host, port) = split_host_port(authority).ok_or(NOT_URL)?;
        Ok(HttpUrl {
            scheme: scheme.to_owned(),
            authority: authority.to_owned(),
            host: host.to_owned(),
            port: port.unwrap_or(default_port),
            path,
        })
    }

    /// `host:port`: the callout upstream (Envoy cluster name, Kong `host:port`).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// This URL with `suffix` appended to its path (a trailing `/` is not doubled).
    pub fn join_path(&self, suffix: &str) -> HttpUrl {
        let base = self.path.trim_end_matches('/');
        HttpUrl { path: format!("{base}{suffix}"), ..self.clone() }
    }

    /// Whether two URLs reach the same `host:port`.
    pub fn same_origin(&self, other: &HttpUrl) -> bool {
        self.scheme == other.scheme && self.host == other.host && self.port == other.port
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    // An IPv6 literal keeps its brackets: `[::1]:8443`.
    let (host, port) = if let Some(end) = authority.strip_prefix('[').and_then(|_| authority.find(']')) {
        let host = &authority[..=end];
        match &authority[end + 1..] {
            "" => (host, None),
            rest => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    // A name (letters, digits, `.`, `-`, `_`) or a bracketed IPv6 literal: nothing that would
    // end up in the upstream name or `:authority` as something else.
    let name = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    let literal = |b: u8| b.is_ascii_hexdigit() || matches!(b, b':' | b'.');
    let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.bytes().all(literal),
        None => !host.is_empty() && host.bytes().all(name),
    };
    if !valid {
        return None;
    }
    match port {
        None => Some((host, None)),
        Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => None,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0).map(|p| (host, Some(p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_derives_upstreams() {
        let cases = [
            ("https://idp.example.com", "idp.example.com:443", "/"),
            ("https://idp.example.com/oauth2/default", "idp.example.com:443", "/oauth2/default"),
            ("http://127.0.0.1:9100", "127.0.0.1:9100", "/"),
            ("http://[::1]:9100/x?y=1", "[::1]:9100", "/x?y=1"),
            ("https://keys.example.com?tenant=a", "keys.example.com:443", "/?tenant=a"),
            ("http://keycloak_1:8080/realms/x", "keycloak_1:8080", "/realms/x"),
        ];
        for (url, upstream, path) in cases {
            let u = HttpUrl::parse(url).unwrap();
            assert_eq!(u.host_port(), upstream, "{url}");
            assert_eq!(u.path, path, "{url}");
        }
    }

    #[test]
    fn refuses_what_is_not_an_http_url() {
        for bad in [
            "idp.example.com",
            "ftp://x",
            "https://",
            "https://u:p@x/",
            "https://x:99999",
            "https://x/#f",
            "https://x#f",
            "https://x/ y",
            "https://x:+443/",
            "https://x:/",
            "https://x%2f/",
            "https://x;y/",
            "https://[zz]/",
            "https://[]:1/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn join_path_does_not_double_slashes() {
        let u = HttpUrl::parse("https://idp.example.com/realms/corp/").unwrap();
        assert_eq!(
            u.join_path("/.well-known/openid-configuration").path,
            "/realms/corp/.well-known/openid-configuration"
        );
    }
}
