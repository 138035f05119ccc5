//! Reads usage logs line by line, keeping the records and counting the lines that had none.

use std::collections::BTreeMap;
use std::io::{self, BufRead};

use crate::record::{parse_line, Record, Skip};

/// Lines read and why some gave no record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Lines read.
    pub lines: u64,
    /// Records found.
    pub records: u64,
    /// Lines skipped, by reason.
    pub skipped: BTreeMap<Skip, u64>,
    /// Up to [`Tally::EXAMPLES`] `(source, line number, reason)` of skipped lines, for the message.
    pub examples: Vec<(String, u64, Skip)>,
}

impl Tally {
    /// How many skipped lines are named in the message.
    pub const EXAMPLES: usize = 5;

    /// Skipped lines other than blank ones.
    pub fn skipped_lines(&self) -> u64 {
        self.skipped.iter().filter(|(k, _)| **k != Skip::Blank).map(|(_, v)| v).sum()
    }

    /// One line for stderr: `read 10 lines: 7 records, 3 skipped (2 not a JSON object, ...)`.
    pub fn summary(&self) -> String {
        let reasons: Vec<String> = self
            .skipped
            .iter()
            .filter(|(k, _)| **k != Skip::Blank)
            .map(|(k, v)| format!("{v} {}", k.describe()))
            .collect();
        let mut out = format!("read {} lines: {} records, {} skipped", self.lines, self.records, self.skipped_lines());
        if !reasons.is_empty() {
            out += &format!(" ({})", reasons.join(", "));
        }
        for (source, line, why) in &self.examples {
            out += &format!("\n  skipped {source}:{line}: {}", why.describe());
        }
        out
    }
}

/// Reads every line of `reader` (named `source` in messages). Lines that are not UTF-8, not
/// JSON, or carry no record are counted in `tally`, never fatal; only I/O errors are.
pub fn read_log<R: BufRead>(mut reader: R, source: &str, tally: &mut Tally) -> io::Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        tally.lines += 1;
        let parsed = std::str::from_utf8(&buf).map_err(|_| Skip::NotJson).and_then(parse_line);
        match parsed {
            Ok(r) => {
                tally.records += 1;
                records.push(r);
            }
            Err(why) => {
                *tally.skipped.entry(why).or_default() += 1;
                if why != Skip::Blank && tally.examples.len() < Tally::EXAMPLES {
                    tally.examples.push((source.to_owned(), number, why));
                }
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_lines_are_counted_and_never_fatal() {
        let mut log: Vec<u8> = Vec::new();
        log.extend_from_slice(br#"{"time":"2026-11-29T14:52:03Z","sub":"a","input_tokens":5}"#);
        log.extend_from_slice(b"\n\xff\xfe\x00binary\n\n{{{{\n\"just a string\"\nnull\n");
        log.extend_from_slice(br#"{"usage":{"sub":"a"}}"#);
        log.extend_from_slice(b"\n[2026-11-29 14:52:03.123][1][info] starting main dispatch loop\n");
        log.extend_from_slice(br#"{"usage":"{\"time\":\"2026-11-29T14:52:04Z\",\"sub\":\"b\",\"output_tokens\":7}"}"#);
        log.extend_from_slice("\n{\"time\":\"2026-11-29T14:52:05Z\",\"sub\":\"ünï\\u0000\"}\n".as_bytes());
        // Every single byte, and a very deep nesting that serde_json refuses.
        log.extend((0u8..=255).flat_map(|b| [b, b'\n']));
        log.extend_from_slice(&[b'['; 100_000]);
        let mut tally = Tally::default();
        let records = read_log(log.as_slice(), "log", &mut tally).unwrap();
        assert_eq!(records.len(), 3, "{records:?} {tally:?}");
        assert_eq!(records.iter().map(|r| r.tokens.total()).sum::<u64>(), 12);
        assert_eq!(tally.records, 3);
        assert_eq!(tally.skipped[&Skip::BadTime], 1);
        assert_eq!(tally.lines, tally.records + tally.skipped.values().sum::<u64>());
        assert_eq!(tally.examples.len(), Tally::EXAMPLES);
        assert!(tally.summary().starts_with(&format!("read {} lines: 3 records", tally.lines)), "{}", tally.summary());
        assert!(tally.summary().contains("skipped log:2: not a JSON object"), "{}", tally.summary());
    }
}
