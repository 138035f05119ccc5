//! Sums of records grouped by person, tier, model and the other dimensions `--by` names.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use crate::record::{Record, Tokens};
use crate::time;

/// A dimension to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// The person: email when known, else subject.
    Person,
    /// Tier.
    Tier,
    /// Model alias the client asked for.
    Model,
    /// Model id sent to the provider.
    ProviderModel,
    /// Provider.
    Provider,
    /// HTTP status.
    Status,
    /// Refusal reason code (`-` for requests that were not refused).
    Refusal,
    /// UTC day.
    Day,
}

impl Dim {
    /// Every dimension with its name on the command line.
    pub const ALL: [(&'static str, Dim); 8] = [
        ("person", Dim::Person),
        ("tier", Dim::Tier),
        ("model", Dim::Model),
        ("provider_model", Dim::ProviderModel),
        ("provider", Dim::Provider),
        ("status", Dim::Status),
        ("refusal", Dim::Refusal),
        ("day", Dim::Day),
    ];

    /// Its name, also the column header.
    pub fn name(self) -> &'static str {
        Dim::ALL.iter().find(|(_, d)| *d == self).map_or("?", |(n, _)| n)
    }
}

/// A `--by` value that names no dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDim(pub String);

impl fmt::Display for UnknownDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Dim::ALL.iter().map(|(n, _)| *n).collect();
        write!(f, "unknown dimension `{}` (one of: {})", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownDim {}

impl FromStr for Dim {
    type Err = UnknownDim;

    fn from_str(s: &str) -> Result<Dim, UnknownDim> {
        let s = s.trim().to_ascii_lowercase();
        Dim::ALL.iter().find(|(n, _)| *n == s).map(|(_, d)| *d).ok_or(UnknownDim(s))
    }
}

/// Sums over a set of records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Requests.
    pub requests: u64,
    /// Requests refused (by the gateway or with a 4xx/5xx status).
    pub refused: u64,
    /// Tokens.
    pub tokens: Tokens,
    /// Cost of the priced requests, billionths of a dollar.
    pub cost_nanos: u64,
    /// Requests that used tokens but carry no cost (unpriced model).
    pub unpriced: u64,
    /// Server-side web searches (their cost is in the cost).
    pub web_searches: u64,
    latency_sum: u64,
    latency_n: u64,
    ttft_sum: u64,
    ttft_n: u64,
}

impl Totals {
    /// Adds one record.
    pub fn add(&mut self, r: &Record) {
        self.requests += 1;
        self.refused += u64::from(r.refused());
        self.tokens.add(&r.tokens);
        self.web_searches = self.web_searches.saturating_add(r.web_searches);
        match r.cost_nanos {
            Some(c) => self.cost_nanos = self.cost_nanos.saturating_add(c),
            None => self.unpriced += u64::from(r.tokens.total() > 0),
        }
        if let Some(l) = r.latency_ms.filter(|_| !r.refused()) {
            self.latency_sum = self.latency_sum.saturating_add(l);
            self.latency_n += 1;
        }
        if let Some(t) = r.ttft_ms.filter(|_| !r.refused()) {
            self.ttft_sum = self.ttft_sum.saturating_add(t);
            self.ttft_n += 1;
        }
    }

    /// Adds another sum.
    pub fn merge(&mut self, o: &Totals) {
        self.requests += o.requests;
        self.refused += o.refused;
        self.tokens.add(&o.tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(o.cost_nanos);
        self.unpriced += o.unpriced;
        self.latency_sum = self.latency_sum.saturating_add(o.latency_sum);
        self.latency_n += o.latency_n;
        self.ttft_sum = self.ttft_sum.saturating_add(o.ttft_sum);
        self.ttft_n += o.ttft_n;
    }

    /// Cost in dollars.
    pub fn cost_usd(&self) -> f64 {
        self.cost_nanos as f64 / 1e9
    }

    /// Mean latency of the answered requests, milliseconds.
    pub fn avg_latency_ms(&self) -> Option<u64> {
        (self.latency_n > 0).then(|| self.latency_sum / self.latency_n)
    }

    /// Mean time to first token of the answered requests, milliseconds.
    pub fn avg_ttft_ms(&self) -> Option<u64> {
        (self.ttft_n > 0).then(|| self.ttft_sum / self.ttft_n)
    }
}

/// One group: its key values (one per dimension) and its sums.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Values of the grouping dimensions, in `--by` order.
    pub keys: Vec<String>,
    /// Sums of the group.
    pub totals: Totals,
}

/// The grouped report of a period.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Grouping dimensions.
    pub dims: Vec<Dim>,
    /// Groups, most expensive first (then most tokens, then by key).
    pub rows: Vec<Row>,
    /// Sums over every record.
    pub total: Totals,
}

/// Names people by email where any of their records has one, else by subject.
#[derive(Debug, Default)]
pub struct People(HashMap<String, String>);

impl People {
    /// Learns each subject's email from the records.
    pub fn learn(records: &[Record]) -> People {
        let mut map = HashMap::new();
        for r in records {
            if let Some(email) = &r.email {
                map.insert(r.sub.clone(), email.clone());
            }
        }
        People(map)
    }

