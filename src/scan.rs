//! One pass over a request body: validates it as JSON without building a tree, and reports the
//! top-level members the gateway reads (`model`, `stream`, `max_tokens`).
//!
//! The verdicts are those of `serde_json::from_slice::<serde_json::Value>` (UTF-8 everywhere,
//! surrogate escapes paired, at most 128 levels of nesting, JSON's number and escape grammar),
//! plus two rules of the gateway's own: the document must be an object, and `model`, `stream`
//! and `max_tokens` may not repeat at the top level (compared after decoding escapes:
//! `"mod\u0065l"` repeats `model`), so the provider cannot be shown a different model than the
//! one checked. A differential test and a fuzz target hold it to serde_json.
//!
//! How it is fast (Claude Code's bodies are mostly long strings with an escape every line or
//! so, between a thousand short keys and values, often pretty-printed): the bytes that end a
//! stretch of string content (quote, backslash, control character, non-ASCII) are found for a
//! 64-byte window at once (`scan/run.rs`, simd128 in Wasm) and kept as a bit mask, so every string,
//! escape and short value that starts inside the window costs a shift and a count of trailing
//! zeros rather than another read; a two-byte escape clears its two bits and the string goes on
//! in the same mask. Windows with no stop are skipped 64 bytes per test. Whitespace is found the
//! same way, in a window of its own read only for runs longer than one space. Each step waits
//! on the one before, so the code keeps where the next window starts independent of where the
//! stops were, and keeps few values live (V8 spills the rest). Nesting is a depth count, the
//! kind of the innermost container, and the kinds of the outer ones in a small array; no
//! recursion.
//!
//! In Node 20's V8 on a 2-core AMD EPYC (best of 100 batches of 50 scans) the captured 130 KB
//! Claude Code body scans in about 12.5 µs (10.5 GB/s), the same compacted in about 10.8 µs,
//! a 125 KB string alone in 2.7 µs, and 3000 small objects (99 KB) in about 49 µs: what is left
//! is mostly the cost of each string, escape and structural byte (a few ns each, one after the
//! other) and one 64-byte window read per 64 bytes of escaped text.

use std::fmt;
use std::ops::Range;

/// The top-level members of a valid body that the gateway reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Members {
    /// `model`, when its value is a string whose escapes decode.
    pub model: Option<ModelValue>,
    /// `stream`, when its value is `true` or `false`.
    pub stream: Option<bool>,
    /// `max_tokens`, when its value is a whole number that fits in a `u64`.
    pub max_tokens: Option<u64>,
}

/// The top-level `model` string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelValue {
    /// The decoded value.
    pub value: String,
    /// Byte range of the value in the body, quotes included: the bytes to replace to change it.
    pub span: Range<usize>,
}

/// Why a body was refused, and at which byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError {
    /// What was wrong.
    pub kind: ScanErrorKind,
    /// Byte offset in the body where it was found.
    pub at: usize,
}

/// What was wrong with a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanErrorKind {
    /// The document is not an object.
    NotAnObject,
    /// The body ended inside a value.
    UnexpectedEnd,
    /// A byte that cannot start a value.
    ExpectedValue,
    /// An object key that is not a string.
    ExpectedKey,
    /// No `:` after an object key.
    ExpectedColon,
    /// No `,` or `}` after an object member.
    ExpectedObjectCommaOrEnd,
    /// No `,` or `]` after an array element.
    ExpectedArrayCommaOrEnd,
    /// A misspelt `true`, `false` or `null`.
    InvalidLiteral,
    /// A number outside JSON's grammar (leading zero, no digit after `.`, `e` or `-`).
    InvalidNumber,
    /// A backslash escape outside JSON's set, or `\u` without four hex digits.
    InvalidEscape,
    /// A raw control character (below U+0020) inside a string.
    ControlCharacter,
    /// A lone or unpaired UTF-16 surrogate escape.
    LoneSurrogate,
    /// Bytes that are not UTF-8.
    InvalidUtf8,
    /// More than [`MAX_DEPTH`] levels of nesting.
    TooDeep,
    /// `model`, `stream` or `max_tokens` given twice.
    DuplicateKey(&'static str),
    /// Something other than whitespace after the document.
    TrailingCharacters,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ScanErrorKind::NotAnObject => "expected a JSON object",
            ScanErrorKind::UnexpectedEnd => "unexpected end of input",
            ScanErrorKind::ExpectedValue => "expected a value",
            ScanErrorKind::ExpectedKey => "expected a string key",
            ScanErrorKind::ExpectedColon => "expected `:`",
            ScanErrorKind::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
            ScanErrorKind::ExpectedArrayCommaOrEnd => "expected `,` or `]`",
            ScanErrorKind::InvalidLiteral => "invalid literal",
            ScanErrorKind::InvalidNumber => "invalid number",
            ScanErrorKind::InvalidEscape => "invalid escape",
            ScanErrorKind::ControlCharacter => "control character in a string",
            ScanErrorKind::LoneSurrogate => "unpaired surrogate escape",
            ScanErrorKind::TooDeep => "nested too deeply",
            ScanErrorKind::InvalidUtf8 => "invalid UTF-8",
            ScanErrorKind::DuplicateKey(name) => return write!(f, "duplicate field `{name}` at byte {}", self.at),
            ScanErrorKind::TrailingCharacters => "trailing characters",
        };
        write!(f, "{what} at byte {}", self.at)
    }
}

