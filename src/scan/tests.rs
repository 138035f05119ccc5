use super::oracle::oracle;
use super::*;
use crate::validated_elements::ValidatedElements;

fn model(value: &str, span: Range<usize>) -> Option<ModelValue> {
    Some(ModelValue { value: value.to_owned(), span })
}

#[test]
fn reads_the_members_of_interest() {
    let cases: &[(&str, &[u8], Members)] = &[
        (
            "all three",
            br#"{"model":"claude-sonnet-4-6","stream":true,"max_tokens":32000}"#,
            Members { model: model("claude-sonnet-4-6", 9..28), stream: Some(true), max_tokens: Some(32000) },
        ),
        ("empty object", b" {} ", Members::default()),
        (
            "whitespace everywhere",
            b" \t\r\n{ \"model\" :\n\"m\" , \"stream\" : false }\n",
            Members { model: model("m", 16..19), stream: Some(false), max_tokens: None },
        ),
        (
            "escaped model is decoded, span covers the escapes",
            br#"{"model":"claude-sonnet\u002d4-6"}"#,
            Members { model: model("claude-sonnet-4-6", 9..33), ..Members::default() },
        ),
        (
            "escaped key names model",
            br#"{"mod\u0065l":"x"}"#,
            Members { model: model("x", 14..17), ..Members::default() },
        ),
        (
            "surrogate pair in model",
            br#"{"model":"\ud83d\ude00"}"#,
            Members { model: model("😀", 9..23), ..Members::default() },
        ),
        ("model null", br#"{"model":null}"#, Members::default()),
        ("model number", br#"{"model":7}"#, Members::default()),
        ("model object", br#"{"model":{"model":"x"}}"#, Members::default()),
        ("nested model is not top-level", br#"{"m":{"model":"x"},"a":["model"]}"#, Members::default()),
        ("stream not a bool", br#"{"stream":"true"}"#, Members::default()),
        (
            "max_tokens u64::MAX",
            br#"{"max_tokens":18446744073709551615}"#,
            Members { max_tokens: Some(u64::MAX), ..Members::default() },
        ),
        ("max_tokens overflow", br#"{"max_tokens":18446744073709551616}"#, Members::default()),
        ("max_tokens negative", br#"{"max_tokens":-1}"#, Members::default()),
        ("max_tokens fraction", br#"{"max_tokens":1.0}"#, Members::default()),
        ("max_tokens exponent", br#"{"max_tokens":1e3}"#, Members::default()),
        (
            "duplicate unknown keys",
            br#"{"a":1,"a":2,"model":"x"}"#,
            Members { model: model("x", 21..24), ..Members::default() },
        ),
        ("every number form", br#"{"n":[0,-0,1.5,-2e10,3E+2,4e-0,0.0e0]}"#, Members::default()),
        ("empty containers", br#"{"a":[],"b":{},"c":[ ],"d":{ },"e":[[],{}]}"#, Members::default()),
        ("UTF-8 key", "{\"é\":1}".as_bytes(), Members::default()),
    ];
    for (name, body, want) in cases {
        assert_eq!(scan(body).as_ref(), Ok(want), "{name}");
        assert_eq!(oracle(body).as_ref(), Some(want), "oracle: {name}");
    }
}

#[test]
fn refuses_what_serde_refuses() {
    use ScanErrorKind::*;
    let cases: &[(&str, &[u8], ScanErrorKind)] = &[
        ("empty", b"", NotAnObject),
        ("array", b"[1]", NotAnObject),
        ("string", b"\"model\"", NotAnObject),
        ("form feed is not JSON whitespace", b"\x0c{}", NotAnObject),
        ("not json", b"model=claude", NotAnObject),
        ("truncated", br#"{"model":"a""#, UnexpectedEnd),
        ("truncated string", br#"{"model":"a"#, UnexpectedEnd),
        ("trailing garbage", br#"{"model":"a"} x"#, TrailingCharacters),
        ("two documents", br#"{}{}"#, TrailingCharacters),
        ("duplicate model", br#"{"model":"claude-sonnet-4-6","model":"claude-opus-4-7"}"#, DuplicateKey("model")),
        ("duplicate via escape", br#"{"model":"a","mod\u0065l":"b"}"#, DuplicateKey("model")),
        ("duplicate null model", br#"{"model":null,"model":"b"}"#, DuplicateKey("model")),
        ("duplicate stream", br#"{"stream":true,"stream":false}"#, DuplicateKey("stream")),
        ("duplicate max_tokens", br#"{"max_tokens":1,"max_tokens":2}"#, DuplicateKey("max_tokens")),
        ("trailing comma in object", br#"{"a":1,}"#, ExpectedKey),
        ("trailing comma in array", br#"{"a":[1,]}"#, ExpectedValue),
        ("unquoted key", br#"{a:1}"#, ExpectedKey),
        ("no colon", br#"{"a" 1}"#, ExpectedColon),
        ("missing comma", br#"{"a":1 "b":2}"#, ExpectedObjectCommaOrEnd),
        ("missing array comma", br#"{"a":[1 2]}"#, ExpectedArrayCommaOrEnd),
        ("mismatched close", br#"{"a":[1}"#, ExpectedArrayCommaOrEnd),
        ("leading zero", br#"{"a":01}"#, InvalidNumber),
        ("bare minus", br#"{"a":-}"#, InvalidNumber),
        ("no fraction digit", br#"{"a":1.}"#, InvalidNumber),
        ("no exponent digit", br#"{"a":1e+}"#, InvalidNumber),
        ("leading dot", br#"{"a":.5}"#, ExpectedValue),
        ("plus sign", br#"{"a":+1}"#, ExpectedValue),
        ("bad literal", br#"{"a":tru}"#, InvalidLiteral),
        ("capital literal", br#"{"a":True}"#, ExpectedValue),
        ("bad escape", br#"{"a":"\x"}"#, InvalidEscape),
        ("short unicode escape", br#"{"a":"\u12"}"#, InvalidEscape),
        ("raw newline in string", b"{\"a\":\"x\ny\"}", ControlCharacter),
        ("raw tab in string", b"{\"a\":\"x\ty\"}", ControlCharacter),
        ("lone surrogate in model", br#"{"model":"\ud800"}"#, LoneSurrogate),
        ("invalid UTF-8 in a nested key", b"{\"m\":{\"\xff\":1}}", InvalidUtf8),
        ("number beyond f64", br#"{"a":1e400}"#, InvalidNumber),
        ("integer beyond f64", format!("{{\"a\":{}}}", "9".repeat(400)).leak().as_bytes(), InvalidNumber),
        ("lone surrogate in top-level key", br#"{"\ud800":1}"#, LoneSurrogate),
        ("lone surrogate in a nested value", br#"{"a":["\ud800x"]}"#, LoneSurrogate),
        ("high surrogate then a non-surrogate escape", br#"{"a":"\ud800\u0041"}"#, LoneSurrogate),
        ("trailing surrogate in a nested key", br#"{"a":{"\udc00":1}}"#, LoneSurrogate),
        ("invalid UTF-8 in a skipped string", b"{\"messages\":[\"\xcf\xcf\"]}", InvalidUtf8),
        ("trailing surrogate in top-level key", br#"{"\udc00":1}"#, LoneSurrogate),
        ("invalid UTF-8 in top-level key", b"{\"\xff\":1}", InvalidUtf8),
        ("invalid UTF-8 in model", b"{\"model\":\"\xc3\"}", InvalidUtf8),
        ("invalid UTF-8 inside max_tokens array", b"{\"max_tokens\":[\"\xff\"]}", InvalidUtf8),
        ("unclosed nesting", br#"{"a":[[[{"b":["#, UnexpectedEnd),
    ];
    for (name, body, want) in cases {
        assert_eq!(scan(body).map_err(|e| e.kind), Err(*want), "{name}");
        assert_eq!(oracle(body), None, "oracle: {name}");
    }
}

#[test]
fn nesting_is_limited_as_in_serde() {
    for depth in [1, 126, 127, 128, 129, 5000] {
        for (open, close, inner) in [("[", "]", "1"), ("{\"a\":", "}", "1"), ("[", "]", "[]"), ("[", "]", "{}")] {
            let body = format!("{{\"x\":{}{inner}{}}}", open.repeat(depth), close.repeat(depth));
            let want = oracle(body.as_bytes()).is_some();
            assert_eq!(agrees(body.as_bytes()), want, "{open} {depth} {inner}");
            assert_eq!(want, depth + usize::from(inner.len() == 2) < MAX_DEPTH, "{open} {depth} {inner}");
        }
    }
}

/// The scanner and serde_json agree on `body`: the same verdict, and the same members when both
/// accept; and so does the scan that remembers elements, the first time and when every element
/// repeats. Returns whether they accept.
#[track_caller]
fn agrees(body: &[u8]) -> bool {
    let got = scan(body);
    assert_eq!(got.as_ref().ok(), oracle(body).as_ref(), "{:?}", String::from_utf8_lossy(body));
    let mut cache = ValidatedElements::with_min_len(1 << 20, 1);
    for turn in ["first", "repeated"] {
        assert_eq!(scan_with(body, Some(&mut cache)), got, "{turn}: {:?}", String::from_utf8_lossy(body));
    }
    got.is_ok()
}

/// Counts of accepted and refused documents, to check that a test saw both.
#[derive(Default)]
struct Verdicts(usize, usize);

impl Verdicts {
    #[track_caller]
    fn check(&mut self, body: &[u8]) {
        if agrees(body) {
            self.0 += 1;
        } else {
            self.1 += 1;
        }
    }

    #[track_caller]
    fn saw_both(&self) {
        assert!(self.0 > 0 && self.1 > 0, "accepted {}, refused {}", self.0, self.1);
    }
}

/// Documents with `string` (the inside of a string) as a top-level value, as a nested key, and
/// as an array element.
fn in_every_place(string: &[u8]) -> Vec<Vec<u8>> {
    [&br#"{"model":"m","k":"S","z":1}"#[..], br#"{"o":{"S":[1]},"model":"m"}"#, br#"{"a":[true,"S",{}]}"#]
        .iter()
        .map(|template| {
            let at = template.iter().position(|&b| b == b'S').unwrap_or_default();
            [&template[..at], string, &template[at + 1..]].concat()
        })
        .collect()
}

#[test]
fn escapes_at_every_offset_of_a_window_agree_with_serde() {
    // A window is read where a string starts, then every 64 bytes: an escape `k` bytes into
    // the string is at offset `k % 64` of a window, and `k` up to 140 covers every offset twice,
    // the last byte (an escape whose second byte is in the next window) included.
    let escapes: &[&[u8]] = &[
        br"\n",
        br#"\""#,
        br"\\",
        br"\/",
        br"\b",
        br"\f",
        br"\r",
        br"\t",
        br#"\\\""#,
        br#"\"\\"#,
        br"\n\n\n",
        br"\\\\",
        br#"\\""#,
        br"\u0041",
        br"\ud83d\ude00",
        br"\u00e9\n",
        br"\x",
        br"\u12",
        br"\ud800",
        br"\ud800\n",
        br"\",
        "\u{e9}".as_bytes(),
        b"\n",
        b"\x7f\x1f",
    ];
    let mut verdicts = Verdicts::default();
    for escape in escapes {
        for k in 0..140 {
            for tail in [&b""[..], b"a", b"\"", br"\n", &[b'b'; 70]] {
                let string = [&vec![b'a'; k][..], escape, tail].concat();
                for body in in_every_place(&string) {
                    verdicts.check(&body);
                }
            }
        }
    }
    verdicts.saw_both();
}

#[test]
fn whitespace_runs_of_every_length_at_every_alignment_agree_with_serde() {
    let kinds = [b' ', b'\n', b'\t', b'\r'];
    // `P` pads the body so that the runs (`W`) start at every offset of a whitespace window;
    // the last documents end a run with a byte JSON does not count as whitespace.
    let templates: &[&[u8]] = &[
        b"{\"P\":W[W1W,W\"x\"W,W{W\"a\"W:Wnull}W]W}",
        b"W{W\"P\"W:W{W\"model\"W:W\"m\"W}W,\"e\":[W],\"f\":{W}}W",
        b"{\"P\":1W\x0c}",
        b"{\"P\":[1W\x0b]}",
    ];
    let mut verdicts = Verdicts::default();
    for len in 0..70 {
        for shift in 0..64 {
            let run: Vec<u8> = (0..len).map(|i| kinds[(i * 7 + shift) % kinds.len()]).collect();
            let pad = vec![b'p'; shift];
            for template in templates {
                let mut body = Vec::new();
                for &b in *template {
                    match b {
                        b'W' => body.extend_from_slice(&run),
                        b'P' => body.extend_from_slice(&pad),
                        _ => body.push(b),
                    }
                }
                verdicts.check(&body);
            }
        }
    }
    verdicts.saw_both();
}

#[test]
fn non_ascii_next_to_stops_agrees_with_serde() {
    let characters: &[&[u8]] = &[
        "é".as_bytes(),
        "€".as_bytes(),
        "😀".as_bytes(),
        "\u{7ff}\u{800}\u{ffff}\u{10000}\u{10ffff}".as_bytes(),
        // Cut short, overlong, a surrogate, above U+10FFFF, a lone continuation byte.
        b"\xc3",
        b"\xe2\x82",
        b"\xf0\x9f\x98",
        b"\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\x80",
        b"\xc3\xa9\xa9",
    ];
    let neighbours: &[&[u8]] = &[b"", b"\"", br"\n", br#"\""#, b"a", br"\u00e9", b"\n", "ü".as_bytes()];
    let mut verdicts = Verdicts::default();
    for k in (0..6).chain(58..70).chain(122..130) {
        for character in characters {
            for before in neighbours {
                for after in neighbours {
                    let string = [&vec![b'a'; k][..], before, character, after].concat();
                    for body in in_every_place(&string) {
                        verdicts.check(&body);
                    }
                }
            }
        }
    }
    verdicts.saw_both();
}

/// A body with every kind of value and of whitespace, long strings with escapes and non-ASCII
/// text across window edges, and the members of interest.
fn sample_body(pretty: bool) -> Vec<u8> {
    let text = "Line one of a long prompt, \"quoted\", with a tab\tand a path C:\\dir\\file.\nLigne deux: \
                café, naïve, 東京, 😀 — and more words to pass a window edge or two.\n"
        .repeat(3);
    let value = serde_json::json!({
        "model": "claude-sonnet-4-6",
        "max_tokens": 32000,
        "stream": true,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": []},
        ],
        "tools": [{"name": "Bash", "input_schema": {"type": "object", "properties": {"timeout": {"type": "number", "maximum": 600000, "minimum": -1.5e-3}}, "required": ["command"], "additionalProperties": false}}],
        "metadata": {"user_id": "u\u{1}\u{1f}", "temperature": 0.7, "n": null, "e": {}},
    });
    let mut body = if pretty { serde_json::to_vec_pretty(&value) } else { serde_json::to_vec(&value) }.unwrap();
    // A key spelt with an escape, as clients may.
    let at = body.windows(8).position(|w| w == b"\"stream\"").unwrap();
    body.splice(at..at + 8, br#""str\u0065am""#.iter().copied());
    body
}

#[test]
fn a_sample_body_cut_anywhere_agrees_with_serde() {
    for pretty in [false, true] {
        let body = sample_body(pretty);
        let members = scan(&body).unwrap();
        assert_eq!(members.stream, Some(true));
        assert_eq!(members.max_tokens, Some(32000));
        assert_eq!(members.model.unwrap().value, "claude-sonnet-4-6");
        for cut in 0..body.len() {
            assert!(!agrees(&body[..cut]), "cut at {cut}");
        }
    }
}

#[test]
fn error_display_names_the_byte() {
    let err = scan(br#"{"model":"a","model":"b"}"#).unwrap_err();
    assert_eq!(err.to_string(), "duplicate field `model` at byte 21");
    assert_eq!(scan(b"{\"a\":1} x").unwrap_err().to_string(), "trailing characters at byte 8");
}

#[test]
fn captured_claude_code_bodies_agree_with_serde() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/claude-code");
    for name in [
        "request_main_stream.json",
        "request_tool_result_followup.json",
        "request_automode_classifier_nonstream.json",
        "request_title_small_fast_model.json",
    ] {
        let body = std::fs::read(dir.join(name)).unwrap();
        let got = scan(&body).unwrap();
        assert_eq!(Some(&got), oracle(&body).as_ref(), "{name}");
        assert!(got.model.is_some(), "{name}");
        // Cut anywhere, a body is no longer valid (the small one is cut at every byte).
        for cut in (0..body.len()).step_by(if body.len() < 10_000 { 1 } else { 997 }) {
            assert_eq!(scan(&body[..cut]).ok(), oracle(&body[..cut]), "{name} cut at {cut}");
        }
    }
}

/// A deterministic generator of JSON-like documents near the grammar's edges.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.below(items.len())]
    }

    fn ws(&mut self, out: &mut Vec<u8>) {
        if self.below(4) == 0 {
            out.extend_from_slice(self.pick(&[b" ", b"\n", b"\t", b"\r\n ", b"  "]));
        } else if self.below(50) == 0 {
            out.push(0x0c); // form feed: whitespace to Rust's `is_ascii_whitespace`, not to JSON
        }
    }

    fn string(&mut self, out: &mut Vec<u8>) {
        out.push(b'"');
        for _ in 0..self.below(5) {
            out.extend_from_slice(self.pick(&[
                b"claude",
                b"-4-6",
                b"model",
                b"\\n",
                b"\\\"",
                b"\\\\",
                b"\\/",
                b"\\u0041",
                b"\\u002d",
                b"\\ud83d\\ude00",
                b"\\ud800",
                b"\\udc00",
                b"\\ud800\\u0041",
                b"\\ud800\\n",
                b"\\uD834\\uDD1E",
                b"\\u00e9",
                "é😀".as_bytes(),
                b"\xff",
                b"\xc3",
                b"\xed\xa0\x80",
                b"\\x",
                b"\\u12",
                b"\t",
            ]));
        }
        out.push(b'"');
    }

    fn number(&mut self, out: &mut Vec<u8>) {
        if self.below(8) == 0 {
            out.extend_from_slice(self.pick(&[
                b"18446744073709551615",
                b"18446744073709551616",
                b"99999999999999999999999999",
                b"1e400",
            ]));
            return;
        }
        if self.below(4) == 0 {
            out.push(b'-');
        }
        out.extend_from_slice(self.pick(&[b"0", b"7", b"32000", b"00", b"1", b""]));
        if self.below(4) == 0 {
            out.extend_from_slice(self.pick(&[b".5", b".", b".05"]));
        }
        if self.below(4) == 0 {
            out.extend_from_slice(self.pick(&[b"e3", b"E+2", b"e-1", b"e", b"e+"]));
        }
    }

    fn key(&mut self, out: &mut Vec<u8>) {
        if self.below(3) == 0 {
            self.string(out);
        } else {
            out.extend_from_slice(self.pick(&[
                br#""model""#,
                br#""stream""#,
                br#""max_tokens""#,
                br#""mod\u0065l""#,
                br#""\u006dodel""#,
                br#""str\u0065am""#,
                br#""max\u005ftokens""#,
                br#""messages""#,
                br#""model ""#,
                br#""Model""#,
                br#""""#,
            ]));
        }
    }

    fn value(&mut self, depth: usize, out: &mut Vec<u8>) {
        let kinds = if depth > 4 { 4 } else { 6 };
        match self.below(kinds) {
            0 => self.string(out),
            1 => self.number(out),
            2 => out.extend_from_slice(self.pick(&[b"true", b"false", b"null", b"nul", b"True"])),
            3 => self.string(out),
            4 => {
                out.push(b'[');
                for i in 0..self.below(4) {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.ws(out);
                    self.value(depth + 1, out);
                    self.ws(out);
                }
                out.push(b']');
            }
            _ => self.object(depth + 1, out),
        }
    }

    fn object(&mut self, depth: usize, out: &mut Vec<u8>) {
        out.push(b'{');
        for i in 0..self.below(5) {
            if i > 0 {
                out.push(b',');
            }
            self.ws(out);
            self.key(out);
            self.ws(out);
            out.push(b':');
            self.ws(out);
            if depth == 0 && self.below(2) == 0 {
                // Values the members of interest usually have, so that each is often found.
                out.extend_from_slice(self.pick(&[
                    br#""claude-sonnet-4-6""#,
                    br#""claude\u002dhaiku""#,
                    b"true",
                    b"false",
                    b"32000",
                    b"null",
                ]));
            } else {
                self.value(depth, out);
            }
            self.ws(out);
        }
        out.push(b'}');
    }

    /// A document, then a few random edits.
    fn document(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.ws(&mut out);
        self.object(0, &mut out);
        self.ws(&mut out);
        for _ in 0..self.below(4).saturating_sub(1) {
            self.mutate(&mut out);
        }
        out
    }

    fn mutate(&mut self, doc: &mut Vec<u8>) {
        const BYTES: &[u8] = b"\"\\{}[],: 0-e.ntu\xff\x00a";
        let at = self.below(doc.len() + 1);
        match self.below(5) {
            0 if at < doc.len() => doc[at] = BYTES[self.below(BYTES.len())],
            1 if at < doc.len() => {
                doc.remove(at);
            }
            2 => doc.insert(at, BYTES[self.below(BYTES.len())]),
            3 => doc.truncate(at),
            _ => {
                let end = (at + self.below(8)).min(doc.len());
                let piece = doc[at..end].to_vec();
                let to = self.below(doc.len() + 1);
                doc.splice(to..to, piece);
            }
        }
    }
}

#[test]
fn agrees_with_serde_on_generated_documents() {
    let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut with_model, total) = (0, 0, 100_000);
    // Remembers the elements of earlier documents, as a worker does.
    let mut cache = ValidatedElements::with_min_len(1 << 16, 8);
    for _ in 0..total {
        let doc = gen.document();
        let got = scan(&doc).ok();
        assert_eq!(got, oracle(&doc), "{:?}", String::from_utf8_lossy(&doc));
        assert_eq!(scan_with(&doc, Some(&mut cache)).ok(), got, "{:?}", String::from_utf8_lossy(&doc));
        if let Some(members) = got {
            accepted += 1;
            with_model += usize::from(members.model.is_some());
        }
    }
    // The generator must exercise both verdicts and the model path, or the test proves little.
    assert!(accepted > total / 10 && accepted < total * 9 / 10, "accepted {accepted} of {total}");
    assert!(with_model > total / 100, "model found in {with_model} of {total}");
}
