//! Tokens refused again and again. Claude Code answers every 401 by re-running its sign-in
//! helper and retrying, thirteen times over about four minutes; a helper that keeps handing out
//! the same refused token (a cached token whose key the IdP withdrew, an expired one from a
//! helper that does not refresh, a clock gone wrong) makes every request sit through that whole
//! loop. A token refused [`REFUSALS_BEFORE_STOP`] times within [`WINDOW_SECONDS`] is refused
//! once more with a 400 that Claude Code shows at once.
//!
//! A single refusal of a token is the normal path (the first request after idling carries the
//! old token, the helper's next one goes through), and several Claude Code sessions resuming at
//! once each send theirs once: only a run of refusals of one token is a loop. The retries of one
//! loop land on any worker, so the count is kept in shared data, in a fixed number of slots (a
//! flood of forged tokens cannot grow it): a slot holds one token's count, and another token
//! refused into the same slot starts it anew.

use sha2::{Digest, Sha256};

use crate::shared::{self, SharedStore};

/// Refusals of one token within [`WINDOW_SECONDS`] after which the next one stops the loop
/// (Claude Code's fourth attempt comes about 4.6 s after its first).
pub const REFUSALS_BEFORE_STOP: u32 = 3;
/// The span within which refusals of one token count as a loop.
pub const WINDOW_SECONDS: u64 = 30;
/// Shared-data slots (keys `csg/refused/00` to `ff`).
const SLOTS: usize = 256;

/// Notes a refusal of `token` at `now` (seconds) in `store`; true when it has been refused
/// [`REFUSALS_BEFORE_STOP`] times within [`WINDOW_SECONDS`] before this one. A store that
/// cannot be read or written says false: the 401 stays.
pub fn refused(store: &dyn SharedStore, token: &str, now: u64) -> bool {
    // Not the token cache's digest: that one's key is each worker's own.
    let digest = Sha256::digest(token.as_bytes());
    let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let key = format!("csg/refused/{:02x}", usize::from(digest[0]) % SLOTS);
    let mut count = 0;
    let written = shared::update(store, &key, |current| {
        // "<token id> <first refusal> <refusals>"
        let held = current.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| {
            let mut parts = v.split(' ');
            let (held_id, first, n) = (parts.next()?, parts.next()?.parse::<u64>().ok()?, parts.next()?.parse().ok()?);
            (held_id == id && now.saturating_sub(first) <= WINDOW_SECONDS).then_some((first, n))
        });
        let (first, n): (u64, u32) = held.unwrap_or((now, 0));
        count = n.saturating_add(1);
        Some(format!("{id} {first} {count}").into_bytes())
    });
    matches!(written, Ok(true)) && count > REFUSALS_BEFORE_STOP
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tests::FakeStore;

    #[test]
    fn a_run_of_refusals_of_one_token_stops_at_the_fourth() {
        let store = FakeStore::default();
        // Claude Code's attempts: 0, 1.0, 2.1, 4.6 s.
        assert_eq!([0, 1, 2, 4].map(|t| refused(&store, "a.b.c", 1000 + t)), [false, false, false, true]);
        assert!(refused(&store, "a.b.c", 1009), "and every one after, within the window");
        assert!(!refused(&store, "d.e.f", 1009), "another token is its own");
    }

    #[test]
    fn refusals_far_apart_are_no_loop() {
        let store = FakeStore::default();
        // One stale token per resumed session, a minute apart.
        for t in [0, 60, 120, 180, 240] {
            assert!(!refused(&store, "a.b.c", 1000 + t), "at {t}");
        }
    }

    #[test]
    fn a_store_that_fails_keeps_the_401() {
        let store = FakeStore::default();
        store.lose_races.set(usize::MAX);
        for t in 0..6 {
            assert!(!refused(&store, "a.b.c", 1000 + t));
        }
    }
}
