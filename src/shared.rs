//! Shared data seen by every worker, reached through [`SharedStore`] so the update rule
//! (read, then compare-and-swap with the returned CAS, retried a bounded number of times) is
//! plain Rust. A write based on a read that found no key must not overwrite a key another worker
//! created meanwhile; the hosts' own calls disagree there ([`RawShared`]), and [`CreateRule`]
//! gives both one meaning.

use std::cell::Cell;

/// The host's shared key-value store.
pub trait SharedStore {
    /// The value and its CAS token; `(None, None)` when the key does not exist.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value` if the key still has `cas`; `None`: only if the key does not exist
    /// ([`StoreError::CasMismatch`] when it does), on every host.
    fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

/// The host's own shared-data calls, where CAS 0 means what the host makes of it: Envoy
/// (proxy-wasm-cpp-host's `SharedData::set`) writes unconditionally, ngx_wasm_module
/// (`ngx_wa_shm_kv_set_locked`) writes only if the key does not exist. Any other CAS must match
/// an existing key's on both, but Envoy creates a missing key whatever CAS it is given.
pub trait RawShared {
    /// The value and its CAS token; `(None, None)` when the key does not exist.
    fn raw_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// The host's set, with its own meaning of `cas`.
    fn raw_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// A CAS no existing key has: Envoy hands out CAS tokens from one counter, so a key holds this
/// one only after about 2^32 writes went by, and ngx_wasm_module counts each key's writes from 1.
const NO_KEY_CAS: u32 = u32::MAX;

/// How this host writes a key only if it does not exist, learnt from its first answer: Envoy
/// creates a missing key with [`NO_KEY_CAS`] and refuses it for an existing one (CAS 0 there
/// would overwrite a key another worker created meanwhile, losing its write); ngx_wasm_module
/// refuses [`NO_KEY_CAS`] for a missing key and needs 0.
#[derive(Debug, Default)]
pub struct CreateRule {
    cas: Cell<Option<u32>>,
}

impl CreateRule {
    /// A rule not yet learnt.
    pub const fn new() -> Self {
        CreateRule { cas: Cell::new(None) }
    }

