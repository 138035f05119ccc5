//! The filter's heap allocator: small blocks freed by one request are handed to the next from
//! per-size free lists kept in front of the system allocator (wasi-libc's dlmalloc).
//!
//! A request with a cached token makes about 80 small allocations (header names and values, the
//! route, the budget keys, the usage record), and between the host's callbacks the CPU caches are
//! cold. dlmalloc reads and writes its bins and the chunk headers around a block on every call; a
//! free list costs one load and one store. Measured with bench/hostcalls.py (2026-12-01, three runs each): the
//! filter's own time in V8 per request drops from 9.8 to 8.5 µs at 1 KiB with a JSON answer, 14.2
//! to 12.8 with a stream and 17.3 to 16.6 at 130 KB; with `--cold` (a MiB of other data read
//! between callbacks) from 16.1 to 15.4, 27.1 to 25.5 and 24.2 to 22.7 µs. The three functions
//! are kept out of line: so they add 12 KB to the `.wasm`; inlined at every call site they added
//! 135 KB, for a few tenths of a µs more.
//!
//! Blocks of at most [`MAX_SMALL`] bytes whose alignment is at most [`ALIGN`] are rounded up to a
//! multiple of [`GRANULE`]. When freed they go to the list of their size, up to [`MAX_HELD`] bytes
//! over all lists (a burst of requests does not pin memory beyond that); past it, and for larger
//! or more aligned blocks, the system allocator takes them. The VM runs one thread (wasm32 without
//! the atomics feature), so the lists need no lock; the global instance exists only there.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// The size step of the lists: a small block's size is rounded up to a multiple of it.
pub const GRANULE: usize = 16;

/// Largest block kept on a free list.
pub const MAX_SMALL: usize = 1024;

/// Largest alignment a listed block satisfies (every block on a list is aligned to it).
pub const ALIGN: usize = 8;

/// Most bytes the lists hold in all.
pub const MAX_HELD: usize = 2 * 1024 * 1024;

const CLASSES: usize = MAX_SMALL / GRANULE;

/// A free-list front for the allocator `A`.
pub struct SizeClasses<A> {
    backing: A,
    lists: UnsafeCell<Lists>,
}

struct Lists {
    /// The first free block of each size; each free block starts with a pointer to the next.
    heads: [*mut u8; CLASSES],
    /// Bytes on all lists.
    held: usize,
}

// SAFETY: the filter's VM runs one thread (wasm32 without atomics): nothing reaches the lists
// from two threads. Only that build has a shared (static) instance.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for SizeClasses<A> {}

impl<A> SizeClasses<A> {
    /// Empty lists in front of `backing`.
    pub const fn new(backing: A) -> Self {
        SizeClasses { backing, lists: UnsafeCell::new(Lists { heads: [ptr::null_mut(); CLASSES], held: 0 }) }
    }

    /// Bytes the lists hold.
    #[cfg(test)]
    fn held(&self) -> usize {
        // SAFETY: single-threaded (see the type); no reference into the lists is alive here.
        unsafe { (*self.lists.get()).held }
    }
}

/// The list for blocks of `layout`, if they are small enough.
fn class(layout: Layout) -> Option<usize> {
    (layout.align() <= ALIGN && layout.size() <= MAX_SMALL).then(|| layout.size().saturating_sub(1) / GRANULE)
}

/// The size of a list's blocks.
const fn class_size(class: usize) -> usize {
    (class + 1) * GRANULE
}

/// The layout a list's blocks are taken from the system allocator with.
fn class_layout(class: usize) -> Layout {
    // SAFETY: the size is at most MAX_SMALL and ALIGN is a power of two: no overflow.
    unsafe { Layout::from_size_align_unchecked(class_size(class), ALIGN) }
}

