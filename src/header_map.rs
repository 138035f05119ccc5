//! A Proxy-Wasm header map as the host serializes it, read in place: one buffer, no string
//! allocated per header, and no trust in its contents. HTTP lets a header value carry any byte
//! above 0x7f (obs-text); the SDK's reader takes every value as UTF-8 and panics on one that is
//! not, which aborts the VM and with it every request the worker serves after.
//!
//! The layout (the Proxy-Wasm ABI): a little-endian `u32` count `n`, then `n` pairs of `u32`
//! sizes (name, value), then each name and value in that order, each followed by a NUL byte.

/// What stands for a name or value that is not UTF-8: matches no header the gateway reads, and
/// fails every parse (a credential, a length), so such a request is refused, never trusted.
pub const NOT_UTF8: &str = "\u{fffd}";

/// The pairs in `bytes`, in the host's order. A map cut short yields the pairs before the cut.
pub fn pairs(bytes: &[u8]) -> Vec<(&str, &str)> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else { return Vec::new() };
    // A count the buffer cannot hold is a broken map: nothing past what is there is read.
    let Some(mut at) = count.checked_mul(8).and_then(|s| s.checked_add(4)).filter(|&end| end <= bytes.len()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let (Some(name_len), Some(value_len)) = (word(4 + i * 8), word(8 + i * 8)) else { break };
        let name_end = at.saturating_add(name_len);
        let value_start = name_end.saturating_add(1);
        let value_end = value_start.saturating_add(value_len);
        let (Some(name), Some(value)) = (bytes.get(at..name_end), bytes.get(value_start..value_end)) else {
            break;
        };
        let (name, value) = (text(name), text(value));
        out.push((name, value));
        at = value_end.saturating_add(1);
    }
    out
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or(NOT_UTF8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map serialized as hosts do.
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend((name.len() as u32).to_le_bytes());
            out.extend((value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend(*name);
            out.push(0);
            out.extend(*value);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_what_hosts_write() {
        let map = serialize(&[(b":path", b"/v1/messages"), (b"x-empty", b""), (b"x-api-key", b"k")]);
        assert_eq!(pairs(&map), [(":path", "/v1/messages"), ("x-empty", ""), ("x-api-key", "k")]);
        assert_eq!(pairs(&serialize(&[])), []);
        assert_eq!(pairs(&[]), []);
    }

    #[test]
    fn bytes_that_are_not_utf8_become_a_value_nothing_accepts() {
        let map = serialize(&[(b"authorization", b"Bearer \xff"), (b"x-note", b"caf\xe9"), (b"accept", b"*/*")]);
        assert_eq!(pairs(&map), [("authorization", NOT_UTF8), ("x-note", NOT_UTF8), ("accept", "*/*")]);
    }

    #[test]
    fn a_broken_map_yields_what_is_whole_and_never_panics() {
        let map = serialize(&[(b"a", b"1"), (b"b", b"22")]);
        for cut in 0..map.len() {
            let got = pairs(&map[..cut]);
            assert!(got.len() <= 2 && got.iter().all(|p| *p == ("a", "1") || *p == ("b", "22")), "{cut}: {got:?}");
        }
        let mut huge = map.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&huge), []);
        let mut long = map.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&long), []);
    }
}
