//! The `application/vnd.amazon.eventstream` framing Bedrock streams answers in, decoded
//! incrementally: chunks go in split at any byte, whole checked frames come out.
//!
//! A frame is: total length (u32 BE), headers length (u32 BE), prelude CRC32 (of the first 8
//! bytes), headers, payload, message CRC32 (of everything before it). Each header is a name
//! (u8 length + bytes), a type byte and a typed value.

use super::BedrockError;

/// Smallest frame: prelude (12 bytes) and message CRC (4 bytes), no headers, no payload.
const MIN_FRAME: usize = 16;
/// Largest headers section the format allows (botocore and the AWS SDKs use the same bound).
const MAX_HEADERS: usize = 128 * 1024;
/// Largest frame accepted. Bedrock chunks are a few KiB; AWS SDKs allow payloads up to 16 MiB.
pub const MAX_FRAME: usize = 16 * 1024 * 1024 + MAX_HEADERS + MIN_FRAME;

/// A typed header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 (true) and 1 (false).
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6, u16 length prefixed.
    Bytes(Vec<u8>),
    /// Type 7, u16 length prefixed UTF-8.
    String(String),
    /// Type 8, milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9, 16 bytes.
    Uuid([u8; 16]),
}

/// One checked frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Headers in wire order.
    pub headers: Vec<(String, HeaderValue)>,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The value of a string header, e.g. `:message-type`.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// What one push produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Frames completed by the chunk, in order.
    pub frames: Vec<Frame>,
    /// Set when the stream is corrupt; it follows the frames above.
    pub error: Option<BedrockError>,
}

impl Decoded {
    /// The frames, or the error if there was one.
    pub fn into_result(self) -> Result<Vec<Frame>, BedrockError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.frames),
        }
    }
}

/// Incremental decoder. Holds at most one partial frame between pushes.
#[derive(Debug, Default)]
pub struct EventStreamDecoder {
    buf: Vec<u8>,
    failed: bool,
}

impl EventStreamDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> EventStreamDecoder {
        EventStreamDecoder::default()
    }

    /// Feeds a chunk and returns the frames it completes and, if the stream turned out corrupt,
    /// the error (after the good frames before it). After an error the stream cannot be
    /// resynchronised (lengths are untrusted), so every later push fails too.
    pub fn push(&mut self, chunk: &[u8]) -> Decoded {
        if self.failed {
            return Decoded {
                frames: Vec::new(),
                error: Some(BedrockError::EventStream("stream already failed".to_owned())),
            };
        }
        self.buf.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut at = 0;
        loop {
            match decode_one(&self.buf[at..]) {
                Ok(Some((frame, used))) => {
                    frames.push(frame);
                    at += used;
                }
                Ok(None) => break,
                Err(e) => {
                    self.failed = true;
                    self.buf.clear();
                    return Decoded { frames, error: Some(e) };
                }
            }
        }
        self.buf.drain(..at);
        Decoded { frames, error: None }
    }

    /// Bytes of a frame not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Ends the stream: a partial frame left over is an error.
    pub fn finish(&mut self) -> Result<(), BedrockError> {
        if !self.failed && !self.buf.is_empty() {
            self.failed = true;
            let left = self.buf.len();
            self.buf.clear();
            return Err(BedrockError::EventStream(format!("stream ended inside a frame ({left} bytes left)")));
        }
        Ok(())
    }
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// One frame from the start of `bytes`, with the bytes it used; `None` while incomplete.
fn decode_one(bytes: &[u8]) -> Result<Option<(Frame, usize)>, BedrockError> {
    let err = |m: String| BedrockError::EventStream(m);
    let (Some(total), Some(headers_len), Some(prelude_crc)) = (be32(bytes, 0), be32(bytes, 4), be32(bytes, 8)) else {
        return Ok(None);
    };
    // The prelude is checked before its lengths are trusted, so garbage never makes us wait
    // for (or allocate) a huge frame.
    let prelude = bytes.get(..8).unwrap_or_default();
    if crc32(prelude) != prelude_crc {
        return Err(err("prelude CRC mismatch".to_owned()));
    }
    let (total, headers_len) = (total as usize, headers_len as usize);
    if !(MIN_FRAME..=MAX_FRAME).contains(&total) || headers_len > MAX_HEADERS || headers_len > total - MIN_FRAME {
        return Err(err(format!("bad lengths: total {total}, headers {headers_len}")));
    }
    let Some(message) = bytes.get(..total) else {
        return Ok(None);
    };
    let (body, crc) = message.split_at(total - 4);
    if be32(crc, 0) != Some(crc32(body)) {
        return Err(err("message CRC mismatch".to_owned()));
    }
    let headers = decode_headers(body.get(12..12 + headers_len).unwrap_or_default())?;
    let payload = body.get(12 + headers_len..).unwrap_or_default().to_vec();
    Ok(Some((Frame { headers, payload }, total)))
}