/// Most levels of nesting, the top-level object included (serde_json's recursion limit of 128
/// counts down to zero, so 127 levels parse).
pub const MAX_DEPTH: usize = 127;

/// The members of interest, in the order of [`scan`]'s `seen` flags.
const FIELDS: [&str; 3] = ["model", "stream", "max_tokens"];

/// Elements of top-level arrays validated before. A scan that is given them skips an element
/// that the body repeats byte for byte (one comparison at memory speed instead of a validation)
/// and offers the elements it validates. An element's verdict depends on its bytes alone: it
/// starts and ends with an ASCII delimiter (object, array or string), so UTF-8 cannot straddle
/// its ends, and it sits at the same depth every time; so a repeat needs no second look, and the
/// scan's verdict is the same with or without them.
pub trait Repeats {
    /// The shortest element looked up or offered.
    fn min_len(&self) -> usize;
    /// The length of a validated element that `rest` (at least [`Repeats::min_len`] bytes)
    /// starts with, if any.
    fn known(&mut self, rest: &[u8]) -> Option<usize>;
    /// An element just validated: an object, array or string of at least
    /// [`Repeats::min_len`] bytes.
    fn validated(&mut self, element: &[u8]);
}

/// Scans `body`: `Ok` with the members of interest when it is one valid JSON object (surrounded by
/// JSON whitespace only), the first problem otherwise.
pub fn scan(body: &[u8]) -> Result<Members, ScanError> {
    scan_with(body, None)
}

/// [`scan`], skipping the elements of top-level arrays that `repeats` knows and offering it
/// the ones it validates (all but the last element of `messages`). The verdict is [`scan`]'s.
pub fn scan_with(body: &[u8], mut repeats: Option<&mut dyn Repeats>) -> Result<Members, ScanError> {
    let mut s = Scanner::new(body);
    let mut pos = s.skip_ws(0);
    if body.get(pos) != Some(&b'{') {
        return Err(ScanError { kind: ScanErrorKind::NotAnObject, at: pos });
    }
    pos = s.skip_ws(pos + 1);
    let mut members = Members::default();
    let mut seen = [false; FIELDS.len()];
    // Lookups that can hit: each hit covers at least `min_len` bytes. Past twice that many, a
    // body of countless small elements would cost more in lookups than it saves.
    let mut lookups = repeats.as_deref().map_or(0, |r| 2 * (body.len() / r.min_len().max(1)) + 16);
    if body.get(pos) == Some(&b'}') {
        pos += 1;
    } else {
        loop {
            let (field, after_key, messages) = s.top_level_key(pos)?;
            pos = s.colon(after_key)?;
            let start = pos;
            pos = match repeats.as_deref_mut() {
                // The last message is never offered: Claude Code moves its `cache_control` marker
                // off it on the next turn, so it is never sent again as it is.
                Some(repeats) if body.get(pos) == Some(&b'[') => {
                    s.top_level_array(pos, repeats, &mut lookups, !messages)?
                }
                _ => s.value(pos, 0)?,
            };
            if let Some(i) = field {
                if std::mem::replace(&mut seen[i], true) {
                    return Err(ScanError { kind: ScanErrorKind::DuplicateKey(FIELDS[i]), at: start });
                }
                members.take(i, body, start..pos);
            }
            pos = s.skip_ws(pos);
            match body.get(pos) {
                Some(b',') => pos = s.skip_ws(pos + 1),
                Some(b'}') => {
                    pos += 1;
                    break;
                }
                _ => return Err(err(body, pos, ScanErrorKind::ExpectedObjectCommaOrEnd)),
            }
        }
    }
    pos = s.skip_ws(pos);
    if pos != body.len() {
        return Err(err(body, pos, ScanErrorKind::TrailingCharacters));
    }
    Ok(members)
}

