//! The two shared-data records of one node's sync: the node record (who syncs now, when the
//! next sync is due, whether the node is cut off from the store) and the index of counters to
//! sync. Both are read, then compare-and-swapped, like every shared-data write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::shared::{self, SharedStore, StoreError};

/// Shared-data key of the node record (short: Kong aliases keys by CRC32).
pub const NODE_KEY: &str = "csg/sync";
/// Shared-data key of the counter index.
pub const INDEX_KEY: &str = "csg/sync/keys";

/// Whether admission may trust the cluster totals in the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// No sync has succeeded since the node started: the counters hold only this node's spend.
    #[default]
    Starting,
    /// The last sync succeeded recently enough: counters hold cluster totals plus this node's
    /// unsynced spend.
    Synced,
    /// No sync has succeeded for `stale_after_ms`: admission follows `on_failure`.
    CutOff,
}

impl Health {
    /// A stable name for logs and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Synced => "synced",
            Health::CutOff => "cut_off",
        }
    }
}

/// The right of one worker to run the sync in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The worker that holds it.
    pub owner: u64,
    /// The batch it sent; an answer for another batch is not applied.
    pub batch: u64,
    /// When the lease lapses and another worker may sync, milliseconds since the epoch.
    pub until_ms: u64,
}

/// The node record, shared by the workers of one node. Every field but the node id has a
/// default, so a record written by a build with fewer fields (shared data outlives a code
/// update) is read, not replaced: a replaced record makes a new node id, under which the store
/// would get this node's spend a second time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// This node's field name in the store's bucket hashes (the id of the worker that created
    /// the record; every worker of the node uses it).
    pub node: u64,
    /// The sync in flight, if any.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Last batch number handed out.
    #[serde(default)]
    pub seq: u64,
    /// Earliest start of the next sync, milliseconds.
    #[serde(default)]
    pub next_ms: u64,
    /// Last successful sync, milliseconds.
    #[serde(default)]
    pub last_ok_ms: Option<u64>,
    /// What admission may trust.
    #[serde(default)]
    pub health: Health,
    /// Syncs failed in a row.
    #[serde(default)]
    pub failures: u32,
}

impl NodeRecord {
    fn fresh(node: u64) -> NodeRecord {
        NodeRecord { node, lease: None, seq: 0, next_ms: 0, last_ok_ms: None, health: Health::Starting, failures: 0 }
    }
}

/// How far ahead of the clock a recorded time must be to be taken for the clock stepping back:
/// far above the skew between the workers' clocks and a host's coarse clock.
pub const CLOCK_STEP_MARGIN_MS: u64 = 10_000;

/// What a tick found wrong with the node's sync schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleFault {
    /// A time recorded ahead of the clock by more than any plan allows: the clock went back.
    ClockStep,
    /// The next sync set beyond the current interval (a reload shortened `sync_ms`).
    Late,
}

impl NodeRecord {
    /// Whether the schedule needs putting right at `now_ms` under an interval of `sync_ms`.
    /// A step is judged with a margin far above the skew between workers' clocks, and by the
    /// longest interval and timeout any plan allows, so a reload is not taken for one.
    pub fn schedule_fault(&self, now_ms: u64, sync_ms: u64) -> Option<ScheduleFault> {
        use crate::config::{MAX_PERIOD_MS, MAX_TIMEOUT_MS};
        let ahead = |t: u64| t > now_ms.saturating_add(CLOCK_STEP_MARGIN_MS);
        let step = self.last_ok_ms.is_some_and(ahead)
            || ahead(self.next_ms.saturating_sub(MAX_PERIOD_MS))
            || self.lease.as_ref().is_some_and(|l| ahead(l.until_ms.saturating_sub(MAX_PERIOD_MS + MAX_TIMEOUT_MS)));
        if step {
            Some(ScheduleFault::ClockStep)
        } else if self.next_ms > now_ms.saturating_add(sync_ms).saturating_add(CLOCK_STEP_MARGIN_MS) {
            Some(ScheduleFault::Late)
        } else {
            None
        }
    }

    /// Puts `fault` right: after a clock step the schedule is rebased on now (a sync goes at
    /// once, the node's health stays until that sync says otherwise); a late next sync is
    /// brought forward to the current interval.
    pub fn put_right(&mut self, fault: ScheduleFault, now_ms: u64, sync_ms: u64) {
        match fault {
            ScheduleFault::ClockStep => {
                self.next_ms = now_ms;
                self.lease = None;
                self.last_ok_ms = self.last_ok_ms.map(|_| now_ms);
            }
            ScheduleFault::Late => self.next_ms = now_ms.saturating_add(sync_ms),
        }
    }
}

/// The node record, created by this worker (`worker` becomes the node id) when there is none.
pub fn load_or_create(store: &dyn SharedStore, worker: u64) -> Result<NodeRecord, StoreError> {
    let mut seen = None;
    shared::update(store, NODE_KEY, |current| {
        match current.and_then(|b| serde_json::from_slice::<NodeRecord>(b).ok()) {
            Some(record) => {
                seen = Some(record);
                None
            }
            // A missing or unreadable record is replaced: a node whose record is lost starts
            // over as a new node (its spend stays in the store under the old id).
            None => {
                let record = NodeRecord::fresh(worker);
                let bytes = serde_json::to_vec(&record).ok();
                seen = Some(record);
                bytes
            }
        }
    })?;
    seen.ok_or(StoreError::Contended)
}

