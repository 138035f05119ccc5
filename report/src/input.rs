//! Reads usage logs line by line, keeping the records and counting the lines that had none.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead};

use crate::record::{read_line, Record, Skip, Source};

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
    /// Records found both in an access log and in the host's log, counted once ([`counted_once`]).
    pub relogged: u64,
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
        if self.relogged > 0 {
            out += &format!("; {} in both the access log and the host's log, counted once", self.relogged);
        }
        for (source, line, why) in &self.examples {
            out += &format!("\n  skipped {source}:{line}: {}", why.describe());
        }
        out
    }
}

/// Reads every line of `reader` (named `source` in messages). Lines that are not UTF-8, not
/// JSON, or carry no record are counted in `tally`, never fatal; only I/O errors are.
pub fn read_log<R: BufRead>(mut reader: R, source: &str, tally: &mut Tally) -> io::Result<Vec<(Record, Source)>> {
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
        let parsed = std::str::from_utf8(&buf).map_err(|_| Skip::NotJson).and_then(read_line);
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

/// The records of every file read, each request once. Envoy writes its access log before or after
/// the filter's last callback (the order is not fixed for a stream the client cut), and a record
/// made there is also written to Envoy's own log: a record from the host's log that equals one
/// from an access log, field for field (the time to the millisecond, the latency, the tokens), is
/// that request again. (On nginx every record is a host-log line, so none is dropped there.)
pub fn counted_once(records: Vec<(Record, Source)>, tally: &mut Tally) -> Vec<Record> {
    let mut in_lines: HashMap<Record, u64> = HashMap::new();
    for (record, source) in &records {
        if *source == Source::Line {
            *in_lines.entry(record.clone()).or_default() += 1;
        }
    }
    let mut out = Vec::with_capacity(records.len());
    for (record, source) in records {
        if source == Source::HostLog {
            if let Some(left) = in_lines.get_mut(&record).filter(|n| **n > 0) {
                *left -= 1;
                tally.relogged += 1;
                continue;
            }
        }
        out.push(record);
    }
    out
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
        let records = counted_once(records, &mut tally);
        assert_eq!(records.len(), 3, "{records:?} {tally:?}");
        assert_eq!(records.iter().map(|r| r.tokens.total()).sum::<u64>(), 12);
        assert_eq!(tally.records, 3);
        assert_eq!(tally.skipped[&Skip::BadTime], 1);
        assert_eq!(tally.lines, tally.records + tally.skipped.values().sum::<u64>());
        assert_eq!(tally.examples.len(), Tally::EXAMPLES);
        assert!(tally.summary().starts_with(&format!("read {} lines: 3 records", tally.lines)), "{}", tally.summary());
        assert!(tally.summary().contains("skipped log:2: not a JSON object"), "{}", tally.summary());
    }

    #[test]
    fn a_record_in_both_the_access_log_and_the_hosts_log_counts_once() {
        let a = r#"{"time":"2026-11-29T14:52:03.123Z","sub":"a","input_tokens":5,"latency_ms":900}"#;
        let b = r#"{"time":"2026-11-29T14:52:03.124Z","sub":"a","input_tokens":5,"latency_ms":900}"#;
        let access = format!("{a}\n{{\"usage\":{b}}}\n{b}\n");
        // The cut stream's record again in Envoy's own log, and one that only the log has.
        let host = format!(
            "[2026-11-29 14:52:03.200][7][warning][wasm] [context.cc:1154] wasm log claude_sso_gateway claude_sso_gateway: claude-sso-gateway: usage {b}\n\
             [2026-11-29 14:52:03.300][7][warning][wasm] [context.cc:1154] wasm log claude_sso_gateway claude_sso_gateway: claude-sso-gateway: usage {a}\n\
             [2026-11-29 14:52:03.300][7][warning][wasm] [context.cc:1154] wasm log claude_sso_gateway claude_sso_gateway: claude-sso-gateway: usage {a}\n"
        );
        let mut tally = Tally::default();
        let mut records = read_log(access.as_bytes(), "access", &mut tally).unwrap();
        records.extend(read_log(host.as_bytes(), "envoy", &mut tally).unwrap());
        let records = counted_once(records, &mut tally);
        // `b`: twice in the access log (two requests alike) and once in the log. `a`: once in the
        // access log and twice in the log, and the second has no access-log line left to be, so
        // it is a request of its own.
        assert_eq!(records.len(), 4, "{records:?}");
        assert_eq!(tally.relogged, 2);
        assert!(tally.summary().contains("2 in both the access log and the host's log, counted once"));
        // nginx: host-log lines only, alike or not, each a request.
        let mut tally = Tally::default();
        let records = counted_once(read_log(host.as_bytes(), "nginx", &mut tally).unwrap(), &mut tally);
        assert_eq!((records.len(), tally.relogged), (3, 0));
    }
}
