//! A hand-written SVG chart: tokens per person over time (stacked bars, top N people and
//! "others") and cost by model (horizontal bars). Plain SVG 1.1 that any browser opens.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::aggregate::People;
use crate::record::Record;
use crate::time::{self, DAY_MS, HOUR_MS};

/// Tableau 10; "others" is grey.
const COLORS: [&str; 10] =
    ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#3b9ad9"];
const OTHERS_COLOR: &str = "#bab0ac";
/// Label of the people outside the top N.
pub const OTHERS: &str = "others";

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 80.0;
const PLOT_W: f64 = 680.0;
const LEGEND_X: f64 = LEFT + PLOT_W + 30.0;
const USAGE_TOP: f64 = 100.0;
const USAGE_H: f64 = 300.0;
const BAR_H: f64 = 22.0;
/// More buckets than this are merged into wider ones, to keep the SVG small.
const MAX_BUCKETS: i64 = 400;

/// Time bucket width for a period: hours up to two days, days up to four months, else weeks.
pub fn bucket_ms(span_ms: i64) -> i64 {
    if span_ms <= 2 * DAY_MS {
        HOUR_MS
    } else if span_ms <= 120 * DAY_MS {
        DAY_MS
    } else {
        let weeks = 7 * DAY_MS;
        // Very long periods: whole weeks, as many as keep the bucket count bounded.
        weeks * (span_ms / (weeks * MAX_BUCKETS) + 1)
    }
}

/// Escapes text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        s.chars().take(max.saturating_sub(1)).collect::<String>() + "…"
    }
}