/// Changes the node record with `edit` (which may decline with `false`); returns the record
/// as written, or `None` when `edit` declined.
pub fn modify(
    store: &dyn SharedStore,
    mut edit: impl FnMut(&mut NodeRecord) -> bool,
) -> Result<Option<NodeRecord>, StoreError> {
    let mut written = None;
    let wrote = shared::update(store, NODE_KEY, |current| {
        let mut record = current.and_then(|b| serde_json::from_slice::<NodeRecord>(b).ok())?;
        if !edit(&mut record) {
            return None;
        }
        let bytes = serde_json::to_vec(&record).ok();
        written = Some(record);
        bytes
    })?;
    Ok(if wrote { written } else { None })
}

/// A counter the node syncs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tracked {
    /// The counter's shared-data key ([`crate::budget::Limit::key_for`]).
    pub key: String,
    /// Its window, seconds.
    pub window: u64,
}

/// The index of per-person counters seen on this node: key → (window, last seen, seconds).
/// Tier-wide counters are not listed: the configuration names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Counter key → `[window, last seen]`.
    pub keys: BTreeMap<String, (u64, u64)>,
}

impl Index {
    /// The counters still worth syncing at `now_s` (seen within two windows: older ones can no
    /// longer count in a sliding window).
    pub fn live(&self, now_s: u64) -> impl Iterator<Item = Tracked> + '_ {
        self.keys
            .iter()
            .filter(move |(_, (w, seen))| *w > 0 && seen.saturating_add(w.saturating_mul(2)) > now_s)
            .map(|(k, (w, _))| Tracked { key: k.clone(), window: *w })
    }
}

/// Reads the index (missing or unreadable: empty).
pub fn read_index(store: &dyn SharedStore) -> Index {
    store.get(INDEX_KEY).ok().and_then(|(v, _)| v).and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Adds or refreshes `tracked` as seen at `now_s`, and drops entries that are no longer live.
pub fn note_in_index(store: &dyn SharedStore, tracked: &[Tracked], now_s: u64) -> Result<bool, StoreError> {
    shared::update(store, INDEX_KEY, |current| {
        let mut index: Index = current.and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        index.keys.retain(|_, (w, seen)| *w > 0 && seen.saturating_add(w.saturating_mul(2)) > now_s);
        for t in tracked {
            index.keys.insert(t.key.clone(), (t.window, now_s));
        }
        serde_json::to_vec(&index).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::tests::FakeStore;

    #[test]
    fn first_worker_names_the_node_and_others_keep_it() {
        let store = FakeStore::default();
        assert_eq!(load_or_create(&store, 7).unwrap().node, 7);
        assert_eq!(load_or_create(&store, 9).unwrap().node, 7);
        store.data.borrow_mut().insert(NODE_KEY.into(), (b"garbage".to_vec(), 40));
        assert_eq!(load_or_create(&store, 9).unwrap().node, 9, "an unreadable record starts a new node");
    }

    /// A record another build wrote, with fewer fields or more, keeps the node's id: a new id
    /// would have the store count this node's spend twice.
    #[test]
    fn a_record_from_another_build_keeps_the_node() {
        let store = FakeStore::default();
        for old in [&br#"{"node":5,"seq":3,"next_ms":1,"health":"synced"}"#[..], br#"{"node":5,"later":true}"#] {
            store.data.borrow_mut().insert(NODE_KEY.into(), (old.to_vec(), 40));
            let record = load_or_create(&store, 9).unwrap();
            assert_eq!(record.node, 5, "{}", String::from_utf8_lossy(old));
        }
        assert_eq!(load_or_create(&store, 9).unwrap().health, Health::Starting);
    }

    #[test]
    fn modify_writes_only_when_the_edit_accepts() {
        let store = FakeStore::default();
        load_or_create(&store, 1).unwrap();
        assert_eq!(modify(&store, |_| false).unwrap(), None);
        store.lose_races.set(2);
        let written = modify(&store, |r| {
            r.seq += 1;
            true
        })
        .unwrap();
        assert_eq!(written.map(|r| r.seq), Some(1), "a lost race re-reads and edits again");
    }

    #[test]
    fn index_keeps_live_keys_only() {
        let store = FakeStore::default();
        let t = |k: &str, w| Tracked { key: k.into(), window: w };
        note_in_index(&store, &[t("a", 60), t("b", 3600)], 1000).unwrap();
        assert_eq!(read_index(&store).live(1119).count(), 2);
        assert_eq!(read_index(&store).live(1120).collect::<Vec<_>>(), vec![t("b", 3600)]);
        note_in_index(&store, &[t("c", 60)], 1200).unwrap();
        assert_eq!(read_index(&store).keys.keys().cloned().collect::<Vec<_>>(), vec!["b", "c"], "a pruned");
    }

    #[test]
    fn an_index_entry_with_no_window_or_an_endless_one_is_never_synced() {
        // Shared data outlives a VM: what another build wrote must not divide by zero or wrap.
        let store = FakeStore::default();
        let written = r#"{"keys":{"zero":[0,1000],"huge":[18446744073709551615,1000],"ok":[60,1000]}}"#;
        store.cas_set(INDEX_KEY, written.as_bytes(), None).unwrap();
        let live: Vec<String> = read_index(&store).live(1100).map(|t| t.key).collect();
        assert_eq!(live, ["huge", "ok"]);
        let t = |k: &str, w| Tracked { key: k.into(), window: w };
        note_in_index(&store, &[t("new", 60)], 1100).unwrap();
        assert!(!read_index(&store).keys.contains_key("zero"), "dropped when the index is next written");
    }
}