impl Members {
    /// Records member `field` whose value is `body[span]` (already valid JSON).
    fn take(&mut self, field: usize, body: &[u8], span: Range<usize>) {
        let raw = body.get(span.clone()).unwrap_or_default();
        match field {
            0 => {
                self.model = match raw {
                    [b'"', inner @ .., b'"'] => decode(inner).ok().map(|value| ModelValue { value, span }),
                    _ => None,
                }
            }
            1 => {
                self.stream = match raw {
                    b"true" => Some(true),
                    b"false" => Some(false),
                    _ => None,
                }
            }
            _ => self.max_tokens = std::str::from_utf8(raw).ok().and_then(|t| t.parse().ok()),
        }
    }
}

/// The error `kind` at `at`, or `UnexpectedEnd` when `at` is the end of the body.
#[cold]
#[inline(never)]
fn err(body: &[u8], at: usize, kind: ScanErrorKind) -> ScanError {
    let kind = if at >= body.len() { ScanErrorKind::UnexpectedEnd } else { kind };
    ScanError { kind, at }
}

/// The body, and the masks of the last windows read in it.
struct Scanner<'a> {
    body: &'a [u8],
    /// Where the window starts.
    base: usize,
    /// Its stops ([`run::window_stops`]).
    stops: u64,
    /// Where the whitespace window starts.
    ws_base: usize,
    /// Its bytes that are not whitespace ([`run::window_text`]).
    text: u64,
}

impl<'a> Scanner<'a> {
    /// A scanner that has read no window yet.
    fn new(body: &'a [u8]) -> Self {
        // An empty window far from any offset: the first look reads one.
        Scanner { body, base: usize::MAX / 2, stops: 0, ws_base: usize::MAX / 2, text: 0 }
    }

    /// The offset of the first byte at or after `pos` that is not JSON whitespace.
    #[inline(always)]
    fn skip_ws(&mut self, mut pos: usize) -> usize {
        // Every whitespace byte is at most a space; most bytes after a structural one are not.
        if self.body.get(pos).is_some_and(|&b| b > b' ') {
            return pos;
        }
        // One space, as after a colon in pretty-printed JSON.
        if self.body.get(pos) == Some(&b' ') && self.body.get(pos + 1).is_some_and(|&b| b > b' ') {
            return pos + 1;
        }
        loop {
            let mut offset = pos.wrapping_sub(self.ws_base);
            if offset >= WINDOW {
                self.ws_base = pos;
                self.text = window_text(self.body, pos);
                offset = 0;
            }
            let text = self.text >> offset;
            if text != 0 {
                return pos + text.trailing_zeros() as usize;
            }
            pos = self.ws_base + WINDOW;
        }
    }

    /// The stops of the window that holds `pos` (read anew when `pos` is outside the current
    /// one), from `pos` on: bit `i` for byte `base + i`.
    #[inline(always)]
    fn window_from(&mut self, pos: usize) -> u64 {
        let mut offset = pos.wrapping_sub(self.base);
        if offset >= WINDOW {
            self.base = pos;
            self.stops = window_stops(self.body, pos);
            offset = 0;
        }
        self.stops & (u64::MAX << offset)
    }

    /// Where the current window ends.
    fn window_end(&self) -> usize {
        self.base + WINDOW
    }