    /// The name shown for a record's person.
    pub fn name<'a>(&'a self, r: &'a Record) -> &'a str {
        self.0.get(&r.sub).map_or(r.sub.as_str(), String::as_str)
    }
}

fn key(dim: Dim, r: &Record, people: &People) -> String {
    match dim {
        Dim::Person => people.name(r).to_owned(),
        Dim::Tier => r.tier.clone(),
        Dim::Model => r.model.clone(),
        Dim::ProviderModel => r.provider_model.clone(),
        Dim::Provider => r.provider.clone(),
        Dim::Status => r.status.to_string(),
        Dim::Refusal => r.refusal.clone().unwrap_or_else(|| "-".to_owned()),
        Dim::Day => time::format_date(r.time_ms),
    }
}

/// Keeps the records of `[since, until)`; either bound may be open.
pub fn in_period(records: Vec<Record>, since: Option<i64>, until: Option<i64>) -> Vec<Record> {
    records
        .into_iter()
        .filter(|r| since.is_none_or(|s| r.time_ms >= s) && until.is_none_or(|u| r.time_ms < u))
        .collect()
}

/// Groups the records by `dims` and sums each group and the whole.
pub fn summarize(records: &[Record], dims: &[Dim]) -> Summary {
    let people = People::learn(records);
    let mut groups: BTreeMap<Vec<String>, Totals> = BTreeMap::new();
    let mut total = Totals::default();
    for r in records {
        let keys = dims.iter().map(|d| key(*d, r, &people)).collect();
        groups.entry(keys).or_default().add(r);
        total.add(r);
    }
    let mut rows: Vec<Row> = groups.into_iter().map(|(keys, totals)| Row { keys, totals }).collect();
    rows.sort_by(|a, b| {
        (b.totals.cost_nanos, b.totals.tokens.total())
            .cmp(&(a.totals.cost_nanos, a.totals.tokens.total()))
            .then_with(|| a.keys.cmp(&b.keys))
    });
    Summary { dims: dims.to_vec(), rows, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::parse_line;

    fn rec(time: &str, sub: &str, email: Option<&str>, model: &str, tokens: u64, cost: Option<f64>) -> Record {
        let line = serde_json::json!({
            "time": time, "sub": sub, "email": email, "tier": "standard", "model": model,
            "status": 200, "input_tokens": tokens, "output_tokens": tokens, "cost_usd": cost, "latency_ms": 100,
        });
        parse_line(&line.to_string()).unwrap()
    }

    fn sample() -> Vec<Record> {
        vec![
            rec("2026-11-29T10:00:00Z", "a", Some("alice@example.com"), "sonnet", 10, Some(0.1)),
            rec("2026-11-29T11:00:00Z", "a", None, "haiku", 5, Some(0.01)),
            rec("2026-11-30T09:00:00Z", "b", None, "sonnet", 7, Some(0.3)),
            rec("2026-11-30T12:00:00Z", "c", None, "local", 3, None),
        ]
    }

    #[test]
    fn parses_dimension_names() {
        assert_eq!("Person".parse::<Dim>(), Ok(Dim::Person));
        assert_eq!("provider_model".parse::<Dim>(), Ok(Dim::ProviderModel));
        let err = "colour".parse::<Dim>().unwrap_err().to_string();
        assert!(err.starts_with("unknown dimension `colour` (one of: person, tier"), "{err}");
    }

    #[test]
    fn groups_by_person_named_by_email() {
        let s = summarize(&sample(), &[Dim::Person]);
        let names: Vec<&str> = s.rows.iter().map(|r| r.keys[0].as_str()).collect();
        assert_eq!(names, ["b", "alice@example.com", "c"], "most expensive first");
        assert_eq!(s.rows[1].totals.requests, 2, "one person although one record lacks the email");
        assert_eq!(s.rows[1].totals.cost_nanos, 110_000_000);
        assert_eq!(s.rows[2].totals.unpriced, 1);
        assert_eq!(s.total.avg_latency_ms(), Some(100));
    }

    #[test]
    fn totals_equal_the_sum_of_records_for_every_grouping() {
        let records = sample();
        let mut direct = Totals::default();
        records.iter().for_each(|r| direct.add(r));
        let groupings: &[&[Dim]] =
            &[&[Dim::Person], &[Dim::Tier], &[Dim::Model], &[Dim::Person, Dim::Model], &[Dim::Day], &[]];
        for dims in groupings {
            let s = summarize(&records, dims);
            assert_eq!(s.total, direct, "{dims:?}");
            let mut from_rows = Totals::default();
            s.rows.iter().for_each(|r| from_rows.merge(&r.totals));
            assert_eq!(from_rows, direct, "{dims:?}");
        }
        assert_eq!(direct.tokens.total(), 2 * (10 + 5 + 7 + 3));
        assert_eq!(direct.cost_nanos, 410_000_000);
    }

    #[test]
    fn period_is_half_open() {
        let since = time::parse_bound("2026-11-29T11:00:00Z", false);
        let until = time::parse_bound("2026-11-30T12:00:00Z", true);
        let kept = in_period(sample(), since, until);
        assert_eq!(kept.len(), 2);
        assert_eq!(in_period(sample(), None, None).len(), 4);
        let days = summarize(&sample(), &[Dim::Day]);
        assert_eq!(days.rows.len(), 2);
    }
}
