//! Elements of request bodies that were validated before, so that a body repeating them is not
//! validated twice.
//!
//! Claude Code resends most of a conversation on every turn, byte for byte: the `tools` array
//! (the same for everyone on one version and setup), the system prompt's blocks, and every
//! earlier message. The body scanner ([`crate::scan::scan_with`]) asks at each element of a
//! top-level array whether the body repeats one validated before; a hit costs a comparison at
//! memory speed instead of a validation, and gives the same verdict. The newest message is not
//! offered: Claude Code moves its `cache_control` marker off it on the next turn, so keeping it
//! would only push out elements that do come again.
//!
//! An entry is found by a digest of its first bytes and confirmed by comparing every one of its
//! bytes, so a hit is exact whatever the digest. Memory is bounded: at most `capacity` bytes of
//! elements (oldest dropped first), at most [`PER_DIGEST`] entries with the same first bytes
//! (which also bounds the comparisons a lookup can make), and one element at most a quarter of
//! `capacity`.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};

use crate::scan::{same_bytes, Repeats};

/// Shortest element remembered: smaller ones validate about as fast as they compare.
pub const MIN_ELEMENT_BYTES: usize = 1024;

/// Most entries whose first bytes have the same digest.
pub const PER_DIGEST: usize = 4;

/// Bytes of an element's start that its digest covers.
const DIGEST_BYTES: usize = 64;

/// Bytes of an element's end compared before the rest.
const END_BYTES: usize = 128;

/// One worker's remembered elements.
#[derive(Debug)]
pub struct ValidatedElements {
    capacity: usize,
    min_len: usize,
    /// By digest of the first bytes, oldest first. The map hashes the digest again with a key of
    /// its own (std's SipHash, randomly keyed per map): the digest is no secret, and a client who
    /// chose elements whose digests share the map's probe bits would make every lookup walk them all.
    entries: HashMap<u64, Vec<Entry>, RandomState>,
    /// Every insertion, oldest first (an entry already dropped for its digest's limit is skipped
    /// when it comes up).
    order: VecDeque<(u64, u64)>,
    bytes: usize,
    serial: u64,
}

#[derive(Debug)]
struct Entry {
    serial: u64,
    bytes: Box<[u8]>,
}

impl ValidatedElements {
    /// A cache of at most `capacity` bytes (0: nothing is remembered) for elements of at least
    /// [`MIN_ELEMENT_BYTES`].
    pub fn new(capacity: usize) -> Self {
        Self::with_min_len(capacity, MIN_ELEMENT_BYTES)
    }

    /// A cache for elements of at least `min_len` bytes (the fuzz target takes every element).
    pub fn with_min_len(capacity: usize, min_len: usize) -> Self {
        ValidatedElements {
            capacity,
            min_len: min_len.max(1),
            entries: HashMap::with_hasher(RandomState::new()),
            order: VecDeque::new(),
            bytes: 0,
            serial: 0,
        }
    }

    /// Whether it remembers anything at all.
    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Bytes of elements remembered.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }

    /// Elements remembered.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    /// The digest of an element's first bytes (as many as every looked-up `rest` has).
    fn digest(&self, bytes: &[u8]) -> u64 {
        let head = bytes.get(..self.min_len.min(DIGEST_BYTES)).unwrap_or(bytes);
        // FNV-1a over 8-byte words: which bucket to look in, nothing more (every hit is checked
        // byte for byte). A client can choose elements with one digest (at most PER_DIGEST of
        // them are kept) or with digests alike in any bits; the map's own keyed hash of the
        // digest keeps the latter from sharing a probe chain.
        let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ head.len() as u64;
        let mut words = head.chunks_exact(8);
        for word in &mut words {
            let w = word.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
            hash = (hash ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
        }
        for &b in words.remainder() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }

    /// Drops the entry `serial` under `digest`, if it is still there.
    fn drop_entry(&mut self, digest: u64, serial: u64) {
        let Some(bucket) = self.entries.get_mut(&digest) else { return };
        if let Some(i) = bucket.iter().position(|e| e.serial == serial) {
            let entry = bucket.remove(i);
            self.bytes -= entry.bytes.len();
        }
        if bucket.is_empty() {
            self.entries.remove(&digest);
        }
    }
}

