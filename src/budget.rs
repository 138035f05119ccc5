//! Token and cost budgets: window arithmetic (sliding and fixed), the shared counters every
//! worker updates, admission with an optional reserve, and the rate-limit headers.
//!
//! A counter is one shared-data entry `{key, start, curr, prev}` for one limit and one scope
//! (the tier, or one person in it). The sliding estimate is Kong's: the previous fixed
//! window weighted by how much of it still overlaps, plus the current one.

use serde::{Deserialize, Serialize};

use crate::reply::{Reply, ToReply};
use crate::shared::{self, SharedStore, StoreError};

/// How a window moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowType {
    /// Weighted previous window plus the current one.
    Sliding,
    /// Resets at each multiple of the window.
    Fixed,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counts {
    /// Prompt (input and cache) plus completion tokens.
    TotalTokens,
    /// Input tokens including cache writes and reads.
    PromptTokens,
    /// Output tokens.
    CompletionTokens,
    /// Dollars, from the model's price table (counted in micro-dollars).
    Cost,
}

/// Whom a limit counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// One counter for the whole tier.
    Tier,
    /// One counter per person (`sub`) in the tier.
    Person,
}

/// One compiled limit of a tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Most units per window (tokens, or micro-dollars for cost).
    pub limit: u64,
    /// Window length, seconds.
    pub window: u64,
    /// Sliding or fixed.
    pub window_type: WindowType,
    /// What is counted.
    pub counts: Counts,
    /// Tier-wide or per person.
    pub per: Per,
    /// Shared-data key prefix: short, and stable across reloads that keep the tier and limit.
    pub key: String,
}

impl Limit {
    /// The counter key for this limit and person (`person` is a short digest of `sub`).
    pub fn key_for(&self, person: &str) -> String {
        match self.per {
            Per::Tier => self.key.clone(),
            Per::Person => format!("{}/{person}", self.key),
        }
    }

    /// The limit in a sentence for the person refused: whose limit it is and what it counts.
    pub fn explain(&self) -> String {
        let amount = match self.counts {
            Counts::TotalTokens => format!("{} tokens", self.limit),
            Counts::PromptTokens => format!("{} prompt tokens", self.limit),
            Counts::CompletionTokens => format!("{} completion tokens", self.limit),
            Counts::Cost => self.amount(self.limit),
        };
        let whom = match self.per {
            Per::Tier => "your tier's shared limit",
            Per::Person => "your personal limit",
        };
        format!("{whom} of {amount} per {}", human_duration(self.window))
    }

    /// `units` of what this limit counts, as people read them: tokens as a number, a cost (in
    /// micro-dollars) in dollars.
    pub fn amount(&self, units: u64) -> String {
        match self.counts {
            Counts::Cost => format!("${:.2}", units as f64 / 1e6),
            _ => units.to_string(),
        }
    }

    /// What kind of budget it is, for the refusal's first words.
    fn kind(&self) -> &'static str {
        match self.counts {
            Counts::Cost => "spending budget",
            _ => "token budget",
        }
    }

    /// How room comes back, which differs by window type.
    pub fn how_room_returns(&self) -> String {
        match self.window_type {
            WindowType::Sliding => format!(
                "This is a sliding window: use older than {} stops counting, so room comes back gradually.",
                human_duration(self.window)
            ),
            WindowType::Fixed => "The window starts over in full when it ends.".to_owned(),
        }
    }

    /// The limit in a few words, for headers and logs.
    pub fn describe(&self) -> String {
        let what = match self.counts {
            Counts::TotalTokens => "tokens",
            Counts::PromptTokens => "prompt tokens",
            Counts::CompletionTokens => "completion tokens",
            Counts::Cost => "micro-dollars",
        };
        let whom = match self.per {
            Per::Tier => "for the tier",
            Per::Person => "per person",
        };
        format!("{} {what} per {} s {whom}", self.limit, self.window)
    }
}

/// A counter's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Counter {
    /// The key it was written under (Kong aliases keys by CRC32: a different key here means
    /// another counter shares the slot, and this one starts from zero).
    pub k: String,
    /// Start of the current window, seconds since the epoch.
    pub s: u64,
    /// Units in the current window.
    pub c: u64,
    /// Units in the previous window.
    pub p: u64,
    /// This node's own units in the current window (part of `c`; the rest of `c` is what the
    /// other nodes spent, as last pulled from the budget store). Absent in old records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub oc: u64,
    /// This node's own units in the previous window (part of `p`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub op: u64,
    /// Units of `c` that this node holds for requests still running (part of `oc`): replaced by
    /// their charge, or given back, when they end. Absent in old records.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub h: u64,
    /// Units of `p` held for requests still running (part of `op`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ph: u64,
    /// When holds last came or went (seconds since the epoch): holds that have not moved for
    /// longer than any request runs ([`STALE_HOLD_SECONDS`]) belong to requests whose end was
    /// never counted (a worker gone, a write lost), and count as spent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ht: u64,
}

/// Holds that have not moved for this long are taken for spent: no request runs longer (a
/// stream of 128k output tokens at Claude's slowest takes about half of it).
pub const STALE_HOLD_SECONDS: u64 = 1800;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counter {
    /// This counter moved to the window that holds `now`.
    pub fn rolled(&self, window: u64, now: u64) -> Counter {
        Counter { k: self.k.clone(), ..self.moved(window, now) }
    }

    /// The time a counter is read or written at: `now`, or the start of the window it is already
    /// in when that is later. Another worker (or node) whose clock read a second later may have
    /// moved it into the next window already; counting from the earlier `now` would take it for
    /// a stale counter and wipe that window, and with it what the limit had counted.
    fn at(&self, now: u64) -> u64 {
        now.max(self.s)
    }

    /// [`Self::rolled`]'s numbers, without a copy of the key (read on every admission).
    fn moved(&self, window: u64, now: u64) -> Counter {
        let now = self.at(now);
        // Windows come from the config (at least 1 s), but also from shared data another
        // build may have written: never a division by zero.
        let window = window.max(1);
        let start = now - now % window;
        let (c, p, oc, op, h, ph) = if self.s == start {
            (self.c, self.p, self.oc, self.op, self.h, self.ph)
        } else if self.s.saturating_add(window) == start {
            (0, self.c, 0, self.oc, 0, self.h)
        } else {
            (0, 0, 0, 0, 0, 0)
        };
        Counter { k: String::new(), s: start, c, p, oc, op, h, ph, ht: self.ht }
    }

    /// Units counted against the limit at `now`.
    pub fn used(&self, limit: &Limit, now: u64) -> u64 {
        let now = self.at(now);
        let r = self.moved(limit.window, now);
        weighted(limit, now, &r, r.c, r.p)
    }

    /// [`Self::used`] without what requests still running hold: what was spent. Holds that
    /// have not moved for [`STALE_HOLD_SECONDS`] count as spent.
    pub fn spent(&self, limit: &Limit, now: u64) -> u64 {
        self.without_running_holds(now).used(limit, now)
    }

    /// This counter without the holds of requests still running (none when its holds are
    /// stale): what room returns to once they have ended, if they used nothing.
    pub fn without_running_holds(&self, now: u64) -> Counter {
        if self.at(now).saturating_sub(self.ht) > STALE_HOLD_SECONDS {
            return self.clone();
        }
        Counter {
            c: self.c.saturating_sub(self.h),
            p: self.p.saturating_sub(self.ph),
            oc: self.oc.saturating_sub(self.h),
            op: self.op.saturating_sub(self.ph),
            h: 0,
            ph: 0,
            ..self.clone()
        }
    }

    /// Seconds until the counter has room again (0 when it has room now), by this clock: a
    /// counter already in a later window (another worker's clock ahead, or this one stepped
    /// back) has room only once this clock gets there too.
    pub fn retry_after(&self, limit: &Limit, now: u64) -> u64 {
        let skew = self.at(now) - now;
        let now = self.at(now);
        if self.used(limit, now) < limit.limit {
            return 0;
        }
        let r = self.moved(limit.window, now);
        let to_next = r.s + limit.window - now;
        let wait = match limit.window_type {
            WindowType::Fixed => to_next,
            WindowType::Sliding => {
                // `used` is c + ceil(p * left / w). Within this window the previous share decays;
                // if the current window alone is full, room comes in the next one, once this
                // window's count (then the previous share) has decayed below the limit.
                let (c, p, w, lim) =
                    (u128::from(r.c), u128::from(r.p), u128::from(limit.window), u128::from(limit.limit));
                let left = u128::from(to_next);
                let wait = if c < lim {
                    // c + ceil(p * (left - d) / w) <= lim - 1  <=>  d >= left - floor((lim - c - 1) * w / p)
                    // (p > 0 here: with p = 0 there would be room now).
                    left.saturating_sub((lim - c - 1) * w / p.max(1)).max(1)
                } else {
                    // ceil(c * (w - e) / w) <= lim - 1, e seconds into the next window.
                    left + w - ((lim.saturating_sub(1)) * w / c).min(w)
                };
                u64::try_from(wait).unwrap_or(u64::MAX)
            }
        };
        wait.saturating_add(skew)
    }

    /// Adds `delta` units spent at `now`.
    pub fn add(&self, window: u64, now: u64, delta: i64) -> Counter {
        let mut r = self.rolled(window, now);
        r.c = r.c.saturating_add_signed(delta);
        r.oc = r.oc.saturating_add_signed(delta);
        r
    }

    /// Holds `delta` units at `now` for a request still running (negative: a hold given back
    /// before the request went anywhere).
    pub fn hold(&self, window: u64, now: u64, delta: i64) -> Counter {
        let mut r = self.add(window, now, delta);
        r.h = r.h.saturating_add_signed(delta);
        r.ht = self.at(now);
        r
    }

    /// Settles a request at `now`: the `held` units admission added at `held_at` leave the
    /// window that took them (the current one, the previous one, or none once it has passed),
    /// and the `charge` counts in the current window. A refund never comes out of a window that
    /// did not hold it (that would erase other people's spend, or be lost at zero).
    pub fn settle(&self, window: u64, now: u64, held_at: u64, held: u64, charge: u64) -> Counter {
        let mut r = self.rolled(window, now);
        let window = window.max(1);
        let held_start = held_at - held_at % window;
        if held_start == r.s {
            r.c = r.c.saturating_sub(held);
            r.oc = r.oc.saturating_sub(held);
            r.h = r.h.saturating_sub(held);
        } else if held_start.saturating_add(window) == r.s {
            r.p = r.p.saturating_sub(held);
            r.op = r.op.saturating_sub(held);
            r.ph = r.ph.saturating_sub(held);
        }
        if held > 0 {
            r.ht = self.at(now);
        }
        r.c = r.c.saturating_add(charge);
        r.oc = r.oc.saturating_add(charge);
        r
    }
}