/// 1234 → "1.2k", 3_400_000 → "3.4M".
pub fn si(v: f64) -> String {
    let (value, unit) = match v.abs() {
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let text = format!("{value:.1}");
    format!("{}{unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// A round axis step (1, 2 or 5 × 10ⁿ) giving about five ticks up to `max`.
pub fn nice_step(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    step.max(1.0)
}

/// What the chart shows.
#[derive(Debug, Clone)]
pub struct ChartSpec {
    /// First instant of the period (inclusive), ms.
    pub start: i64,
    /// End of the period (exclusive), ms.
    pub end: i64,
    /// People drawn separately; the rest are "others".
    pub top: usize,
}

impl ChartSpec {
    /// The period given, or else the span of the records.
    pub fn for_records(records: &[Record], since: Option<i64>, until: Option<i64>, top: usize) -> ChartSpec {
        let first = records.iter().map(|r| r.time_ms).min().unwrap_or(0);
        let last = records.iter().map(|r| r.time_ms).max().unwrap_or(0);
        let start = since.unwrap_or(first);
        let end = until.unwrap_or(last.saturating_add(1)).max(start.saturating_add(1));
        ChartSpec { start, end, top }
    }
}

/// Tokens per bucket and series; series are the top people by tokens, then "others".
struct Usage {
    bucket: i64,
    first: i64,
    series: Vec<String>,
    /// `values[bucket][series]`.
    values: Vec<Vec<u64>>,
}

fn usage(records: &[Record], spec: &ChartSpec) -> Usage {
    let people = People::learn(records);
    let bucket = bucket_ms(spec.end - spec.start);
    // Align to whole hours/days in UTC (weeks start on Monday: 1970-01-05 was one).
    let align = if bucket % (7 * DAY_MS) == 0 { 4 * DAY_MS } else { 0 };
    let first = (spec.start - align).div_euclid(bucket) * bucket + align;
    let count = ((spec.end - first + bucket - 1) / bucket).clamp(1, MAX_BUCKETS * 2) as usize;
    let mut by_person: HashMap<&str, u64> = HashMap::new();
    for r in records {
        *by_person.entry(people.name(r)).or_default() += r.tokens.total();
    }
    let mut ranked: Vec<(&str, u64)> = by_person.into_iter().filter(|(_, t)| *t > 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let has_others = ranked.len() > spec.top;
    let mut series: Vec<String> = ranked.iter().take(spec.top).map(|(p, _)| (*p).to_owned()).collect();
    let index: HashMap<String, usize> = series.iter().cloned().enumerate().map(|(i, p)| (p, i)).collect();
    if has_others {
        series.push(OTHERS.to_owned());
    }
    let mut values = vec![vec![0u64; series.len()]; count];
    for r in records {
        let b = (r.time_ms - first).div_euclid(bucket);
        let (Ok(b), Some(s)) =
            (usize::try_from(b), index.get(people.name(r)).copied().or(has_others.then_some(spec.top)))
        else {
            continue;
        };
        if let Some(cell) = values.get_mut(b).and_then(|row| row.get_mut(s)) {
            *cell = cell.saturating_add(r.tokens.total());
        }
    }
    Usage { bucket, first, series, values }
}

fn color(i: usize, name: &str) -> &'static str {
    if name == OTHERS {
        OTHERS_COLOR
    } else {
        COLORS[i % COLORS.len()]
    }
}

fn bucket_label(ms: i64, bucket: i64) -> String {
    if bucket < DAY_MS {
        time::format_minute(ms)
    } else {
        time::format_date(ms)
    }
}

fn draw_usage(svg: &mut String, u: &Usage) {
    let top = USAGE_TOP;
    let bottom = top + USAGE_H;
    let max = u.values.iter().map(|b| b.iter().fold(0u64, |a, v| a.saturating_add(*v))).max().unwrap_or(0) as f64;
    let step = nice_step(max);
    let y_max = (max / step).ceil().max(1.0) * step;
    let y = |v: f64| bottom - v / y_max * USAGE_H;
    let unit = if u.bucket < DAY_MS {
        "hour"
    } else if u.bucket == DAY_MS {
        "day"
    } else {
        "week"
    };
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="{}" class="h">Tokens per person per {unit}</text>"#, top - 14.0);
    let mut tick = 0.0;
    while tick <= y_max + step / 2.0 {
        let ty = y(tick);
        let _ = writeln!(svg, r#"<line x1="{LEFT}" x2="{}" y1="{ty:.1}" y2="{ty:.1}" class="grid"/>"#, LEFT + PLOT_W);
        let _ = writeln!(svg, r#"<text x="{}" y="{:.1}" class="yl">{}</text>"#, LEFT - 6.0, ty + 4.0, si(tick));
        tick += step;
    }
    let n = u.values.len();
    let slot = PLOT_W / n as f64;
    let bar = (slot * 0.8).max(0.5);
    for (b, stack) in u.values.iter().enumerate() {
        let x = LEFT + b as f64 * slot + (slot - bar) / 2.0;
        let label = escape(&bucket_label(u.first + b as i64 * u.bucket, u.bucket));
        let mut acc = 0.0;
        for (s, v) in stack.iter().enumerate().filter(|(_, v)| **v > 0) {
            let (y0, y1) = (y(acc), y(acc + *v as f64));
            acc += *v as f64;
            let name = escape(&u.series[s]);
            let _ = writeln!(
                svg,
                r#"<rect x="{x:.2}" y="{y1:.2}" width="{bar:.2}" height="{:.2}" fill="{}"><title>{name} {label}: {v} tokens</title></rect>"#,
                (y0 - y1).max(0.0),
                color(s, &u.series[s])
            );
        }
    }
    // Labels on whole buckets, as many as fit: "HH:00" for hours (with the date under the first
    // label of each day), dates otherwise.
    let hourly = u.bucket < DAY_MS;
    let every = n.div_ceil(if hourly { 12 } else { 8 }).max(1);
    let mut last_day = None;
    for b in (0..n).step_by(every) {
        let x = LEFT + (b as f64 + 0.5) * slot;
        let at = u.first + b as i64 * u.bucket;
        let _ = writeln!(svg, r#"<line x1="{x:.1}" x2="{x:.1}" y1="{bottom}" y2="{}" class="axis"/>"#, bottom + 4.0);
        let (label, day) = if hourly {
            (format!("{:02}:00", at.rem_euclid(DAY_MS) / HOUR_MS), Some(time::format_date(at)))
        } else {
            (time::format_date(at), None)
        };
        let _ = writeln!(svg, r#"<text x="{x:.1}" y="{}" class="xl">{label}</text>"#, bottom + 16.0);
        if let Some(day) = day.filter(|d| last_day.as_ref() != Some(d)) {
            let _ = writeln!(svg, r#"<text x="{x:.1}" y="{}" class="xl">{day}</text>"#, bottom + 29.0);
            last_day = Some(day);
        }
    }
    let _ = writeln!(svg, r#"<line x1="{LEFT}" x2="{LEFT}" y1="{top}" y2="{bottom}" class="axis"/>"#);
    let _ = writeln!(svg, r#"<line x1="{LEFT}" x2="{}" y1="{bottom}" y2="{bottom}" class="axis"/>"#, LEFT + PLOT_W);
    let _ = writeln!(svg, r#"<text x="{}" y="{}" class="axt">time (UTC)</text>"#, LEFT + PLOT_W / 2.0, bottom + 46.0);
    let _ = writeln!(
        svg,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" class="axt">tokens</text>"#,
        top + USAGE_H / 2.0
    );
    if u.series.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" class="axt">no tokens in this period</text>"#,
            LEFT + PLOT_W / 2.0,
            top + USAGE_H / 2.0
        );
    }
    let _ = writeln!(svg, r#"<text x="{LEGEND_X}" y="{top}" class="h">People</text>"#);
    for (i, name) in u.series.iter().enumerate() {
        let ly = top + 14.0 + i as f64 * 20.0;
        let _ = writeln!(svg, r#"<rect x="{LEGEND_X}" y="{ly}" width="12" height="12" fill="{}"/>"#, color(i, name));
        let _ =
            writeln!(svg, r#"<text x="{}" y="{}">{}</text>"#, LEGEND_X + 18.0, ly + 10.0, escape(&shorten(name, 26)));
    }
}

/// Cost and token sums per model; `None` cost when no record of the model was priced.
fn cost_by_model(records: &[Record]) -> Vec<(String, Option<u64>)> {
    let mut models: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    for r in records {
        let slot = models.entry(r.model.as_str()).or_default();
        if let Some(c) = r.cost_nanos {
            *slot = Some(slot.unwrap_or(0).saturating_add(c));
        }
    }
    let mut out: Vec<(String, Option<u64>)> = models.into_iter().map(|(m, c)| (m.to_owned(), c)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

fn draw_cost(svg: &mut String, models: &[(String, Option<u64>)], top: f64) {
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="{}" class="h">Cost by model (USD)</text>"#, top - 14.0);
    let label_w = 200.0;
    let x0 = LEFT + label_w - 80.0;
    let w = PLOT_W + 80.0 - label_w;
    let max = models.iter().filter_map(|(_, c)| *c).max().unwrap_or(0) as f64;
    for (i, (model, cost)) in models.iter().enumerate() {
        let y = top + i as f64 * (BAR_H + 6.0);
        let name = escape(&shorten(model, 30));
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}" class="yl">{name}</text>"#, x0 - 8.0, y + BAR_H * 0.7);
        let (len, text) = match cost {
            Some(c) => (if max > 0.0 { *c as f64 / max * w } else { 0.0 }, format!("${:.2}", *c as f64 / 1e9)),
            None => (0.0, "unpriced".to_owned()),
        };
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{len:.2}" height="{BAR_H}" fill="#4e79a7"><title>{name}: {text}</title></rect>"##
        );
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}">{text}</text>"#, x0 + len + 6.0, y + BAR_H * 0.7);
    }
    if models.is_empty() {
        let _ = writeln!(svg, r#"<text x="{x0}" y="{}">no requests in this period</text>"#, top + BAR_H * 0.7);
    }
    let bottom = top + models.len().max(1) as f64 * (BAR_H + 6.0);
    let _ = writeln!(svg, r#"<line x1="{x0}" x2="{x0}" y1="{}" y2="{bottom}" class="axis"/>"#, top - 4.0);
}

/// The whole chart as an SVG document. `period` is printed under the title.
pub fn render(records: &[Record], spec: &ChartSpec, period: &str) -> String {
    let u = usage(records, spec);
    let models = cost_by_model(records);
    let cost_top = USAGE_TOP + USAGE_H + 100.0;
    let height = cost_top + models.len().max(1) as f64 * (BAR_H + 6.0) + 30.0;
    let mut svg = String::new();
    let _ = writeln!(svg, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    svg.push_str(concat!(
        "<style>.h{font-size:15px;font-weight:bold}.t{font-size:20px;font-weight:bold}",
        ".yl{text-anchor:end}.xl{text-anchor:middle;font-size:11px}.axt{text-anchor:middle;fill:#555}",
        ".axis{stroke:#333;stroke-width:1}.grid{stroke:#ddd;stroke-width:1}</style>\n"
    ));
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{LEFT}" y="32" class="t">Claude SSO gateway: usage and cost</text>"#);
    let total_tokens = records.iter().fold(0u64, |a, r| a.saturating_add(r.tokens.total()));
    let total_cost = records.iter().filter_map(|r| r.cost_nanos).fold(0u64, u64::saturating_add);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="54">{} · {} requests · {} tokens · ${:.2}</text>"#,
        escape(period),
        records.len(),
        si(total_tokens as f64),
        total_cost as f64 / 1e9
    );
    draw_usage(&mut svg, &u);
    draw_cost(&mut svg, &models, cost_top);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_line;

    fn rec(time: &str, sub: &str, model: &str, tokens: u64, cost: Option<f64>) -> Record {
        let line =
            serde_json::json!({"time": time, "sub": sub, "model": model, "input_tokens": tokens, "cost_usd": cost});
        parse_line(&line.to_string()).unwrap()
    }

    #[test]
    fn bucket_width_follows_the_span() {
        let cases = [("an hour", HOUR_MS, HOUR_MS), ("two days", 2 * DAY_MS, HOUR_MS), ("a week", 7 * DAY_MS, DAY_MS)];
        for (name, span, want) in cases {
            assert_eq!(bucket_ms(span), want, "{name}");
        }
        assert_eq!(bucket_ms(365 * DAY_MS), 7 * DAY_MS);
        assert!(bucket_ms(100 * 365 * DAY_MS) / (7 * DAY_MS) > 1, "centuries use multi-week buckets");
    }

    #[test]
    fn numbers_and_steps() {
        assert_eq!(
            (si(0.0), si(999.0), si(1234.0), si(3_400_000.0), si(2e9)),
            ("0".into(), "999".into(), "1.2k".into(), "3.4M".into(), "2G".into())
        );
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7_300.0), 2000.0);
        assert_eq!(nice_step(f64::NAN), 1.0);
    }

    #[test]
    fn top_people_and_others() {
        let records = vec![
            rec("2026-11-29T10:00:00Z", "a", "m", 100, Some(1.0)),
            rec("2026-11-29T11:30:00Z", "b", "m", 50, Some(1.0)),
            rec("2026-11-29T12:00:00Z", "c", "n", 10, None),
            rec("2026-11-29T12:59:00Z", "d", "n", 5, None),
        ];
        let spec = ChartSpec::for_records(&records, None, None, 2);
        let u = usage(&records, &spec);
        assert_eq!(u.series, ["a", "b", OTHERS]);
        assert_eq!(u.bucket, HOUR_MS);
        assert_eq!(u.values.len(), 3);
        assert_eq!(u.values[2], vec![0, 0, 15]);
        let all: u64 = u.values.iter().flatten().sum();
        assert_eq!(all, 165, "every token is drawn once");
        assert_eq!(cost_by_model(&records), vec![("m".to_owned(), Some(2_000_000_000)), ("n".to_owned(), None)]);
    }

    #[test]
    fn names_are_escaped() {
        let records = vec![rec("2026-11-29T10:00:00Z", "<script>&\"'", "m<1>", 1, Some(0.5))];
        let svg = render(&records, &ChartSpec::for_records(&records, None, None, 8), "all & more");
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;&amp;&quot;&apos;"));
        assert!(svg.contains("m&lt;1&gt;"));
        assert!(svg.contains("all &amp; more"));
    }

    #[test]
    fn empty_input_still_draws() {
        let svg = render(&[], &ChartSpec::for_records(&[], None, None, 8), "nothing");
        assert!(svg.contains("no tokens in this period"));
        assert!(svg.ends_with("</svg>\n"));
    }
}
