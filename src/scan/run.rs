//! The scanner's hot loop: how far string content goes before a byte that needs a look (the
//! closing quote, a backslash, a control character), and whether any of it is not ASCII (then
//! that stretch needs a UTF-8 check). Most of a Claude Code body is string content.
//!
//! In Wasm with `simd128` (V8 and Wasmtime both run it) 16 bytes go per step; elsewhere, and
//! for the last bytes, 8 at a time in a `u64` (SWAR, as serde_json's `skip_to_escape`). Both
//! are held to a byte-by-byte reference by the tests (natively and in Wasm: `make unit-wasm`).

/// Bytes that end a run.
const STOP: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = true;
        i += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// How many bytes at the start of `rest` are plain string content (no [`STOP`] byte), and
/// whether any of them is not ASCII.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn string_run(rest: &[u8]) -> (usize, bool) {
    swar(rest)
}

/// How many bytes at the start of `rest` are plain string content (no [`STOP`] byte), and
/// whether any of them is not ASCII.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
pub(super) fn string_run(rest: &[u8]) -> (usize, bool) {
    use core::arch::wasm32::{u8x16_bitmask, u8x16_eq, u8x16_lt, u8x16_splat, v128, v128_load, v128_or};
    let (quote, backslash, space) = (u8x16_splat(b'"'), u8x16_splat(b'\\'), u8x16_splat(0x20));
    let mut high = u8x16_splat(0);
    let mut chunks = rest.chunks_exact(16);
    let mut run = 0;
    for chunk in chunks.by_ref() {
        // SAFETY: `chunk` is 16 readable bytes, and `v128.load` takes any alignment.
        let v = unsafe { v128_load(chunk.as_ptr().cast::<v128>()) };
        let stop = v128_or(v128_or(u8x16_eq(v, quote), u8x16_eq(v, backslash)), u8x16_lt(v, space));
        let found = u8x16_bitmask(stop);
        if found != 0 {
            let len = found.trailing_zeros() as usize;
            // High bits of the bytes before the stop (`len` < 16).
            let before = u8x16_bitmask(v) & ((1u16 << len) - 1);
            return (run + len, before != 0 || u8x16_bitmask(high) != 0);
        }
        high = v128_or(high, v);
        run += 16;
    }
    let (len, non_ascii) = swar(chunks.remainder());
    (run + len, non_ascii || u8x16_bitmask(high) != 0)
}

/// [`string_run`] eight bytes at a time: a byte's high bit is set in `found` when it is below
/// 0x20, a quote or a backslash. The borrows can also flag bytes after the first match, never
/// before it, so the lowest flag is exact.
fn swar(rest: &[u8]) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut chunks = rest.chunks_exact(8);
    let mut run = 0;
    let mut high = 0u64;
    for chunk in chunks.by_ref() {
        // Byte by byte so that it compiles to one load (`copy_from_slice` stays a call at opt-level "s").
        let v = u64::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7]]);
        let quote = v ^ (ONES * u64::from(b'"'));
        let backslash = v ^ (ONES * u64::from(b'\\'));
        // `& !v` keeps only bytes below 0x80: above it, the high bit is the byte's own.
        let found =
            (v.wrapping_sub(ONES * 0x20) | quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES)) & !v & (ONES << 7);
        if found != 0 {
            let len = (found.trailing_zeros() / 8) as usize;
            // Only the bytes before the stop count.
            let before = if len == 0 { 0 } else { v & (u64::MAX >> (64 - 8 * len)) };
            return (run + len, (high | before) & (ONES << 7) != 0);
        }
        high |= v;
        run += 8;
    }
    let tail = chunks.remainder();
    let len = tail.iter().position(|&b| STOP[b as usize]).unwrap_or(tail.len());
    (run + len, high & (ONES << 7) != 0 || tail[..len].iter().any(|b| !b.is_ascii()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one byte at a time.
    fn reference(rest: &[u8]) -> (usize, bool) {
        let len = rest.iter().position(|&b| STOP[b as usize]).unwrap_or(rest.len());
        (len, rest[..len].iter().any(|b| !b.is_ascii()))
    }

    #[test]
    fn every_stop_byte_at_every_offset_agrees_with_the_reference() {
        let stops: Vec<u8> = (0..0x20).chain([b'"', b'\\']).collect();
        // Fillers that differ from a stop byte only in the high bit, and plain ones.
        let fillers = [b'a', 0xa2, 0xdc, 0x9f, b' ', 0x80, 0xff, 0x7f, 0xa0];
        for &stop in &stops {
            for len in 0..70 {
                for at in 0..=len {
                    for shift in 0..fillers.len() {
                        let mut text: Vec<u8> = (0..len).map(|i| fillers[(i + shift) % fillers.len()]).collect();
                        if at < len {
                            text[at] = stop;
                        }
                        assert_eq!(string_run(&text), reference(&text), "stop {stop:#x}, length {len}, at {at}");
                        assert_eq!(swar(&text), reference(&text), "swar: stop {stop:#x}, length {len}, at {at}");
                    }
                }
            }
        }
    }

    #[test]
    fn random_text_agrees_with_the_reference() {
        // xorshift: the same cases on every run and every target.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            // Mostly ASCII letters, some non-ASCII, rare stops: long runs, as in real bodies.
            let text: Vec<u8> = (0..len)
                .map(|_| match next() % 64 {
                    0 => b'"',
                    1 => b'\\',
                    2 => (next() % 0x20) as u8,
                    3..=8 => 0x80 | (next() % 0x80) as u8,
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            for start in 0..len.min(17) {
                assert_eq!(string_run(&text[start..]), reference(&text[start..]), "{text:?} from {start}");
            }
        }
    }
}