fn decode_headers(mut bytes: &[u8]) -> Result<Vec<(String, HeaderValue)>, BedrockError> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], BedrockError> {
        if bytes.len() < n {
            return Err(BedrockError::EventStream("header runs past the headers section".to_owned()));
        }
        let (head, rest) = bytes.split_at(n);
        *bytes = rest;
        Ok(head)
    }
    fn fixed<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], BedrockError> {
        let mut out = [0u8; N];
        out.copy_from_slice(take(bytes, N)?);
        Ok(out)
    }
    let mut headers = Vec::new();
    while !bytes.is_empty() {
        let name_len = usize::from(fixed::<1>(&mut bytes)?[0]);
        let name = String::from_utf8(take(&mut bytes, name_len)?.to_vec())
            .map_err(|_| BedrockError::EventStream("header name is not UTF-8".to_owned()))?;
        let value = match fixed::<1>(&mut bytes)?[0] {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(fixed(&mut bytes)?)),
            3 => HeaderValue::Short(i16::from_be_bytes(fixed(&mut bytes)?)),
            4 => HeaderValue::Int(i32::from_be_bytes(fixed(&mut bytes)?)),
            5 => HeaderValue::Long(i64::from_be_bytes(fixed(&mut bytes)?)),
            kind @ (6 | 7) => {
                let len = usize::from(u16::from_be_bytes(fixed(&mut bytes)?));
                let raw = take(&mut bytes, len)?.to_vec();
                if kind == 6 {
                    HeaderValue::Bytes(raw)
                } else {
                    HeaderValue::String(
                        String::from_utf8(raw)
                            .map_err(|_| BedrockError::EventStream(format!("header {name} is not UTF-8")))?,
                    )
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(fixed(&mut bytes)?)),
            9 => HeaderValue::Uuid(fixed(&mut bytes)?),
            other => return Err(BedrockError::EventStream(format!("header {name} has unknown type {other}"))),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// One frame with string headers and `payload`, both CRCs right (for tests and the fuzzer,
/// which build streams to decode).
#[cfg(any(test, feature = "fuzzing"))]
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (n, v) in headers {
        raw.push(n.len() as u8);
        raw.extend_from_slice(n.as_bytes());
        raw.push(7);
        raw.extend_from_slice(&(v.len() as u16).to_be_bytes());
        raw.extend_from_slice(v.as_bytes());
    }
    let total = (12 + raw.len() + payload.len() + 4) as u32;
    let mut out = total.to_be_bytes().to_vec();
    out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out.extend_from_slice(&raw);
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32(&out).to_be_bytes());
    out
}