/// `c` units in the current window of `r` (moved to `now`) and `p` in the previous one, as
/// the limit counts them at `now`: a sliding window weighs the previous one by what is left of it.
fn weighted(limit: &Limit, now: u64, r: &Counter, c: u64, p: u64) -> u64 {
    match limit.window_type {
        WindowType::Fixed => c,
        WindowType::Sliding => {
            let left = limit.window - (now - r.s);
            let weighted = (u128::from(p) * u128::from(left)).div_ceil(u128::from(limit.window));
            c.saturating_add(u64::try_from(weighted).unwrap_or(u64::MAX))
        }
    }
}

/// The first bytes of a counter in the compact encoding ([`Counter::encode`]) with holds.
const COMPACT: &[u8; 2] = b"C3";

/// The first bytes of a counter with holds as one build wrote it (3219c3b to 1fe6fb1): seven
/// numbers, no `ht` (still read; its holds count as spent until holds next come or go).
const COMPACT_V2: &[u8; 2] = b"C2";

/// The first bytes of the compact encoding without holds: five numbers, no `h`, `ph`, `ht`.
/// Written while a counter holds nothing, so that builds before holds were kept apart, which
/// read a `C3` counter as empty, read it (during a rolling upgrade they share shared data).
const COMPACT_V1: &[u8; 2] = b"C1";

/// Numbers in a [`COMPACT`] counter, a [`COMPACT_V2`] and a [`COMPACT_V1`] one.
const NUMBERS: usize = 8;
const NUMBERS_V2: usize = 7;
const NUMBERS_V1: usize = 5;

impl Counter {
    /// The stored bytes: `C3`, then `s`, `c`, `p`, `oc`, `op`, `h`, `ph`, `ht` as little-endian
    /// `u64`s, then the key; `C1` and the first five when nothing is held. Read and written on
    /// every request, so no JSON (records in the older JSON form are still read, see [`decode`]).
    pub fn encode(&self) -> Vec<u8> {
        let holds = self.h > 0 || self.ph > 0;
        let (prefix, count) = if holds { (COMPACT, NUMBERS) } else { (COMPACT_V1, NUMBERS_V1) };
        let mut out = Vec::with_capacity(prefix.len() + 8 * count + self.k.len());
        out.extend_from_slice(prefix);
        for n in [self.s, self.c, self.p, self.oc, self.op, self.h, self.ph, self.ht].into_iter().take(count) {
            out.extend_from_slice(&n.to_le_bytes());
        }
        out.extend_from_slice(self.k.as_bytes());
        out
    }

    fn from_compact(bytes: &[u8]) -> Option<Counter> {
        let (rest, count) = match bytes.get(..2)? {
            prefix if prefix == COMPACT => (&bytes[2..], NUMBERS),
            prefix if prefix == COMPACT_V2 => (&bytes[2..], NUMBERS_V2),
            prefix if prefix == COMPACT_V1 => (&bytes[2..], NUMBERS_V1),
            _ => return None,
        };
        let (numbers, key) = (rest.get(..8 * count)?, rest.get(8 * count..)?);
        let mut n = numbers.chunks_exact(8).map(|b| b.try_into().map(u64::from_le_bytes).unwrap_or_default());
        let mut next = || n.next().unwrap_or_default();
        let (s, c, p, oc, op, h, ph, ht) = (next(), next(), next(), next(), next(), next(), next(), next());
        Some(Counter { k: std::str::from_utf8(key).ok()?.to_owned(), s, c, p, oc, op, h, ph, ht })
    }
}

/// A counter from its stored bytes (compact, or the JSON of earlier versions), whoever's it is.
fn parse(stored: &[u8]) -> Option<Counter> {
    match stored.first() {
        Some(b'{') => serde_json::from_slice::<Counter>(stored).ok(),
        _ => Counter::from_compact(stored),
    }
}

/// A counter from its stored bytes; one written under another key or unreadable counts as empty.
pub fn decode(stored: Option<&[u8]>, key: &str) -> Counter {
    stored.and_then(parse).filter(|c| c.k == key).unwrap_or_else(|| Counter { k: key.to_owned(), ..Counter::default() })
}

/// Slots a counter may take. Kong's store (ngx_wasm_module's `shm_kv`) finds an entry by its
/// key's CRC32 alone, so two keys with one CRC32 share a slot (in an organisation of 30,000
/// people with two personal limits each, a couple of pairs do): the second key's counter goes
/// to the next free probe slot instead of wiping the first's on every write. Envoy's store
/// never aliases, and the first slot is the key itself, so probing costs nothing there.
const PROBE_SLOTS: usize = 4;

/// The shared-data key of probe slot `i` of `key`.
fn slot(key: &str, i: usize) -> std::borrow::Cow<'_, str> {
    if i == 0 {
        key.into()
    } else {
        format!("{key}#{i}").into()
    }
}

