//! The scanner's byte-level steps: which bytes of a 64-byte window end a stretch of string
//! content (a quote, a backslash, a control character, or a byte that is not ASCII and needs a
//! UTF-8 check), which are not JSON whitespace, how far plain string content goes in bulk, and
//! the UTF-8 check.
//!
//! A window is four 16-byte blocks. In Wasm with `simd128` (V8 and Wasmtime both run it;
//! `.cargo/config.toml` enables it for wasm32-wasip1) a block is one `v128`; elsewhere it is two
//! `u64`s classified exactly, each byte on its own (SWAR with no borrows between bytes). Both
//! give the same masks, so everything above them is one and the same code on every target:
//! natively it is fuzzed against serde_json, and the tests hold both classifiers to a
//! byte-by-byte reference (natively and in Wasm: `make unit-wasm`).

/// Bytes in a block.
const WIDTH: usize = 16;

/// Bytes in a window.
pub(super) const WINDOW: usize = 64;

/// Bit `i` set when byte `at + i` of `body` ends a stretch of string content: `"`, `\`, below
/// 0x20, or above 0x7f. Bytes past the end count as such.
#[inline(always)]
pub(super) fn window_stops(body: &[u8], at: usize) -> u64 {
    match body.get(at..).and_then(<[u8]>::first_chunk::<WINDOW>) {
        Some(window) => gather(window, block_stops),
        None => gather(&padded(body, at), block_stops),
    }
}

/// Bit `i` set when byte `at + i` of `body` is not JSON whitespace (space, tab, line feed,
/// carriage return). Bytes past the end count as such.
#[inline(always)]
pub(super) fn window_text(body: &[u8], at: usize) -> u64 {
    match body.get(at..).and_then(<[u8]>::first_chunk::<WINDOW>) {
        Some(window) => gather(window, block_text),
        None => gather(&padded(body, at), block_text),
    }
}

/// A window's mask from its blocks' masks.
#[inline(always)]
fn gather(window: &[u8; WINDOW], class: impl Fn(&[u8; WIDTH]) -> u32) -> u64 {
    let mut bits = 0;
    for (k, block) in window.chunks_exact(WIDTH).enumerate() {
        if let Some(block) = block.first_chunk::<WIDTH>() {
            bits |= u64::from(class(block)) << (k * WIDTH);
        }
    }
    bits
}

