//! Cluster-wide budgets (issue #12): the nodes of a cluster share their budget counters
//! through Redis, reached over HTTP (Webdis), while admission stays local and never waits.
//!
//! Every counter in shared data ([`crate::budget::Counter`]) holds the count admission uses
//! (`c`, `p`: what the other nodes spent, as last pulled, plus this node's own spend) and this
//! node's own spend (`oc`, `op`). Charges add to both. On ticks one worker per node (the one
//! that wins the lease in the node record) sends ONE request per sync interval: a script that
//! writes this node's own spend of every bucket into the bucket's Redis hash (field = node id)
//! and returns each bucket's sum over all nodes. The answer sets `c = total - own sent + own
//! now`, so what was spent while the request was in flight is kept. Because the node writes
//! its absolute own spend rather than a delta, a push whose answer is lost (timeout, reset)
//! and is sent again never counts twice, and a failed push loses nothing: the next one sends
//! everything spent so far.
//!
//! Until the first sync succeeds, and after `stale_after_ms` without one, admission follows
//! `on_failure` ([`admission_limits`]); the host logs and counts the [`HealthChange`]s.

mod node;
mod wire;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::budget::{self, Counter, Limit, Per};
use crate::config::{OnStoreFailure, StorePlan, Tier};
use crate::shared::{SharedStore, StoreError};

pub use node::{Health, Index, Lease, NodeRecord, ScheduleFault, Tracked, INDEX_KEY, NODE_KEY};
pub use wire::{bucket_key, max_answer_bytes, SyncRequest, SCRIPT};

/// Most per-person keys a worker remembers having put in the index (then it forgets them
/// all; noting a key again is harmless).
const MAX_NOTED: usize = 10_000;

/// One bucket of one counter in a sync: this node's own spend in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The counter's shared-data key.
    pub key: String,
    /// Its window, seconds.
    pub window: u64,
    /// Start of the bucket's window, seconds since the epoch.
    pub bucket: u64,
    /// This node's own units in the bucket when the batch was built.
    pub own: u64,
}

/// What one sync sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Batch number (the lease's).
    pub id: u64,
    /// This node's id in the store.
    pub node: u64,
    /// The buckets: the current and previous window of every counter.
    pub entries: Vec<Entry>,
}

/// What an answer means for one bucket of one counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUpdate {
    /// The counter's shared-data key.
    pub key: String,
    /// Its window, seconds.
    pub window: u64,
    /// Start of the bucket's window.
    pub bucket: u64,
    /// What the other nodes spent in the bucket.
    pub others: u64,
}

/// Why a sync did not bring totals back. Nothing is applied; the next sync sends everything
/// spent so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncError {
    /// No answer: the callout timed out, was reset or could not be dispatched.
    Unreachable(String),
    /// The bridge answered another status than 200 (Webdis: 503 when Redis is down).
    Status(u32),
    /// Redis refused the script (an `ERR ...` answer).
    Refused(String),
    /// The answer is not the expected shape.
    Garbage(String),
    /// The answer is for a sync that is no longer the current one.
    Superseded,
    /// The node record could not be read or written.
    SharedData(StoreError),
}

impl SyncError {
    /// A stable code for metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            SyncError::Unreachable(_) => "unreachable",
            SyncError::Status(_) => "status",
            SyncError::Refused(_) => "refused",
            SyncError::Garbage(_) => "garbage",
            SyncError::Superseded => "superseded",
            SyncError::SharedData(_) => "shared_data",
        }
    }
}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Unreachable(why) => write!(f, "budget store unreachable: {why}"),
            SyncError::Status(s) => write!(f, "budget store answered status {s}"),
            SyncError::Refused(why) => write!(f, "budget store refused the sync: {why}"),
            SyncError::Garbage(why) => write!(f, "budget store answer unusable: {why}"),
            SyncError::Superseded => write!(f, "budget store answer came after a newer sync started"),
            SyncError::SharedData(e) => write!(f, "budget sync record not written: {e:?}"),
        }
    }
}