    /// A top-level key at `pos`, decoded and checked as serde checks the keys of a struct: which
    /// member of interest ([`FIELDS`]) it names, if any, the offset after it, and whether it is
    /// `messages`.
    fn top_level_key(&mut self, pos: usize) -> Result<(Option<usize>, usize, bool), ScanError> {
        let body = self.body;
        if body.get(pos) != Some(&b'"') {
            return Err(err(body, pos, ScanErrorKind::ExpectedKey));
        }
        let end = self.string(pos + 1)?;
        let raw = body.get(pos + 1..end - 1).unwrap_or_default();
        let name = if raw.contains(&b'\\') {
            match decode(raw) {
                Ok(name) => std::borrow::Cow::Owned(name.into_bytes()),
                Err(kind) => return Err(ScanError { kind, at: pos + 1 }),
            }
        } else {
            std::borrow::Cow::Borrowed(raw)
        };
        Ok((FIELDS.iter().position(|f| f.as_bytes() == &*name), end, &*name == b"messages"))
    }

    /// The rest of a string whose opening quote is just before `pos`: JSON's escape grammar, no
    /// raw control characters, UTF-8. Returns the offset after the closing quote.
    #[inline(always)]
    fn string(&mut self, mut pos: usize) -> Result<usize, ScanError> {
        let body = self.body;
        // Windows in a row with no stop: past the second, long stretches of string content
        // are read faster in bulk.
        let mut empty = 0;
        loop {
            let mut found = self.window_from(pos);
            if found == 0 {
                empty += 1;
                pos = if empty < 2 { self.window_end() } else { plain(body, self.window_end()) };
                continue;
            }
            empty = 0;
            // The stops of this window, in turn.
            loop {
                let i = found.trailing_zeros();
                let at = self.base + i as usize;
                match body.get(at) {
                    Some(b'"') => return Ok(at + 1),
                    // An escape in the window's last byte ends past it: a rare stop, so that where
                    // the next window starts never waits on where the stops are.
                    Some(b'\\') if i < 63 && body.get(at + 1).is_some_and(|&e| SIMPLE_ESCAPE[usize::from(e)]) => {
                        // The escaped byte may be a stop too.
                        found &= !(3 << i);
                        if found == 0 {
                            pos = self.window_end();
                            break;
                        }
                    }
                    // Most non-ASCII text is two- or three-byte characters: checked in place, its
                    // bytes cleared like an escape's when it ends inside the window.
                    Some(&lead) if lead > 0x7f && (1..=WINDOW - i as usize).contains(&short_char(body, at)) => {
                        // Two bits or three.
                        found &= !((3 | u64::from(short_char(body, at) == 3) << 2) << i);
                        if found == 0 {
                            pos = self.window_end();
                            break;
                        }
                    }
                    _ => {
                        pos = rare_stop(body, at)?;
                        break;
                    }
                }
            }
        }
    }

    /// A top-level member's array value at `pos` (its `[`), each element looked up in
    /// `repeats` first while `lookups` last, and offered to it once validated (the last one
    /// only with `offer_last`); returns the offset just after it.
    fn top_level_array(
        &mut self,
        pos: usize,
        repeats: &mut dyn Repeats,
        lookups: &mut usize,
        offer_last: bool,
    ) -> Result<usize, ScanError> {
        let body = self.body;
        let min = repeats.min_len().max(1);
        let mut pos = self.skip_ws(pos + 1);
        if body.get(pos) == Some(&b']') {
            return Ok(pos + 1);
        }
        loop {
            let start = pos;
            let rest = body.get(pos..).unwrap_or_default();
            // A length the scan can trust: within the body, past the element's first byte.
            let known = (rest.len() >= min && *lookups > 0)
                .then(|| {
                    *lookups -= 1;
                    repeats.known(rest)
                })
                .flatten();
            let (end, validated) = match known.filter(|len| (1..=rest.len()).contains(len)) {
                Some(len) => (pos + len, false),
                None => (self.value(pos, 1)?, true),
            };
            pos = self.skip_ws(end);
            let last = match body.get(pos) {
                Some(b',') => false,
                Some(b']') => true,
                _ => return Err(err(body, pos, ScanErrorKind::ExpectedArrayCommaOrEnd)),
            };
            let element = body.get(start..end).unwrap_or_default();
            if validated
                && (offer_last || !last)
                && element.len() >= min
                && matches!(element.first(), Some(b'{' | b'[' | b'"'))
            {
                repeats.validated(element);
            }
            if last {
                return Ok(pos + 1);
            }
            pos = self.skip_ws(pos + 1);
        }
    }

