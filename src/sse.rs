//! A byte-level Server-Sent Events framer: chunks go in as the host delivers them (split
//! anywhere, even inside a UTF-8 character), whole events come out. It only observes; the
//! caller passes every chunk on unchanged and at once.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, if any.
    pub name: &'a str,
    /// The `data:` lines joined by `\n`, decoded as UTF-8 once the event is whole.
    pub data: &'a str,
}

/// Incremental SSE parser with bounded memory.
#[derive(Debug)]
pub struct Framer {
    line: Vec<u8>,
    name: Vec<u8>,
    data: Vec<u8>,
    /// Events whose name is not wanted are framed, but neither their data is kept nor are they
    /// handed out.
    wanted: fn(&[u8]) -> bool,
    max_event: usize,
    /// The event being framed went over `max_event`: it is dropped at its end.
    oversized: bool,
    /// The rest of the current line is not needed: a line of an unwanted event that cannot name
    /// it, or a line over `max_event`. Its bytes are not kept, and never read as a line of their own.
    skip_line: bool,
    /// Wanted events dropped for going over `max_event`.
    dropped: u32,
    /// Wanted events dropped for a name or data that is not UTF-8.
    undecodable: u32,
    /// Events not handed out whose data is measured ([`Framer::measuring`]).
    measured: fn(&[u8]) -> bool,
    /// Bytes of the lines of the event being framed but its `event` lines, as they came (field
    /// names and a CR included), whether kept or skipped.
    unkept_bytes: u64,
    /// Of every measured event, its unkept bytes beyond [`ENVELOPE_BYTES`], summed.
    unkept_excess: u64,
    /// Bytes of a leading byte order mark seen so far; `None` once the stream's start is past.
    bom: Option<usize>,
}

/// UTF-8's byte order mark: one at the start of a stream is ignored (WHATWG HTML, "Interpreting
/// an event stream"); read as part of the first field's name, it would hide `message_start`.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The line around the text of a text delta (`data: ` and `{"type":"content_block_delta",
/// "index":0,"delta":{"type":"text_delta","text":""}}`, 86 bytes; a thinking or tool-input
/// delta's is longer): what an event's lines hold beyond it is about what it carries.
pub const ENVELOPE_BYTES: u64 = 86;

impl Framer {
    /// A framer handing out the events for which `wanted(name)` holds (an event with no `event:`
    /// field has the name ""), each up to `max_event` bytes; the others are framed and dropped.
    pub fn new(wanted: fn(&[u8]) -> bool, max_event: usize) -> Framer {
        Framer {
            line: Vec::new(),
            name: Vec::new(),
            data: Vec::new(),
            wanted,
            max_event,
            oversized: false,
            skip_line: false,
            dropped: 0,
            undecodable: 0,
            measured: |_| false,
            unkept_bytes: 0,
            unkept_excess: 0,
            bom: Some(0),
        }
    }

    /// Also measures the events not handed out for which `measured(name)` holds
    /// ([`Framer::unkept_excess`]).
    pub fn measuring(self, measured: fn(&[u8]) -> bool) -> Framer {
        Framer { measured, ..self }
    }

    /// Of every measured event (not handed out), the bytes of its lines but its name beyond
    /// [`ENVELOPE_BYTES`], summed: about the text a stream's deltas carried, however the
    /// stream was cut into chunks.
    pub fn unkept_excess(&self) -> u64 {
        self.unkept_excess
    }

    /// How many wanted events were dropped for going over `max_event` (their data is lost).
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// How many wanted events were dropped for a name or data that is not UTF-8.
    pub fn undecodable(&self) -> u32 {
        self.undecodable
    }

    /// Whether the event being framed is handed out (so its data is kept).
    fn keeps_data(&self) -> bool {
        (self.wanted)(&self.name)
    }

    /// Feeds a chunk; `on_event` is called for every event it completes.
    pub fn push(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        // The byte order mark may come split over chunks like anything else.
        while let (Some(seen), Some(&byte)) = (self.bom, chunk.first()) {
            if BOM.get(seen) == Some(&byte) {
                chunk = &chunk[1..];
                self.bom = (seen + 1 < BOM.len()).then_some(seen + 1);
            } else {
                self.bom = None;
                // A start of the mark and then something else: those bytes were the stream's.
                self.push_lines(&BOM[..seen], on_event);
            }
        }
        self.push_lines(chunk, on_event);
    }

