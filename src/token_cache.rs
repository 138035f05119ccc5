//! Verified tokens remembered per worker until they expire, so a session's requests are not
//! re-verified one by one. Keyed by SHA-256 of the token; the token itself is not kept.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::jwt::Identity;

/// A bounded map from token digest to the verified identity.
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<[u8; 32], Identity>,
    capacity: usize,
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache { entries: HashMap::new(), capacity }
    }

    /// The digest a token is filed under.
    pub fn digest(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The identity of a token verified before, if it has not expired (with `leeway`) and its
    /// key is still published (`key_known`); a stale entry is dropped.
    pub fn get(
        &mut self,
        digest: &[u8; 32],
        now: u64,
        leeway: u64,
        key_known: impl Fn(Option<&str>) -> bool,
    ) -> Option<Identity> {
        let entry = self.entries.get(digest)?;
        if now > entry.expires_at.saturating_add(leeway) || !key_known(entry.kid.as_deref()) {
            self.entries.remove(digest);
            return None;
        }
        Some(entry.clone())
    }

    /// Remembers a verified token. When full, expired entries go first, then everything.
    pub fn insert(&mut self, digest: [u8; 32], identity: Identity, now: u64) {
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, id| id.expires_at > now);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
        }
        self.entries.insert(digest, identity);
    }

    /// Number of remembered tokens.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(exp: u64) -> Identity {
        Identity { subject: "alice".into(), email: None, groups: vec![], expires_at: exp, kid: Some("k1".into()) }
    }

    #[test]
    fn hit_until_expiry_plus_leeway() {
        let mut cache = TokenCache::new(10);
        let d = TokenCache::digest("token");
        cache.insert(d, identity(1000), 900);
        assert!(cache.get(&d, 1000, 60, |_| true).is_some());
        assert!(cache.get(&d, 1060, 60, |_| true).is_some());
        assert!(cache.get(&d, 1061, 60, |_| true).is_none());
        assert!(cache.is_empty(), "expired entry dropped");
    }

    #[test]
    fn entry_dies_with_its_key() {
        let mut cache = TokenCache::new(10);
        let d = TokenCache::digest("token");
        cache.insert(d, identity(1000), 900);
        assert!(cache.get(&d, 950, 0, |kid| kid == Some("k2")).is_none());
    }

    #[test]
    fn stays_bounded() {
        let mut cache = TokenCache::new(3);
        for i in 0..10u64 {
            cache.insert(TokenCache::digest(&i.to_string()), identity(2000), 1000);
            assert!(cache.len() <= 3);
        }
        cache.insert(TokenCache::digest("x"), identity(500), 1000);
        assert!(cache.len() <= 3);
    }
}
