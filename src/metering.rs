//! One request's accounting: budget admission (with the reserve), the meter on the answer,
//! and the settlement that charges the true usage and cost to every limit exactly once.

use crate::answer_end::AnswerEnd;
use crate::budget::{self, Counts, Exhausted, Standing};
use crate::config::{Budgets, Price, Reserve};
use crate::reply::{Reply, ToReply};
use crate::shared::SharedStore;
use crate::usage::{Meter, ReportedUsage, Usage};

/// Units a usage is worth to a limit: tokens, or micro-dollars for cost.
pub fn units(counts: Counts, usage: &Usage, price: Option<&Price>) -> u64 {
    match counts {
        Counts::TotalTokens => usage.total(),
        Counts::PromptTokens => usage.prompt(),
        Counts::CompletionTokens => usage.output,
        Counts::Cost => price.map_or(0, |p| cost_micros(usage, p)),
    }
}

/// Cost in micro-dollars (prices are dollars per million tokens, so one token costs `price` µ$).
/// One-hour cache writes are priced apart from the five-minute ones; web searches per search
/// (dollars per 1,000, so one costs a thousand times that in µ$).
pub fn cost_micros(usage: &Usage, price: &Price) -> u64 {
    let hour = usage.cache_write_1h();
    // Fast mode's rates cover the whole context window; otherwise a long prompt has every token
    // priced at the long-context rates, its output included.
    let rates = match (&price.fast, &price.long_context) {
        (Some(fast), _) if usage.fast => fast,
        (_, Some(long)) if usage.prompt() > long.above_prompt_tokens => &long.rates,
        _ => &price.rates,
    };
    let micros = usage.input as f64 * rates.input
        + usage.output as f64 * rates.output
        + (usage.cache_write - hour) as f64 * rates.cache_write
        + hour as f64 * rates.cache_write_1h
        + usage.cache_read as f64 * rates.cache_read
        + usage.web_searches as f64 * price.web_search_per_1k * 1000.0;
    micros.round() as u64
}

/// What a request is, for accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// `sub`, for the usage report.
    pub person: String,
    /// Short digest of `sub`, for counter keys.
    pub person_key: String,
    /// Tier name.
    pub tier: String,
    /// Alias the client asked for.
    pub model: String,
    /// Price of the model, if configured.
    pub price: Option<Price>,
    /// Provider name for the header names.
    pub provider: &'static str,
    /// The request asks for fast mode (the `fast-mode-…` beta): estimated at its rates.
    pub fast: bool,
}

/// One request's budget state from admission to settlement.
#[derive(Debug)]
pub struct Metering {
    subject: Subject,
    standings: Vec<Standing>,
    /// What admission holds on each limit now.
    reserved: Vec<u64>,
    /// When each hold was counted, seconds since the epoch ([`budget::Hold::at`]): settlement
    /// gives it back to the window it went into.
    held_at: Vec<u64>,
    /// The request's size as estimated at admission (the body's bytes over four as uncached input,
    /// the output reserve): the least an unknown outcome costs, where the answer did not report
    /// its prompt.
    guess: Usage,
    warning_share: f64,
    meter: Option<Meter>,
    status: Option<u32>,
    /// Where the answer ends (also set when nothing went upstream).
    end: AnswerEnd,
    settled: bool,
    /// Usage the provider reported apart from the answer body (Bedrock's invocation metrics).
    reported: Option<ReportedUsage>,
    /// What went wrong at admission without refusing the request (a hold not written).
    warnings: Vec<String>,
}

/// How sure the gateway is of what the answer cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole answer was seen; its usage is charged.
    Complete,
    /// The request went upstream but the answer was not seen whole (client gone, stream cut,
    /// gateway timeout) or its usage was implausible: at least the estimate is charged, since
    /// the provider may well have generated (and billed) the whole answer.
    Unknown,
}

/// A finished request's accounting, for the report and the usage record.
#[derive(Debug, Clone, PartialEq)]
pub struct Settlement {
    /// Who and what.
    pub subject: Subject,
    /// Tokens the answer reported (zeros where it reported none or was not believed).
    pub usage: Usage,
    /// Dollars for `usage`, when the model has a price.
    pub cost_usd: Option<f64>,
    /// Whether the usage was seen whole.
    pub outcome: Outcome,
    /// The answer's status, when one came.
    pub status: Option<u32>,
    /// Problems while charging (a shared-data write that failed); logged and counted.
    pub warnings: Vec<String>,
}

