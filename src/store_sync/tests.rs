use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::budget::{charge, read, Counts, WindowType};
use crate::config::StoreKind;
use crate::shared::tests::FakeStore;

const T: &str = "csg/b/T/t60st";
const T0: u64 = 600_000;

/// Redis running the script's semantics: bucket → node → own spend.
#[derive(Default)]
struct FakeRedis {
    hashes: HashMap<String, HashMap<String, u64>>,
}

impl FakeRedis {
    fn run(&mut self, req: &SyncRequest) -> Vec<u8> {
        assert_eq!(req.header(":method"), Some("PUT"));
        let body: Value = serde_json::from_slice(&req.body).unwrap();
        let node = body["n"].as_str().unwrap().to_owned();
        let mut out = Vec::new();
        for e in body["e"].as_array().unwrap() {
            let (key, own) = (e[0].as_str().unwrap(), e[2].as_str().unwrap().parse::<u64>().unwrap());
            let hash = self.hashes.entry(key.to_owned()).or_default();
            if own != 0 || hash.contains_key(&node) {
                hash.insert(node.clone(), own);
            }
            out.push(hash.values().sum::<u64>());
        }
        json!({ "EVAL": out }).to_string().into_bytes()
    }

    fn own(&self, bucket: &str, node: u64) -> Option<u64> {
        self.hashes.get(bucket)?.get(&node.to_string()).copied()
    }
}

/// The store plan the tests use (also the wire format's tests).
pub(crate) fn plan(on_failure: OnStoreFailure) -> StorePlan {
    StorePlan {
        kind: StoreKind::Webdis,
        upstream: "webdis:7379".into(),
        authority: "webdis".into(),
        sync_ms: 500,
        timeout_ms: 1000,
        stale_after_ms: 2000,
        key_prefix: "csg".into(),
        on_failure,
    }
}

fn tier() -> Vec<Tracked> {
    vec![Tracked { key: T.into(), window: 60 }]
}

fn person_limit() -> Limit {
    Limit {
        limit: 1000,
        window: 60,
        window_type: WindowType::Sliding,
        counts: Counts::TotalTokens,
        per: Per::Person,
        key: "csg/b/T/t60sp".into(),
    }
}

/// One node: its shared data and one worker.
struct Node {
    store: FakeStore,
    worker: Syncer,
}

impl Node {
    fn new(id: u64) -> Node {
        Node { store: FakeStore::default(), worker: Syncer::new(id) }
    }

    fn tick(&mut self, plan: &StorePlan, now_ms: u64) -> Tick {
        self.worker.on_tick(&self.store, plan, &tier(), now_ms)
    }

    /// A full sync at `now_ms` against `redis`.
    fn sync(&mut self, plan: &StorePlan, redis: &mut FakeRedis, now_ms: u64) -> Result<Applied, SyncError> {
        let req = self.tick(plan, now_ms).request.expect("a sync is due");
        let body = redis.run(&req);
        self.worker.on_answer(&self.store, plan, &req.batch, Some(200), &body, now_ms)
    }

    fn spend(&self, key: &str, units: i64) {
        charge(&self.store, key, 60, T0 / 1000, units).unwrap();
    }

    fn counter(&self, key: &str) -> Counter {
        read(&self.store, key)
    }
}

#[test]
fn two_nodes_converge_on_cluster_totals_and_keep_what_was_spent_in_flight() {
    let plan = plan(OnStoreFailure::DivideByNodes(2));
    let mut redis = FakeRedis::default();
    let (mut a, mut b) = (Node::new(1), Node::new(2));
    a.spend(T, 100);
    b.spend(T, 50);
    a.sync(&plan, &mut redis, T0).unwrap();
    assert_eq!(a.counter(T).c, 100, "b has not pushed yet");
    let applied = b.sync(&plan, &mut redis, T0).unwrap();
    assert_eq!(applied.buckets, 2, "current and previous bucket");
    assert_eq!(applied.change, Some(HealthChange { from: Health::Starting, to: Health::Synced }));
    assert_eq!(b.counter(T).c, 150);

    let req = a.tick(&plan, T0 + 500).request.unwrap();
    a.spend(T, 10);
    let body = redis.run(&req);
    a.worker.on_answer(&a.store, &plan, &req.batch, Some(200), &body, T0 + 500).unwrap();
    let c = a.counter(T);
    assert_eq!((c.c, c.oc), (160, 110), "50 from b, 100 pushed, 10 spent while the sync was in flight");
    assert_eq!(redis.own("csg:csg/b/T/t60st:600", 1), Some(100));
    a.sync(&plan, &mut redis, T0 + 1000).unwrap();
    assert_eq!(redis.own("csg:csg/b/T/t60st:600", 1), Some(110), "the rest is pushed next time");
    assert_eq!(redis.own("csg:csg/b/T/t60st:540", 1), None, "an empty bucket is read, not written");
}