    /// One value of any depth at `pos`, inside `levels` containers besides the top-level
    /// object; returns the offset just after it.
    fn value(&mut self, mut pos: usize, levels: usize) -> Result<usize, ScanError> {
        let body = self.body;
        // Open containers below the current value: how many, whether the innermost is an object,
        // and whether each one outside it is (kept in memory, read only when one closes).
        let mut depth = 0;
        let mut in_object = false;
        let mut outer = [false; MAX_DEPTH];
        // Whether the cursor is at an object's key rather than at a value: one place reads
        // strings, so that the hot loop is inlined once.
        let mut key = false;
        loop {
            match body.get(pos) {
                Some(b'"') => {
                    pos = self.string(pos + 1)?;
                    if key {
                        key = false;
                        pos = self.colon(pos)?;
                        continue;
                    }
                }
                _ if key => return Err(err(body, pos, ScanErrorKind::ExpectedKey)),
                Some(&open @ (b'{' | b'[')) => {
                    // The top-level object is the first level.
                    if depth + levels + 2 > MAX_DEPTH {
                        return Err(err(body, pos, ScanErrorKind::TooDeep));
                    }
                    pos = self.skip_ws(pos + 1);
                    // `}` and `]` are `{` and `[` plus 2.
                    if body.get(pos) == Some(&(open + 2)) {
                        pos += 1;
                    } else {
                        if let Some(slot) = outer.get_mut(depth) {
                            *slot = in_object;
                        }
                        depth += 1;
                        in_object = open == b'{';
                        key = in_object;
                        continue;
                    }
                }
                Some(b't') => pos = literal(body, pos, b"true")?,
                Some(b'f') => pos = literal(body, pos, b"false")?,
                Some(b'n') => pos = literal(body, pos, b"null")?,
                Some(b'-' | b'0'..=b'9') => pos = number(body, pos)?,
                _ => return Err(err(body, pos, ScanErrorKind::ExpectedValue)),
            }
            // A value ended: close containers until one has a next element, or the value is done.
            loop {
                if depth == 0 {
                    return Ok(pos);
                }
                pos = self.skip_ws(pos);
                match body.get(pos) {
                    Some(b',') => {
                        pos = self.skip_ws(pos + 1);
                        key = in_object;
                        break;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    _ if in_object => return Err(err(body, pos, ScanErrorKind::ExpectedObjectCommaOrEnd)),
                    _ => return Err(err(body, pos, ScanErrorKind::ExpectedArrayCommaOrEnd)),
                }
                pos += 1;
                depth -= 1;
                in_object = outer.get(depth).copied().unwrap_or_default();
            }
        }
    }

    /// The `:` after an object key that ends at `pos`; returns the offset of the value.
    #[inline(always)]
    fn colon(&mut self, pos: usize) -> Result<usize, ScanError> {
        let pos = self.skip_ws(pos);
        if self.body.get(pos) != Some(&b':') {
            return Err(err(self.body, pos, ScanErrorKind::ExpectedColon));
        }
        Ok(self.skip_ws(pos + 1))
    }
}

/// The length of the two- or three-byte UTF-8 character at `at` (lead byte C2 to DF, or E1 to
/// EF but not ED, and continuation bytes), or 0 for anything else: other lengths, the leads
/// whose second byte has a narrower range (E0, ED), errors.
#[inline(always)]
fn short_char(body: &[u8], at: usize) -> usize {
    let byte = |k: usize| body.get(at + k).copied().unwrap_or_default();
    let continuation = |b: u8| b & 0xc0 == 0x80;
    match byte(0) {
        0xc2..=0xdf if continuation(byte(1)) => 2,
        0xe1..=0xec | 0xee..=0xef if continuation(byte(1)) && continuation(byte(2)) => 3,
        _ => 0,
    }
}

/// Bytes that make a two-byte escape after a backslash.
static SIMPLE_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 8 {
        table[b"\"\\/bfnrt"[i] as usize] = true;
        i += 1;
    }
    table
};

