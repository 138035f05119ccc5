//! AWS Signature Version 4 for Bedrock requests (service `bedrock`), signed in headers.
//!
//! The clock is a parameter: the host's time, never read here. The output is checked against
//! botocore's signer (tests/vectors/bedrock/sigv4.json).

use sha2::{Digest, Sha256};

use super::Credentials;

/// The SigV4 service name of the Bedrock runtime.
pub const SERVICE: &str = "bedrock";

/// The request to sign, as it will be sent.
#[derive(Debug, Clone, Copy)]
pub struct SignInput<'a> {
    /// `POST`.
    pub method: &'a str,
    /// `bedrock-runtime.<region>.amazonaws.com`; the request must carry it as `:authority`.
    pub host: &'a str,
    /// The path as sent, already percent-encoded (from [`super::invoke_path`]), optionally with a
    /// query string. It must be normalised (no `.`/`..` segments, no `//`), as invoke paths are.
    pub path: &'a str,
    /// Other headers to sign (e.g. `content-type`, `accept`); sent unchanged. `host`,
    /// `authorization` and `x-amz-*` given here are ignored: the signer sets them.
    pub headers: &'a [(&'a str, &'a str)],
    /// The exact body bytes sent.
    pub body: &'a [u8],
}

/// Signs `input` at `now_unix_secs` and returns the headers to set on the request, lower-case:
/// `x-amz-date`, `x-amz-content-sha256`, `x-amz-security-token` (with a session token) and
/// `authorization`.
pub fn sign(input: &SignInput<'_>, creds: &Credentials, region: &str, now_unix_secs: u64) -> Vec<(String, String)> {
    let amz_date = amz_date(now_unix_secs);
    let date = amz_date.get(..8).unwrap_or_default();
    let mut set = vec![
        ("x-amz-date".to_owned(), amz_date.clone()),
        ("x-amz-content-sha256".to_owned(), hex(&Sha256::digest(input.body))),
    ];
    if let Some(token) = &creds.session_token {
        set.push(("x-amz-security-token".to_owned(), token.clone()));
    }

    let (canonical, signed_headers) = canonical_request(input, &set);
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", hex(&Sha256::digest(canonical)));

    let k_date = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, SERVICE.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));

    set.push((
        "authorization".to_owned(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    set
}

/// The canonical request and the `SignedHeaders` list.
fn canonical_request(input: &SignInput<'_>, set: &[(String, String)]) -> (String, String) {
    let mut headers: Vec<(String, String)> = input
        .headers
        .iter()
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), trim_all(v)))
        .filter(|(n, _)| n != "host" && n != "authorization" && !n.starts_with("x-amz-"))
        .collect();
    headers.push(("host".to_owned(), input.host.to_ascii_lowercase()));
    headers.extend(set.iter().map(|(n, v)| (n.clone(), trim_all(v))));
    // Stable by name: repeated headers keep their order and join with ',' as AWS specifies.
    insertion_sort(&mut headers, |a, b| a.0 > b.0);
    let mut canonical_headers = String::new();
    let mut names: Vec<&str> = Vec::new();
    for (name, value) in &headers {
        if names.last() == Some(&name.as_str()) {
            canonical_headers.push(',');
        } else {
            if !names.is_empty() {
                canonical_headers.push('\n');
            }
            names.push(name);
            canonical_headers.push_str(name);
            canonical_headers.push(':');
        }
        canonical_headers.push_str(value);
    }
    let signed_headers = names.join(";");
    let (path, query) = input.path.split_once('?').unwrap_or((input.path, ""));
    let payload_hash = set.iter().find(|(n, _)| n == "x-amz-content-sha256").map_or("", |(_, v)| v.as_str());
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n\n{signed_headers}\n{payload_hash}",
        input.method.to_ascii_uppercase(),
        uri_encode(path, true),
        canonical_query(query),
    );
    (canonical, signed_headers)
}

/// Query pairs sorted by key then value. Values are taken as sent (already encoded).
fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(&str, &str)> = query.split('&').map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    insertion_sort(&mut pairs, |a, b| a > b);
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

// A handful of items: the standard library's sorts would add about 20 KiB of .wasm each.
fn insertion_sort<T>(items: &mut [T], greater: impl Fn(&T, &T) -> bool) {
    for i in 1..items.len() {
        let mut j = i;
        while j > 0 && greater(&items[j - 1], &items[j]) {
            items.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Percent-encodes every byte but the RFC 3986 unreserved ones (and `/` when `keep_slash`).
/// The canonical URI of a non-S3 service encodes the already-encoded path once more.
pub(super) fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Leading and trailing whitespace removed, inner runs of whitespace made one space.
fn trim_all(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

// HMAC-SHA256 (RFC 2104) over the sha2 crate the filter already carries: the hmac-sha256
// crate brings a second SHA-256 into the .wasm.
fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
pub fn amz_date(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (y, m, d) = crate::record::civil_from_days(days);
    format!("{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Deserialize)]
    struct Case {
        name: String,
        method: String,
        host: String,
        path: String,
        model_id: String,
        stream: bool,
        region: String,
        headers: Vec<(String, String)>,
        body: String,
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        now: u64,
        canonical_request: String,
        expected: HashMap<String, String>,
    }

    #[derive(Deserialize)]
    struct Vectors {
        cases: Vec<Case>,
    }

    #[test]
    fn matches_botocore() {
        let vectors: Vectors = serde_json::from_str(include_str!("../../tests/vectors/bedrock/sigv4.json")).unwrap();
        assert_eq!(vectors.cases.len(), 3);
        for case in vectors.cases {
            let name = &case.name;
            assert_eq!(super::super::invoke_path(&case.model_id, case.stream), case.path, "{name}: path");
            assert_eq!(super::super::host(&case.region), case.host, "{name}: host");
            let creds = Credentials {
                access_key_id: case.access_key_id.clone(),
                secret_access_key: case.secret_access_key.clone(),
                session_token: case.session_token.clone(),
            };
            let headers: Vec<(&str, &str)> = case.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let input = SignInput {
                method: &case.method,
                host: &case.host,
                path: &case.path,
                headers: &headers,
                body: case.body.as_bytes(),
            };
            let set = sign(&input, &creds, &case.region, case.now);
            let (canonical, _) = canonical_request(&input, &set[..set.len() - 1]);
            assert_eq!(canonical, case.canonical_request, "{name}: canonical request");
            for (header, value) in &set {
                assert_eq!(case.expected.get(header), Some(value), "{name}: {header}");
            }
            let amz: Vec<&String> = case.expected.keys().filter(|k| k.starts_with("x-amz-")).collect();
            assert_eq!(set.len(), amz.len() + 1, "{name}: the same x-amz headers and authorization");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        let cases: [(&[u8], &[u8], &str); 3] = [
            (&[0x0b; 20], b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(hex(&hmac(key, msg)), want);
        }
    }

    #[test]
    fn formats_dates() {
        let cases = [
            (0, "19700101T000000Z"),
            (951_782_400, "20000229T000000Z"),
            (1_709_251_199, "20240229T235959Z"),
            (1_767_225_600, "20260101T000000Z"),
            (4_102_444_799, "20991231T235959Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(amz_date(secs), want, "{secs}");
        }
    }

    #[test]
    fn canonical_query_sorts_pairs() {
        assert_eq!(canonical_query("b=2&a=1&a=0&c"), "a=0&a=1&b=2&c=");
        assert_eq!(canonical_query(""), "");
    }
}