/// A change of what admission may trust, to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    /// Before.
    pub from: Health,
    /// After.
    pub to: Health,
}

/// What a tick asks of the host.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// The sync to dispatch now (this worker won the lease).
    pub request: Option<SyncRequest>,
    /// A health change this worker made.
    pub change: Option<HealthChange>,
    /// Shared-data writes that failed (logged; the next tick tries again).
    pub problems: Vec<String>,
}

/// What an applied answer did.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    /// Buckets applied to counters.
    pub buckets: usize,
    /// A health change (back to synced).
    pub change: Option<HealthChange>,
    /// Counter writes that failed (the next sync fixes them).
    pub problems: Vec<String>,
}

/// The tier-wide counters of the configuration: synced from the node's first tick on, so a
/// starting node loads them before it trusts them.
pub fn tier_counters(tiers: &[Tier]) -> Vec<Tracked> {
    tiers
        .iter()
        .flat_map(|t| &t.limits)
        .filter(|l| l.per == Per::Tier)
        .map(|l| Tracked { key: l.key.clone(), window: l.window })
        .collect()
}

/// The limits admission checks: as configured while synced; otherwise as `on_failure` says.
pub fn admission_limits<'a>(plan: &StorePlan, health: Health, limits: &'a [Limit]) -> Cow<'a, [Limit]> {
    match (health, plan.on_failure) {
        (Health::Synced, _) | (_, OnStoreFailure::KeepLimits) => Cow::Borrowed(limits),
        (_, OnStoreFailure::DivideByNodes(n)) => Cow::Owned(
            limits.iter().map(|l| Limit { limit: (l.limit / u64::from(n.max(1))).max(1), ..l.clone() }).collect(),
        ),
    }
}

/// The buckets of `counter` to sync at `now_s`: its current window and the previous one.
pub fn entries_for(tracked: &Tracked, counter: &Counter, now_s: u64) -> Vec<Entry> {
    let r = counter.rolled(tracked.window, now_s);
    let entry = |bucket, own| Entry { key: tracked.key.clone(), window: tracked.window, bucket, own };
    let mut out = vec![entry(r.s, r.oc)];
    if let Some(previous) = r.s.checked_sub(tracked.window) {
        out.push(entry(previous, r.op));
    }
    out
}

/// What the totals of an answer mean for each bucket of `batch`.
pub fn updates(batch: &Batch, totals: &[u64]) -> Vec<CounterUpdate> {
    batch
        .entries
        .iter()
        .zip(totals)
        .map(|(e, total)| CounterUpdate {
            key: e.key.clone(),
            window: e.window,
            bucket: e.bucket,
            others: total.saturating_sub(e.own),
        })
        .collect()
}

/// `counter` with `update` applied at `now_s`: the other nodes' spend replaced, this node's
/// own (including what it spent since the batch was built) kept. `None` when the bucket is
/// neither the current nor the previous window any more.
pub fn apply(counter: &Counter, update: &CounterUpdate, now_s: u64) -> Option<Counter> {
    let mut c = counter.rolled(update.window, now_s);
    if update.bucket == c.s {
        c.c = update.others.saturating_add(c.oc);
    } else if update.bucket.saturating_add(update.window) == c.s {
        c.p = update.others.saturating_add(c.op);
    } else {
        return None;
    }
    Some(c)
}

/// One worker's part in the sync.
#[derive(Debug)]
pub struct Syncer {
    worker: u64,
    health: Health,
    /// Per-person key → when this worker last put it in the index, seconds.
    noted: HashMap<String, u64>,
}

impl Syncer {
    /// A worker with a random `worker` id (it names the node when this worker is the first).
    pub fn new(worker: u64) -> Syncer {
        Syncer { worker, health: Health::Starting, noted: HashMap::new() }
    }