/// Reads `key`'s counter from the first slot that is free or holds it (a missing or unreadable
/// one counts as empty).
pub fn read(store: &dyn SharedStore, key: &str) -> Counter {
    for i in 0..PROBE_SLOTS {
        match store.get(&slot(key, i)).ok().and_then(|(v, _)| v).map(|bytes| parse(&bytes)) {
            Some(Some(other)) if other.k != key => continue,
            Some(Some(own)) => return own,
            _ => return decode(None, key),
        }
    }
    decode(None, key)
}

/// Updates `key`'s counter with `next` (which may decline by returning `None`) by
/// read-then-CAS, in the first slot that is free or holds it; returns whether it was written.
pub fn update(
    store: &dyn SharedStore,
    key: &str,
    mut next: impl FnMut(Counter) -> Option<Counter>,
) -> Result<bool, StoreError> {
    for i in 0..PROBE_SLOTS {
        let mut taken = false;
        let written = shared::update(store, &slot(key, i), |current| match current.and_then(parse) {
            Some(other) if other.k != key => {
                taken = true;
                None
            }
            Some(own) => next(own).map(|c| c.encode()),
            None => next(decode(None, key)).map(|c| c.encode()),
        });
        if !taken {
            return written;
        }
    }
    // Every probe slot holds another key's counter: the key's own slot is taken over.
    shared::update(store, key, |current| next(decode(current, key)).map(|c| c.encode()))
}

/// Adds `delta` to the counter at `key` with read-then-CAS.
pub fn charge(store: &dyn SharedStore, key: &str, window: u64, now: u64, delta: i64) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    update(store, key, |counter| Some(counter.add(window, now, delta))).map(|_| ())
}

/// Settles one limit's counter for a request: [`Counter::settle`] in the shared store.
pub fn settle(
    store: &dyn SharedStore,
    key: &str,
    window: u64,
    now: u64,
    held_at: u64,
    held: u64,
    charge: u64,
) -> Result<(), StoreError> {
    // A hold is settled even when it equals the charge: the counter keeps holds apart.
    if held == 0 && charge == 0 {
        return Ok(());
    }
    update(store, key, |counter| Some(counter.settle(window, now, held_at, held, charge))).map(|_| ())
}

/// The state of one limit for one request, for headers and refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The limit.
    pub limit: Limit,
    /// Units used at admission.
    pub used: u64,
    /// Seconds until the window resets.
    pub reset: u64,
    /// Seconds until there is room (0: room now).
    pub retry_after: u64,
}

/// A request refused because a budget is spent, or full with what requests still running hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// The spent limit with the longest wait; when no limit is spent, a limit full only with
    /// holds.
    pub standing: Standing,
    /// When no limit is spent: the units of `standing`'s limit held by requests still running
    /// (and `standing.retry_after` at most [`IN_FLIGHT_RETRY_AFTER`]). Their holds are estimates
    /// replaced by what they used when they end, so room may come back within seconds, not at the
    /// window's turn.
    pub in_flight: Option<u64>,
    /// When it was refused, seconds since the epoch (for the time of day in the message).
    pub now: u64,
    /// Holds that could not be given back (the shared-data write failed).
    pub refund_errors: Vec<String>,
}

/// The Retry-After of a refusal made only by holds of requests still running: how long those
/// take is not known, and Claude Code waits out a Retry-After of up to 60 s and then backs off
/// on its own (about three minutes over ten retries), so a short one lets it try again soon.
pub const IN_FLIGHT_RETRY_AFTER: u64 = 10;

impl ToReply for Exhausted {
    fn to_reply(&self) -> Reply {
        let s = &self.standing;
        if let Some(held) = self.in_flight {
            let message = format!(
                "gateway: {} nearly spent: {} (used {}, of which {} is held for requests still running; room \
                 may come back when they end). Try again in {}.",
                s.limit.kind(),
                s.limit.explain(),
                s.limit.amount(s.used),
                s.limit.amount(held),
                human_duration(s.retry_after),
            );
            return Reply::error(429, "budget_in_flight", "rate_limit_error", &message)
                .with_header("retry-after", s.retry_after.to_string());
        }
        let message = format!(
            "gateway: {} spent: {} (used {}). {} Try again in {} (at {}).",
            s.limit.kind(),
            s.limit.explain(),
            s.limit.amount(s.used),
            s.limit.how_room_returns(),
            human_duration(s.retry_after),
            time_of_day(self.now, s.retry_after),
        );
        let reply = Reply::error(429, "budget_exhausted", "rate_limit_error", &message)
            .with_header("retry-after", s.retry_after.to_string());
        // Claude Code waits out a Retry-After of 60 s or less and gives up at once beyond it.
        if s.retry_after > 60 {
            reply.with_header("x-should-retry", "false")
        } else {
            reply
        }
    }
}

/// `39 s`, `4 min 10 s`, `1 h 27 min`, `3 d 4 h` (what is below the last unit shown is left out).
pub fn human_duration(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds % 86_400 / 3600, seconds % 3600 / 60, seconds % 60);
    match (d, h, m, s) {
        (0, 0, 0, s) => format!("{s} s"),
        (0, 0, m, 0) => format!("{m} min"),
        (0, 0, m, s) if m < 10 => format!("{m} min {s} s"),
        (0, 0, m, _) => format!("{m} min"),
        (0, h, 0, _) => format!("{h} h"),
        (0, h, m, _) => format!("{h} h {m} min"),
        (d, 0, _, _) => format!("{d} d"),
        (d, h, _, _) => format!("{d} d {h} h"),
    }
}

/// The UTC time `wait` seconds after `now`: `14:52:10 UTC` within the hour, `14:52 UTC` within
/// the day, `2026-12-01 14:52 UTC` beyond; a time without seconds is the next whole minute, so
/// it is never early.
pub fn time_of_day(now: u64, wait: u64) -> String {
    let at = now.saturating_add(wait);
    let at = if wait < 3600 { at } else { at.div_ceil(60).saturating_mul(60) };
    let stamp = crate::record::rfc3339_ms(at.saturating_mul(1000));
    let (date, clock) = (&stamp[..10], &stamp[11..19]);
    match wait {
        0..3600 => format!("{clock} UTC"),
        3600..86_400 => format!("{} UTC", &clock[..5]),
        _ => format!("{date} {} UTC", &clock[..5]),
    }
}

/// Where a counter stands at `now`, by this clock: a counter already in a later window (another
/// worker's clock ahead) resets, and has room again, only once this clock gets there too.
fn standing(limit: &Limit, counter: &Counter, now: u64) -> Standing {
    let rolled = counter.moved(limit.window, now);
    Standing {
        limit: limit.clone(),
        used: counter.used(limit, now),
        reset: rolled.s + limit.window - now,
        retry_after: counter.retry_after(limit, now),
    }
}

/// What admission added to one counter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hold {
    /// Units added (0 when none could be).
    pub units: u64,
    /// The time they were counted at: the admission's, or the start of the window the counter
    /// was already in when that is later (another worker's clock ran ahead); settlement takes
    /// them out of the window this falls in.
    pub at: u64,
    /// Why a hold wanted could not be written (the request is admitted without it).
    pub error: Option<StoreError>,
}