/// The last bytes of `body` from `at` (less than a window), then NULs: a NUL is a stop and not
/// whitespace, so the masks end where the body does.
#[cold]
#[inline(never)]
fn padded(body: &[u8], at: usize) -> [u8; WINDOW] {
    let mut window = [0; WINDOW];
    let rest = body.get(at..).unwrap_or_default();
    let n = rest.len().min(WINDOW);
    window[..n].copy_from_slice(&rest[..n]);
    window
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod block {
    use super::{STRIDE, WIDTH, WINDOW};
    use core::arch::wasm32::{
        i8x16_lt, i8x16_splat, u8x16_bitmask, u8x16_eq, u8x16_splat, v128, v128_any_true, v128_load, v128_or, v128_xor,
    };

    /// Stop bytes as 0xff, the others as 0.
    #[inline(always)]
    fn stops(v: v128) -> v128 {
        // Signed: below 0x20 or above 0x7f in one compare.
        v128_or(
            v128_or(u8x16_eq(v, u8x16_splat(b'"')), u8x16_eq(v, u8x16_splat(b'\\'))),
            i8x16_lt(v, i8x16_splat(0x20)),
        )
    }

    #[inline(always)]
    fn load(block: &[u8; WIDTH]) -> v128 {
        // SAFETY: `block` is 16 readable bytes, and `v128.load` takes any alignment.
        unsafe { v128_load(block.as_ptr().cast::<v128>()) }
    }

    #[inline(always)]
    pub(super) fn block_stops(block: &[u8; WIDTH]) -> u32 {
        u32::from(u8x16_bitmask(stops(load(block))))
    }

    #[inline(always)]
    pub(super) fn block_text(block: &[u8; WIDTH]) -> u32 {
        let v = load(block);
        let ws = v128_or(
            v128_or(u8x16_eq(v, u8x16_splat(b' ')), u8x16_eq(v, u8x16_splat(b'\n'))),
            v128_or(u8x16_eq(v, u8x16_splat(b'\t')), u8x16_eq(v, u8x16_splat(b'\r'))),
        );
        u32::from(!u8x16_bitmask(ws))
    }

    /// From `pos` in string content, skips whole windows with no stop byte; the offset returned
    /// is at most the first stop's.
    #[inline(always)]
    pub(in crate::scan) fn plain(body: &[u8], pos: usize) -> usize {
        let mut run = 0;
        for window in body.get(pos..).unwrap_or_default().chunks_exact(WINDOW) {
            let p = window.as_ptr();
            // SAFETY: `window` is 64 readable bytes, and `v128.load` takes any alignment.
            let [a, b, c, d] = [0, 1, 2, 3].map(|k| unsafe { v128_load(p.add(k * WIDTH).cast::<v128>()) });
            // One test for the whole window: most of a long string has no stop.
            if v128_any_true(v128_or(v128_or(stops(a), stops(b)), v128_or(stops(c), stops(d)))) {
                break;
            }
            run += WINDOW;
        }
        pos + run
    }

    /// Whether the first [`super::STRIDE`]-byte blocks of `a` and `b`, as many as both hold
    /// whole, are equal.
    #[inline(always)]
    pub(super) fn same_strides(a: &[u8], b: &[u8]) -> bool {
        let end = a.len().min(b.len()) / STRIDE * STRIDE;
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        while i < end {
            // SAFETY: `i + STRIDE <= end` bytes are readable in both, and `v128.load` takes any
            // alignment.
            let differ = unsafe {
                let (p, q) = (pa.add(i).cast::<v128>(), pb.add(i).cast::<v128>());
                let d = |k: usize| v128_xor(v128_load(p.add(k)), v128_load(q.add(k)));
                v128_or(
                    v128_or(v128_or(d(0), d(1)), v128_or(d(2), d(3))),
                    v128_or(v128_or(d(4), d(5)), v128_or(d(6), d(7))),
                )
            };
            // One test per 128 bytes: a loop half as long runs a third faster in V8.
            if v128_any_true(differ) {
                return false;
            }
            i += STRIDE;
        }
        true
    }
}

#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod block {
    use super::{window_stops, STRIDE, WIDTH, WINDOW};

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = ONES << 7;
    const LOW: u64 = !HIGH;

    /// The two halves of a block, little-endian.
    #[inline(always)]
    fn halves(block: &[u8; WIDTH]) -> [u64; 2] {
        let (lo, hi) = block.split_at(8);
        let word = |h: &[u8]| h.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
        [word(lo), word(hi)]
    }

    /// High bit of each byte equal to `b`. Exact: adding 0x7f to a 7-bit value carries into
    /// that byte's high bit only.
    #[inline(always)]
    fn eq(v: u64, b: u8) -> u64 {
        let x = v ^ (ONES * u64::from(b));
        !(((x & LOW) + LOW) | x) & HIGH
    }

    /// The high bits of the eight bytes as the low 8 bits (the shifted copies never overlap,
    /// so nothing carries).
    #[inline(always)]
    fn bitmask(high: u64) -> u32 {
        ((high >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) as u32
    }

    #[inline(always)]
    pub(super) fn block_stops(block: &[u8; WIDTH]) -> u32 {
        let [lo, hi] = halves(block).map(|v| {
            // `(v & LOW) + 0x60` sets the high bit of the bytes whose low 7 bits are 0x20 or more.
            let control_or_high = (!((v & LOW) + ONES * 0x60) | v) & HIGH;
            bitmask(eq(v, b'"') | eq(v, b'\\') | control_or_high)
        });
        lo | hi << 8
    }

    #[inline(always)]
    pub(super) fn block_text(block: &[u8; WIDTH]) -> u32 {
        let [lo, hi] =
            halves(block).map(|v| bitmask(!(eq(v, b' ') | eq(v, b'\n') | eq(v, b'\t') | eq(v, b'\r')) & HIGH));
        lo | hi << 8
    }

    /// From `pos` in string content, skips whole windows with no stop byte; the offset returned
    /// is at most the first stop's.
    pub(in crate::scan) fn plain(body: &[u8], mut pos: usize) -> usize {
        while pos + WINDOW <= body.len() && window_stops(body, pos) == 0 {
            pos += WINDOW;
        }
        pos
    }

    /// Whether the first [`super::STRIDE`]-byte blocks of `a` and `b`, as many as both hold
    /// whole, are equal.
    pub(super) fn same_strides(a: &[u8], b: &[u8]) -> bool {
        let end = a.len().min(b.len()) / STRIDE * STRIDE;
        let word = |w: &[u8]| w.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
        a.chunks_exact(8).zip(b.chunks_exact(8)).take(end / 8).all(|(x, y)| word(x) == word(y))
    }
}

pub(super) use block::plain;
use block::{block_stops, block_text, same_strides};

/// Bytes [`same_bytes`] compares at a time before the last ones.
const STRIDE: usize = 128;

/// Whether `a` and `b` are the same bytes, compared 128 at a time, then a word at a time
/// (wasi-libc's `memcmp`, which `==` on slices calls in Wasm, goes a byte at a time).
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let whole = a.len() / STRIDE * STRIDE;
    let (tail_a, tail_b) = (a.get(whole..).unwrap_or_default(), b.get(whole..).unwrap_or_default());
    let (words_a, words_b) = (tail_a.chunks_exact(8), tail_b.chunks_exact(8));
    let word = |w: &[u8]| w.first_chunk::<8>().map_or(0, |w| u64::from_le_bytes(*w));
    same_strides(a, b)
        && words_a.remainder() == words_b.remainder()
        && words_a.zip(words_b).all(|(x, y)| word(x) == word(y))
}