#[test]
fn one_worker_per_node_syncs_once_per_interval() {
    let plan = plan(OnStoreFailure::KeepLimits);
    let mut redis = FakeRedis::default();
    let store = FakeStore::default();
    let (mut w1, mut w2) = (Syncer::new(1), Syncer::new(2));
    charge(&store, T, 60, T0 / 1000, 5).unwrap();
    let first = w1.on_tick(&store, &plan, &tier(), T0).request.unwrap();
    assert_eq!(first.batch.node, 1, "the first worker names the node");
    assert_eq!(w2.on_tick(&store, &plan, &tier(), T0).request, None, "lease held");
    assert_eq!(w1.on_tick(&store, &plan, &tier(), T0 + 600).request, None, "still in flight");
    let body = redis.run(&first);
    w1.on_answer(&store, &plan, &first.batch, Some(200), &body, T0 + 700).unwrap();
    assert_eq!(w2.on_health_after_tick(&store, &plan, T0 + 700), Health::Synced, "every worker sees the health");
    let second = w2.on_tick(&store, &plan, &tier(), T0 + 1000).request.unwrap();
    assert_eq!((second.batch.node, second.batch.id), (1, 2), "another worker syncs for the same node");

    // The second sync's answer never comes: the lease lapses and another worker takes over.
    assert_eq!(w1.on_tick(&store, &plan, &tier(), T0 + 2499).request, None);
    let third = w1.on_tick(&store, &plan, &tier(), T0 + 2500).request.unwrap();
    let late = redis.run(&second);
    assert_eq!(
        w2.on_answer(&store, &plan, &second.batch, Some(200), &late, T0 + 2600).unwrap_err(),
        SyncError::Superseded
    );
    let body = redis.run(&third);
    assert!(w1.on_answer(&store, &plan, &third.batch, Some(200), &body, T0 + 2600).is_ok());
}

impl Syncer {
    /// A tick that never wins a sync (the interval is not due), to refresh the health.
    fn on_health_after_tick(&mut self, store: &dyn SharedStore, plan: &StorePlan, now_ms: u64) -> Health {
        self.on_tick(store, plan, &[], now_ms);
        self.health()
    }
}