// SAFETY: every block handed out is at least as large and as aligned as its layout asks: a listed
// block of list `c` came from `class_layout(c)` (or was freed as a block of at least that size
// and, checked on the way in, alignment), and larger blocks go to the backing allocator whole.
// This trusts the sizes hosts report for the blocks they allocate: a size smaller than the block
// is safe (it is listed as a smaller one), a larger one would list a block too small for its
// list. Envoy's and ngx_wasm_module's host calls report exactly what they allocated. A block is
// given back to the system allocator under its list's layout even if it was taken larger; wasi-libc's
// `free` does not look at the size.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SizeClasses<A> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else { return self.backing.alloc(layout) };
        let lists = &mut *self.lists.get();
        let Some(head) = lists.heads.get_mut(c) else { return self.backing.alloc(layout) };
        if head.is_null() {
            return self.backing.alloc(class_layout(c));
        }
        let block = *head;
        *head = block.cast::<*mut u8>().read();
        lists.held -= class_size(c);
        block
    }

    #[inline(never)]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else { return self.backing.dealloc(block, layout) };
        let lists = &mut *self.lists.get();
        // A block is listed only if it can serve any layout of its list. Hosts allocate what
        // they return through the SDK's `proxy_on_memory_allocate`, so through here too (the
        // `.wasm` exports no `malloc`, which hosts would call instead, and whose blocks could be
        // smaller than their list: tests/test_kong.py checks), and every small block is aligned;
        // checked anyway.
        let fits = lists.held + class_size(c) <= MAX_HELD && block as usize % ALIGN == 0;
        match lists.heads.get_mut(c) {
            Some(head) if fits => {
                block.cast::<*mut u8>().write(*head);
                *head = block;
                lists.held += class_size(c);
            }
            _ => self.backing.dealloc(block, class_layout(c)),
        }
    }

    #[inline(never)]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that `new_size`, rounded up to the alignment, does not overflow.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (class(layout), class(new_layout)) {
            (None, None) => self.backing.realloc(block, layout, new_size),
            (Some(a), Some(b)) if a == b => block,
            _ => {
                let moved = self.alloc(new_layout);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                    self.dealloc(block, layout);
                }
                moved
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOCATOR: SizeClasses<std::alloc::System> = SizeClasses::new(std::alloc::System);

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// The system allocator, remembering every block it has out and with which layout, so a
    /// test can tell a block given back with the wrong layout, twice, or never.
    #[derive(Default)]
    struct Ledger {
        out: RefCell<HashMap<usize, Layout>>,
    }

    unsafe impl GlobalAlloc for Ledger {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let block = System.alloc(layout);
            assert!(self.out.borrow_mut().insert(block as usize, layout).is_none());
            block
        }
        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            assert_eq!(self.out.borrow_mut().remove(&(block as usize)), Some(layout), "given back as taken");
            System.dealloc(block, layout)
        }
    }

    /// Lists in front of a [`Ledger`] that, when dropped, hand their blocks back and check
    /// that no block is out any more.
    struct Checked(SizeClasses<Ledger>);

    impl std::ops::Deref for Checked {
        type Target = SizeClasses<Ledger>;
        fn deref(&self) -> &Self::Target {
            &self.0
        }
    }

    impl Drop for Checked {
        fn drop(&mut self) {
            let SizeClasses { backing, lists } = &mut self.0;
            // A list that loops (a block listed twice) would make this walk endless: bounded by
            // what the lists can hold.
            let mut steps = MAX_HELD / GRANULE;
            for (c, head) in lists.get_mut().heads.iter_mut().enumerate() {
                while !head.is_null() {
                    if steps == 0 {
                        assert!(std::thread::panicking(), "a free list loops");
                        return;
                    }
                    steps -= 1;
                    // SAFETY: a listed block starts with the next one's address.
                    unsafe {
                        let block = *head;
                        *head = block.cast::<*mut u8>().read();
                        backing.dealloc(block, class_layout(c));
                    }
                }
            }
            if !std::thread::panicking() {
                assert!(backing.out.borrow().is_empty(), "blocks never given back");
            }
        }
    }

    fn lists() -> Checked {
        Checked(SizeClasses::new(Ledger::default()))
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn a_freed_small_block_serves_the_next_request_of_its_size() {
        let a = lists();
        unsafe {
            let first = a.alloc(layout(20, 4));
            first.write_bytes(0xAB, 20);
            a.dealloc(first, layout(20, 4));
            assert_eq!(a.held(), 32);
            // 17 to 32 bytes share a list; another size does not take it.
            let other = a.alloc(layout(40, 8));
            assert_ne!(other, first);
            let again = a.alloc(layout(32, 8));
            assert_eq!(again, first);
            assert_eq!(a.held(), 0);
            assert_eq!(a.backing.out.borrow().len(), 2, "only two blocks were ever taken");
            a.dealloc(again, layout(32, 8));
            a.dealloc(other, layout(40, 8));
        }
        assert_eq!(a.held(), 32 + 48);
    }

    #[test]
    fn every_block_is_large_and_aligned_enough_and_holds_its_bytes() {
        let a = lists();
        // Each block is filled with its own number, so two live blocks that are one show.
        let mut live: Vec<(*mut u8, Layout, u64)> = Vec::new();
        let mut serial = 0u64;
        let fill = |block: *mut u8, size: usize, serial: u64| unsafe {
            let id = serial.to_le_bytes();
            for i in 0..size {
                block.add(i).write(id[i % 8]);
            }
        };
        let holds = |block: *mut u8, size: usize, serial: u64| {
            let id = serial.to_le_bytes();
            (0..size).all(|i| unsafe { block.add(i).read() } == id[i % 8])
        };
        // Sizes across every list and beyond, alignments up to 64, freed in a mixed order.
        for round in 0..3u8 {
            for size in (1..=1100).step_by(7) {
                for align in [1, 2, 4, 8, 16, 64] {
                    let l = layout(size, align);
                    let block = unsafe { a.alloc(l) };
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "size {size} align {align}");
                    // Whether fresh or listed, the block was taken from the system this large.
                    let taken = a.backing.out.borrow().get(&(block as usize)).copied().unwrap();
                    assert!(taken.size() >= size && taken.align() >= align.min(ALIGN), "size {size} align {align}");
                    serial += 1;
                    fill(block, size, serial);
                    live.push((block, l, serial));
                }
            }
            // Every other block goes back, then its bytes are checked on the rest.
            let mut keep = Vec::new();
            for (i, (block, l, serial)) in live.drain(..).enumerate() {
                assert!(holds(block, l.size(), serial), "a block was handed out twice (round {round})");
                if i % 2 == 0 {
                    unsafe { a.dealloc(block, l) };
                } else {
                    keep.push((block, l, serial));
                }
            }
            live = keep;
        }
        for (block, l, _) in live {
            unsafe { a.dealloc(block, l) };
        }
    }

    #[test]
    fn larger_or_more_aligned_blocks_go_straight_to_the_system_allocator() {
        let a = lists();
        unsafe {
            for l in [layout(MAX_SMALL + 1, 1), layout(64, 16), layout(100_000, 8)] {
                let block = a.alloc(l);
                assert_eq!(a.backing.out.borrow().get(&(block as usize)), Some(&l));
                a.dealloc(block, l);
                assert!(a.backing.out.borrow().is_empty());
            }
        }
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn the_lists_hold_at_most_max_held_bytes() {
        let a = lists();
        let l = layout(MAX_SMALL, 8);
        let blocks: Vec<_> = (0..MAX_HELD / MAX_SMALL + 10).map(|_| unsafe { a.alloc(l) }).collect();
        for &block in &blocks {
            unsafe { a.dealloc(block, l) };
        }
        assert_eq!(a.held(), MAX_HELD);
        assert_eq!(a.backing.out.borrow().len(), MAX_HELD / MAX_SMALL, "the rest went back");
    }

    #[test]
    fn realloc_keeps_the_bytes_within_a_list_across_lists_and_into_large_blocks() {
        let a = lists();
        unsafe {
            let mut l = layout(5, 1);
            let mut block = a.alloc(l);
            block.copy_from_nonoverlapping(b"hello".as_ptr(), 5);
            // Within its list the block stays where it is.
            let same = a.realloc(block, l, 16);
            assert_eq!(same, block);
            l = layout(16, 1);
            for new_size in [17, 300, 1024, 5000, 70_000, 900, 3] {
                block = a.realloc(block, l, new_size);
                l = layout(new_size, 1);
                let kept = std::slice::from_raw_parts(block, 3);
                assert_eq!(kept, b"hel", "to {new_size}");
            }
            a.dealloc(block, l);
        }
    }

    #[test]
    fn a_block_freed_with_a_smaller_size_than_it_has_is_still_safe_to_hand_out() {
        // A host may report fewer bytes than it asked `malloc` for: the block is then larger
        // than its list needs, never smaller.
        let a = lists();
        unsafe {
            let block = a.alloc(layout(2000, 1));
            a.dealloc(block, layout(100, 1));
            let again = a.alloc(layout(112, 8));
            assert_eq!(again, block);
            again.write_bytes(1, 112);
            a.dealloc(again, layout(112, 8));
            // The lists give it back to the system as one of theirs (the system's `free` does
            // not look at the size); the ledger is told so.
            a.backing.out.borrow_mut().insert(block as usize, class_layout(6));
        }
    }
}
