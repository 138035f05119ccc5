//! Reading an access token's claims for display and expiry. The token is not verified here
//! (the gateway does that); these values only decide when to refresh and what `status` shows.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

fn payload(token: &str) -> Option<Value> {
    let part = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?).ok()
}

/// `exp`, when the token is a JWT that has one.
pub fn expiry(token: &str) -> Option<u64> {
    payload(token)?.get("exp")?.as_u64()
}

/// `iat` (when it was issued, by the IdP's clock), when the token is a JWT that has one.
pub fn issued_at(token: &str) -> Option<u64> {
    payload(token)?.get("iat")?.as_u64()
}

/// `aud` (one string or a list), when the token is a JWT that has one.
pub fn audiences(token: &str) -> Option<Vec<String>> {
    match payload(token)?.get("aud")? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => Some(items.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
        _ => None,
    }
}

/// Who a token names, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `sub`, or `(opaque token)`.
    pub subject: String,
    /// `email`.
    pub email: Option<String>,
    /// `groups` (or `roles`).
    pub groups: Vec<String>,
}

/// The person a token names.
pub fn summary(token: &str) -> Summary {
    let Some(claims) = payload(token) else {
        return Summary { subject: "(opaque token)".to_owned(), email: None, groups: Vec::new() };
    };
    let text = |key: &str| claims.get(key).and_then(Value::as_str).map(str::to_owned);
    let groups = ["groups", "roles"].iter().find_map(|k| claims.get(*k)).map_or_else(Vec::new, |v| match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    });
    Summary { subject: text("sub").unwrap_or_else(|| "(no subject)".to_owned()), email: text("email"), groups }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: Value) -> String {
        format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    #[test]
    fn reads_expiry_and_summary() {
        let token =
            jwt(serde_json::json!({"sub": "alice", "email": "a@x", "groups": ["g1", "g2"], "exp": 99, "iat": 9}));
        assert_eq!(expiry(&token), Some(99));
        assert_eq!(issued_at(&token), Some(9));
        assert_eq!(
            summary(&token),
            Summary { subject: "alice".into(), email: Some("a@x".into()), groups: vec!["g1".into(), "g2".into()] }
        );
        assert_eq!(audiences(&token), None);
        assert_eq!(audiences(&jwt(serde_json::json!({"aud": "https://api"}))), Some(vec!["https://api".into()]));
        assert_eq!(audiences(&jwt(serde_json::json!({"aud": ["a", "b"]}))), Some(vec!["a".into(), "b".into()]));
        assert_eq!(audiences("opaque-token"), None);
        assert_eq!(expiry("opaque-token"), None);
        assert_eq!(issued_at("opaque-token"), None);
        assert_eq!(summary("opaque-token").subject, "(opaque token)");
    }
}