/// Checks every limit at admission and, where there is room, holds `holds[i]` units on it in
/// the same compare-and-swap, so workers cannot both pass on one stale count. On a refusal the
/// holds already made are given back. Returns each limit's standing and what was held.
pub fn admit(
    store: &dyn SharedStore,
    limits: &[Limit],
    person: &str,
    holds: &[u64],
    now: u64,
) -> Result<Vec<(Standing, Hold)>, Exhausted> {
    let mut admitted = Vec::with_capacity(limits.len());
    for (i, limit) in limits.iter().enumerate() {
        let key = limit.key_for(person);
        // What a counter can take; the request is recorded as holding what was added.
        let hold = i64::try_from(holds.get(i).copied().unwrap_or(0)).unwrap_or(i64::MAX);
        let mut seen = None;
        let mut at = now;
        let mut held = 0;
        let written = update(store, &key, |counter| {
            let mut s = standing(limit, &counter, now);
            let room = s.retry_after == 0;
            held = 0;
            if !room {
                // Room returns when what was spent leaves the window; what requests still
                // running hold leaves when they end.
                let spent_only = counter.without_running_holds(now);
                let spent = spent_only.used(limit, now);
                if spent < limit.limit {
                    held = s.used.saturating_sub(spent);
                    s.retry_after = s.retry_after.clamp(1, IN_FLIGHT_RETRY_AFTER);
                } else {
                    s.retry_after = spent_only.retry_after(limit, now).max(1);
                }
            }
            seen = Some(s);
            at = counter.at(now);
            (room && hold > 0).then(|| counter.hold(limit.window, now, hold))
        });
        // A store that fails (contention, a full zone) costs the reserve, never the request;
        // the caller is told.
        let full = seen.as_ref().is_some_and(|s| s.retry_after > 0);
        let s = seen.unwrap_or_else(|| standing(limit, &decode(None, &key), now));
        let units = if written == Ok(true) { hold.unsigned_abs() } else { 0 };
        let error = if hold > 0 && !full { written.err() } else { None };
        admitted.push((s, Hold { units, at, error }, held));
    }
    // A spent limit answers for the refusal; only when none is spent, one full with holds does.
    let full = admitted.iter().filter(|(s, ..)| s.retry_after > 0);
    let spent = full.clone().filter(|(.., held)| *held == 0).max_by_key(|(s, ..)| s.retry_after);
    let refusal = match spent {
        Some((standing, ..)) => Some((standing.clone(), None)),
        None => full.max_by_key(|(.., held)| *held).map(|(standing, _, held)| (standing.clone(), Some(*held))),
    };
    let Some((standing, in_flight)) = refusal else {
        return Ok(admitted.into_iter().map(|(s, hold, _)| (s, hold)).collect());
    };
    let mut refund_errors = Vec::new();
    for (s, Hold { units: held, at, .. }, _) in &admitted {
        let key = s.limit.key_for(person);
        // Out of the window that took it, as a settlement of nothing.
        if let Err(e) = settle(store, &key, s.limit.window, now, *at, *held, 0) {
            refund_errors.push(format!("could not give back {held} held on budget {key}: {e:?}"));
        }
    }
    Err(Exhausted { standing, in_flight, now, refund_errors })
}

/// The rate-limit headers for an answer (the seed's names), plus a warning past `warn_share`.
/// `charged[i]` is what this request already holds against `standings[i]`.
pub fn headers(standings: &[Standing], provider: &str, charged: &[u64], warn_share: f64) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(standings.len() * 2 + 1);
    let mut reset = None::<u64>;
    // Made for every answer: put together piece by piece, which costs a fraction of `format!`.
    let number = |n: u64| itoa::Buffer::new().format(n).to_owned();
    let name = |kind: &str, window: u64| {
        let mut name = String::with_capacity(40);
        for part in ["x-ai-ratelimit-", kind, "-", itoa::Buffer::new().format(window), "-", provider] {
            name.push_str(part);
        }
        name
    };
    let used = |i: usize, s: &Standing| s.used.saturating_add(charged.get(i).copied().unwrap_or(0));
    let shown = shown_limits(standings, charged);
    let mut warning = None::<(f64, u64, &Standing)>;
    for (i, s) in standings.iter().enumerate() {
        let used = used(i, s);
        if shown[i] {
            out.push((name("limit", s.limit.window), number(s.limit.limit)));
            out.push((name("remaining", s.limit.window), number(s.limit.limit.saturating_sub(used))));
        }
        // On a refusal the reset is when room returns, the same moment as Retry-After.
        let this_reset = if s.retry_after > 0 { s.retry_after } else { s.reset };
        reset = Some(reset.map_or(this_reset, |r| r.min(this_reset)));
        let share = used as f64 / s.limit.limit.max(1) as f64;
        if share >= warn_share && warning.is_none_or(|(most, _, _)| share > most) {
            warning = Some((share, used, s));
        }
    }
    // One warning header: the limit most spent.
    if let Some((_, used, s)) = warning {
        out.push((
            "x-ai-ratelimit-warning".to_owned(),
            format!("{}% of {} spent", used.saturating_mul(100) / s.limit.limit.max(1), s.limit.describe()),
        ));
    }
    if let Some(r) = reset {
        out.push(("ratelimit-reset".to_owned(), number(r)));
    }
    out
}

