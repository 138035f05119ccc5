//! UTC instants as milliseconds since the Unix epoch: RFC 3339 parsing and the few formats the
//! report prints. Hand-written (civil-from-days arithmetic) so the tool needs no date crate.

/// Milliseconds in one hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in one day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses exactly `n` ASCII digits.
fn digits(s: &[u8], n: usize) -> Option<u32> {
    if s.len() != n || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

/// Parses `YYYY-MM-DD` into its day number.
pub fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4], 4)?, digits(&b[5..7], 2)?, digits(&b[8..10], 2)?);
    let year = i64::from(year);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(days_from_civil(year, month, day))
}

/// Parses an RFC 3339 timestamp (`2026-11-29T14:52:03.123Z`, `...+01:00`; `t`, `z` and a space
/// for `T` accepted; seconds optional) into milliseconds since the epoch, UTC.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let days = parse_date(s.get(0..10)?)?;
    let rest = s.get(10..)?.as_bytes();
    if !matches!(rest.first(), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let rest = &rest[1..];
    let hour = digits(rest.get(0..2)?, 2)?;
    if rest.get(2) != Some(&b':') {
        return None;
    }
    let minute = digits(rest.get(3..5)?, 2)?;
    let mut i = 5;
    let mut second = 0;
    let mut millis = 0;
    if rest.get(i) == Some(&b':') {
        second = digits(rest.get(i + 1..i + 3)?, 2)?;
        i += 3;
        if rest.get(i) == Some(&b'.') {
            let start = i + 1;
            let mut end = start;
            while rest.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
            if end == start {
                return None;
            }
            // Milliseconds: the first three fraction digits, right-padded.
            let frac = &rest[start..end.min(start + 3)];
            millis = frac.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')) * 10u32.pow(3 - frac.len() as u32);
            i = end;
        }
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let offset_min: i64 = match rest.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = i64::from(digits(&[*h1, *h2], 2)?);
            let m = i64::from(digits(&[*m1, *m2], 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let secs = days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second) - offset_min * 60;
    Some(secs * 1000 + i64::from(millis))
}

/// Parses a period bound given on the command line: RFC 3339, or a date `YYYY-MM-DD` meaning the
/// start of that day (UTC) for `--since`, and the end of that whole day for `--until`.
pub fn parse_bound(s: &str, end_of_day: bool) -> Option<i64> {
    if let Some(days) = parse_date(s.trim()) {
        let days = if end_of_day { days + 1 } else { days };
        return Some(days * DAY_MS);
    }
    parse_rfc3339(s)
}

/// `2026-11-29`.
pub fn format_date(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
}

/// `2026-11-29 14:00`.
pub fn format_minute(ms: i64) -> String {
    let in_day = ms.rem_euclid(DAY_MS);
    format!("{} {:02}:{:02}", format_date(ms), in_day / HOUR_MS, in_day % HOUR_MS / 60_000)
}

/// `2026-11-29T14:52:03Z` (whole seconds).
pub fn format_rfc3339(ms: i64) -> String {
    let in_day = ms.rem_euclid(DAY_MS) / 1000;
    format!("{}T{:02}:{:02}:{:02}Z", format_date(ms), in_day / 3600, in_day % 3600 / 60, in_day % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_cases() {
        let day = days_from_civil(2026, 11, 29) * DAY_MS;
        let cases: &[(&str, &str, Option<i64>)] = &[
            ("zulu with millis", "2026-11-29T14:52:03.123Z", Some(day + 14 * HOUR_MS + 52 * 60_000 + 3_123)),
            ("zulu no fraction", "2026-11-29T00:00:00Z", Some(day)),
            ("micros truncated to millis", "2026-11-29T00:00:00.123456Z", Some(day + 123)),
            ("one fraction digit", "2026-11-29T00:00:00.5Z", Some(day + 500)),
            ("positive offset", "2026-11-29T01:00:00+01:00", Some(day)),
            ("negative offset", "2026-11-28T23:00:00-01:00", Some(day)),
            ("no seconds", "2026-11-29T14:52Z", Some(day + 14 * HOUR_MS + 52 * 60_000)),
            ("space separator", "2026-11-29 00:00:00Z", Some(day)),
            ("no zone", "2026-11-29T00:00:00", None),
            ("bad month", "2026-13-01T00:00:00Z", None),
            ("february 30", "2026-02-30T00:00:00Z", None),
            ("hour 24", "2026-11-29T24:00:00Z", None),
            ("empty fraction", "2026-11-29T00:00:00.Z", None),
            ("garbage", "yesterday", None),
            ("multibyte", "2026-11-29T00:00:00ZZé", None),
            ("empty", "", None),
        ];
        for (name, input, want) in cases {
            assert_eq!(parse_rfc3339(input), *want, "{name}");
        }
    }

    #[test]
    fn civil_round_trips() {
        for days in [-719_468, -1, 0, 1, 59, 365, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(parse_date("2024-02-29"), Some(days_from_civil(2024, 2, 29)));
        assert_eq!(parse_date("2023-02-29"), None);
    }

    #[test]
    fn date_bounds_cover_the_whole_day() {
        let day = days_from_civil(2026, 11, 29) * DAY_MS;
        assert_eq!(parse_bound("2026-11-29", false), Some(day));
        assert_eq!(parse_bound("2026-11-29", true), Some(day + DAY_MS));
        assert_eq!(parse_bound("2026-11-29T12:00:00Z", true), Some(day + 12 * HOUR_MS));
        assert_eq!(parse_bound("soon", true), None);
    }

    #[test]
    fn formats() {
        let t = parse_rfc3339("2026-11-29T14:52:03.999Z").unwrap();
        assert_eq!(format_date(t), "2026-11-29");
        assert_eq!(format_minute(t), "2026-11-29 14:52");
        assert_eq!(format_rfc3339(t), "2026-11-29T14:52:03Z");
    }
}