#[test]
fn failed_answers_apply_nothing_lose_nothing_and_never_count_twice() {
    let plan = plan(OnStoreFailure::DivideByNodes(2));
    // (name, status, body, whether Redis applied the push before the answer was lost)
    let cases: &[(&str, Option<u32>, &str, bool)] = &[
        ("timeout before redis", None, "", false),
        ("timeout after redis applied it", None, "", true),
        ("redis down behind webdis", Some(503), "", false),
        ("server error", Some(500), "oops", false),
        ("garbage", Some(200), "<html>", false),
        ("wrong count", Some(200), r#"{"EVAL":[1]}"#, true),
        ("script refused", Some(200), r#"{"EVAL":[false,"ERR busy"]}"#, false),
    ];
    for (name, status, body, applied) in cases {
        let mut redis = FakeRedis::default();
        let mut other = Node::new(9);
        other.spend(T, 40);
        other.sync(&plan, &mut redis, T0).unwrap();
        let mut node = Node::new(1);
        node.spend(T, 100);
        let req = node.tick(&plan, T0).request.unwrap();
        if *applied {
            redis.run(&req);
        }
        let err = node.worker.on_answer(&node.store, &plan, &req.batch, *status, body.as_bytes(), T0);
        assert!(err.is_err(), "{name}");
        assert_eq!((node.counter(T).c, node.counter(T).oc), (100, 100), "{name}: nothing applied, nothing lost");
        assert_eq!(node.tick(&plan, T0 + 499).request, None, "{name}: waits for the interval");
        node.spend(T, 7);
        node.sync(&plan, &mut redis, T0 + 500).unwrap();
        assert_eq!(node.counter(T).c, 147, "{name}: all own spend pushed once, others pulled");
        assert_eq!(redis.own("csg:csg/b/T/t60st:600", 1), Some(107), "{name}");
    }
}

#[test]
fn cut_off_follows_on_failure_and_sync_resumes() {
    let person = person_limit();
    for (mode, own_only, limit) in
        [(OnStoreFailure::DivideByNodes(2), true, 500), (OnStoreFailure::KeepLimits, false, 1000)]
    {
        let plan = plan(mode);
        let mut redis = FakeRedis::default();
        let mut other = Node::new(9);
        other.spend(T, 40);
        other.sync(&plan, &mut redis, T0).unwrap();
        let mut node = Node::new(1);
        node.spend(T, 100);
        node.sync(&plan, &mut redis, T0).unwrap();
        assert_eq!(node.counter(T).c, 140);
        let limits = [person.clone()];
        assert_eq!(node.worker.admission_limits(&plan, &limits)[0].limit, 1000, "{mode:?}: synced");

        // The store stops answering; the node is cut off once stale_after_ms passes.
        let mut change = None;
        for now in (T0 + 500..=T0 + 2500).step_by(500) {
            let tick = node.tick(&plan, now);
            change = change.or(tick.change);
            if let Some(req) = tick.request {
                node.worker.on_dispatch_failed(&node.store, &req.batch);
            }
        }
        assert_eq!(change, Some(HealthChange { from: Health::Synced, to: Health::CutOff }), "{mode:?}");
        assert_eq!(node.counter(T).c, if own_only { 100 } else { 140 }, "{mode:?}");
        assert_eq!(node.worker.admission_limits(&plan, &limits)[0].limit, limit, "{mode:?}");

        node.spend(T, 30);
        let applied = node.sync(&plan, &mut redis, T0 + 3000).unwrap();
        assert_eq!(applied.change, Some(HealthChange { from: Health::CutOff, to: Health::Synced }), "{mode:?}");
        assert_eq!(node.counter(T).c, 170, "{mode:?}: what was spent while cut off is pushed");
        assert_eq!(node.worker.admission_limits(&plan, &limits)[0].limit, 1000, "{mode:?}");
    }
}

#[test]
fn a_starting_node_loads_totals_and_pulls_people_on_first_sight() {
    let plan = plan(OnStoreFailure::DivideByNodes(4));
    let person = person_limit();
    let pkey = person.key_for("alice");
    let mut redis = FakeRedis::default();
    let mut old = Node::new(1);
    old.spend(T, 300);
    old.spend(&pkey, 70);
    old.worker.note_admitted(&old.store, std::slice::from_ref(&person), "alice", T0).unwrap();
    old.sync(&plan, &mut redis, T0).unwrap();

    let mut fresh = Node::new(2);
    assert_eq!(fresh.worker.health(), Health::Starting);
    assert_eq!(fresh.worker.admission_limits(&plan, std::slice::from_ref(&person))[0].limit, 250);
    let first = fresh.tick(&plan, T0 + 100).request.unwrap();
    assert!(first.batch.entries.iter().all(|e| e.key == T), "only the configured tier counters at first");
    let body = redis.run(&first);
    fresh.worker.on_answer(&fresh.store, &plan, &first.batch, Some(200), &body, T0 + 100).unwrap();
    assert_eq!(fresh.counter(T).c, 300, "loaded before any request of this node");
    assert_eq!(fresh.worker.health(), Health::Synced);

    fresh.worker.note_admitted(&fresh.store, std::slice::from_ref(&person), "alice", T0 + 200).unwrap();
    fresh.sync(&plan, &mut redis, T0 + 600).unwrap();
    assert_eq!(fresh.counter(&pkey).c, 70, "a person's counter is pulled by the next sync");
}

#[test]
fn an_answer_after_the_window_rolled_fills_the_previous_window() {
    let plan = plan(OnStoreFailure::KeepLimits);
    let mut redis = FakeRedis::default();
    let mut other = Node::new(9);
    other.spend(T, 40);
    other.sync(&plan, &mut redis, T0).unwrap();
    let mut node = Node::new(1);
    node.spend(T, 10);
    let req = node.tick(&plan, 659_900).request.unwrap();
    let body = redis.run(&req);
    node.worker.on_answer(&node.store, &plan, &req.batch, Some(200), &body, 660_100).unwrap();
    let c = node.counter(T);
    assert_eq!((c.s, c.c, c.p, c.op), (660, 0, 50, 10));
}

#[test]
fn pure_parts() {
    let tracked = Tracked { key: "k".into(), window: 60 };
    let counter = Counter { k: "k".into(), s: 600, c: 90, p: 20, oc: 30, op: 5, h: 10, ph: 0, ht: 600 };
    let entries = entries_for(&tracked, &counter, 610);
    assert_eq!(entries.iter().map(|e| (e.bucket, e.own)).collect::<Vec<_>>(), vec![(600, 30), (540, 5)]);
    let first = Counter { s: 0, ..counter.clone() };
    assert_eq!(entries_for(&tracked, &first, 30).len(), 1, "no window before the epoch's first");
    // A counter another worker already moved on is synced in the window it is in.
    let ahead: Vec<_> = entries_for(&tracked, &counter, 599).iter().map(|e| (e.bucket, e.own)).collect();
    assert_eq!(ahead, vec![(600, 30), (540, 5)]);
    let batch = Batch { id: 1, node: 1, entries };
    let ups = updates(&batch, &[100, 2]);
    assert_eq!(ups.iter().map(|u| u.others).collect::<Vec<_>>(), vec![70, 0], "a total below own counts as 0");
    let cases = [
        ("current bucket", &ups[0], 610, Some((600, 100, 20))),
        ("previous bucket", &ups[1], 610, Some((600, 90, 5))),
        ("current became previous", &ups[0], 665, Some((660, 0, 100))),
        ("too old", &ups[1], 665, None),
    ];
    for (name, u, now, want) in cases {
        assert_eq!(apply(&counter, u, now).map(|c| (c.s, c.c, c.p)), want, "{name}");
    }
}

#[test]
fn admission_limits_by_health_and_mode() {
    let limits = [person_limit(), Limit { limit: 2, ..person_limit() }];
    let cases = [
        ("synced", Health::Synced, OnStoreFailure::DivideByNodes(3), [1000, 2]),
        ("starting, divided, never 0", Health::Starting, OnStoreFailure::DivideByNodes(3), [333, 1]),
        ("cut off, divided", Health::CutOff, OnStoreFailure::DivideByNodes(3), [333, 1]),
        ("cut off, kept", Health::CutOff, OnStoreFailure::KeepLimits, [1000, 2]),
    ];
    for (name, health, mode, want) in cases {
        let got: Vec<u64> = admission_limits(&plan(mode), health, &limits).iter().map(|l| l.limit).collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn tier_counters_are_the_tier_wide_limits_of_the_plan() {
    let plan = crate::jwt::tests::plan();
    let expected: Vec<Tracked> = plan
        .tiers
        .iter()
        .flat_map(|t| &t.limits)
        .filter(|l| l.per == Per::Tier)
        .map(|l| Tracked { key: l.key.clone(), window: l.window })
        .collect();
    assert_eq!(tier_counters(&plan.tiers), expected);
}

/// The wall clock stepping back an hour after a sync neither stops the syncs nor leaves the node
/// "synced" on totals it can no longer refresh.
#[test]
fn a_clock_stepped_back_starts_the_schedule_over() {
    let plan = plan(OnStoreFailure::DivideByNodes(2));
    let mut redis = FakeRedis::default();
    let mut node = Node::new(1);
    node.spend(T, 10);
    node.sync(&plan, &mut redis, T0 + 3_600_000).unwrap();
    assert_eq!(node.worker.health(), Health::Synced);
    // The clock goes back one hour: the first tick starts over and syncs at once.
    let tick = node.tick(&plan, T0);
    assert!(tick.problems.iter().any(|p| p.contains("clock went back")), "{:?}", tick.problems);
    let request = tick.request.expect("a sync is dispatched at once");
    // It fails: the node is cut off, not "synced" on frozen totals.
    node.worker.on_dispatch_failed(&node.store, &request.batch);
    let mut dispatched = 1;
    for now in (T0 + 500..T0 + 600_000).step_by(500) {
        if let Some(request) = node.tick(&plan, now).request {
            dispatched += 1;
            node.worker.on_dispatch_failed(&node.store, &request.batch);
        }
    }
    assert_ne!(node.worker.health(), Health::Synced);
    assert!(dispatched > 100, "{dispatched} syncs in ten minutes");
    // And a sync that succeeds brings it back.
    node.sync(&plan, &mut redis, T0 + 600_000).unwrap();
    assert_eq!(node.worker.health(), Health::Synced);
}

/// Neither the skew between two workers' clocks nor a reload that shortens `sync_ms` is taken for
/// the clock stepping back: no sync is superseded and the node stays synced.
#[test]
fn worker_skew_and_a_shorter_sync_interval_are_not_a_clock_step() {
    let plan = plan(OnStoreFailure::DivideByNodes(2));
    let mut redis = FakeRedis::default();
    let mut node = Node::new(1);
    node.sync(&plan, &mut redis, T0).unwrap();
    // A second worker of the node, its clock 1 ms behind the one that takes the next lease.
    let mut other = Syncer::new(2);
    let taken = node.tick(&plan, T0 + 500).request.expect("a sync is due");
    let tick = other.on_tick(&node.store, &plan, &tier(), T0 + 499);
    assert!(tick.problems.is_empty() && tick.request.is_none() && tick.change.is_none(), "{:?}", tick.problems);
    let body = redis.run(&taken);
    assert!(node.worker.on_answer(&node.store, &plan, &taken.batch, Some(200), &body, T0 + 510).is_ok());
    assert_eq!(other.health(), Health::Synced);
    // A reload from a 10-minute interval to the plan's 500 ms.
    let slow = StorePlan { sync_ms: 600_000, timeout_ms: 30_000, stale_after_ms: 1_800_000, ..plan.clone() };
    node.sync(&slow, &mut redis, T0 + 1_000).unwrap();
    let tick = node.tick(&plan, T0 + 2_000);
    assert!(tick.problems.is_empty() && tick.change.is_none(), "{:?}", tick.problems);
    assert_eq!(node.worker.health(), Health::Synced);
    // The new interval applies from the next one on, not after the old ten minutes.
    assert!(node.tick(&plan, T0 + 2_500).request.is_some(), "a sync within the new interval");
}

/// Counts the reads of the person-counter index.
struct CountingStore {
    inner: FakeStore,
    index_reads: std::cell::Cell<usize>,
}

impl SharedStore for CountingStore {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), crate::shared::StoreError> {
        if key == node::INDEX_KEY {
            self.index_reads.set(self.index_reads.get() + 1);
        }
        self.inner.get(key)
    }
    fn cas_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), crate::shared::StoreError> {
        self.inner.cas_set(key, value, cas)
    }
}

/// Every worker ticks twice a second and the index of per-person counters grows with the number
/// of people: a tick that cannot sync (another worker holds the lease, or this one's sync is in
/// flight) does not read it.
#[test]
fn a_tick_that_cannot_sync_does_not_read_the_person_index() {
    let plan = plan(OnStoreFailure::KeepLimits);
    let store = CountingStore { inner: FakeStore::default(), index_reads: 0.into() };
    let people: Vec<Tracked> = (0..200)
        .flat_map(|p| [60, 2_592_000].map(|w| Tracked { key: format!("csg/b/person-{p:08x}/t{w}st"), window: w }))
        .collect();
    node::note_in_index(&store.inner, &people, T0 / 1000).unwrap();
    let (mut w1, mut w2) = (Syncer::new(1), Syncer::new(2));
    assert!(w1.on_tick(&store, &plan, &tier(), T0).request.is_some(), "w1 takes the lease");
    assert_eq!(store.index_reads.get(), 1, "the sync that was due read it");
    for i in 0..10 {
        assert!(w2.on_tick(&store, &plan, &tier(), T0 + 1 + i).request.is_none());
        assert!(w1.on_tick(&store, &plan, &tier(), T0 + 1 + i).request.is_none());
    }
    assert_eq!(store.index_reads.get(), 1, "20 ticks that could not sync read the index");
}
