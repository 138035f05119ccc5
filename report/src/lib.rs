//! claude-sso-report: usage and cost of the claude-sso-gateway per person, tier and model, from
//! its usage log (one JSON record per request; README.md has the contract).
//!
//! [`input`] reads log lines into [`record::Record`]s, [`aggregate`] groups and sums them,
//! [`output`] prints the table (text, CSV, JSON) and [`chart`] draws the SVG.

pub mod aggregate;
pub mod chart;
pub mod input;
pub mod output;
pub mod record;
pub mod time;
