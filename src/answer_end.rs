//! Where an answer ends. Envoy marks the last chunk of every answer; ngx does not mark it on
//! some, so an answer that announced its `content-length` is also whole once that many bytes
//! passed.

/// How much of one answer has passed, and whether it is whole.
#[derive(Debug)]
pub struct AnswerEnd {
    /// Bytes the answer announced (`content-length`).
    expected: Option<u64>,
    seen: u64,
    whole: bool,
}

impl AnswerEnd {
    /// An answer that announced `expected` bytes (`None`: no length, it ends with the stream).
    pub fn new(expected: Option<u64>) -> Self {
        AnswerEnd { expected, seen: 0, whole: false }
    }

    /// Counts a chunk of `len` bytes; true for the chunk that makes the answer whole (the end of
    /// stream, or the announced length reached), and for no chunk after it.
    pub fn ends_at(&mut self, len: usize, end_of_stream: bool) -> bool {
        if self.whole {
            return false;
        }
        self.seen = self.seen.saturating_add(len as u64);
        self.whole = end_of_stream || self.expected.is_some_and(|n| self.seen >= n);
        self.whole
    }

    /// Whether the answer is whole.
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// Takes the answer as whole without another chunk (one that will never come).
    pub fn mark_whole(&mut self) {
        self.whole = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_stream_ends_an_answer_once() {
        let mut end = AnswerEnd::new(None);
        assert!(!end.ends_at(10, false));
        assert!(!end.is_whole());
        assert!(end.ends_at(0, true));
        assert!(end.is_whole());
        assert!(!end.ends_at(5, true), "once");
        assert!(end.is_whole());
    }

    #[test]
    fn the_announced_length_ends_an_answer_without_end_of_stream() {
        let mut end = AnswerEnd::new(Some(12));
        assert!(!end.ends_at(4, false));
        assert!(end.ends_at(8, false));
        assert!(!end.ends_at(0, true), "once");
        // An empty announced answer ends at its first (empty) chunk; more than announced too.
        assert!(AnswerEnd::new(Some(0)).ends_at(0, false));
        assert!(AnswerEnd::new(Some(3)).ends_at(7, false));
        let mut end = AnswerEnd::new(Some(3));
        end.mark_whole();
        assert!(end.is_whole());
        assert!(!end.ends_at(3, true));
    }
}