impl Metering {
    /// Checks the tier's limits and holds the reserve. `input` (the prompt's tokens as
    /// [`crate::usage::input_estimate`] reckons them from the body) and `max_tokens` estimate the
    /// request's size. A refusal carries the warnings of holds that could not be given back.
    pub fn admit(
        store: &dyn SharedStore,
        limits: &[budget::Limit],
        budgets: &Budgets,
        subject: Subject,
        input: u64,
        max_tokens: Option<u64>,
        now: u64,
    ) -> Result<Metering, (Reply, Vec<String>)> {
        let guess = Usage {
            input,
            output: max_tokens.unwrap_or(budgets.reserve_output_tokens).min(budgets.reserve_output_tokens),
            cache_write: 0,
            cache_read: 0,
            cache_write_1h: 0,
            web_searches: 0,
            fast: subject.fast,
        };
        let estimate: Vec<u64> = limits.iter().map(|l| units(l.counts, &guess, subject.price.as_ref())).collect();
        let holds: Vec<u64> = match budgets.reserve {
            Reserve::None => vec![0; limits.len()],
            Reserve::Estimate => estimate,
        };
        let admitted = budget::admit(store, limits, &subject.person_key, &holds, now).map_err(|e: Exhausted| {
            let mut reply = e.to_reply();
            // A budget full with running requests' holds is not spent: no "spent" warning.
            let warn_share = if e.in_flight.is_some() { f64::INFINITY } else { budgets.warning_share };
            reply.headers.extend(budget::headers(std::slice::from_ref(&e.standing), subject.provider, &[], warn_share));
            (reply, e.refund_errors)
        })?;
        let (standings, holds): (Vec<Standing>, Vec<budget::Hold>) = admitted.into_iter().unzip();
        let warnings = standings
            .iter()
            .zip(&holds)
            .filter_map(|(s, h)| {
                let e = h.error.as_ref()?;
                let key = s.limit.key_for(&subject.person_key);
                Some(format!("could not hold the estimate on budget {key} ({e:?}): admitted without a hold"))
            })
            .collect();
        Ok(Metering {
            subject,
            standings,
            reserved: holds.iter().map(|h| h.units).collect(),
            held_at: holds.iter().map(|h| h.at).collect(),
            guess,
            warning_share: budgets.warning_share,
            meter: None,
            status: None,
            end: AnswerEnd::new(None),
            settled: false,
            reported: None,
            warnings,
        })
    }

    /// The rate-limit headers for the answer.
    pub fn headers(&self) -> Vec<(String, String)> {
        budget::headers(&self.standings, self.subject.provider, &self.reserved, self.warning_share)
    }

    /// Nothing went upstream (the host could not send the request): no answer will come, and
    /// settlement charges nothing, giving back what admission held.
    pub fn never_sent(&mut self) {
        self.meter = None;
        self.end.mark_whole();
    }

    /// Starts metering the answer.
    pub fn on_response_headers(&mut self, status: Option<u32>, content_type: &str, content_length: Option<u64>) {
        self.meter = Some(Meter::new(content_type));
        self.status = status;
        self.end = AnswerEnd::new(content_length);
        if content_length == Some(0) {
            self.end.mark_whole();
        }
    }

    /// Observes a chunk; returns true once the answer is complete: end of stream, or (for hosts
    /// that never signal it on some answers) as many bytes as `content-length` announced.
    pub fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> bool {
        if let Some(meter) = &mut self.meter {
            meter.push(chunk);
        }
        self.end.ends_at(chunk.len(), end_of_stream);
        self.end.is_whole()
    }

    /// Charges the request to every limit, once (later calls return `None`): the answer's usage
    /// when it was seen whole, otherwise at least the estimate (see [`Outcome::Unknown`]). What
    /// admission held is replaced, not added to.
    pub fn settle(&mut self, store: &dyn SharedStore, now: u64) -> Option<Settlement> {
        if std::mem::replace(&mut self.settled, true) {
            return None;
        }
        let mut warnings = Vec::new();
        let metered = self.meter.as_mut().map(Meter::finish).unwrap_or_default();
        let mut usage = self.reported.map_or(metered, |reported| reported.over(&metered));
        if !usage.is_plausible() {
            warnings.push(format!("upstream reported implausible usage {usage:?}; charging the estimate"));
            usage = Usage::default();
        } else if self.reported.is_none() {
            if let Some(problem) = self.meter.as_ref().and_then(|m| m.problem(self.status)) {
                warnings.push(format!("could not read the answer's usage ({problem}); charging at least the estimate"));
            }
        }
        // A gateway timeout (504) or request timeout (408) says nothing about what was generated.
        // A stream cut after its last usage (the client hung up before `message_stop`) cost what
        // that usage says.
        let whole = self.end.is_whole() || self.meter.as_ref().is_some_and(Meter::final_usage_read);
        let known = whole && warnings.is_empty() && !matches!(self.status, Some(408 | 504));
        let outcome = if known { Outcome::Complete } else { Outcome::Unknown };
        // The least an unknown outcome costs: the prompt as the answer reported it (a stream cut
        // after `message_start` told it exactly, cache reads included, which the body's size
        // would price as uncached input, many times over), else the body's guess; and at least
        // the output reserve, since the provider may have gone on generating.
        let prompt_reported = usage != Usage::default()
            && (self.reported.is_some_and(|r| r.input.is_some())
                || self.meter.as_ref().is_some_and(Meter::prompt_reported));
        // A request that asked for fast mode is floored at its rates whatever the answer said.
        let floor = if prompt_reported {
            Usage { output: self.guess.output, fast: usage.fast || self.guess.fast, ..usage }
        } else {
            self.guess
        };
        let held = self.reserved.iter().zip(&self.held_at);
        for (s, (reserved, held_at)) in self.standings.iter().zip(held) {
            let price = self.subject.price.as_ref();
            let actual = units(s.limit.counts, &usage, price);
            let charge = if known { actual } else { actual.max(units(s.limit.counts, &floor, price)) };
            let key = s.limit.key_for(&self.subject.person_key);
            if let Err(e) = budget::settle(store, &key, s.limit.window, now, *held_at, *reserved, charge) {
                warnings.push(format!("could not charge {charge} (held {reserved}) to budget {key}: {e:?}"));
            }
        }
        if usage.fast && self.subject.price.is_some_and(|p| p.fast.is_none()) {
            warnings.push(format!(
                "the answer ran in fast mode, but model {} has no price.fast: priced at its standard rates",
                self.subject.model
            ));
        }
        let cost_usd = self.subject.price.map(|p| cost_micros(&usage, &p) as f64 / 1e6);
        Some(Settlement { subject: self.subject.clone(), usage, cost_usd, outcome, status: self.status, warnings })
    }