    fn push_lines(&mut self, mut chunk: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        // memchr finds line ends 16 bytes at a time (wasm simd128): most of a stream is the
        // long data lines of text deltas, which are framed but not kept.
        while let Some(newline) = memchr::memchr(b'\n', chunk) {
            let (head, rest) = chunk.split_at(newline);
            chunk = &rest[1..];
            if std::mem::take(&mut self.skip_line) {
                self.unkept_bytes = self.unkept_bytes.saturating_add(head.len() as u64);
                continue;
            }
            if self.line.is_empty() {
                self.take_line(head, on_event);
            } else if self.line.len() + head.len() > self.max_event {
                // The line's start was kept; with its end it is over the limit.
                self.oversized = true;
                release(&mut self.line);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.take_line(&line, on_event);
                release(&mut line);
                self.line = line;
            }
        }
        if self.skip_line {
            self.unkept_bytes = self.unkept_bytes.saturating_add(chunk.len() as u64);
            return;
        }
        if chunk.is_empty() {
            return;
        }
        // Of an unwanted event only an `event` field matters (it may rename the event): judged by
        // the line's first bytes, before anything of it is kept.
        let mut start = [0u8; 5];
        let n = self.line.iter().chain(chunk).zip(&mut start).map(|(b, s)| *s = *b).count();
        let may_name = b"event".starts_with(&start[..n]);
        // A lone CR may be the first half of a blank line (CRLF): it ends an event, so it is kept.
        let lone_cr = self.line.is_empty() && chunk == b"\r";
        if !may_name && !self.keeps_data() && !lone_cr {
            self.unkept_bytes = self.unkept_bytes.saturating_add((self.line.len() + chunk.len()) as u64);
            self.line.clear();
            self.skip_line = true;
            return;
        }
        if self.line.len() + chunk.len() > self.max_event {
            self.oversized = true;
            release(&mut self.line);
            self.skip_line = true;
            return;
        }
        self.line.extend_from_slice(chunk);
    }