    /// Writes `value` under `key` only if the key does not exist; [`StoreError::CasMismatch`]
    /// when it does.
    pub fn create(&self, raw: &dyn RawShared, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if let Some(cas) = self.cas.get() {
            return raw.raw_set(key, value, cas);
        }
        match raw.raw_set(key, value, NO_KEY_CAS) {
            Ok(()) => {
                self.cas.set(Some(NO_KEY_CAS));
                Ok(())
            }
            // The key exists (on any host), or this host wants 0 for a new key. A key read as
            // missing after the refusal says the latter: Envoy never deletes one, and on ngx
            // the refusal alone would have come for an existing key too.
            Err(StoreError::CasMismatch) => match raw.raw_get(key)? {
                // (A key with an empty value reads as no value with a CAS: it exists.)
                (None, None) => {
                    self.cas.set(Some(0));
                    raw.raw_set(key, value, 0)
                }
                _ => Err(StoreError::CasMismatch),
            },
            Err(other) => Err(other),
        }
    }
}

/// [`SharedStore::cas_set`] over a host's own calls, `rule` deciding how a key read as missing
/// is written.
pub fn cas_set_raw(
    raw: &dyn RawShared,
    rule: &CreateRule,
    key: &str,
    value: &[u8],
    cas: Option<u32>,
) -> Result<(), StoreError> {
    match cas {
        Some(cas) => raw.raw_set(key, value, cas),
        None => rule.create(raw, key, value),
    }
}

/// Why a shared-data operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote in between.
    CasMismatch,
    /// Retries ran out while other workers kept writing.
    Contended,
    /// The host refused (no shared-data zone on Kong, zone full...).
    Host(String),
}

/// Most read-then-CAS rounds before giving up.
pub const MAX_CAS_ATTEMPTS: usize = 8;

/// Reads `key`, computes the new value with `next` (which may decline by returning `None`),
/// and writes it with the CAS from the read; retried on a CAS mismatch.
/// Returns whether a value was written.
pub fn update(
    store: &dyn SharedStore,
    key: &str,
    mut next: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
) -> Result<bool, StoreError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (current, cas) = store.get(key)?;
        let Some(value) = next(current.as_deref()) else {
            return Ok(false);
        };
        match store.cas_set(key, &value, cas) {
            Ok(()) => return Ok(true),
            Err(StoreError::CasMismatch) => continue,
            Err(other) => return Err(other),
        }
    }
    Err(StoreError::Contended)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// An in-memory store with Kong's CAS rule, that can make the next N writes lose a race.
    #[derive(Default)]
    pub(crate) struct FakeStore {
        pub data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        pub lose_races: Cell<usize>,
    }

    impl SharedStore for FakeStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            Ok(match self.data.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }
        fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if self.lose_races.get() > 0 {
                self.lose_races.set(self.lose_races.get() - 1);
                let mut data = self.data.borrow_mut();
                let entry = data.entry(key.to_owned()).or_insert((Vec::new(), 0));
                entry.1 += 1;
                return Err(StoreError::CasMismatch);
            }
            let mut data = self.data.borrow_mut();
            let current = data.get(key).map(|(_, c)| *c);
            if current != cas {
                return Err(StoreError::CasMismatch);
            }
            data.insert(key.to_owned(), (value.to_vec(), cas.unwrap_or(0) + 1));
            Ok(())
        }
    }

    /// A host's own shared data: Envoy's rule for CAS 0 (write whatever is there) or
    /// ngx_wasm_module's (only a new key), CAS tokens counted as each host counts them, and
    /// another worker that may write between this worker's read and its write.
    pub(crate) struct RawHost {
        envoy: bool,
        data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        reads: Cell<usize>,
        #[allow(clippy::type_complexity)]
        before_set: RefCell<Option<Box<dyn FnOnce(&Hosted)>>>,
    }

    impl RawShared for RawHost {
        fn raw_get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            self.reads.set(self.reads.get() + 1);
            Ok(self.data.borrow().get(key).map_or((None, None), |(v, c)| (Some(v.clone()), Some(*c))))
        }
        fn raw_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            let mut data = self.data.borrow_mut();
            let stored = data.get(key).map(|(_, c)| *c);
            let written = match (self.envoy, stored) {
                (true, Some(stored)) => cas == 0 || cas == stored,
                (true, None) => true,
                (false, stored) => cas == stored.unwrap_or(0),
            };
            if !written {
                return Err(StoreError::CasMismatch);
            }
            let next = if self.envoy {
                self.next_cas.set(self.next_cas.get() + 1);
                self.next_cas.get()
            } else {
                stored.unwrap_or(0) + 1
            };
            data.insert(key.to_owned(), (value.to_vec(), next));
            Ok(())
        }
    }

    /// [`RawHost`] behind [`cas_set_raw`], as the filter's host layer reaches it.
    pub(crate) struct Hosted {
        pub raw: RawHost,
        pub rule: CreateRule,
    }

    impl Hosted {
        pub(crate) fn new(envoy: bool) -> Self {
            let raw = RawHost {
                envoy,
                data: RefCell::default(),
                next_cas: Cell::new(0),
                reads: Cell::new(0),
                before_set: RefCell::new(None),
            };
            Hosted { raw, rule: CreateRule::new() }
        }

        /// `other` runs once, as another worker, just before this worker's next write.
        pub(crate) fn meanwhile(&self, other: impl FnOnce(&Hosted) + 'static) {
            *self.raw.before_set.borrow_mut() = Some(Box::new(other));
        }
    }

    impl SharedStore for Hosted {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            self.raw.raw_get(key)
        }
        fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let other = self.raw.before_set.borrow_mut().take();
            if let Some(other) = other {
                other(self);
            }
            cas_set_raw(&self.raw, &self.rule, key, value, cas)
        }
    }

    fn add_one(store: &dyn SharedStore, key: &str) -> Result<bool, StoreError> {
        update(store, key, |v| {
            let n: u32 = v.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()).unwrap_or(0);
            Some((n + 1).to_string().into_bytes())
        })
    }

    #[test]
    fn two_workers_creating_one_key_both_count_on_either_host() {
        for envoy in [true, false] {
            let store = Hosted::new(envoy);
            // Both read the key as missing; the other one writes first.
            store.meanwhile(|other| {
                add_one(other, "k").unwrap();
            });
            assert_eq!(add_one(&store, "k"), Ok(true));
            assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"2"[..]), "envoy: {envoy}");
            // And a later key is created at once, with the rule learnt.
            assert_eq!(add_one(&store, "other"), Ok(true));
            assert_eq!(store.rule.cas.get(), Some(if envoy { NO_KEY_CAS } else { 0 }));
        }
    }

    #[test]
    fn an_existing_key_teaches_nothing_and_is_never_overwritten_by_a_create() {
        for envoy in [true, false] {
            let store = Hosted::new(envoy);
            store.raw.raw_set("k", b"theirs", 0).unwrap();
            assert_eq!(store.cas_set("k", b"mine", None), Err(StoreError::CasMismatch));
            assert_eq!(store.rule.cas.get(), None, "envoy: {envoy}");
            assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"theirs"[..]));
            // Learnt on the first key that is really new; existing keys still refuse a create.
            store.cas_set("new", b"1", None).unwrap();
            assert_eq!(store.cas_set("k", b"mine", None), Err(StoreError::CasMismatch));
            assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"theirs"[..]));
        }
    }

    /// On ngx the first create costs a read to learn the rule; later ones are one host call.
    /// (On Envoy every create is one call: its first answer teaches the rule.)
    #[test]
    fn once_learnt_a_create_is_one_host_call() {
        let store = Hosted::new(false);
        store.cas_set("a", b"1", None).unwrap();
        assert_eq!(store.raw.reads.get(), 1, "the refusal of the first create is read once");
        store.cas_set("b", b"1", None).unwrap();
        assert_eq!(store.raw.reads.get(), 1);
    }

    #[test]
    fn retries_a_lost_race_then_writes() {
        let store = FakeStore::default();
        store.lose_races.set(3);
        assert_eq!(update(&store, "k", |_| Some(b"v".to_vec())), Ok(true));
        assert_eq!(store.get("k").unwrap().0.as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn gives_up_when_always_contended() {
        let store = FakeStore::default();
        store.lose_races.set(usize::MAX);
        assert_eq!(update(&store, "k", |_| Some(b"v".to_vec())), Err(StoreError::Contended));
    }

    #[test]
    fn next_sees_current_value_and_may_decline() {
        let store = FakeStore::default();
        update(&store, "n", |_| Some(b"1".to_vec())).unwrap();
        let seen = RefCell::new(None);
        assert_eq!(
            update(&store, "n", |cur| {
                *seen.borrow_mut() = cur.map(<[u8]>::to_vec);
                None
            }),
            Ok(false)
        );
        assert_eq!(seen.into_inner(), Some(b"1".to_vec()));
    }
}
