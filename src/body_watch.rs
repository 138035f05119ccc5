//! Requests whose body never reaches the filter.
//!
//! On Envoy the filter holds a request's headers until it has read the body, which works only
//! with `allow_on_headers_stop_iteration: true` in the Wasm filter's config (Envoy 1.35+; Istio's
//! `WasmPlugin` cannot set it). Without it Envoy never calls the body callbacks of a request whose
//! headers were held: nothing goes upstream (the gateway fails closed) but the request hangs
//! until a timeout, with nothing in any log to say why.
//!
//! So until a worker has seen one body arrive after held headers (which proves holding works,
//! for good: the setting belongs to the filter's config, and a new config gets a new VM), it
//! watches the requests it holds. One held for [`BODY_WAIT_MS`] without a body callback is
//! answered by the root context's timer with [`body_not_seen`], which names the likely cause.
//! A worker that proves it tells the others through shared data ([`PROVEN_KEY`]), which they
//! read at their timer, so a slow first client on another worker is not cut short either.

use std::collections::{HashMap, HashSet};

use crate::reply::Reply;

/// How long a held request may wait for its first body callback while holding is unproven.
/// Claude Code sends its body with its headers; a body this late is either the missing setting
/// or a client stalled before sending anything.
pub const BODY_WAIT_MS: u64 = 5_000;

/// Shared-data key set (to `1`) once any worker saw a body after held headers.
pub const PROVEN_KEY: &str = "csg/holding";

/// One worker's watch over requests held at their headers.
#[derive(Debug, Default)]
pub struct BodyWatch {
    /// A body callback came after held headers: holding works, nothing more to watch.
    proven: bool,
    /// Held requests (by context id) and when their headers came, in milliseconds.
    held: HashMap<u32, u64>,
    /// Requests the timer answered, until their context learns it or ends.
    answered: HashSet<u32>,
}

impl BodyWatch {
    /// Whether held requests are still watched (holding not yet proven on this worker).
    pub fn watching(&self) -> bool {
        !self.proven
    }

    /// Request `id` was held at its headers at `now_ms`.
    pub fn held(&mut self, id: u32, now_ms: u64) {
        if !self.proven {
            self.held.insert(id, now_ms);
        }
    }

    /// A body callback came for request `id`: the host holds headers as asked, for every
    /// request of this worker from now on. True the first time (tell the other workers).
    pub fn body_seen(&mut self, id: u32) -> bool {
        // Once proven nothing is held: every request after the first costs only this test.
        if self.proven {
            return false;
        }
        self.held.remove(&id);
        self.proven_elsewhere();
        true
    }

    /// Another worker proved that the host holds headers (the setting is the same for all).
    pub fn proven_elsewhere(&mut self) {
        self.proven = true;
        self.held.clear();
    }

    /// Request `id` ended (its context is gone): forget it.
    pub fn ended(&mut self, id: u32) {
        self.held.remove(&id);
        self.answered.remove(&id);
    }

    /// The held requests that waited [`BODY_WAIT_MS`] or more by `now_ms`, now counted as
    /// answered: the caller sends each [`body_not_seen`].
    pub fn overdue(&mut self, now_ms: u64) -> Vec<u32> {
        let mut late: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, &since)| now_ms.saturating_sub(since) >= BODY_WAIT_MS)
            .map(|(&id, _)| id)
            .collect();
        late.sort_unstable();
        for id in &late {
            self.held.remove(id);
            self.answered.insert(*id);
        }
        late
    }

    /// Whether the timer answered request `id`.
    pub fn was_answered(&self, id: u32) -> bool {
        !self.answered.is_empty() && self.answered.contains(&id)
    }
}

/// The answer to a request whose body never reached the filter. A server-side fault (the
/// likeliest cause is the missing setting), so `500`, and `x-should-retry: false`: a retry would
/// wait as long again.
pub fn body_not_seen() -> Reply {
    let message = format!(
        "gateway: the request body did not reach the gateway's filter within {} s of its headers. If \
         every request ends this way, the gateway is misconfigured: its Envoy Wasm filter needs \
         `allow_on_headers_stop_iteration: true` (Envoy 1.35 or later); tell your administrator",
        BODY_WAIT_MS / 1000
    );
    Reply::error(500, "body_not_seen", "api_error", &message).with_header("x-should-retry", "false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_held_too_long_is_answered_once() {
        let mut watch = BodyWatch::default();
        watch.held(7, 1_000);
        watch.held(8, 3_000);
        assert!(watch.overdue(1_000 + BODY_WAIT_MS - 1).is_empty());
        assert_eq!(watch.overdue(1_000 + BODY_WAIT_MS), [7]);
        assert!(watch.was_answered(7) && !watch.was_answered(8));
        // Answered once: the next tick does not answer it again.
        assert_eq!(watch.overdue(3_000 + BODY_WAIT_MS), [8]);
        assert!(watch.overdue(u64::MAX).is_empty());
        watch.ended(7);
        assert!(!watch.was_answered(7) && watch.was_answered(8));
    }

    #[test]
    fn one_body_after_held_headers_ends_the_watch_for_good() {
        let mut watch = BodyWatch::default();
        watch.held(1, 0);
        watch.held(2, 0);
        assert!(watch.body_seen(2), "the first body proves it");
        assert!(!watch.body_seen(1), "and only the first");
        assert!(!watch.watching());
        // Request 1 was held as well, by a host that is now known to hold: never answered.
        assert!(watch.overdue(u64::MAX).is_empty());
        watch.held(3, 0);
        assert!(watch.overdue(u64::MAX).is_empty());
        assert!(!watch.was_answered(1) && !watch.was_answered(3));
    }

    #[test]
    fn proof_from_another_worker_ends_the_watch() {
        let mut watch = BodyWatch::default();
        watch.held(1, 0);
        watch.proven_elsewhere();
        assert!(!watch.watching());
        assert!(watch.overdue(u64::MAX).is_empty());
    }

    #[test]
    fn an_answered_request_stays_answered_when_its_body_comes_late() {
        let mut watch = BodyWatch::default();
        watch.held(4, 0);
        assert_eq!(watch.overdue(BODY_WAIT_MS), [4]);
        watch.body_seen(4);
        assert!(watch.was_answered(4), "the client already has its answer; the body must not go on");
    }

    #[test]
    fn a_request_that_ends_while_held_is_forgotten() {
        let mut watch = BodyWatch::default();
        watch.held(5, 0);
        watch.ended(5);
        assert!(watch.overdue(u64::MAX).is_empty());
    }

    #[test]
    fn the_answer_names_the_setting_and_stops_retries() {
        let reply = body_not_seen();
        assert_eq!(reply.status, 500);
        assert!(String::from_utf8_lossy(&reply.body).contains("allow_on_headers_stop_iteration: true"));
        assert!(reply.headers.contains(&("x-should-retry".into(), "false".into())));
    }
}