    /// Ends the stream: an event not closed by a blank line is still delivered.
    pub fn finish(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        if let Some(seen) = self.bom.take() {
            self.push_lines(&BOM[..seen], on_event);
        }
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.take_line(&line, on_event);
        }
        self.dispatch(on_event);
    }

    fn take_line(&mut self, line: &[u8], on_event: &mut dyn FnMut(Event<'_>)) {
        let raw_len = line.len() as u64;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        // Every line but the name, as it came (a skipped line is counted the same way).
        if field != b"event" {
            self.unkept_bytes = self.unkept_bytes.saturating_add(raw_len);
        }
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            b"data" if self.keeps_data() => {
                if self.data.len() + value.len() + 1 > self.max_event {
                    self.oversized = true;
                    return;
                }
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_event: &mut dyn FnMut(Event<'_>)) {
        // Unwanted events end here: most of a stream is text deltas, and handing each one out
        // with no data would only have the caller fail to parse it.
        let wanted = self.keeps_data();
        let unkept = std::mem::take(&mut self.unkept_bytes);
        if !wanted && (self.measured)(&self.name) {
            self.unkept_excess = self.unkept_excess.saturating_add(unkept.saturating_sub(ENVELOPE_BYTES));
        }
        if wanted && self.oversized {
            self.dropped = self.dropped.saturating_add(1);
        }
        let complete = wanted && !self.oversized && (!self.data.is_empty() || !self.name.is_empty());
        if complete {
            match (std::str::from_utf8(&self.name), std::str::from_utf8(&self.data)) {
                (Ok(name), Ok(data)) => on_event(Event { name, data }),
                _ => self.undecodable = self.undecodable.saturating_add(1),
            }
        }
        self.name.clear();
        release(&mut self.data);
        self.oversized = false;
    }
}

/// Most bytes of capacity a buffer keeps between events: a stream lasts minutes, and one large
/// event must not hold its memory for the rest of it.
const RETAINED: usize = 64 * 1024;

/// Empties `buffer`, giving its memory back when it grew beyond [`RETAINED`].
fn release(buffer: &mut Vec<u8>) {
    if buffer.capacity() > RETAINED {
        *buffer = Vec::new();
    } else {
        buffer.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &[u8]) -> bool {
        true
    }

    /// The events `framer` hands out for `stream` pushed in pieces ending at `cuts`, then finished.
    fn feed(framer: &mut Framer, stream: &[u8], cuts: &[usize]) -> Vec<(String, String)> {
        let mut events = Vec::new();
        let mut sink = |e: Event<'_>| events.push((e.name.to_owned(), e.data.to_owned()));
        let mut at = 0;
        for &cut in cuts.iter().chain([&stream.len()]) {
            framer.push(&stream[at..cut], &mut sink);
            at = cut;
        }
        framer.finish(&mut sink);
        events
    }

    /// What a measured event carried is counted the same however the stream is cut into chunks
    /// (a line skipped in pieces, a CRLF blank line split between its CR and its LF), and events
    /// split anywhere are handed out the same.
    #[test]
    fn measuring_does_not_depend_on_where_chunks_end() {
        fn run(stream: &[u8], cuts: &[usize]) -> (u64, Vec<(String, String)>) {
            let mut framer = Framer::new(|n| n == b"message_delta", 1 << 20).measuring(|n| n == b"content_block_delta");
            let events = feed(&mut framer, stream, cuts);
            (framer.unkept_excess(), events)
        }
        let delta = |text: &str, eol: &str| {
            format!(
                "event: content_block_delta{eol}data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}{eol}{eol}"
            )
        };
        for eol in ["\n", "\r\n"] {
            let stream = [
                delta(&"x".repeat(40), eol),
                format!("event: ping{eol}data: {{\"type\":\"ping\"}}{eol}{eol}"),
                delta("", eol),
                delta(&"y".repeat(100), eol),
                format!("event: message_delta{eol}data: {{\"usage\":{{\"output_tokens\":9}}}}{eol}{eol}"),
            ]
            .concat()
            .into_bytes();
            let whole = run(&stream, &[]);
            // The deltas' text, 40 + 0 + 100 bytes (and each data line's CR, as it came).
            let crs = if eol == "\r\n" { 3 } else { 0 };
            assert_eq!(whole.0, 140 + crs, "{eol:?}");
            assert_eq!(whole.1.len(), 1);
            for cut in 0..stream.len() {
                assert_eq!(run(&stream, &[cut]), whole, "{eol:?}, cut at {cut}");
                for second in (cut..stream.len()).step_by(7) {
                    assert_eq!(run(&stream, &[cut, second]), whole, "{eol:?}, cut at {cut} and {second}");
                }
            }
        }
    }

    /// One byte order mark at the start of a stream is ignored, wherever the chunks cut it; a
    /// second one, or one later on, is the name's (so that event is not handed out as named).
    #[test]
    fn a_leading_byte_order_mark_is_ignored_however_the_stream_is_cut() {
        let run = |stream: &[u8], cuts: &[usize]| feed(&mut Framer::new(all, 1 << 20), stream, cuts);
        let plain = b"event: message_start\ndata: {\"a\":1}\n\nevent: message_stop\ndata: {}\n\n".to_vec();
        let want = run(&plain, &[]);
        assert_eq!(want[0].0, "message_start");
        let marked = [BOM, &plain].concat();
        for cut in 0..8 {
            assert_eq!(run(&marked, &[cut]), want, "cut at {cut}");
            assert_eq!(run(&marked, &[cut.min(1), cut]), want, "cut at 1 and {cut}");
        }
        let twice = [BOM, BOM, &plain].concat();
        let unnamed = (String::new(), "{\"a\":1}".to_owned());
        assert_eq!(run(&twice, &[])[0], unnamed, "a second mark is the field name's");
        // Only a start of the mark: its bytes stay the stream's.
        let half = [&BOM[..2], &plain[..]].concat();
        assert_eq!(run(&half, &[1])[0], unnamed);
    }

    /// A line over the limit, arriving in pieces, is dropped without being kept whole; what the
    /// framer holds between events stays small, whatever came before.
    #[test]
    fn memory_held_is_bounded_by_the_limit_and_given_back() {
        let max = 1 << 20;
        let mut framer = Framer::new(all, max);
        let mut events = Vec::new();
        let mut sink = |e: Event<'_>| events.push((e.name.to_owned(), e.data.len()));
        // An event just under the limit, then one line over it in 64 KiB pieces.
        let big = vec![b'x'; max - 16];
        framer.push(b"event: a\ndata: ", &mut sink);
        for piece in big.chunks(64 * 1024) {
            framer.push(piece, &mut sink);
        }
        framer.push(b"\n\nevent: b\ndata: ", &mut sink);
        for _ in 0..(2 * max / (64 * 1024)) {
            framer.push(&[b'y'; 64 * 1024], &mut sink);
            assert!(framer.line.capacity() <= max + 64 * 1024, "{}", framer.line.capacity());
        }
        framer.push(b"\n\n", &mut sink);
        assert!(framer.line.capacity() <= RETAINED && framer.data.capacity() <= RETAINED);
        assert_eq!(framer.dropped(), 1);
        // A line whose start was kept and whose end takes it over the limit.
        framer.push(b"event: c\ndata: ", &mut sink);
        framer.push(&big, &mut sink);
        framer.push(b"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\n\n", &mut sink);
        assert!(framer.line.capacity() <= RETAINED && framer.data.capacity() <= RETAINED);
        assert_eq!(framer.dropped(), 2);
        framer.push(b"event: d\ndata: {}\n\n", &mut sink);
        assert_eq!(events, vec![("a".to_owned(), max - 16), ("d".to_owned(), 2)]);
    }

    fn only_a(name: &[u8]) -> bool {
        name == b"a"
    }

    fn frame(chunks: &[&[u8]]) -> Vec<(String, String)> {
        let mut framer = Framer::new(all, 1024);
        let mut out = Vec::new();
        let mut sink = |e: Event<'_>| out.push((e.name.to_owned(), e.data.to_owned()));
        for c in chunks {
            framer.push(c, &mut sink);
        }
        framer.finish(&mut sink);
        out
    }

    #[test]
    fn frames_events_across_any_split() {
        let stream = "event: a\ndata: {\"x\":\"é😀\"}\n\nevent: b\r\ndata: 1\r\ndata: 2\r\n\r\n: comment\n\ndata: tail"
            .as_bytes();
        let want = vec![
            ("a".to_owned(), "{\"x\":\"é😀\"}".to_owned()),
            ("b".to_owned(), "1\n2".to_owned()),
            (String::new(), "tail".to_owned()),
        ];
        assert_eq!(frame(&[stream]), want);
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                assert_eq!(frame(&[&stream[..i], &stream[i..j], &stream[j..]]), want, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn unwanted_and_oversized_events_are_dropped_without_losing_framing() {
        let mut framer = Framer::new(only_a, 16);
        let mut out = Vec::new();
        let mut sink = |e: Event<'_>| out.push(e.data.to_owned());
        framer.push(
            b"event: b\ndata: skipped\n\nevent: a\ndata: 0123456789abcdefXYZ\n\nevent: a\ndata: ok\n\n",
            &mut sink,
        );
        assert_eq!(out, vec!["ok"], "b framed and not handed out, oversized a dropped");
        assert_eq!(framer.dropped(), 1, "the oversized a is counted");
    }

    #[test]
    fn long_lines_of_unwanted_or_unnamed_events_are_not_kept_whatever_the_split() {
        let long = "x".repeat(10_000);
        let stream =
            format!("data: {long}\n\nevent: b\ndata: {long}\n\nevent: a\ndata: ok\n\nevent: b\ndata: {long}\n\n");
        for piece in [1, 7, 64, 4096] {
            let mut framer = Framer::new(only_a, 1024);
            let mut out = Vec::new();
            let mut sink = |e: Event<'_>| out.push(e.data.to_owned());
            for chunk in stream.as_bytes().chunks(piece) {
                framer.push(chunk, &mut sink);
                assert!(framer.line.capacity() <= 64, "piece {piece}: an unwanted line was kept");
            }
            framer.finish(&mut sink);
            assert_eq!(out, vec!["ok"], "piece {piece}");
            assert_eq!(framer.dropped(), 0, "piece {piece}");
        }
    }

    #[test]
    fn a_wanted_line_over_the_limit_is_dropped_and_counted_and_its_rest_never_read_as_a_line() {
        // The rest of the long line, read on its own, would be a data line of `a`.
        let stream = b"event: a\ndata: 0123456789abcdef0123456789\ndata: {}\n\nevent: a\ndata: ok\n\n";
        for piece in 1..stream.len() {
            let mut framer = Framer::new(only_a, 16);
            let mut out = Vec::new();
            let mut sink = |e: Event<'_>| out.push(e.data.to_owned());
            for chunk in stream.chunks(piece) {
                framer.push(chunk, &mut sink);
            }
            framer.finish(&mut sink);
            assert_eq!(out, vec!["ok"], "piece {piece}");
            assert_eq!(framer.dropped(), 1, "piece {piece}");
        }
    }
}