    /// What went wrong at admission without refusing the request, once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Uses `usage` (what the provider bills, e.g. Bedrock's invocation metrics) instead of
    /// what the meter read in the body, count by count.
    pub fn use_reported_usage(&mut self, usage: ReportedUsage) {
        self.reported = Some(usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Limit, Per, WindowType};
    use crate::config::Rates;
    use crate::shared::tests::FakeStore;

    fn limits() -> Vec<Limit> {
        vec![Limit {
            limit: 10_000,
            window: 60,
            window_type: WindowType::Sliding,
            counts: Counts::TotalTokens,
            per: Per::Person,
            key: "csg/b/x/t60sp".into(),
        }]
    }

    fn subject() -> Subject {
        let rates = Rates { input: 3.0, output: 15.0, cache_write: 3.75, cache_read: 0.3, cache_write_1h: 6.0 };
        let price = Price { rates, web_search_per_1k: 10.0, long_context: None, fast: None };
        Subject {
            person: "alice".into(),
            person_key: "a1".into(),
            tier: "standard".into(),
            model: "m".into(),
            price: Some(price),
            provider: "anthropic",
            fast: false,
        }
    }

    fn budgets(reserve: Reserve) -> Budgets {
        Budgets { reserve, reserve_output_tokens: 1000, warning_share: 0.8 }
    }

    const STREAM: &str = "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":100,\"output_tokens\":1,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":2000}}}\n\nevent: message_delta\ndata: {\"usage\":{\"output_tokens\":500}}\n\n";

    #[test]
    fn reserve_is_held_then_settled_to_the_true_count() {
        let store = FakeStore::default();
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 0)
                .unwrap();
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 1000 + 1000, "4000 bytes / 4 + capped max_tokens");
        m.on_response_headers(Some(200), "text/event-stream", None);
        assert!(!m.on_response_body(STREAM.as_bytes(), false));
        assert!(m.on_response_body(b"", true));
        let report = m.settle(&store, 1).unwrap();
        assert_eq!(report.outcome, Outcome::Complete);
        assert_eq!(report.usage.total(), 3600);
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 3600);
        assert_eq!(m.settle(&store, 2), None, "charged once");
        let cost = report.cost_usd.unwrap();
        assert!((cost - (100.0 * 3.0 + 500.0 * 15.0 + 1000.0 * 3.75 + 2000.0 * 0.3) / 1e6).abs() < 1e-9);
    }

    #[test]
    fn content_length_completes_without_end_of_stream() {
        let store = FakeStore::default();
        let mut m = Metering::admit(&store, &limits(), &budgets(Reserve::None), subject(), 10 / 4, None, 0).unwrap();
        let body = br#"{"usage":{"input_tokens":7,"output_tokens":3}}"#;
        m.on_response_headers(Some(200), "application/json", Some(body.len() as u64));
        assert!(!m.on_response_body(&body[..10], false));
        assert!(m.on_response_body(&body[10..], false), "Kong: last chunk without eos");
        assert_eq!(m.settle(&store, 0).unwrap().usage.total(), 10);
    }

    /// A hold that could not be written (the store stayed contended, or refused) lets the
    /// request through without one, and says so; a hold written says nothing.
    #[test]
    fn a_hold_not_written_is_a_warning() {
        let store = FakeStore::default();
        store.lose_races.set(usize::MAX);
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 0)
                .unwrap();
        let warnings = m.take_warnings();
        assert!(warnings.len() == 1 && warnings[0].contains("Contended"), "{warnings:?}");
        assert!(m.take_warnings().is_empty(), "said once");
        store.lose_races.set(0);
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 0)
                .unwrap();
        assert!(m.take_warnings().is_empty());
    }

    /// Another worker whose clock ran a second ahead moved the counter into the next window
    /// before this admission: the hold went there, and settlement takes it out of that window
    /// (not out of the one before, where it would erase other people's spend and stay counted).
    #[test]
    fn a_hold_taken_in_a_window_another_worker_opened_is_given_back_there() {
        let store = FakeStore::default();
        let key = "csg/b/x/t60sp/a1";
        budget::charge(&store, key, 60, 30, 3000).unwrap();
        budget::charge(&store, key, 60, 60, 5).unwrap(); // the next window, opened at 60
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 59)
                .unwrap();
        let body = br#"{"usage":{"input_tokens":200,"output_tokens":100}}"#;
        m.on_response_headers(Some(200), "application/json", Some(body.len() as u64));
        assert!(m.on_response_body(body, true));
        m.settle(&store, 61).unwrap();
        let counter = budget::decode(store.get(key).unwrap().0.as_deref(), key);
        assert_eq!((counter.s, counter.c, counter.p), (60, 305, 3000));
    }

    /// A stream that ends before its final usage (the client pressed Esc or hung up, the
    /// provider failed in its middle) is charged at least the output that passed the gateway,
    /// not only what `message_start` said or the estimate; a stream that ends whole is charged
    /// what it reports.
    #[test]
    fn a_stream_cut_before_its_final_usage_is_charged_the_output_that_passed() {
        let start = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":100,\"output_tokens\":1}}}\n\n";
        let delta = format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
            "word ".repeat(20)
        );
        let end = b"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":25000}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        for whole in [false, true] {
            let store = FakeStore::default();
            let mut m =
                Metering::admit(&store, &limits(), &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 0)
                    .unwrap();
            m.on_response_headers(Some(200), "text/event-stream", None);
            m.on_response_body(start, false);
            // 1,000 deltas of 100 characters, in chunks that cut lines anywhere.
            let stream = delta.repeat(1000);
            for piece in stream.as_bytes().chunks(777) {
                m.on_response_body(piece, false);
            }
            if whole {
                m.on_response_body(end, true);
            }
            let settled = m.settle(&store, 1).unwrap();
            let charged = budget::read(&store, "csg/b/x/t60sp/a1").c;
            if whole {
                assert_eq!((settled.usage.output, charged), (25_000, 25_100), "what the stream reports");
                assert_eq!(settled.outcome, Outcome::Complete);
            } else {
                // 100,000 characters of text: about 25,000 tokens at 4 bytes each (each delta's
                // line beyond the envelope, 99 bytes, whichever chunks cut it).
                let output = settled.usage.output;
                assert!((24_500..=25_500).contains(&output), "{output}");
                assert_eq!(charged, 100 + output);
                assert_eq!(settled.outcome, Outcome::Unknown);
            }
        }
    }

    #[test]
    fn an_answer_ending_in_the_next_window_gives_its_hold_back_where_it_was_taken() {
        let store = FakeStore::default();
        let key = "csg/b/x/t60sp/a1";
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::Estimate), subject(), 8000 / 4, Some(0), 59).unwrap();
        budget::charge(&store, key, 60, 65, 5000).unwrap(); // others, in the next window
        let body = br#"{"usage":{"input_tokens":200,"output_tokens":100}}"#;
        m.on_response_headers(Some(200), "application/json", Some(body.len() as u64));
        assert!(m.on_response_body(body, true));
        m.settle(&store, 70).unwrap();
        let counter = budget::decode(store.get(key).unwrap().0.as_deref(), key);
        assert_eq!((counter.s, counter.c, counter.p), (60, 5300, 0), "the hold left the window it was in");
    }

    /// Claude Code can ask for one-hour cache writes (`cache_control.ttl: "1h"`), which cost
    /// twice the input price where five-minute ones cost 1.25 times: the answer says how many of
    /// its writes were for an hour, and those are priced as such.
    #[test]
    fn one_hour_cache_writes_are_priced_apart() {
        const HOURLY: &str = "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":100,\"output_tokens\":1,\"cache_creation_input_tokens\":1000,\"cache_read_input_tokens\":2000,\"cache_creation\":{\"ephemeral_5m_input_tokens\":400,\"ephemeral_1h_input_tokens\":600}}}}\n\nevent: message_delta\ndata: {\"usage\":{\"output_tokens\":500,\"cache_creation_input_tokens\":1000}}\n\n";
        let settle = |reported: Option<Usage>| {
            let reported = reported.map(|u| ReportedUsage {
                input: Some(u.input),
                output: Some(u.output),
                cache_write: Some(u.cache_write),
                cache_read: Some(u.cache_read),
            });
            let store = FakeStore::default();
            let mut m =
                Metering::admit(&store, &limits(), &budgets(Reserve::None), subject(), 400 / 4, Some(0), 0).unwrap();
            m.on_response_headers(Some(200), "text/event-stream", None);
            m.on_response_body(HOURLY.as_bytes(), true);
            if let Some(usage) = reported {
                m.use_reported_usage(usage);
            }
            m.settle(&store, 1).unwrap()
        };
        let s = settle(None);
        assert_eq!((s.usage.cache_write, s.usage.cache_write_1h), (1000, 600));
        let want = 100.0 * 3.0 + 500.0 * 15.0 + 400.0 * 3.75 + 600.0 * 6.0 + 2000.0 * 0.3;
        assert_eq!(s.cost_usd, Some(want / 1e6));
        // Bedrock's invocation metrics give only the total of the writes: the stream's own events
        // still say which of them were for an hour.
        let metrics = Usage {
            input: 100,
            output: 500,
            cache_write: 1000,
            cache_read: 2000,
            cache_write_1h: 0,
            web_searches: 0,
            fast: false,
        };
        assert_eq!(settle(Some(metrics)).cost_usd, Some(want / 1e6));
        // Never more one-hour writes than writes.
        let fewer = Usage { cache_write: 300, ..metrics };
        let s = settle(Some(fewer));
        assert_eq!(s.usage.cache_write_1h, 300);
        assert_eq!(s.cost_usd, Some((100.0 * 3.0 + 500.0 * 15.0 + 300.0 * 6.0 + 2000.0 * 0.3) / 1e6));
        // A one-hour share above all the writes counts as all of them, on either path: not a
        // reason to disbelieve the answer on one and not on the other.
        let over = Usage { cache_write_1h: 200_000_000, ..metrics };
        assert!(over.is_plausible());
        assert_eq!(settle(Some(Usage { cache_write_1h: 0, ..over })).usage.cache_write_1h, 600);
        let odd = Usage { cache_write: 10, cache_write_1h: 50, ..metrics };
        assert_eq!(cost_micros(&odd, &subject().price.unwrap()), (100.0 * 3.0 + 7500.0 + 10.0 * 6.0 + 600.0) as u64);
    }

    #[test]
    fn spent_budget_refuses_with_headers() {
        let store = FakeStore::default();
        budget::charge(&store, "csg/b/x/t60sp/a1", 60, 0, 10_000).unwrap();
        let (reply, warnings) =
            Metering::admit(&store, &limits(), &budgets(Reserve::None), subject(), 10 / 4, None, 5).unwrap_err();
        assert!(warnings.is_empty());
        assert_eq!(reply.status, 429);
        assert!(reply.headers.iter().any(|(k, v)| k == "x-ai-ratelimit-remaining-60-anthropic" && v == "0"));
    }

    #[test]
    fn an_answer_not_seen_whole_costs_at_least_the_estimate() {
        // (name, reserve, what happens after admission, units charged in the end)
        type Drive = fn(&mut Metering);
        let cases: &[(&str, Reserve, Drive, u64)] = &[
            ("client gone before the answer", Reserve::Estimate, |_| {}, 2000),
            ("client gone, no reserve held", Reserve::None, |_| {}, 2000),
            (
                "stream cut after its prompt was reported: that prompt and the output reserve",
                Reserve::Estimate,
                |m| {
                    m.on_response_headers(Some(200), "text/event-stream", None);
                    m.on_response_body(
                        b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":100}}}\n\n",
                        false,
                    );
                },
                100 + 1000,
            ),
            (
                "stream cut after a usage without its prompt: the estimate",
                Reserve::Estimate,
                |m| {
                    m.on_response_headers(Some(200), "text/event-stream", None);
                    m.on_response_body(b"event: message_start\ndata: {\"message\":{\"usage\":{}}}\n\n", false);
                },
                2000,
            ),
            (
                "stream cut after its last usage: that usage",
                Reserve::Estimate,
                |m| {
                    m.on_response_headers(Some(200), "text/event-stream", None);
                    m.on_response_body(STREAM.as_bytes(), false);
                },
                3600,
            ),
            (
                "gateway timeout",
                Reserve::Estimate,
                |m| {
                    m.on_response_headers(Some(504), "text/plain", Some(0));
                },
                2000,
            ),
            (
                "stream cut after more than the estimate",
                Reserve::Estimate,
                |m| {
                    m.on_response_headers(Some(200), "text/event-stream", None);
                    m.on_response_body(b"event: message_delta\ndata: {\"usage\":{\"output_tokens\":5000}}\n\n", false);
                },
                5000,
            ),
            (
                "complete upstream error answer",
                Reserve::Estimate,
                |m| {
                    m.on_response_headers(Some(529), "application/json", None);
                    m.on_response_body(br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#, true);
                },
                0,
            ),
        ];
        for (name, reserve, drive, want) in cases {
            let store = FakeStore::default();
            let mut m =
                Metering::admit(&store, &limits(), &budgets(*reserve), subject(), 4000 / 4, Some(32000), 0).unwrap();
            drive(&mut m);
            let settled = m.settle(&store, 1).unwrap();
            assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, *want, "{name}");
            // Known: the error answer read whole (0) and the stream's last usage (3600).
            assert_eq!(settled.outcome == Outcome::Complete, matches!(*want, 0 | 3600), "{name}");
        }
    }

    #[test]
    fn a_successful_answer_whose_usage_cannot_be_read_costs_at_least_the_estimate() {
        let stream = |delta: &str| {
            format!(
                "event: message_start\ndata: {{\"message\":{{\"usage\":{{\"input_tokens\":100,\"output_tokens\":1}}}}}}\n\n\
                 event: message_delta\ndata: {{\"usage\":{{\"output_tokens\":{delta}}}}}\n\n"
            )
        };
        let json = |n: &str| format!(r#"{{"content":[],"usage":{{"input_tokens":{n},"output_tokens":{n}}}}}"#);
        // The estimate: 4000 bytes / 4 as input and the output reserve.
        const GUESS: u64 = 2000;
        // The prompt `message_start` reported and the output reserve.
        const PROMPT: u64 = 100 + 1000;
        // (name, status, content type, body, units charged in the end)
        let cases: Vec<(&str, u32, &str, String, u64)> = vec![
            ("empty usage in a 200", 200, "application/json", r#"{"content":[],"usage":{}}"#.into(), GUESS),
            ("null counts in a 200", 200, "application/json", json("null"), GUESS),
            (
                "no output count in a 200",
                200,
                "application/json",
                r#"{"content":[],"usage":{"input_tokens":5}}"#.into(),
                5 + 1000,
            ),
            ("null output in message_delta", 200, "text/event-stream", stream("null"), PROMPT),
            ("2^64 in JSON", 200, "application/json", json("18446744073709551616"), GUESS),
            ("1e30 in JSON", 200, "application/json", json("1e30"), GUESS),
            ("negative in JSON", 200, "application/json", json("-5"), GUESS),
            ("float in JSON", 200, "application/json", json("1.0"), GUESS),
            ("string in JSON", 200, "application/json", json("\"5000\""), GUESS),
            ("no usage in a 200", 200, "application/json", r#"{"content":[]}"#.into(), GUESS),
            ("not JSON (compressed)", 200, "application/json", "\u{1f}\u{8b}\u{8}".into(), GUESS),
            ("2^64 in message_delta", 200, "text/event-stream", stream("18446744073709551616"), PROMPT),
            ("SSE with no event read (CR line ends)", 200, "text/event-stream", stream("5").replace('\n', "\r"), GUESS),
            ("the answer read whole", 200, "text/event-stream", stream("5000"), 5100),
            (
                "an overload inside a 200 stream, before anything was generated",
                200,
                "text/event-stream",
                "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n".into(),
                0,
            ),
            (
                "a stream that started and ended in an error",
                200,
                "text/event-stream",
                stream("5").replace("event: message_delta", "event: error"),
                PROMPT,
            ),
            (
                "a stream that ended before its final usage",
                200,
                "text/event-stream",
                stream("5").replace("event: message_delta", "event: ping"),
                PROMPT,
            ),
            ("an error answer that is not JSON", 502, "text/html", "<html>bad gateway</html>".into(), 0),
            ("an error answer without usage", 400, "application/json", r#"{"type":"error"}"#.into(), 0),
        ];
        for (name, status, content_type, body, want) in cases {
            let store = FakeStore::default();
            let mut m =
                Metering::admit(&store, &limits(), &budgets(Reserve::None), subject(), 4000 / 4, Some(32000), 0)
                    .unwrap();
            m.on_response_headers(Some(status), content_type, None);
            m.on_response_body(body.as_bytes(), true);
            let settled = m.settle(&store, 1).unwrap();
            assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, want, "{name}");
            // Charged nothing (error answers) or the whole answer: known; anything else is a floor.
            let unknown = !matches!(want, 0 | 5100);
            assert_eq!(settled.outcome == Outcome::Unknown, unknown, "{name}");
            assert_eq!(
                settled.warnings.iter().any(|w| w.contains("could not read the answer's usage")),
                unknown,
                "{name}"
            );
        }
    }

    #[test]
    fn a_usage_event_as_large_as_a_request_body_is_still_counted() {
        // message_delta echoes the stop sequence that matched, which the client chose.
        let store = FakeStore::default();
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::None), subject(), 4000 / 4, Some(32000), 0).unwrap();
        m.on_response_headers(Some(200), "text/event-stream", None);
        let stop = "Z".repeat(3 << 20);
        let stream = format!(
            "event: message_start\ndata: {{\"message\":{{\"usage\":{{\"input_tokens\":100,\"output_tokens\":1}}}}}}\n\n\
             event: message_delta\ndata: {{\"delta\":{{\"stop_sequence\":\"{stop}\"}},\"usage\":{{\"output_tokens\":50000}}}}\n\n"
        );
        for chunk in stream.as_bytes().chunks(16 * 1024) {
            m.on_response_body(chunk, false);
        }
        m.on_response_body(b"", true);
        let settled = m.settle(&store, 1).unwrap();
        assert_eq!(settled.outcome, Outcome::Complete);
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 50_100);
    }

    #[test]
    fn implausible_usage_is_a_fault_not_a_wrapped_counter() {
        let store = FakeStore::default();
        budget::charge(&store, "csg/b/x/t60sp/a1", 60, 0, 500).unwrap();
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 0)
                .unwrap();
        m.on_response_headers(Some(200), "application/json", None);
        let body = br#"{"usage":{"input_tokens":18446744073709551615,"output_tokens":9223372036854775808}}"#;
        m.on_response_body(body, true);
        let settled = m.settle(&store, 1).unwrap();
        assert_eq!(settled.outcome, Outcome::Unknown);
        assert_eq!(settled.warnings.len(), 1, "{:?}", settled.warnings);
        assert_eq!(settled.usage, Usage::default());
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 500 + 2000, "charged the estimate, never less");
    }

    /// Claude Code's Esc cuts a stream after `message_start` told its prompt, mostly cache
    /// reads: the floor prices that prompt as reported, not the body's size as uncached input
    /// (120,000 µ$ here against 27,084), and still counts the output reserve.
    #[test]
    fn a_cut_stream_is_floored_at_its_reported_prompt_not_the_bodys_size() {
        let store = FakeStore::default();
        let cost = vec![Limit { limit: 10_000_000, counts: Counts::Cost, ..limits()[0].clone() }];
        let mut m = Metering::admit(&store, &cost, &budgets(Reserve::Estimate), subject(), 140_000 / 4, Some(32000), 0)
            .unwrap();
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 35_000 * 3 + 1000 * 15, "held: the body's guess");
        m.on_response_headers(Some(200), "text/event-stream", None);
        m.on_response_body(b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1,\"cache_creation_input_tokens\":500,\"cache_read_input_tokens\":34000}}}\n\n", false);
        let settled = m.settle(&store, 1).unwrap();
        assert_eq!(settled.outcome, Outcome::Unknown);
        let floor = (3.0 * 3.0 + 500.0 * 3.75 + 34_000.0 * 0.3 + 1000.0 * 15.0) as u64;
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, floor);
        // More output than the reserve passed: that is charged.
        let store = FakeStore::default();
        let mut m = Metering::admit(&store, &cost, &budgets(Reserve::Estimate), subject(), 140_000 / 4, Some(32000), 0)
            .unwrap();
        m.on_response_headers(Some(200), "text/event-stream", None);
        m.on_response_body(b"event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1,\"cache_read_input_tokens\":34000}}}\n\nevent: message_delta\ndata: {\"usage\":{\"output_tokens\":3000}}\n\nevent: error\ndata: {}\n\n", true);
        m.settle(&store, 1).unwrap();
        let want = (3.0 * 3.0 + 34_000.0 * 0.3 + 3000.0 * 15.0) as u64;
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, want);
    }

    /// Bedrock's invocation metrics replace what the stream said count by count: a block
    /// without the cache counts keeps those `message_start` gave, and a block with neither input
    /// nor output says nothing.
    #[test]
    fn reported_usage_replaces_the_meters_count_by_count() {
        let read = Usage {
            input: 100,
            output: 500,
            cache_write: 1000,
            cache_read: 2000,
            cache_write_1h: 600,
            web_searches: 0,
            fast: false,
        };
        let partial = ReportedUsage { input: Some(120), output: Some(510), ..ReportedUsage::default() };
        assert_eq!(partial.over(&read), Usage { input: 120, output: 510, ..read });
        let fewer_writes = ReportedUsage { cache_write: Some(300), ..partial };
        assert_eq!(
            fewer_writes.over(&read),
            Usage { input: 120, output: 510, cache_write: 300, cache_write_1h: 300, ..read }
        );
        let store = FakeStore::default();
        let mut m =
            Metering::admit(&store, &limits(), &budgets(Reserve::None), subject(), 400 / 4, Some(0), 0).unwrap();
        m.on_response_headers(Some(200), "text/event-stream", None);
        m.on_response_body(STREAM.as_bytes(), true);
        m.use_reported_usage(partial);
        let s = m.settle(&store, 1).unwrap();
        assert_eq!((s.outcome, s.usage.cache_read, s.usage.cache_write), (Outcome::Complete, 2000, 1000));
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 120 + 510 + 1000 + 2000);
    }

    /// An in-flight refusal's `RateLimit-Reset` is its `Retry-After`, as on any other refusal
    /// (`budget::headers`); it was the window's end.
    #[test]
    fn an_in_flight_refusal_names_one_time_to_come_back() {
        let store = FakeStore::default();
        let hourly = vec![Limit { window: 3600, window_type: WindowType::Fixed, ..limits()[0].clone() }];
        budget::charge(&store, "csg/b/x/t60sp/a1", 3600, 0, 9000).unwrap();
        // Holds 4000 / 4 + 1000 = 2000: 11,000 of 10,000, of which 9,000 spent.
        let _running =
            Metering::admit(&store, &hourly, &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 10)
                .unwrap();
        let (reply, _) =
            Metering::admit(&store, &hourly, &budgets(Reserve::Estimate), subject(), 4000 / 4, Some(32000), 11)
                .unwrap_err();
        assert_eq!(reply.reason, "budget_in_flight");
        let get = |name: &str| reply.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(get("retry-after").as_deref(), Some("10"));
        assert_eq!(get("retry-after"), get("ratelimit-reset"), "{:?}", reply.headers);
        assert_eq!(get("x-ai-ratelimit-warning"), None, "nothing says spent: {:?}", reply.headers);
    }

    #[test]
    fn web_searches_are_priced_per_search_on_top_of_the_tokens() {
        let price = subject().price.unwrap();
        let tokens = Usage { input: 100, output: 50, ..Usage::default() };
        let searched = Usage { web_searches: 3, ..tokens };
        // $10 per 1,000 searches: 10,000 µ$ each.
        assert_eq!(cost_micros(&searched, &price) - cost_micros(&tokens, &price), 30_000);
        assert_eq!(units(Counts::Cost, &searched, Some(&price)), 300 + 750 + 30_000);
        assert_eq!(units(Counts::TotalTokens, &searched, Some(&price)), 150, "a search is no token");
        let free = Price { web_search_per_1k: 0.0, ..price };
        assert_eq!(cost_micros(&searched, &free), cost_micros(&tokens, &free));
    }

    #[test]
    fn a_long_prompt_prices_every_token_at_the_long_context_rates() {
        use crate::config::LongContext;
        let rates = Rates { input: 6.0, output: 22.5, cache_write: 7.5, cache_read: 0.6, cache_write_1h: 12.0 };
        let long = LongContext { above_prompt_tokens: 200_000, rates };
        let price = Price { long_context: Some(long), ..subject().price.unwrap() };
        // The prompt counts the cache: 150K read + 50K written + 1 uncached is over 200K.
        let at = |input| Usage { input, output: 1000, cache_write: 50_000, cache_read: 150_000, ..Usage::default() };
        assert_eq!(cost_micros(&at(0), &price), 1000 * 15 + 50_000 * 375 / 100 + 150_000 * 3 / 10);
        assert_eq!(
            cost_micros(&at(1), &price),
            6 + 1000 * 225 / 10 + 50_000 * 75 / 10 + 150_000 * 6 / 10,
            "all of it, output included"
        );
        let hour = Usage { cache_write_1h: 50_000, web_searches: 2, ..at(1) };
        assert_eq!(cost_micros(&hour, &price), 6 + 22_500 + 50_000 * 12 + 90_000 + 20_000, "searches as ever");
        assert_eq!(cost_micros(&at(1), &Price { long_context: None, ..price }), cost_micros(&at(0), &price) + 3);
    }

    /// Fast mode's rates price every token of a request the provider ran fast, a long prompt's
    /// too; admission estimates a request asking for it at those rates.
    #[test]
    fn fast_mode_is_priced_at_its_own_rates_over_the_whole_window() {
        use crate::config::LongContext;
        let fast = Rates { input: 18.0, output: 90.0, cache_write: 22.5, cache_read: 1.8, cache_write_1h: 36.0 };
        let long = LongContext { above_prompt_tokens: 200_000, rates: Rates { input: 6.0, ..fast } };
        let price = Price { fast: Some(fast), long_context: Some(long), ..subject().price.unwrap() };
        let standard = Usage { input: 1000, output: 100, cache_read: 300_000, ..Usage::default() };
        let ran_fast = Usage { fast: true, ..standard };
        assert_eq!(cost_micros(&ran_fast, &price), 1000 * 18 + 100 * 90 + 300_000 * 18 / 10);
        assert_eq!(cost_micros(&standard, &price), 1000 * 6 + 100 * 90 + 300_000 * 18 / 10, "long context");
        let short = Usage { cache_read: 0, ..ran_fast };
        assert_eq!(cost_micros(&short, &Price { fast: None, ..price }), 1000 * 3 + 100 * 15, "no fast rates");
        // Admission: 4,000 bytes / 4 and 10 output tokens, at the fast rates.
        let store = FakeStore::default();
        let limits = vec![Limit { limit: 1_000_000_000, counts: Counts::Cost, ..limits()[0].clone() }];
        let price = Some(Price { fast: Some(fast), ..subject().price.unwrap() });
        let subject = Subject { price, fast: true, ..subject() };
        let mut m =
            Metering::admit(&store, &limits, &budgets(Reserve::Estimate), subject, 4000 / 4, Some(10), 0).unwrap();
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 1000 * 18 + 10 * 90);
        // Cut after a `message_start` that did not say the speed: floored at the fast rates.
        m.on_response_headers(Some(200), "text/event-stream", None);
        let start =
            "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":100,\"output_tokens\":1}}}\n\n";
        m.on_response_body(start.as_bytes(), false);
        let settled = m.settle(&store, 0).unwrap();
        assert_eq!(settled.outcome, Outcome::Unknown);
        assert_eq!(budget::read(&store, "csg/b/x/t60sp/a1").c, 100 * 18 + 10 * 90, "the prompt and the reserve, fast");
    }
}
