//! claude-sso-report: prints usage and cost per person, tier and model from the gateway's usage
//! log, and draws an SVG chart. The table goes to stdout; counts of skipped lines to stderr.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use claude_sso_report::aggregate::{in_period, summarize, Dim};
use claude_sso_report::chart::{self, ChartSpec};
use claude_sso_report::input::{counted_once, read_log, Tally};
use claude_sso_report::output::{self, Format};
use claude_sso_report::record::Record;
use claude_sso_report::time;

#[derive(Parser)]
#[command(
    name = "claude-sso-report",
    version,
    about = "Usage and cost per person, tier and model from the claude-sso-gateway usage log"
)]
struct Cli {
    /// Usage logs to read (`-` or none: standard input). Records, or Envoy JSON access-log lines
    /// carrying the record under `usage`; other lines are skipped and counted on stderr.
    files: Vec<PathBuf>,
    /// Start of the period, inclusive: RFC 3339 (`2026-11-01T00:00:00Z`) or a UTC date (`2026-11-01`).
    #[arg(long, value_parser = since)]
    since: Option<i64>,
    /// End of the period, exclusive: RFC 3339, or a UTC date meaning the end of that whole day.
    #[arg(long, value_parser = until)]
    until: Option<i64>,
    /// Group by these dimensions, comma-separated: person, tier, model, provider_model, provider,
    /// status, refusal, day. An empty value gives the totals alone.
    #[arg(long, default_value = "person", value_parser = dims)]
    by: Dims,
    /// Table format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Also write an SVG chart here: tokens per person over time and cost by model.
    #[arg(long, value_name = "OUT.svg")]
    chart: Option<PathBuf>,
    /// People drawn separately in the chart; the rest are summed as "others".
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=50))]
    top: u16,
}

/// The parsed `--by` list (a newtype so clap takes the whole list as one value).
#[derive(Clone, Debug)]
struct Dims(Vec<Dim>);

fn dims(s: &str) -> Result<Dims, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.parse::<Dim>().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()
        .map(Dims)
}

fn bound(s: &str, end_of_day: bool) -> Result<i64, String> {
    time::parse_bound(s, end_of_day)
        .ok_or_else(|| format!("`{s}` is neither a date (2026-11-29) nor RFC 3339 (2026-11-29T14:00:00Z)"))
}

fn since(s: &str) -> Result<i64, String> {
    bound(s, false)
}

fn until(s: &str) -> Result<i64, String> {
    bound(s, true)
}

fn read_all(files: &[PathBuf], tally: &mut Tally) -> Result<Vec<Record>, String> {
    if files.is_empty() {
        let records = read_log(io::stdin().lock(), "stdin", tally).map_err(|e| format!("reading stdin: {e}"))?;
        return Ok(counted_once(records, tally));
    }
    let mut records = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let more = if name == "-" {
            read_log(io::stdin().lock(), "stdin", tally)
        } else {
            File::open(path).and_then(|f| read_log(BufReader::new(f), &name, tally))
        };
        records.extend(more.map_err(|e| format!("reading {name}: {e}"))?);
    }
    Ok(counted_once(records, tally))
}

fn period_text(since: Option<i64>, until: Option<i64>, records: &[Record]) -> String {
    let first = records.iter().map(|r| r.time_ms).min();
    let last = records.iter().map(|r| r.time_ms).max();
    let from = since.or(first).map_or_else(|| "the beginning".to_owned(), time::format_rfc3339);
    match (until, last) {
        (Some(u), _) => format!("from {from} until {}", time::format_rfc3339(u)),
        (None, Some(l)) => format!("from {from} to {}", time::format_rfc3339(l)),
        (None, None) => format!("from {from}"),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    if let (Some(s), Some(u)) = (cli.since, cli.until) {
        if u <= s {
            return Err("--until must be later than --since".to_owned());
        }
    }
    let mut tally = Tally::default();
    let all = read_all(&cli.files, &mut tally)?;
    let read = all.len();
    let records = in_period(all, cli.since, cli.until);
    let period = period_text(cli.since, cli.until, &records);
    let summary = summarize(&records, &cli.by.0);
    let table = match cli.format {
        Format::Text => output::text(&summary, &period),
        Format::Csv => output::csv(&summary),
        Format::Json => {
            output::json(&summary, cli.since.map(time::format_rfc3339), cli.until.map(time::format_rfc3339))
        }
    };
    io::stdout().lock().write_all(table.as_bytes()).map_err(|e| format!("writing the table: {e}"))?;
    if let Some(path) = &cli.chart {
        let spec = ChartSpec::for_records(&records, cli.since, cli.until, usize::from(cli.top));
        std::fs::write(path, chart::render(&records, &spec, &period))
            .map_err(|e| format!("writing the chart {}: {e}", path.display()))?;
    }
    let mut message = tally.summary();
    if read > records.len() {
        message += &format!("\n{} records outside the period", read - records.len());
    }
    eprintln!("{message}");
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claude-sso-report: {e}");
            ExitCode::FAILURE
        }
    }
}