/// A stop at `at` in a string that the string loop leaves to this: a `\u` escape, an escape in a
/// window's last byte, a character other than those checked in place, or an error. Returns where
/// the string goes on.
#[inline(never)]
fn rare_stop(body: &[u8], at: usize) -> Result<usize, ScanError> {
    match body.get(at) {
        Some(b'\\') => match body.get(at + 1) {
            Some(&e) if SIMPLE_ESCAPE[usize::from(e)] => Ok(at + 2),
            Some(b'u') => unicode_escape(body, at + 2),
            _ => Err(err(body, at + 1, ScanErrorKind::InvalidEscape)),
        },
        Some(&b) if b > 0x7f => utf8(body, at).map_err(|at| ScanError { kind: ScanErrorKind::InvalidUtf8, at }),
        _ => Err(err(body, at, ScanErrorKind::ControlCharacter)),
    }
}

/// The four hex digits of a `\u` escape at `pos`, where a surrogate must come as a high-low
/// pair of escapes; returns the offset after them.
#[inline(never)]
fn unicode_escape(body: &[u8], pos: usize) -> Result<usize, ScanError> {
    let hex = |at: usize| hex4(body.get(at..at + 4)).map_err(|kind| err(body, at, kind));
    match hex(pos)? {
        0xD800..=0xDBFF => {
            if body.get(pos + 4..pos + 6) != Some(b"\\u") {
                return Err(err(body, pos + 4, ScanErrorKind::LoneSurrogate));
            }
            if !(0xDC00..=0xDFFF).contains(&hex(pos + 6)?) {
                return Err(err(body, pos + 10, ScanErrorKind::LoneSurrogate));
            }
            Ok(pos + 10)
        }
        0xDC00..=0xDFFF => Err(err(body, pos + 4, ScanErrorKind::LoneSurrogate)),
        _ => Ok(pos + 4),
    }
}

/// `true`, `false` or `null` at `pos` (whose first byte is that of `word`).
#[inline(always)]
fn literal(body: &[u8], pos: usize, word: &[u8]) -> Result<usize, ScanError> {
    if body.get(pos..pos + word.len()) == Some(word) {
        return Ok(pos + word.len());
    }
    let bad = word.iter().zip(body.get(pos..).unwrap_or_default()).take_while(|(w, b)| w == b).count();
    Err(err(body, pos + bad, ScanErrorKind::InvalidLiteral))
}

/// The offset of the first byte at or after `pos` that is not a digit.
fn digits(body: &[u8], mut pos: usize) -> usize {
    while let Some(b'0'..=b'9') = body.get(pos) {
        pos += 1;
    }
    pos
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` at `pos` whose value is a finite
/// `f64` (serde_json refuses `1e400` as out of range); returns the offset after it.
#[inline(never)]
fn number(body: &[u8], start: usize) -> Result<usize, ScanError> {
    let end = number_grammar(body, start)?;
    let text = body.get(start..end).unwrap_or_default();
    // Small integers (nearly every number in a request) are finite; only the rest are parsed.
    if text.len() > 18 || text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        let finite = std::str::from_utf8(text).ok().and_then(|t| t.parse::<f64>().ok()).is_some_and(f64::is_finite);
        if !finite {
            return Err(ScanError { kind: ScanErrorKind::InvalidNumber, at: start });
        }
    }
    Ok(end)
}

fn number_grammar(body: &[u8], mut pos: usize) -> Result<usize, ScanError> {
    let invalid = |at| Err(err(body, at, ScanErrorKind::InvalidNumber));
    if body.get(pos) == Some(&b'-') {
        pos += 1;
    }
    match body.get(pos) {
        Some(b'0') => {
            pos += 1;
            if let Some(b'0'..=b'9') = body.get(pos) {
                return invalid(pos);
            }
        }
        Some(b'1'..=b'9') => pos = digits(body, pos + 1),
        _ => return invalid(pos),
    }
    if body.get(pos) == Some(&b'.') {
        let end = digits(body, pos + 1);
        if end == pos + 1 {
            return invalid(end);
        }
        pos = end;
    }
    if let Some(b'e' | b'E') = body.get(pos) {
        pos += 1;
        if let Some(b'+' | b'-') = body.get(pos) {
            pos += 1;
        }
        let end = digits(body, pos);
        if end == pos {
            return invalid(end);
        }
        pos = end;
    }
    Ok(pos)
}

mod decode;
mod run;
use decode::{decode, hex4};
pub(crate) use run::same_bytes;
use run::{plain, utf8, window_stops, window_text, WINDOW};

#[cfg(any(test, feature = "fuzzing"))]
pub mod oracle;
#[cfg(test)]
mod tests;