/// Which standings the rate-limit headers show: the header names carry the window only, so of
/// limits sharing a window (a person's and the tier's, or a token and a cost limit) one is shown,
/// the one nearest refusal. Rooms in one unit compare as they are (the least room refuses
/// first); a token limit and a cost limit (micro-dollars) have no common unit, and the one of the
/// two with the smaller share left is shown. Ties go to the one listed first.
fn shown_limits(standings: &[Standing], charged: &[u64]) -> Vec<bool> {
    let room = |i: usize| {
        let s = &standings[i];
        s.limit.limit.saturating_sub(s.used.saturating_add(charged.get(i).copied().unwrap_or(0)))
    };
    let is_cost = |i: usize| standings[i].limit.counts == Counts::Cost;
    let window = |i: usize| standings[i].limit.window;
    let all = 0..standings.len();
    // The least room of its unit in its window.
    let least_of_unit: Vec<bool> = all
        .clone()
        .map(|i| {
            all.clone()
                .all(|j| j == i || window(j) != window(i) || is_cost(j) != is_cost(i) || (room(i), i) < (room(j), j))
        })
        .collect();
    // room_i / limit_i < room_j / limit_j, exactly.
    let share_below = |i: usize, j: usize| {
        let (ri, li) = (u128::from(room(i)), u128::from(standings[i].limit.limit));
        let (rj, lj) = (u128::from(room(j)), u128::from(standings[j].limit.limit));
        (ri * lj, i) < (rj * li, j)
    };
    all.clone()
        .map(|i| {
            least_of_unit[i]
                && all.clone().all(|j| j == i || !least_of_unit[j] || window(j) != window(i) || share_below(i, j))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_goes_back_to_the_window_that_took_it() {
        let fresh = || decode(None, "k");
        // Held 2000 at t=50; others spend 5000 in the next window; the answer (300) ends at t=70.
        let c = fresh().add(60, 50, 2000).add(60, 65, 5000).settle(60, 70, 50, 2000, 300);
        assert_eq!((c.s, c.c, c.p), (60, 5300, 0), "the next window keeps the others' spend");
        assert_eq!((c.oc, c.op), (5300, 0));
        // Settled in the window that took the hold.
        let c = fresh().add(60, 50, 2000).add(60, 55, 700).settle(60, 59, 50, 2000, 300);
        assert_eq!((c.s, c.c, c.p), (0, 1000, 0));
        // The hold's window has passed altogether (a stream longer than the window).
        let c = fresh().add(60, 10, 2000).add(60, 125, 40).settle(60, 130, 10, 2000, 300);
        assert_eq!((c.s, c.c, c.p), (120, 340, 0));
        // A charge above the hold counts in full where the answer ended.
        let c = fresh().add(60, 59, 100).settle(60, 61, 59, 100, 900);
        assert_eq!((c.c, c.p), (900, 0));
    }

    /// At a window's boundary another worker may already have moved a counter into the next
    /// window when this one, whose clock read a second earlier, gets to it: it counts in the
    /// window the counter is in, and wipes nothing.
    #[test]
    fn a_counter_already_in_the_next_window_is_read_there_by_a_clock_a_second_behind() {
        let limit = |window_type| Limit {
            limit: 1000,
            window: 60,
            window_type,
            counts: Counts::TotalTokens,
            per: Per::Person,
            key: "csg/b/x/t60sp".into(),
        };
        let (sliding, fixed) = (limit(WindowType::Sliding), limit(WindowType::Fixed));
        // The limit spent in [0, 60); a worker at t=60 moved the counter on.
        let c = decode(None, "k").add(60, 59, 1000).add(60, 60, 5);
        assert!(c.used(&sliding, 59) >= 1000 && c.retry_after(&sliding, 59) > 0);
        // Counted on this worker's clock, a second behind: the window ends 61 s from now.
        assert_eq!(standing(&sliding, &c, 59).reset, 61);
        let spent = standing(&limit(WindowType::Fixed), &decode(None, "k").add(60, 60, 1000), 59);
        assert_eq!((spent.reset, spent.retry_after), (61, 61));
        let held = c.add(60, 59, 500);
        assert_eq!((held.s, held.c, held.p), (60, 505, 1000));
        // Settled by a clock a second behind: the window ahead keeps what it held.
        let c = decode(None, "k").add(60, 60, 900).settle(60, 59, 10, 0, 100);
        assert_eq!((c.s, c.c), (60, 1000));
        assert_eq!(c.used(&fixed, 61), 1000);

        // Through the shared store, as admission does it.
        let store = crate::shared::tests::FakeStore::default();
        let key = "csg/b/x/t60sp/a1";
        charge(&store, key, 60, 59, 1000).unwrap();
        charge(&store, key, 60, 60, 5).unwrap();
        assert!(admit(&store, std::slice::from_ref(&sliding), "a1", &[500], 59).is_err());
        assert!(read(&store, key).used(&sliding, 60) >= 1000);
    }

    /// A budget full only with what requests still running hold is not spent: the answer asks
    /// to try again in seconds (Claude Code gives up at once on a Retry-After past 60 s), and
    /// once the running request settles for less than it held, the next one passes.
    #[test]
    fn a_budget_full_only_with_holds_of_running_requests_asks_to_retry_soon() {
        let l = limit(100, 3600, WindowType::Fixed);
        let store = FakeStore::default();
        charge(&store, &l.key, l.window, 0, 50).unwrap();
        let first = admit(&store, std::slice::from_ref(&l), "p", &[60], 10).unwrap();
        assert_eq!(first[0].1.units, 60);
        assert_eq!((read(&store, &l.key).c, read(&store, &l.key).h), (110, 60));
        let refused = admit(&store, std::slice::from_ref(&l), "p", &[60], 11).unwrap_err();
        assert_eq!(refused.in_flight, Some(60));
        let reply = refused.to_reply();
        assert_eq!((reply.status, reply.reason), (429, "budget_in_flight"));
        assert!(reply.headers.contains(&("retry-after".into(), IN_FLIGHT_RETRY_AFTER.to_string())));
        assert!(!reply.headers.iter().any(|(name, _)| name == "x-should-retry"), "Claude Code retries it");
        let body = String::from_utf8(reply.body).unwrap();
        assert!(body.contains("token budget nearly spent") && body.contains("used 110, of which 60 is held"), "{body}");
        // A request that used exactly what it held is settled too: its hold is spend now.
        let exact = FakeStore::default();
        let held = admit(&exact, std::slice::from_ref(&l), "p", &[60], 10).unwrap();
        settle(&exact, &l.key, l.window, 20, held[0].1.at, 60, 60).unwrap();
        assert_eq!((read(&exact, &l.key).c, read(&exact, &l.key).h), (60, 0));
        // The first ends having used 5 of the 60 it held: room again.
        settle(&store, &l.key, l.window, 20, first[0].1.at, 60, 5).unwrap();
        assert_eq!((read(&store, &l.key).c, read(&store, &l.key).h), (55, 0));
        assert!(admit(&store, std::slice::from_ref(&l), "p", &[60], 21).is_ok());

        // Spent without any hold: the window's wait, as before.
        let spent = FakeStore::default();
        charge(&spent, &l.key, l.window, 0, 100).unwrap();
        let refused = admit(&spent, std::slice::from_ref(&l), "p", &[60], 10).unwrap_err();
        assert_eq!((refused.in_flight, refused.to_reply().reason), (None, "budget_exhausted"));
        // Spent, and holds on top: still spent.
        let both = FakeStore::default();
        charge(&both, &l.key, l.window, 0, 90).unwrap();
        admit(&both, std::slice::from_ref(&l), "p", &[60], 10).unwrap();
        charge(&both, &l.key, l.window, 11, 10).unwrap();
        assert_eq!(admit(&both, std::slice::from_ref(&l), "p", &[60], 12).unwrap_err().in_flight, None);
    }

    /// With several limits, a spent one answers for the refusal even when another is full only
    /// with holds; holds made before the refusal are given back, held part and all.
    #[test]
    fn a_spent_limit_answers_before_one_full_with_holds_and_holds_are_given_back() {
        let (hourly, daily, weekly) = (
            limit(100, 3600, WindowType::Fixed),
            limit(1000, 86_400, WindowType::Fixed),
            limit(1, 604_800, WindowType::Fixed),
        );
        let store = FakeStore::default();
        let limits = [hourly.clone(), daily.clone()];
        admit(&store, &limits, "p", &[100, 100], 10).unwrap();
        // Hourly: full with the hold only. Daily: room. Weekly: spent.
        charge(&store, &weekly.key, weekly.window, 10, 1).unwrap();
        let all = [hourly.clone(), daily.clone(), weekly.clone()];
        let refused = admit(&store, &all, "p", &[100, 100, 100], 11).unwrap_err();
        assert_eq!((refused.in_flight, refused.standing.limit.window), (None, 604_800));
        assert_eq!(refused.to_reply().reason, "budget_exhausted");
        let daily_now = read(&store, &daily.key);
        assert_eq!((daily_now.c, daily_now.h), (100, 100), "this request's hold given back, the first's kept");
        // Without the spent limit: the hourly one, full with holds, answers.
        let refused = admit(&store, &limits, "p", &[100, 100], 12).unwrap_err();
        assert_eq!((refused.in_flight, refused.standing.limit.window), (Some(100), 3600));
    }

    /// A hold from the previous window is kept apart from what was spent there, in a sliding
    /// window's weighted share too; records written before holds were kept apart still read.
    #[test]
    fn holds_move_with_the_window_and_old_records_read_without_them() {
        let l = limit(100, 60, WindowType::Sliding);
        let c = decode(None, "k").add(60, 0, 20).hold(60, 1, 80);
        assert_eq!((c.used(&l, 59), c.spent(&l, 59)), (100, 20));
        let next = c.rolled(60, 90);
        assert_eq!((next.p, next.ph, next.h, next.ht), (100, 80, 0, 1), "the holds' time goes with them");
        assert_eq!((next.used(&l, 90), next.spent(&l, 90)), (50, 10), "half of the previous window");
        // The request held in the previous window ends: its hold leaves that window.
        let settled = next.settle(60, 91, 1, 80, 30);
        assert_eq!((settled.c, settled.h, settled.p, settled.ph, settled.ht), (30, 0, 20, 0, 91));
        let mut v1 = b"C1".to_vec();
        for n in [600u64, 90, 20, 30, 5] {
            v1.extend_from_slice(&n.to_le_bytes());
        }
        v1.extend_from_slice(b"k");
        let old = Counter { k: "k".into(), s: 600, c: 90, p: 20, oc: 30, op: 5, h: 0, ph: 0, ht: 0 };
        assert_eq!(decode(Some(&v1), "k"), old);
    }

    /// A refusal gives its holds back out of the window that took them, even when another worker
    /// moved the counter into the next window between this admission's hold and its refund (its
    /// clock read a second later, at a window boundary): what was spent there stays, and no hold
    /// is left that no request will ever settle (review of 3219c3b).
    #[test]
    fn a_refund_after_another_worker_moved_the_counter_leaves_the_window_that_took_it() {
        type Hook = Box<dyn FnOnce(&FakeStore)>;
        struct MovesAfterFirstWrite {
            inner: FakeStore,
            hook: std::cell::RefCell<Option<Hook>>,
        }
        impl SharedStore for MovesAfterFirstWrite {
            fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
                self.inner.get(key)
            }
            fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
                self.inner.cas_set(key, value, cas)?;
                if let Some(hook) = self.hook.borrow_mut().take() {
                    hook(&self.inner);
                }
                Ok(())
            }
        }
        let tier = Limit { key: "csg/b/t/tier".into(), ..limit(1000, 60, WindowType::Sliding) };
        let person = Limit { key: "csg/b/t/person".into(), ..limit(10, 60, WindowType::Fixed) };
        let tier_key = tier.key.clone();
        let store = MovesAfterFirstWrite { inner: FakeStore::default(), hook: Default::default() };
        charge(&store.inner, &person.key, 60, 0, 10).unwrap(); // the person's own limit is spent
                                                               // Right after this request's hold on the tier (at 59), a worker whose clock reads 60
                                                               // charges 300 spent there: the counter moves to the window [60, 120).
        *store.hook.borrow_mut() = Some(Box::new(move |inner: &FakeStore| {
            charge(inner, &tier_key, 60, 60, 300).unwrap();
        }));
        let refused = admit(&store, &[tier.clone(), person], "p", &[100, 100], 59).unwrap_err();
        assert!(refused.refund_errors.is_empty());
        let c = read(&store, &tier.key);
        assert_eq!(c.s, 60);
        assert_eq!(
            (c.c, c.oc, c.h, c.p, c.op, c.ph),
            (300, 300, 0, 0, 0, 0),
            "the 300 spent at 60 stays, and the hold leaves the window that took it"
        );
    }

    /// A hold whose request never settles (its worker or VM died, the settlement's write lost
    /// its compare-and-swaps or found the zone full) stays in `h` until the window turns; once it
    /// has not moved for longer than any request runs, it counts as spent, so a monthly budget
    /// does not say "held for requests still running ... Try again in 10 s" for weeks.
    #[test]
    fn a_hold_never_settled_is_not_called_in_flight_for_the_rest_of_the_month() {
        let month = limit(1_000_000, 2_592_000, WindowType::Fixed);
        let store = FakeStore::default();
        // Day 1: a request holds 200,000; its settlement never runs.
        admit(&store, std::slice::from_ref(&month), "p", &[200_000], 86_400).unwrap();
        // The person then spends 850,000 over the month.
        charge(&store, &month.key, month.window, 100_000, 850_000).unwrap();
        // Day 29: full only with that 28-day-old hold.
        let refused = admit(&store, std::slice::from_ref(&month), "p", &[1000], 29 * 86_400).unwrap_err();
        let body = String::from_utf8(refused.to_reply().body).unwrap();
        assert_eq!(refused.in_flight, None, "{body}");
        assert!(body.contains("token budget spent"), "{body}");
        // The same within the time a request may run: in flight.
        let recent = FakeStore::default();
        charge(&recent, &month.key, month.window, 100_000, 850_000).unwrap();
        admit(&recent, std::slice::from_ref(&month), "p", &[200_000], 29 * 86_400 - STALE_HOLD_SECONDS).unwrap();
        let refused = admit(&recent, std::slice::from_ref(&month), "p", &[1000], 29 * 86_400).unwrap_err();
        assert_eq!(refused.in_flight, Some(200_000));
    }

    /// A spent limit's wait is counted without the holds of requests still running in it, which
    /// are not spend: here what was spent falls below the limit in 43 s (the answer said half an
    /// hour, and with it `x-should-retry: false`, so Claude Code gave up at once).
    #[test]
    fn a_spent_limits_wait_does_not_count_holds_of_running_requests() {
        let l = limit(1000, 3600, WindowType::Sliding);
        let store = FakeStore::default();
        charge(&store, &l.key, l.window, 100, 900).unwrap(); // the previous window
        admit(&store, std::slice::from_ref(&l), "p", &[500], 3960).unwrap(); // 810 used: room
        charge(&store, &l.key, l.window, 3961, 200).unwrap(); // another request settles
        let refused = admit(&store, std::slice::from_ref(&l), "p", &[1], 3961).unwrap_err();
        assert_eq!(refused.in_flight, None, "spent: 200 + 810 of 1000");
        let spent_only = decode(None, "k").add(3600, 100, 900).add(3600, 3961, 200);
        assert!(spent_only.retry_after(&l, 3961) <= 60, "{}", spent_only.retry_after(&l, 3961));
        assert!(
            refused.standing.retry_after <= 60,
            "room (of what was spent) returns in {} s; the answer says {} s",
            spent_only.retry_after(&l, 3961),
            refused.standing.retry_after
        );
    }

    #[test]
    fn a_window_of_zero_from_shared_data_is_read_as_one_second() {
        let counter = decode(None, "k").add(1, 100, 5);
        assert_eq!(counter.moved(0, 100).c, 5);
        assert_eq!(counter.moved(0, 101).p, 5);
    }

    #[test]
    fn waits_read_as_people_read_them() {
        let cases = [
            (39, "39 s"),
            (60, "1 min"),
            (250, "4 min 10 s"),
            (1500, "25 min"),
            (5212, "1 h 26 min"),
            (7200, "2 h"),
            (2_592_000, "30 d"),
            (90_000, "1 d 1 h"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}");
        }
        let now = 1_764_427_923; // 2025-11-29T14:52:03Z
        assert_eq!(time_of_day(now, 39), "14:52:42 UTC");
        // 16:18:55 and 14:52:03: a time shown without seconds is never early.
        assert_eq!(time_of_day(now, 5212), "16:19 UTC");
        assert_eq!(time_of_day(now, 2 * 86_400), "2025-12-01 14:53 UTC");
        assert_eq!(time_of_day(now, 3597), "15:52:00 UTC");
    }

    #[test]
    fn a_refusal_says_whose_limit_which_window_and_when() {
        let mut l = limit(3000, 20, WindowType::Sliding);
        let s = Standing { limit: l.clone(), used: 3150, reset: 5, retry_after: 39 };
        let text = |e: &Exhausted| String::from_utf8(e.to_reply().body).unwrap();
        let refusal = Exhausted { standing: s.clone(), in_flight: None, now: 1_764_427_923, refund_errors: vec![] };
        let body = text(&refusal);
        assert!(body.contains("your tier's shared limit of 3000 tokens per 20 s (used 3150)"), "{body}");
        assert!(body.contains("sliding window: use older than 20 s stops counting"), "{body}");
        assert!(body.contains("Try again in 39 s (at 14:52:42 UTC)"), "{body}");
        l.per = Per::Person;
        l.window_type = WindowType::Fixed;
        l.window = 2_592_000;
        let long = Exhausted {
            standing: Standing { limit: l, retry_after: 5212, ..s },
            in_flight: None,
            now: 1_764_427_923,
            refund_errors: vec![],
        };
        let body = text(&long);
        assert!(body.contains("your personal limit of 3000 tokens per 30 d"), "{body}");
        assert!(body.contains("Try again in 1 h 26 min (at 16:19 UTC)"), "{body}");
        assert!(long.to_reply().headers.contains(&("x-should-retry".to_owned(), "false".to_owned())));
        // A cost limit says its spend in dollars too, not in the micro-dollars it counts.
        let mut dollars = limit(5_000_000, 86_400, WindowType::Fixed);
        dollars.counts = Counts::Cost;
        let spent = Exhausted {
            standing: Standing { limit: dollars, used: 5_123_456, ..s },
            in_flight: None,
            now: 1_764_427_923,
            refund_errors: vec![],
        };
        let body = text(&spent);
        assert!(
            body.contains("spending budget spent: your tier's shared limit of $5.00 per 1 d (used $5.12)"),
            "{body}"
        );
    }
    use crate::shared::tests::FakeStore;

    fn limit(limit: u64, window: u64, window_type: WindowType) -> Limit {
        Limit {
            limit,
            window,
            window_type,
            counts: Counts::TotalTokens,
            per: Per::Tier,
            key: format!("csg/b/t/{window}"),
        }
    }

    fn counter(s: u64, c: u64, p: u64) -> Counter {
        Counter { k: "k".into(), s, c, p, ..Counter::default() }
    }

    #[test]
    fn sliding_window_edges() {
        let l = limit(100, 60, WindowType::Sliding);
        let cases = [
            ("start of window: all of prev counts", counter(600, 0, 60), 600, 60),
            ("half way: half of prev", counter(600, 10, 60), 630, 40),
            ("last second: 1/60 of prev, rounded up", counter(600, 10, 60), 659, 11),
            ("next window: curr becomes prev", counter(600, 60, 0), 660, 60),
            ("two windows later: nothing", counter(600, 60, 60), 720, 0),
        ];
        for (name, c, now, want) in cases {
            assert_eq!(c.used(&l, now), want, "{name}");
        }
    }

    #[test]
    fn retry_after_is_when_room_returns() {
        let sliding = limit(100, 60, WindowType::Sliding);
        let fixed = limit(100, 60, WindowType::Fixed);
        for (name, l, c, now) in [
            ("fixed full", &fixed, counter(600, 100, 0), 630),
            ("sliding, current window full", &sliding, counter(600, 150, 0), 630),
            ("sliding, previous window decaying", &sliding, counter(600, 40, 120), 610),
            ("sliding, exactly at limit", &sliding, counter(600, 100, 0), 600),
        ] {
            let wait = c.retry_after(l, now);
            assert!(wait > 0, "{name}");
            assert!(c.used(l, now + wait) < l.limit, "{name}: room after {wait} s");
            assert!(c.used(l, now + wait - 1) >= l.limit, "{name}: no room one second earlier");
        }
        assert_eq!(counter(600, 10, 0).retry_after(&sliding, 630), 0);
        // A counter in a window this clock has not reached (it stepped back ten minutes, or
        // another worker's ran ahead): the wait is counted on this clock, and there is room then.
        for (name, l, c) in [("fixed", &fixed, counter(960, 100, 0)), ("sliding", &sliding, counter(960, 150, 0))] {
            let now = 400;
            let wait = c.retry_after(l, now);
            assert!(wait > 560, "{name}: {wait}");
            assert!(c.used(l, now + wait) < l.limit, "{name}: room after {wait} s");
            assert!(c.used(l, now + wait - 1) >= l.limit, "{name}: no room one second earlier");
        }
    }

    #[test]
    fn retry_after_is_the_first_second_with_room_for_every_sliding_state() {
        // Brute force: step a second at a time until `used` drops below the limit.
        let mut checked = 0;
        for window in [1, 2, 7, 60] {
            for lim in [1, 2, 3, 10, 100] {
                let l = limit(lim, window, WindowType::Sliding);
                for c in (0..=3 * lim).step_by(((lim / 10) as usize).max(1)) {
                    for p in (0..=3 * lim).step_by(((lim / 10) as usize).max(1)) {
                        for into in 0..window {
                            let (stored, now) = (counter(600 * window, c, p), 600 * window + into);
                            let wait = stored.retry_after(&l, now);
                            let first = (0..=3 * window).find(|d| stored.used(&l, now + d) < lim).unwrap();
                            assert_eq!(wait, first, "limit {lim}/{window} s, c {c}, p {p}, {into} s in");
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn charge_admit_and_refuse() {
        let store = FakeStore::default();
        let limits = vec![limit(100, 60, WindowType::Sliding), limit(1000, 3600, WindowType::Fixed)];
        assert!(admit(&store, &limits, "p", &[], 600).is_ok());
        for l in &limits {
            charge(&store, &l.key_for("p"), l.window, 600, 100).unwrap();
        }
        let refused = admit(&store, &limits, "p", &[], 610).unwrap_err();
        assert_eq!(refused.standing.limit.window, 60);
        let reply = refused.to_reply();
        assert_eq!(reply.status, 429);
        assert!(reply.headers.iter().any(|(k, _)| k == "retry-after"));
        assert!(admit(&store, &limits, "p", &[], 720).is_ok(), "recovers as the window slides");
    }

    #[test]
    fn holds_are_written_with_the_check_and_given_back_on_refusal() {
        let store = FakeStore::default();
        let limits = vec![limit(1000, 3600, WindowType::Fixed), limit(100, 60, WindowType::Fixed)];
        let admitted = admit(&store, &limits, "p", &[60, 60], 600).unwrap();
        assert_eq!(admitted.iter().map(|(_, h)| h.units).collect::<Vec<_>>(), vec![60, 60]);
        store.lose_races.set(2);
        let admitted = admit(&store, &limits, "p", &[60, 60], 601).unwrap();
        assert_eq!(admitted[0].0.used, 60, "a lost race re-reads before deciding");
        assert_eq!((read(&store, &limits[0].key).c, read(&store, &limits[1].key).c), (120, 120));
        let refused = admit(&store, &limits, "p", &[60, 60], 602).unwrap_err();
        assert_eq!(refused.standing.limit.window, 60);
        assert_eq!(read(&store, &limits[0].key).c, 120, "the first limit's hold was given back");
        assert_eq!(read(&store, &limits[1].key).c, 120, "nothing held where there was no room");
    }

    #[test]
    fn long_waits_fail_fast() {
        let l = limit(10, 86_400, WindowType::Fixed);
        let store = FakeStore::default();
        charge(&store, &l.key, l.window, 0, 10).unwrap();
        let reply = admit(&store, &[l], "p", &[], 10).unwrap_err().to_reply();
        assert!(reply.headers.contains(&("x-should-retry".into(), "false".into())));
    }

    #[test]
    fn counters_are_stored_compactly_and_json_records_still_read() {
        let c = Counter { k: "csg/b/x/t60fp/y".into(), s: 600, c: u64::MAX, p: 5, oc: 7, op: 1, h: 3, ph: 2, ht: 590 };
        let bytes = c.encode();
        assert_eq!(bytes.len(), 2 + 64 + c.k.len());
        assert_eq!(decode(Some(&bytes), &c.k), c);
        assert_eq!(decode(Some(&bytes), "other").c, 0, "another key's counter counts as empty");
        for cut in 0..bytes.len() - c.k.len() {
            assert_eq!(decode(Some(&bytes[..cut]), &c.k).c, 0, "truncated at {cut}");
        }
        let json = serde_json::to_vec(&c).unwrap();
        assert_eq!(decode(Some(&json), &c.k), c, "the JSON of earlier versions");
        assert_eq!(decode(Some(b"C1 not a counter"), &c.k).c, 0);
        // Seven numbers under `C2`, as one build wrote counters with holds: read, `ht` unknown.
        let mut v2 = b"C2".to_vec();
        for n in [600u64, 90, 20, 30, 5, 3, 2] {
            v2.extend_from_slice(&n.to_le_bytes());
        }
        v2.extend_from_slice(c.k.as_bytes());
        let read_v2 = decode(Some(&v2), &c.k);
        assert_eq!(
            (read_v2.s, read_v2.c, read_v2.p, read_v2.oc, read_v2.op, read_v2.h, read_v2.ph, read_v2.ht),
            (600, 90, 20, 30, 5, 3, 2, 0)
        );
        assert_eq!(&bytes[..2], b"C3");
        // Holding nothing, a counter is written as builds before holds were kept apart read it.
        let idle = Counter { h: 0, ph: 0, ..c.clone() };
        let bytes = idle.encode();
        assert_eq!((&bytes[..2], bytes.len()), (&b"C1"[..], 2 + 40 + c.k.len()));
        assert_eq!(decode(Some(&bytes), &c.k), Counter { ht: 0, ..idle });
    }

    #[test]
    fn aliased_key_counts_as_empty_and_refund_clamps() {
        let store = FakeStore::default();
        store.data.borrow_mut().insert("a".into(), (br#"{"k":"b","s":0,"c":999,"p":0}"#.to_vec(), 1));
        assert_eq!(read(&store, "a").c, 0);
        charge(&store, "a", 60, 10, 5).unwrap();
        charge(&store, "a", 60, 10, -50).unwrap();
        assert_eq!(read(&store, "a").c, 0);
        assert_eq!(decode(store.get("a").unwrap().0.as_deref(), "b").c, 999, "the other key's counter stays");
    }

    /// ngx_wasm_module's store: an entry is found by its key's CRC32 alone (`ngx_wa_shm_kv.c`),
    /// and a write replaces whatever entry has that CRC32, with its CAS.
    #[derive(Default)]
    struct CrcStore {
        data: std::cell::RefCell<std::collections::HashMap<u32, (Vec<u8>, u32)>>,
    }

    fn crc32(bytes: &[u8]) -> u32 {
        !bytes.iter().fold(u32::MAX, |crc, &b| {
            (0..8).fold(crc ^ u32::from(b), |c, _| if c & 1 == 1 { (c >> 1) ^ 0xEDB8_8320 } else { c >> 1 })
        })
    }

    impl SharedStore for CrcStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            Ok(self
                .data
                .borrow()
                .get(&crc32(key.as_bytes()))
                .map_or((None, None), |(v, c)| (Some(v.clone()), Some(*c))))
        }
        fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let mut data = self.data.borrow_mut();
            let entry = data.entry(crc32(key.as_bytes())).or_insert((Vec::new(), 0));
            if cas.unwrap_or(0) != entry.1 {
                return Err(StoreError::CasMismatch);
            }
            *entry = (value.to_vec(), entry.1 + 1);
            Ok(())
        }
    }

    /// Two people whose counter keys share a CRC32 (found among `user0`… by brute force, as
    /// the filter names them) each keep their own count on Kong's store: the second takes a probe
    /// slot instead of wiping the first's counter on every write (seen on real nginx: neither
    /// person's limit held once both were active).
    #[test]
    fn counters_whose_keys_share_a_crc32_in_kongs_store_keep_apart() {
        let (alice, bob) = ("csg/b/_m00aM9cdNjs/t600sp/41OPBaXjLeYI", "csg/b/_m00aM9cdNjs/t600sp/8lThLywkktE3");
        assert_eq!(crc32(alice.as_bytes()), crc32(bob.as_bytes()));
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "CRC-32/ISO-HDLC, as ngx_crc32_long");
        let store = CrcStore::default();
        charge(&store, alice, 600, 10, 3000).unwrap();
        charge(&store, bob, 600, 11, 200).unwrap();
        settle(&store, alice, 600, 12, 10, 0, 150).unwrap();
        charge(&store, bob, 600, 13, 1).unwrap();
        assert_eq!((read(&store, alice).c, read(&store, bob).c), (3150, 201));
        // Holds at admission go to the same slots.
        let limit = Limit { key: "csg/b/_m00aM9cdNjs/t600sp".into(), ..limit(10_000, 600, WindowType::Sliding) };
        let limit = Limit { per: Per::Person, ..limit };
        admit(&store, std::slice::from_ref(&limit), "8lThLywkktE3", &[99], 14).unwrap();
        assert_eq!((read(&store, alice).c, read(&store, bob).c), (3150, 300));
        assert_eq!(store.data.borrow().len(), 2, "bob's counter in one probe slot");
    }

    #[test]
    fn own_spend_rolls_with_the_window_and_old_records_still_read() {
        let old: Counter = serde_json::from_slice(br#"{"k":"k","s":600,"c":70,"p":5}"#).unwrap();
        assert_eq!((old.oc, old.op), (0, 0));
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"k":"k","s":600,"c":70,"p":5}"#, "unchanged bytes");
        let charged = old.add(60, 610, 30);
        assert_eq!((charged.c, charged.oc), (100, 30), "own spend is part of the count");
        let next = charged.rolled(60, 660);
        assert_eq!((next.c, next.p, next.oc, next.op), (0, 100, 0, 30));
        assert_eq!(charged.rolled(60, 720), Counter { k: "k".into(), s: 720, ..Counter::default() });
        assert_eq!(charged.add(60, 611, -50).oc, 0, "a refund never makes own spend negative");
    }

    #[test]
    fn headers_count_down_and_warn() {
        let l = limit(1000, 60, WindowType::Sliding);
        let s = Standing { limit: l, used: 700, reset: 42, retry_after: 0 };
        let h = headers(std::slice::from_ref(&s), "anthropic", &[150], 0.8);
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("x-ai-ratelimit-limit-60-anthropic").as_deref(), Some("1000"));
        assert_eq!(get("x-ai-ratelimit-remaining-60-anthropic").as_deref(), Some("150"));
        assert_eq!(get("ratelimit-reset").as_deref(), Some("42"));
        assert!(get("x-ai-ratelimit-warning").unwrap().starts_with("85%"));
    }

    #[test]
    fn of_limits_sharing_a_window_the_headers_show_the_one_with_least_room() {
        let tier =
            Standing { limit: limit(1_000_000, 60, WindowType::Sliding), used: 100_900, reset: 42, retry_after: 0 };
        let person =
            Standing { limit: limit(20_000, 60, WindowType::Sliding), used: 19_900, reset: 40, retry_after: 0 };
        let day =
            Standing { limit: limit(5_000_000, 86_400, WindowType::Fixed), used: 4_000_000, reset: 9, retry_after: 0 };
        for order in [[&tier, &person, &day], [&person, &day, &tier]] {
            let standings: Vec<Standing> = order.iter().map(|s| (*s).clone()).collect();
            let h = headers(&standings, "anthropic", &[], 0.8);
            let all = |n: &str| h.iter().filter(|(k, _)| k == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
            assert_eq!(all("x-ai-ratelimit-limit-60-anthropic"), ["20000"]);
            assert_eq!(all("x-ai-ratelimit-remaining-60-anthropic"), ["100"]);
            assert_eq!(all("x-ai-ratelimit-remaining-86400-anthropic"), ["1000000"]);
            assert_eq!(all("ratelimit-reset"), ["9"]);
            let warnings = all("x-ai-ratelimit-warning");
            assert!(warnings.len() == 1 && warnings[0].starts_with("99%"), "{warnings:?}");
        }
    }

    /// A token limit and a cost limit (micro-dollars) of one window have no common unit: 500
    /// tokens left of 1,000 is further from refusal than $1 left of $10, though 500 < 1,000,000.
    #[test]
    fn of_a_token_and_a_cost_limit_sharing_a_window_the_headers_show_the_smaller_share_left() {
        let tokens = Standing { limit: limit(1_000, 60, WindowType::Sliding), used: 500, reset: 42, retry_after: 0 };
        let mut dollars = limit(10_000_000, 60, WindowType::Sliding);
        dollars.counts = Counts::Cost;
        let cost = Standing { limit: dollars, used: 9_000_000, reset: 42, retry_after: 0 };
        let person = Standing { limit: limit(600, 60, WindowType::Sliding), used: 200, ..tokens.clone() };
        for order in [vec![&tokens, &cost], vec![&cost, &tokens], vec![&person, &cost, &tokens]] {
            let standings: Vec<Standing> = order.iter().map(|s| (*s).clone()).collect();
            let h = headers(&standings, "anthropic", &[], 0.99);
            let all = |n: &str| h.iter().filter(|(k, _)| k == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
            assert_eq!(all("x-ai-ratelimit-limit-60-anthropic"), ["10000000"], "{order:?}");
            assert_eq!(all("x-ai-ratelimit-remaining-60-anthropic"), ["1000000"]);
        }
        // With room to spare on the cost limit, the least room among the token limits shows.
        let roomy = Standing { used: 1_000_000, ..cost.clone() };
        for order in [vec![&person, &roomy, &tokens], vec![&tokens, &roomy, &person]] {
            let standings: Vec<Standing> = order.iter().map(|s| (*s).clone()).collect();
            let h = headers(&standings, "anthropic", &[], 0.99);
            let all = |n: &str| h.iter().filter(|(k, _)| k == n).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
            assert_eq!(all("x-ai-ratelimit-remaining-60-anthropic"), ["400"], "{order:?}");
        }
    }
}