    /// What admission may trust, as of this worker's last tick.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The limits admission checks now (see [`admission_limits`]).
    pub fn admission_limits<'a>(&self, plan: &StorePlan, limits: &'a [Limit]) -> Cow<'a, [Limit]> {
        admission_limits(plan, self.health, limits)
    }

    /// Every tick, on every worker: notes the node's health, marks the node cut off when no
    /// sync succeeded for `stale_after_ms`, and returns the sync to dispatch when this worker
    /// wins the lease for a due sync. `tier` is [`tier_counters`] of the plan.
    pub fn on_tick(&mut self, store: &dyn SharedStore, plan: &StorePlan, tier: &[Tracked], now_ms: u64) -> Tick {
        let mut tick = Tick::default();
        let record = match node::load_or_create(store, self.worker) {
            Ok(r) => r,
            Err(e) => {
                tick.problems.push(format!("budget sync: node record unreadable: {e:?}"));
                return tick;
            }
        };
        // The wall clock stepped back (an NTP step, a restored VM), or a reload shortened
        // `sync_ms`: a schedule left ahead of the clock would hold syncs off while the node
        // still says "synced".
        let record = match record.schedule_fault(now_ms, plan.sync_ms) {
            None => record,
            Some(seen) => {
                let mut fault = None;
                let put_right = node::modify(store, |r| {
                    fault = r.schedule_fault(now_ms, plan.sync_ms);
                    fault.inspect(|f| r.put_right(*f, now_ms, plan.sync_ms)).is_some()
                });
                let step = |f: Option<ScheduleFault>| f == Some(ScheduleFault::ClockStep);
                match put_right {
                    Ok(Some(r)) => {
                        if step(fault) {
                            tick.problems
                                .push("budget sync: the clock went back; the sync schedule starts over".to_owned());
                        }
                        r
                    }
                    Err(e) if step(Some(seen)) => {
                        tick.problems.push(format!("budget sync: the clock went back, and the node record: {e:?}"));
                        return tick;
                    }
                    Ok(None) | Err(_) => record,
                }
            }
        };
        self.health = record.health;
        let now_s = now_ms / 1000;
        // Read only when this worker will use it: every worker ticks twice a second, and the index
        // grows with the number of people.
        let tracked =
            || -> BTreeSet<Tracked> { tier.iter().cloned().chain(node::read_index(store).live(now_s)).collect() };
        let stale = |r: &NodeRecord| {
            r.health == Health::Synced && r.last_ok_ms.is_none_or(|t| now_ms.saturating_sub(t) > plan.stale_after_ms)
        };
        if stale(&record) {
            match node::modify(store, |r| {
                let flip = stale(r);
                if flip {
                    r.health = Health::CutOff;
                }
                flip
            }) {
                Ok(Some(_)) => {
                    self.health = Health::CutOff;
                    tick.change = Some(HealthChange { from: Health::Synced, to: Health::CutOff });
                    if matches!(plan.on_failure, OnStoreFailure::DivideByNodes(_)) {
                        tick.problems.extend(forget_others(store, &tracked()));
                    }
                }
                Ok(None) => self.health = Health::CutOff,
                Err(e) => tick.problems.push(format!("budget sync: could not mark the node cut off: {e:?}")),
            }
        }
        let due = |r: &NodeRecord| r.lease.as_ref().is_none_or(|l| l.until_ms <= now_ms) && now_ms >= r.next_ms;
        if !due(&record) {
            return tick;
        }
        let tracked = tracked();
        if tracked.is_empty() {
            return tick;
        }
        let worker = self.worker;
        let won = node::modify(store, |r| {
            if !due(r) {
                return false;
            }
            r.seq += 1;
            r.lease = Some(Lease { owner: worker, batch: r.seq, until_ms: now_ms + plan.timeout_ms + plan.sync_ms });
            r.next_ms = now_ms + plan.sync_ms;
            true
        });
        let record = match won {
            Ok(Some(r)) => r,
            Ok(None) => return tick,
            Err(e) => {
                tick.problems.push(format!("budget sync: could not take the lease: {e:?}"));
                return tick;
            }
        };
        let entries = tracked.iter().flat_map(|t| entries_for(t, &budget::read(store, &t.key), now_s)).collect();
        tick.request = Some(wire::request(plan, Batch { id: record.seq, node: record.node, entries }));
        tick
    }

    /// The answer to a sync this worker dispatched (`status` `None`: timeout or reset).
    /// On success the counters take the cluster totals and the node is synced; on failure
    /// nothing is applied and the lease is given back.
    pub fn on_answer(
        &mut self,
        store: &dyn SharedStore,
        plan: &StorePlan,
        batch: &Batch,
        status: Option<u32>,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Applied, SyncError> {
        let current = store
            .get(NODE_KEY)
            .map_err(SyncError::SharedData)?
            .0
            .and_then(|b| serde_json::from_slice::<NodeRecord>(&b).ok())
            .and_then(|r| r.lease)
            .is_some_and(|l| l.batch == batch.id);
        if !current {
            return Err(SyncError::Superseded);
        }
        let totals = match wire::totals(plan.kind, status, body, batch.entries.len()) {
            Ok(t) => t,
            Err(e) => {
                self.on_dispatch_failed(store, batch);
                return Err(e);
            }
        };
        let now_s = now_ms / 1000;
        let mut problems = Vec::new();
        let updates = updates(batch, &totals);
        for u in &updates {
            let written = budget::update(store, &u.key, |c| apply(&c, u, now_s));
            if let Err(e) = written {
                problems.push(format!("budget sync: could not update {}: {e:?}", u.key));
            }
        }
        let mut from = None;
        node::modify(store, |r| {
            if r.lease.as_ref().is_none_or(|l| l.batch != batch.id) {
                return false;
            }
            from = Some(r.health);
            r.lease = None;
            r.last_ok_ms = Some(now_ms);
            r.failures = 0;
            r.health = Health::Synced;
            true
        })
        .map_err(SyncError::SharedData)?;
        let change = from.filter(|f| *f != Health::Synced).map(|from| HealthChange { from, to: Health::Synced });
        if from.is_some() {
            self.health = Health::Synced;
        }
        Ok(Applied { buckets: updates.len(), change, problems })
    }

    /// The sync could not be dispatched (or failed): the lease is given back so the next due
    /// tick tries again.
    pub fn on_dispatch_failed(&mut self, store: &dyn SharedStore, batch: &Batch) {
        // Failing to give the lease back only delays the next sync until it lapses.
        let _ = node::modify(store, |r| {
            if r.lease.as_ref().is_none_or(|l| l.batch != batch.id) {
                return false;
            }
            r.lease = None;
            r.failures = r.failures.saturating_add(1);
            true
        });
    }

    /// After an admission: puts the person's counters in the index so the next sync pulls
    /// them (tier-wide counters come from the configuration).
    pub fn note_admitted(
        &mut self,
        store: &dyn SharedStore,
        limits: &[Limit],
        person: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let now_s = now_ms / 1000;
        let fresh: Vec<Tracked> = limits
            .iter()
            .filter(|l| l.per == Per::Person)
            .map(|l| Tracked { key: l.key_for(person), window: l.window })
            .filter(|t| self.noted.get(&t.key).is_none_or(|at| now_s.saturating_sub(*at) >= t.window))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        node::note_in_index(store, &fresh, now_s)?;
        if self.noted.len() + fresh.len() > MAX_NOTED {
            self.noted.clear();
        }
        self.noted.extend(fresh.into_iter().map(|t| (t.key, now_s)));
        Ok(())
    }
}

/// Counts only this node's own spend in every counter (cut off, with `divide_by_nodes`).
fn forget_others(store: &dyn SharedStore, tracked: &BTreeSet<Tracked>) -> Vec<String> {
    let mut problems = Vec::new();
    for t in tracked {
        let written = budget::update(store, &t.key, |c| {
            let own_only = Counter { c: c.oc, p: c.op, ..c.clone() };
            (own_only != c).then_some(own_only)
        });
        if let Err(e) = written {
            problems.push(format!("budget sync: could not drop other nodes' spend from {}: {e:?}", t.key));
        }
    }
    problems
}

#[cfg(test)]
pub(crate) mod tests;
