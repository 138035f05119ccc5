//! Verified tokens remembered per worker until they expire, so a session's requests are not
//! re-verified one by one. Keyed by a keyed 128-bit SipHash-2-4 of the token, with a secret key
//! drawn at start (SHA-256 if the host has no randomness); the token itself is not kept.

use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest as _, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};

use crate::jwt::Identity;

/// What a token is filed under.
pub type Digest = u128;

/// A bounded map from token digest to the verified identity.
#[derive(Debug)]
pub struct TokenCache {
    entries: HashMap<Digest, Rc<Identity>>,
    capacity: usize,
    /// The SipHash key: secret, so nobody can make a token collide with another's. SipHash is a
    /// PRF under a secret key, and costs a third of SHA-256 on a token in Wasm.
    key: Option<[u8; 16]>,
}

impl TokenCache {
    /// An empty cache holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> TokenCache {
        let mut key = [0u8; 16];
        let key = getrandom::getrandom(&mut key).ok().map(|()| key);
        TokenCache { entries: HashMap::new(), capacity, key }
    }

    /// The digest a token is filed under.
    pub fn digest(&self, token: &str) -> Digest {
        match &self.key {
            Some(key) => {
                let mut hasher = SipHasher24::new_with_key(key);
                std::hash::Hasher::write(&mut hasher, token.as_bytes());
                hasher.finish128().as_u128()
            }
            // A public key would let anyone search for collisions: a collision-resistant hash then.
            None => {
                let full: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                let mut half = [0u8; 16];
                half.copy_from_slice(&full[..16]);
                u128::from_le_bytes(half)
            }
        }
    }

    /// The identity of a token verified before, if it has not expired (with `leeway`) and its
    /// key is still published (`key_known`); a stale entry is dropped.
    pub fn get(
        &mut self,
        digest: &Digest,
        now: u64,
        leeway: u64,
        key_known: impl Fn(u64) -> bool,
    ) -> Option<Rc<Identity>> {
        let entry = self.entries.get(digest)?;
        if now >= entry.expires_at.saturating_add(leeway) || !key_known(entry.key) {
            self.entries.remove(digest);
            return None;
        }
        Some(Rc::clone(entry))
    }

    /// Remembers a verified token. When full, expired entries go first, then everything.
    pub fn insert(&mut self, digest: Digest, identity: Rc<Identity>, now: u64) {
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

    fn identity(exp: u64) -> Rc<Identity> {
        Rc::new(Identity {
            subject: "alice".into(),
            person_key: "k".into(),
            email: None,
            groups: vec![],
            groups_overage: false,
            expires_at: exp,
            kid: Some("k1".into()),
            key: 1,
        })
    }

    #[test]
    fn hit_until_expiry_plus_leeway() {
        let mut cache = TokenCache::new(10);
        let d = cache.digest("token");
        cache.insert(d, identity(1000), 900);
        assert!(cache.get(&d, 1000, 60, |_| true).is_some());
        assert!(cache.get(&d, 1059, 60, |_| true).is_some());
        // RFC 7519 4.1.4: the time must be before `exp` (plus the leeway), as a verification says.
        assert!(cache.get(&d, 1060, 60, |_| true).is_none());
        assert!(cache.is_empty(), "expired entry dropped");
    }

    #[test]
    fn entry_dies_with_its_key() {
        let mut cache = TokenCache::new(10);
        let d = cache.digest("token");
        cache.insert(d, identity(1000), 900);
        assert!(cache.get(&d, 950, 0, |key| key == 1).is_some());
        assert!(cache.get(&d, 950, 0, |key| key == 2).is_none());
    }

    #[test]
    fn stays_bounded() {
        let mut cache = TokenCache::new(3);
        for i in 0..10u64 {
            cache.insert(cache.digest(&i.to_string()), identity(2000), 1000);
            assert!(cache.len() <= 3);
        }
        cache.insert(cache.digest("x"), identity(500), 1000);
        assert!(cache.len() <= 3);
    }

    #[test]
    fn digests_are_keyed_per_cache() {
        let (a, b) = (TokenCache::new(1), TokenCache::new(1));
        assert_eq!(a.digest("token"), a.digest("token"));
        assert_ne!(a.digest("token"), a.digest("tokeN"));
        assert_ne!(a.digest("token"), b.digest("token"), "each cache draws its own key");
        let unkeyed = TokenCache { key: None, ..TokenCache::new(1) };
        assert_eq!(unkeyed.digest("token"), unkeyed.digest("token"));
        assert_ne!(unkeyed.digest("token"), unkeyed.digest("tokeN"));
    }
}
