//! Decoding the strings the scanner keeps (top-level keys, `model`): escapes, surrogate pairs.

use super::ScanErrorKind;

/// Decodes the inside of a string already checked by `Scanner::string`, with serde's rules for
/// strings it keeps: surrogate escapes must pair, and the result must be UTF-8.
pub(super) fn decode(raw: &[u8]) -> Result<String, ScanErrorKind> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else { return Err(ScanErrorKind::InvalidEscape) };
        i += 2;
        let simple = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => 0,
            _ => return Err(ScanErrorKind::InvalidEscape),
        };
        if e != b'u' {
            out.push(simple);
            continue;
        }
        let high = hex4(raw.get(i..i + 4))?;
        i += 4;
        let code = match high {
            0xDC00..=0xDFFF => return Err(ScanErrorKind::LoneSurrogate),
            0xD800..=0xDBFF => {
                if raw.get(i..i + 2) != Some(b"\\u") {
                    return Err(ScanErrorKind::LoneSurrogate);
                }
                let low = hex4(raw.get(i + 2..i + 6))?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(ScanErrorKind::LoneSurrogate);
                }
                i += 6;
                0x1_0000 + ((u32::from(high) - 0xD800) << 10 | (u32::from(low) - 0xDC00))
            }
            _ => u32::from(high),
        };
        let c = char::from_u32(code).ok_or(ScanErrorKind::LoneSurrogate)?;
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
    String::from_utf8(out).map_err(|_| ScanErrorKind::InvalidUtf8)
}

/// Four hex digits as a number.
pub(super) fn hex4(digits: Option<&[u8]>) -> Result<u16, ScanErrorKind> {
    let digits = digits.ok_or(ScanErrorKind::InvalidEscape)?;
    digits.iter().try_fold(0u16, |n, &d| {
        let v = (d as char).to_digit(16).ok_or(ScanErrorKind::InvalidEscape)?;
        Ok(n << 4 | v as u16)
    })
}