/// Checks the UTF-8 of the non-ASCII characters from `at` up to the next ASCII byte (or the
/// end), with `str::from_utf8`'s rules (no overlong forms, no surrogates, nothing above
/// U+10FFFF). Returns where they end, or where the first bad sequence starts.
#[inline(never)]
pub(super) fn utf8(body: &[u8], mut at: usize) -> Result<usize, usize> {
    while let Some(&lead) = body.get(at) {
        // The sequence's length and the range its second byte must fall in.
        let (len, second) = match lead {
            0x00..=0x7f => return Ok(at),
            0xc2..=0xdf => (2, 0x80..=0xbf),
            0xe0 => (3, 0xa0..=0xbf),
            0xe1..=0xec | 0xee..=0xef => (3, 0x80..=0xbf),
            0xed => (3, 0x80..=0x9f),
            0xf0 => (4, 0x90..=0xbf),
            0xf1..=0xf3 => (4, 0x80..=0xbf),
            0xf4 => (4, 0x80..=0x8f),
            _ => return Err(at),
        };
        match body.get(at + 1..at + len) {
            Some([b, rest @ ..]) if second.contains(b) && rest.iter().all(|c| (0x80..=0xbf).contains(c)) => at += len,
            _ => return Err(at),
        }
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_agrees_with_slice_equality() {
        for len in (0..40_usize).chain(120..136).chain(250..300) {
            let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_bytes(&a, &a.clone()), "{len}");
            assert!(!same_bytes(&a, &a[..len.saturating_sub(1)]) || len == 0, "{len}");
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 0x80;
                assert!(!same_bytes(&a, &b), "{len} {at}");
            }
        }
    }

    fn is_stop(b: u8) -> bool {
        !(0x20..=0x7f).contains(&b) || b == b'"' || b == b'\\'
    }

    fn is_ws(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | b'\r')
    }

    /// The masks by their definitions, one byte at a time.
    fn reference(body: &[u8], at: usize) -> (u64, u64) {
        let (mut stops, mut text) = (0, 0);
        for i in 0..WINDOW {
            let b = body.get(at + i).copied();
            stops |= u64::from(b.is_none_or(is_stop)) << i;
            text |= u64::from(!b.is_some_and(is_ws)) << i;
        }
        (stops, text)
    }

    fn masks(body: &[u8], at: usize) -> (u64, u64) {
        (window_stops(body, at), window_text(body, at))
    }

    #[test]
    fn every_byte_in_every_lane_agrees_with_the_reference() {
        // Fillers around it, among them bytes that differ from a stop or a space only in the
        // high bit.
        let fillers = [b'a', 0xa2, 0xdc, 0x9f, b' ', 0x80, 0xff, 0x7f, 0xa0, b'\n', 0xa0, b'"' + 0x80];
        for b in 0..=255u8 {
            for lane in 0..WINDOW {
                let shift = usize::from(b) % fillers.len();
                let mut body: Vec<u8> = (0..WINDOW + 3).map(|i| fillers[(i + shift) % fillers.len()]).collect();
                body[lane + 1] = b;
                for at in [0, 1, 2, 3, lane, lane + 1, body.len() - 5, body.len(), body.len() + 2] {
                    assert_eq!(masks(&body, at), reference(&body, at), "{b:#x} in lane {lane}, window at {at}");
                }
            }
        }
    }

    #[test]
    fn random_windows_agree_with_the_reference() {
        // xorshift: the same cases on every run and every target.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 150) as usize;
            // Either any byte or mostly letters, spaces and stops.
            let wild = next() % 2 == 0;
            let body: Vec<u8> = (0..len)
                .map(|_| match (wild, next() % 16) {
                    (true, _) => next() as u8,
                    (false, 0) => b'"',
                    (false, 1) => b'\\',
                    (false, 2) => b' ',
                    (false, 3) => b'\n',
                    (false, 4) => 0xc3,
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            let at = (next() % 151) as usize;
            assert_eq!(masks(&body, at), reference(&body, at), "{body:?} at {at}");
            // Whole windows with no stop, and never past the first stop.
            let mut want = at;
            while want + WINDOW <= body.len() && reference(&body, want).0 == 0 {
                want += WINDOW;
            }
            assert_eq!(plain(&body, at), want, "{body:?} from {at}");
        }
    }

    #[test]
    fn plain_skips_whole_windows_up_to_the_first_stop() {
        for stop in [b'"', b'\\', 0x00, b'\n', 0x1f, 0x80, 0xe9, 0xff] {
            for len in [0, 1, 63, 64, 65, 127, 128, 129, 200, 300] {
                for at in 0..len.min(70) {
                    for place in (at..len).step_by(7).chain([len]) {
                        let mut body = vec![b'a'; len];
                        if place < len {
                            body[place] = stop;
                        }
                        let mut want = at;
                        while want + WINDOW <= len && !(want..want + WINDOW).contains(&place) {
                            want += WINDOW;
                        }
                        assert_eq!(plain(&body, at), want, "{stop:#x} at {place} of {len}, from {at}");
                    }
                }
            }
        }
    }

    /// `utf8` against `str::from_utf8`, with `seq` between a few prefixes and suffixes.
    fn check_utf8(seq: &[u8]) {
        for (prefix, suffix) in [(&b""[..], &b""[..]), (b"ab", b"\"x"), (b"", b"\xc3\xa9a")] {
            let body = [prefix, seq, suffix].concat();
            let at = prefix.len();
            // `utf8` starts at a non-ASCII byte and stops at the next ASCII one.
            let stretch_end = body[at..].iter().position(u8::is_ascii).map_or(body.len(), |p| at + p);
            let want = match std::str::from_utf8(&body[at..stretch_end]) {
                Ok(_) => Ok(stretch_end),
                Err(e) => Err(at + e.valid_up_to()),
            };
            assert_eq!(utf8(&body, at), want, "{body:x?}");
        }
    }

    #[test]
    fn utf8_agrees_with_std_on_every_short_sequence() {
        // Every byte in second place; the edges of every range after it.
        let edges = [0x00, 0x22, 0x7f, 0x80, 0x81, 0x8f, 0x90, 0x91, 0x9f, 0xa0, 0xa1, 0xbe, 0xbf, 0xc0, 0xc1, 0xff];
        for lead in 0x80..=0xffu8 {
            check_utf8(&[lead]);
            for b in 0..=255u8 {
                check_utf8(&[lead, b]);
            }
            for b in edges {
                for c in edges {
                    check_utf8(&[lead, b, c]);
                    for d in edges {
                        check_utf8(&[lead, b, c, d]);
                    }
                }
            }
        }
    }
}