impl Repeats for ValidatedElements {
    fn min_len(&self) -> usize {
        self.min_len
    }

    fn known(&mut self, rest: &[u8]) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let bucket = self.entries.get(&self.digest(rest))?;
        // Newest first: the last turn's elements are the likeliest.
        bucket.iter().rev().find_map(|entry| {
            let len = entry.bytes.len();
            let head = rest.get(..len)?;
            // The end first: entries under one digest share their start, so two that differ
            // are likelier to differ near the end (a message whose `cache_control` marker moved).
            let (start, end) = head.split_at_checked(len.saturating_sub(END_BYTES))?;
            let (known_start, known_end) = entry.bytes.split_at_checked(start.len())?;
            (same_bytes(end, known_end) && same_bytes(start, known_start)).then_some(len)
        })
    }

    fn validated(&mut self, element: &[u8]) {
        if element.len() < self.min_len || element.len() > self.capacity / 4 {
            return;
        }
        let digest = self.digest(element);
        self.serial += 1;
        let serial = self.serial;
        let bucket = self.entries.entry(digest).or_default();
        let dropped = (bucket.len() >= PER_DIGEST).then(|| bucket.remove(0));
        bucket.push(Entry { serial, bytes: element.into() });
        self.bytes += element.len();
        if let Some(entry) = dropped {
            self.bytes -= entry.bytes.len();
        }
        self.order.push_back((digest, serial));
        // Bytes over capacity, or more insertions on record than entries could fit (those
        // dropped for their digest's limit stay on record until they come up).
        let most_entries = self.capacity / self.min_len;
        while self.bytes > self.capacity || self.order.len() > most_entries {
            let Some((digest, serial)) = self.order.pop_front() else { break };
            self.drop_entry(digest, serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan, scan_with};

    fn element(tag: usize, len: usize) -> Vec<u8> {
        let mut text = format!("{{\"n\":{tag},\"text\":\"");
        while text.len() + 2 < len {
            text.push('x');
        }
        text.push_str("\"}");
        text.into_bytes()
    }

    fn body(elements: &[Vec<u8>], tail: &str) -> Vec<u8> {
        let joined: Vec<u8> = elements.join(&b","[..]);
        [&b"{\"model\":\"m\",\"system\":["[..], &joined, b"]", tail.as_bytes(), b"}"].concat()
    }

    /// Counts what the scan asked and offered.
    struct Counting<'a> {
        cache: &'a mut ValidatedElements,
        hits: usize,
        offered: usize,
    }

    impl Repeats for Counting<'_> {
        fn min_len(&self) -> usize {
            self.cache.min_len()
        }
        fn known(&mut self, rest: &[u8]) -> Option<usize> {
            let found = self.cache.known(rest);
            self.hits += usize::from(found.is_some());
            found
        }
        fn validated(&mut self, element: &[u8]) {
            self.offered += 1;
            self.cache.validated(element);
        }
    }

    fn scan_counting(cache: &mut ValidatedElements, body: &[u8]) -> (bool, usize, usize) {
        let mut counting = Counting { cache, hits: 0, offered: 0 };
        let ok = scan_with(body, Some(&mut counting)).is_ok();
        (ok, counting.hits, counting.offered)
    }

    #[test]
    fn a_repeated_element_is_compared_not_validated() {
        let mut cache = ValidatedElements::new(1 << 20);
        let (a, b) = (element(1, 2000), element(2, 3000));
        let first = body(&[a.clone(), b.clone()], "");
        assert_eq!(scan_counting(&mut cache, &first), (true, 0, 2));
        assert_eq!((cache.count(), cache.bytes()), (2, 5000));
        // The next turn: both again, and a new one.
        let next = body(&[a, b, element(3, 1500)], "");
        assert_eq!(scan_counting(&mut cache, &next), (true, 2, 1));
        assert_eq!(scan_with(&next, Some(&mut cache)), scan(&next));
    }

    #[test]
    fn the_last_message_is_looked_up_but_not_kept() {
        let mut cache = ValidatedElements::new(1 << 20);
        let (a, b, c) = (element(1, 2000), element(2, 3000), element(3, 4000));
        let messages = |elements: &[&Vec<u8>]| {
            let joined: Vec<u8> = elements.iter().map(|e| e.as_slice()).collect::<Vec<_>>().join(&b","[..]);
            [&b"{\"model\":\"m\",\"messages\":["[..], &joined, &b"],\"tools\":["[..], &c, &b"]}"[..]].concat()
        };
        // The last element of `tools` is kept; the last message is not.
        assert_eq!(scan_counting(&mut cache, &messages(&[&a, &b])), (true, 0, 2));
        assert_eq!(cache.count(), 2);
        // The next turn: `a` and `c` repeat, `b` comes again (no longer last) and is kept now.
        assert_eq!(scan_counting(&mut cache, &messages(&[&a, &b, &a])), (true, 3, 1));
        assert_eq!(scan_counting(&mut cache, &messages(&[&a, &b, &a])), (true, 4, 0));
        // A last message the cache knows is still skipped.
        assert_eq!(scan_counting(&mut cache, &messages(&[&b])), (true, 2, 0));
    }

    #[test]
    fn small_elements_are_neither_looked_up_nor_kept() {
        let mut cache = ValidatedElements::new(1 << 20);
        let small = body(&[element(1, 500), element(2, 1000)], "");
        assert_eq!(scan_counting(&mut cache, &small), (true, 0, 0));
        assert_eq!(cache.count(), 0);
    }

    #[test]
    fn the_verdict_after_a_repeat_is_the_scans() {
        let mut cache = ValidatedElements::new(1 << 20);
        let a = element(1, 2000);
        assert!(scan_with(&body(std::slice::from_ref(&a), ""), Some(&mut cache)).is_ok());
        // What follows the repeated bytes is still read: garbage, a missing comma, a longer
        // element the known one is the start of, a string cut short, a duplicate model.
        let mut longer = a.clone();
        longer.insert(longer.len() - 1, b'1');
        let cases: Vec<Vec<u8>> = vec![
            [&b"{\"messages\":["[..], &a, b"x]}"].concat(),
            [&b"{\"messages\":["[..], &a, &a, b"]}"].concat(),
            [&b"{\"messages\":["[..], &a, b"]"].concat(),
            [&b"{\"messages\":["[..], &a, b","].concat(),
            [&b"{\"messages\":["[..], &a[..a.len() - 1], b"]}"].concat(),
            [&b"{\"messages\":["[..], &longer, b"]}"].concat(),
            body(std::slice::from_ref(&a), ",\"model\":\"n\""),
            body(std::slice::from_ref(&a), ",\"tools\":[1,]"),
            [&b"{\"messages\":[[["[..], &a, b"]]]}"].concat(),
            [&b"{\"messages\":{\"k\":"[..], &a, b"}}"].concat(),
        ];
        for case in cases {
            let cold = scan(&case);
            assert_eq!(scan_with(&case, Some(&mut cache)), cold, "{}", String::from_utf8_lossy(&case));
        }
    }

    #[test]
    fn an_element_at_another_depth_is_not_looked_up() {
        let mut cache = ValidatedElements::new(1 << 20);
        let a = element(1, 2000);
        assert!(scan_with(&body(std::slice::from_ref(&a), ""), Some(&mut cache)).is_ok());
        let nested = [&b"{\"system\":[["[..], &a, b"]]}"].concat();
        assert_eq!(scan_counting(&mut cache, &nested), (true, 0, 1));
    }

    #[test]
    fn countless_small_elements_cost_few_lookups() {
        /// Always asked, never knowing.
        struct Asked(usize);
        impl Repeats for Asked {
            fn min_len(&self) -> usize {
                1024
            }
            fn known(&mut self, _: &[u8]) -> Option<usize> {
                self.0 += 1;
                None
            }
            fn validated(&mut self, _: &[u8]) {}
        }
        let body = format!("{{\"model\":\"m\",\"tools\":[{}{{}}]}}", "{},".repeat(100_000));
        let mut asked = Asked(0);
        assert!(scan_with(body.as_bytes(), Some(&mut asked)).is_ok());
        assert!(asked.0 <= 2 * body.len() / 1024 + 16, "{} lookups", asked.0);
    }

    #[test]
    fn memory_stays_within_capacity() {
        let mut cache = ValidatedElements::new(64 * 1024);
        for tag in 0..200 {
            cache.validated(&element(tag, 5000));
            assert!(cache.bytes() <= 64 * 1024);
        }
        // The newest stay.
        assert_eq!(cache.known(&element(199, 5000)), Some(5000));
        assert_eq!(cache.known(&element(0, 5000)), None);
        // Too big for it: not kept.
        cache.validated(&element(1000, 20_000));
        assert_eq!(cache.known(&element(1000, 20_000)), None);
    }

    #[test]
    fn elements_with_the_same_start_are_kept_a_few_at_a_time() {
        let mut cache = ValidatedElements::with_min_len(1 << 20, 1024);
        // The same first 64 bytes, so the same digest.
        let same_start = |i: usize| {
            let mut e = element(0, 2000);
            let at = e.len() - 10;
            e[at] = b'a' + i as u8;
            e
        };
        for i in 0..10 {
            cache.validated(&same_start(i));
        }
        assert_eq!(cache.count(), PER_DIGEST);
        assert_eq!(cache.bytes(), PER_DIGEST * 2000);
        assert_eq!(cache.known(&same_start(9)), Some(2000));
        assert_eq!(cache.known(&same_start(0)), None);
        // Their records are bounded too.
        for i in 0..10_000 {
            cache.validated(&same_start(i % 26));
        }
        assert!(cache.order.len() <= (1 << 20) / 1024);
    }

    #[test]
    fn an_element_that_differs_anywhere_is_not_known() {
        let mut cache = ValidatedElements::with_min_len(1 << 20, 1024);
        let kept = element(0, 3000);
        cache.validated(&kept);
        // In the end compared first, on either side of where it starts, and in the rest.
        for at in [100, 1500, kept.len() - END_BYTES - 1, kept.len() - END_BYTES, kept.len() - 3] {
            let mut other = kept.clone();
            other[at] = b'y';
            assert_eq!(cache.known(&other), None, "a difference at {at}");
            assert_eq!(cache.known(&[&other[..], b",{}"].concat()), None, "a difference at {at}, more follows");
        }
        assert_eq!(cache.known(&[&kept[..], b",{}"].concat()), Some(kept.len()));
        assert_eq!(cache.known(&kept[..kept.len() - 1]), None);
    }

    /// The map hashes each digest with a key of its own: digests a client made alike in the bits
    /// an unkeyed map probes by (the digest is no secret and inverts word by word) do not pile up
    /// on one chain that every lookup walks.
    #[test]
    fn the_map_hashes_digests_with_a_key_of_its_own() {
        use std::hash::BuildHasher;
        let (a, b) = (ValidatedElements::new(1 << 20), ValidatedElements::new(1 << 20));
        let digests = [0_u64, 1, 1 << 57, 0xdead_beef, u64::MAX];
        let hashes = |c: &ValidatedElements| digests.map(|d| c.entries.hasher().hash_one(d));
        assert_ne!(hashes(&a), digests, "the digest itself is the map's hash");
        assert_ne!(hashes(&a), hashes(&b), "two workers' maps hash alike");
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let mut cache = ValidatedElements::new(0);
        assert!(!cache.enabled());
        cache.validated(&element(1, 2000));
        assert_eq!((cache.count(), cache.known(&element(1, 2000))), (0, None));
    }
}
