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
//! Nesting is tracked with one bit per level and no recursion.

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

/// The members of interest, in the order of [`Seen`]'s flags.
const FIELDS: [&str; 3] = ["model", "stream", "max_tokens"];

/// Scans `body`: `Ok` with the members of interest when it is one valid JSON object (surrounded by
/// JSON whitespace only), the first problem otherwise.
pub fn scan(body: &[u8]) -> Result<Members, ScanError> {
    // UTF-8 is checked where it can occur, in the strings (any other non-ASCII byte is a
    // grammar error), run by run and only for runs that are not plain ASCII.
    let mut s = Scanner { body, pos: 0 };
    s.skip_ws();
    if s.peek() != Some(b'{') {
        return Err(ScanError { kind: ScanErrorKind::NotAnObject, at: s.pos });
    }
    s.pos += 1;
    let mut members = Members::default();
    let mut seen = [false; FIELDS.len()];
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            let field = s.top_level_key()?;
            s.skip_ws();
            s.expect(b':', ScanErrorKind::ExpectedColon)?;
            s.skip_ws();
            let start = s.pos;
            s.skip_value()?;
            if let Some(i) = field {
                if std::mem::replace(&mut seen[i], true) {
                    return Err(ScanError { kind: ScanErrorKind::DuplicateKey(FIELDS[i]), at: start });
                }
                members.take(i, body, start..s.pos);
            }
            s.skip_ws();
            match s.peek() {
                Some(b',') => {
                    s.pos += 1;
                    s.skip_ws();
                }
                Some(b'}') => {
                    s.pos += 1;
                    break;
                }
                Some(_) => return Err(s.err(ScanErrorKind::ExpectedObjectCommaOrEnd)),
                None => return Err(s.err(ScanErrorKind::UnexpectedEnd)),
            }
        }
    }
    s.skip_ws();
    if s.pos != body.len() {
        return Err(s.err(ScanErrorKind::TrailingCharacters));
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

/// A cursor over the body.
struct Scanner<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.pos).copied()
    }

    fn err(&self, kind: ScanErrorKind) -> ScanError {
        let kind = if self.pos >= self.body.len() { ScanErrorKind::UnexpectedEnd } else { kind };
        ScanError { kind, at: self.pos }
    }

    /// JSON whitespace only: space, tab, line feed, carriage return.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, kind: ScanErrorKind) -> Result<(), ScanError> {
        if self.peek() != Some(byte) {
            return Err(self.err(kind));
        }
        self.pos += 1;
        Ok(())
    }

    /// A top-level key, decoded and checked as serde checks the keys of a struct. Returns which
    /// member of interest it names, if any.
    fn top_level_key(&mut self) -> Result<Option<usize>, ScanError> {
        let start = self.pos + 1;
        let escaped = self.string(ScanErrorKind::ExpectedKey)?;
        let raw = self.body.get(start..self.pos - 1).unwrap_or_default();
        let name = if escaped {
            match decode(raw) {
                Ok(name) => std::borrow::Cow::Owned(name.into_bytes()),
                Err(kind) => return Err(ScanError { kind, at: start }),
            }
        } else {
            std::borrow::Cow::Borrowed(raw)
        };
        Ok(FIELDS.iter().position(|f| f.as_bytes() == &*name))
    }

    /// A string starting at the cursor (which must be its opening quote, else `not_string`), with
    /// JSON's escape grammar and no raw control characters. Leaves the cursor after the closing
    /// quote; returns whether it held an escape.
    fn string(&mut self, not_string: ScanErrorKind) -> Result<bool, ScanError> {
        self.expect(b'"', not_string)?;
        let mut escaped = false;
        loop {
            // The hot loop: most of a Claude Code body is string content.
            let rest = self.body.get(self.pos..).unwrap_or_default();
            let (run, non_ascii) = string_run(rest);
            // Stop bytes are ASCII, so a run ends on a character boundary and can be checked alone.
            if non_ascii {
                if let Err(e) = std::str::from_utf8(&rest[..run]) {
                    return Err(ScanError { kind: ScanErrorKind::InvalidUtf8, at: self.pos + e.valid_up_to() });
                }
            }
            self.pos += run;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 1;
                    self.escape()?;
                }
                Some(_) => return Err(self.err(ScanErrorKind::ControlCharacter)),
                None => return Err(self.err(ScanErrorKind::UnexpectedEnd)),
            }
        }
    }

    /// The escape after a backslash: one of `"\\/bfnrt`, or `u` and four hex digits, where a
    /// surrogate must come as a high-low pair of escapes.
    fn escape(&mut self) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 1,
            Some(b'u') => {
                self.pos += 1;
                match self.hex4()? {
                    0xD800..=0xDBFF => {
                        if self.body.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return Err(self.err(ScanErrorKind::LoneSurrogate));
                        }
                        self.pos += 2;
                        if !(0xDC00..=0xDFFF).contains(&self.hex4()?) {
                            return Err(self.err(ScanErrorKind::LoneSurrogate));
                        }
                    }
                    0xDC00..=0xDFFF => return Err(self.err(ScanErrorKind::LoneSurrogate)),
                    _ => {}
                }
            }
            _ => return Err(self.err(ScanErrorKind::InvalidEscape)),
        }
        Ok(())
    }

    /// Four hex digits at the cursor.
    fn hex4(&mut self) -> Result<u16, ScanError> {
        let code = hex4(self.body.get(self.pos..self.pos + 4)).map_err(|kind| self.err(kind))?;
        self.pos += 4;
        Ok(code)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), ScanError> {
        for &b in word {
            if self.peek() != Some(b) {
                return Err(self.err(ScanErrorKind::InvalidLiteral));
            }
            self.pos += 1;
        }
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` whose value is a finite `f64`
    /// (serde_json refuses `1e400` as out of range); what follows is the caller's.
    fn number(&mut self) -> Result<(), ScanError> {
        let start = self.pos;
        self.number_grammar()?;
        let text = self.body.get(start..self.pos).unwrap_or_default();
        // Small integers (nearly every number in a request) are finite; only the rest are parsed.
        if text.len() > 18 || text.iter().any(|b| matches!(b, b'.' | b'e' | b'E')) {
            let finite = std::str::from_utf8(text).ok().and_then(|t| t.parse::<f64>().ok()).is_some_and(f64::is_finite);
            if !finite {
                return Err(ScanError { kind: ScanErrorKind::InvalidNumber, at: start });
            }
        }
        Ok(())
    }

    fn number_grammar(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.err(ScanErrorKind::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err(ScanErrorKind::InvalidNumber)),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.err(ScanErrorKind::InvalidNumber));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.err(ScanErrorKind::InvalidNumber));
            }
        }
        Ok(())
    }

    /// One value of any depth starting at the cursor; leaves the cursor just after it.
    fn skip_value(&mut self) -> Result<(), ScanError> {
        let mut stack = Nesting::default();
        loop {
            // The cursor is at a value.
            if let Some(b'{' | b'[') = self.peek() {
                // The top-level object is the first level.
                if stack.depth + 2 > MAX_DEPTH {
                    return Err(self.err(ScanErrorKind::TooDeep));
                }
            }
            match self.peek() {
                Some(b'{') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.pos += 1;
                    } else {
                        stack.push(true);
                        self.member_key()?;
                        continue;
                    }
                }
                Some(b'[') => {
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                    } else {
                        stack.push(false);
                        continue;
                    }
                }
                Some(b'"') => {
                    self.string(ScanErrorKind::ExpectedValue)?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(self.err(ScanErrorKind::ExpectedValue)),
            }
            // A value ended: close containers until one has a next element, or the value is done.
            loop {
                let Some(in_object) = stack.top() else { return Ok(()) };
                self.skip_ws();
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_ws();
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {
                        self.pos += 1;
                        stack.pop();
                    }
                    Some(b']') if !in_object => {
                        self.pos += 1;
                        stack.pop();
                    }
                    _ if in_object => return Err(self.err(ScanErrorKind::ExpectedObjectCommaOrEnd)),
                    _ => return Err(self.err(ScanErrorKind::ExpectedArrayCommaOrEnd)),
                }
            }
        }
    }

    /// A nested object's key and colon, leaving the cursor at the value.
    fn member_key(&mut self) -> Result<(), ScanError> {
        self.string(ScanErrorKind::ExpectedKey)?;
        self.skip_ws();
        self.expect(b':', ScanErrorKind::ExpectedColon)?;
        self.skip_ws();
        Ok(())
    }
}

/// Open containers below the current value, one bit each (set: object, clear: array).
#[derive(Default)]
struct Nesting {
    bits: Vec<u64>,
    depth: usize,
}

impl Nesting {
    fn push(&mut self, object: bool) {
        let (word, bit) = (self.depth / 64, self.depth % 64);
        if word == self.bits.len() {
            self.bits.push(0);
        }
        if let Some(w) = self.bits.get_mut(word) {
            *w = (*w & !(1 << bit)) | (u64::from(object) << bit);
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn top(&self) -> Option<bool> {
        let i = self.depth.checked_sub(1)?;
        self.bits.get(i / 64).map(|w| w >> (i % 64) & 1 == 1)
    }
}

mod decode;
mod run;
use decode::{decode, hex4};
use run::string_run;

#[cfg(any(test, feature = "fuzzing"))]
pub mod oracle;
#[cfg(test)]
mod tests;
