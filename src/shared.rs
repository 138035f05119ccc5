//! Shared data seen by every worker, reached through [`SharedStore`] so the update rule
//! (read, then compare-and-swap with the returned CAS, retried a bounded number of times) is
//! plain Rust. Kong's ngx_wasm_module treats CAS 0 as "must not exist" while Envoy treats it
//! as "unconditional", so a write is always based on a fresh read.

/// The host's shared key-value store.
pub trait SharedStore {
    /// The value and its CAS token; `(None, None)` when the key does not exist.
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes `value` if the key still has `cas` (`None`: the key must not exist, or on Envoy, unconditional).
    fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
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