// CRC-32 (IEEE 802.3, as zlib). A 1 KiB table built at compile time: the crc32fast crate's
// slice-by-16 tables would add 16 KiB to the .wasm for frames that are a few KiB each.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE) of `bytes`, as zlib's `crc32`.
pub fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, &b| CRC_TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(crate) struct VectorFrame {
        pub(crate) headers: Vec<(String, String, serde_json::Value)>,
        pub(crate) payload_b64: String,
    }

    #[derive(Deserialize)]
    pub(crate) struct Vectors {
        pub(crate) stream_hex: String,
        pub(crate) frames: Vec<VectorFrame>,
        pub(crate) corrupt: Vec<(String, String)>,
    }

    pub(crate) fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../../tests/vectors/bedrock/eventstream.json")).unwrap()
    }

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn expected(v: &VectorFrame) -> Frame {
        use base64::Engine;
        let headers = v
            .headers
            .iter()
            .map(|(name, kind, value)| {
                let value = match kind.as_str() {
                    "bool" => HeaderValue::Bool(value.as_bool().unwrap()),
                    "byte" => HeaderValue::Byte(value.as_i64().unwrap() as i8),
                    "short" => HeaderValue::Short(value.as_i64().unwrap() as i16),
                    "int" => HeaderValue::Int(value.as_i64().unwrap() as i32),
                    "long" => HeaderValue::Long(value.as_i64().unwrap()),
                    "bytes" => HeaderValue::Bytes(unhex(value.as_str().unwrap())),
                    "string" => HeaderValue::String(value.as_str().unwrap().to_owned()),
                    "timestamp" => HeaderValue::Timestamp(value.as_i64().unwrap()),
                    "uuid" => HeaderValue::Uuid(unhex(value.as_str().unwrap()).try_into().unwrap()),
                    other => panic!("unknown kind {other}"),
                };
                (name.clone(), value)
            })
            .collect();
        let payload = base64::engine::general_purpose::STANDARD.decode(&v.payload_b64).unwrap();
        Frame { headers, payload }
    }

    fn decode_in(chunks: &[&[u8]]) -> Result<Vec<Frame>, BedrockError> {
        let mut decoder = EventStreamDecoder::new();
        let mut frames = Vec::new();
        for c in chunks {
            frames.extend(decoder.push(c).into_result()?);
            assert!(decoder.pending() < MAX_FRAME);
        }
        decoder.finish()?;
        Ok(frames)
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn python_encoded_frames_decode_at_every_split() {
        let v = vectors();
        let stream = unhex(&v.stream_hex);
        let want: Vec<Frame> = v.frames.iter().map(expected).collect();
        assert_eq!(decode_in(&[&stream]).unwrap(), want);
        for i in 0..=stream.len() {
            assert_eq!(decode_in(&[&stream[..i], &stream[i..]]).unwrap(), want, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(decode_in(&bytes).unwrap(), want, "one byte at a time");
    }

    #[test]
    fn frames_come_out_as_soon_as_they_are_whole() {
        let v = vectors();
        let stream = unhex(&v.stream_hex);
        let mut decoder = EventStreamDecoder::new();
        let mut seen = 0;
        for (i, b) in stream.iter().enumerate() {
            seen += decoder.push(std::slice::from_ref(b)).into_result().unwrap().len();
            let first_len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
            if i + 1 == first_len {
                assert_eq!(seen, 1, "first frame released at its last byte");
            }
        }
        assert_eq!(decoder.pending(), 0);
    }

    #[test]
    fn corrupt_streams_are_refused() {
        for (name, hex) in vectors().corrupt {
            let bytes = unhex(&hex);
            let err = decode_in(&[&bytes]).unwrap_err();
            assert!(matches!(err, BedrockError::EventStream(_)), "{name}: {err:?}");
        }
        let mut decoder = EventStreamDecoder::new();
        assert!(decoder.push(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]).error.is_some());
        assert!(decoder.push(&[]).error.is_some(), "stays failed");
        let v = vectors();
        let mut stream = unhex(&v.stream_hex);
        let first = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        stream[first + 13] ^= 1;
        let decoded = EventStreamDecoder::new().push(&stream);
        assert_eq!(decoded.frames, vec![expected(&v.frames[0])], "good frames before the error still come out");
        assert!(decoded.error.is_some());
    }
}
