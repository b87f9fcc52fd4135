//! Audit filters, shared by `graphvcr audit` and `GET /audit`: both arrive as text
//! ([`FilterSpec`], which is also the admin API's query string) and are parsed here once.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{AuditError, AuditRecord, OUTCOMES};

/// Filters as given, unparsed: CLI flags or query parameters of the same names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FilterSpec {
    pub since: Option<String>,
    pub until: Option<String>,
    pub status: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub outcome: Option<String>,
    pub cassette: Option<String>,
    pub limit: Option<String>,
}

/// Parsed filters. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub status: Vec<StatusMatch>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub outcome: Option<String>,
    pub cassette: Option<String>,
    /// Keep only the most recent `limit` matches.
    pub limit: Option<usize>,
    /// Records after this sequence number are not read ([`super::query_each`]): set by
    /// a reader that reads the trail twice (the table), so the second read sees what the
    /// first did.
    pub through_seq: Option<u64>,
}

/// `404` or `4xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    Class(u16),
}

impl FilterSpec {
    /// Reads the spec from a URL query string (`since=1h&status=4xx`).
    pub fn from_query(query: &str) -> Result<Self, AuditError> {
        let mut spec = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            let slot = match name {
                "since" => &mut spec.since,
                "until" => &mut spec.until,
                "status" => &mut spec.status,
                "method" => &mut spec.method,
                "path" => &mut spec.path,
                "outcome" => &mut spec.outcome,
                "cassette" => &mut spec.cassette,
                "limit" => &mut spec.limit,
                // `format` and `pretty` are the admin API's own; anything else is a
                // mistake to report.
                "format" | "pretty" => continue,
                other => {
                    return Err(AuditError::Query(format!(
                        "unknown audit filter '{other}' (since, until, status, method, path, outcome, cassette, limit)"
                    )))
                }
            };
            *slot = Some(value);
        }
        Ok(spec)
    }

    /// The spec as a query string, for sending it to a running proxy.
    pub fn to_query(&self) -> String {
        let fields = [
            ("since", &self.since),
            ("until", &self.until),
            ("status", &self.status),
            ("method", &self.method),
            ("path", &self.path),
            ("outcome", &self.outcome),
            ("cassette", &self.cassette),
            ("limit", &self.limit),
        ];
        fields
            .iter()
            .filter_map(|(name, value)| {
                value.as_ref().map(|v| {
                    format!(
                        "{name}={}",
                        percent_encoding::utf8_percent_encode(
                            v,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("&")
    }

    /// Parses every filter; relative times (`1h`) count back from `now`.
    pub fn parse(&self, now: SystemTime) -> Result<Filter, AuditError> {
        let time = |text: &Option<String>, name: &str| {
            text.as_deref()
                .map(|t| {
                    parse_time(t, now).map_err(|e| AuditError::Query(format!("--{name}: {e}")))
                })
                .transpose()
        };
        let outcome = match &self.outcome {
            Some(outcome) if !OUTCOMES.contains(&outcome.as_str()) => {
                return Err(AuditError::Query(format!(
                    "--outcome: '{outcome}' is not one of {}",
                    OUTCOMES.join(", ")
                )))
            }
            other => other.clone(),
        };
        let status = match &self.status {
            None => Vec::new(),
            Some(text) => text
                .split(',')
                .map(|s| parse_status(s.trim()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    AuditError::Query(format!(
                        "--status: '{text}' is not a status like 404, 4xx or 2xx,404"
                    ))
                })?,
        };
        let limit = self
            .limit
            .as_deref()
            .map(|l| {
                l.parse::<usize>()
                    .map_err(|_| AuditError::Query(format!("--limit: '{l}' is not a count")))
            })
            .transpose()?;
        Ok(Filter {
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            status,
            method: self.method.as_ref().map(|m| m.to_ascii_uppercase()),
            path: self.path.clone(),
            outcome,
            cassette: self.cassette.clone(),
            limit,
            through_seq: None,
        })
    }
}

fn decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// RFC 3339 (any offset) or a duration back from `now` (`90s`, `30m`, `1h`, `2d`).
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(duration) = humantime::parse_duration(text) {
        return now
            .checked_sub(duration)
            .ok_or_else(|| format!("'{text}' reaches before 1970"));
    }
    let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| {
            format!(
                "'{text}' is neither RFC 3339 (2026-01-31T12:00:00Z) nor a duration like 1h or 30m"
            )
        })?;
    Ok(SystemTime::from(parsed))
}

fn parse_status(text: &str) -> Option<StatusMatch> {
    let bytes = text.as_bytes();
    if bytes.len() != 3 {
        return None;
    }
    if bytes[1..].eq_ignore_ascii_case(b"xx") {
        let class = (bytes[0] as char).to_digit(10)?;
        return (1..=5)
            .contains(&class)
            .then_some(StatusMatch::Class(class as u16));
    }
    let code: u16 = text.parse().ok()?;
    (100..=999)
        .contains(&code)
        .then_some(StatusMatch::Exact(code))
}

impl Filter {
    pub fn matches(&self, record: &AuditRecord) -> bool {
        if self.since.is_some() || self.until.is_some() {
            let Ok(at) = humantime::parse_rfc3339(&record.time) else {
                return false;
            };
            if self.since.is_some_and(|since| at < since)
                || self.until.is_some_and(|until| at > until)
            {
                return false;
            }
        }
        if !self.status.is_empty()
            && !self.status.iter().any(|s| match *s {
                StatusMatch::Exact(code) => record.status == code,
                StatusMatch::Class(class) => record.status / 100 == class,
            })
        {
            return false;
        }
        self.method
            .as_ref()
            .is_none_or(|m| record.method.eq_ignore_ascii_case(m))
            && self.outcome.as_ref().is_none_or(|o| &record.outcome == o)
            && self.cassette.as_ref().is_none_or(|c| &record.cassette == c)
            && self
                .path
                .as_ref()
                .is_none_or(|glob| glob_match(glob, record.path()))
    }
}

/// Shell-style path glob: `*` is any run of characters within one path segment, `**`
/// any run including `/`, `?` one character other than `/`. Everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                (0..=t.len()).any(|i| go(rest, &t[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                let segment = t.iter().position(|&b| b == b'/').unwrap_or(t.len());
                (0..=segment).any(|i| go(rest, &t[i..]))
            }
            Some(b'?') => t.first().is_some_and(|&b| b != b'/') && go(&p[1..], &t[1..]),
            Some(&c) => t.first() == Some(&c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// How long ago `time` (RFC 3339) was, for retention.
pub fn age(time: &str, now: SystemTime) -> Option<Duration> {
    let at = humantime::parse_rfc3339(time).ok()?;
    now.duration_since(at).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::record;

    fn check_glob(pattern: &str, text: &str, expected: bool) {
        assert_eq!(glob_match(pattern, text), expected, "{pattern} on {text}");
    }

    #[test]
    fn globs() {
        check_glob("/v1.0/me", "/v1.0/me", true);
        check_glob("/v1.0/*", "/v1.0/me", true);
        check_glob("/v1.0/*", "/v1.0/me/x", false);
        check_glob("/v1.0/**", "/v1.0/me/x", true);
        check_glob("**/deviceStatuses/*", "/v1.0/a/deviceStatuses/s1", true);
        check_glob("/v1.0/m?", "/v1.0/me", true);
        check_glob("/v1.0/m?", "/v1.0/m/", false);
        check_glob("*", "", true);
        check_glob("/beta/*", "/v1.0/me", false);
    }

    fn check_status(text: &str, expected: Option<StatusMatch>) {
        assert_eq!(parse_status(text), expected, "{text}");
    }

    #[test]
    fn statuses() {
        check_status("404", Some(StatusMatch::Exact(404)));
        check_status("4xx", Some(StatusMatch::Class(4)));
        check_status("2XX", Some(StatusMatch::Class(2)));
        check_status("599", Some(StatusMatch::Exact(599)));
        check_status("9xx", None);
        check_status("40", None);
        check_status("abc", None);
    }

    #[test]
    fn times_are_rfc3339_or_relative() {
        let now = humantime::parse_rfc3339("2026-01-01T12:00:00Z").expect("now");
        let hour_ago = humantime::parse_rfc3339("2026-01-01T11:00:00Z").expect("then");
        assert_eq!(parse_time("1h", now), Ok(hour_ago));
        assert_eq!(parse_time("60m", now), Ok(hour_ago));
        assert_eq!(parse_time("2026-01-01T11:00:00Z", now), Ok(hour_ago));
        assert_eq!(parse_time("2026-01-01T13:00:00+02:00", now), Ok(hour_ago));
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn filters_combine() {
        let now = humantime::parse_rfc3339("2026-01-01T00:01:00Z").expect("now");
        let spec = FilterSpec::from_query("status=5xx,404&method=get&path=/v1.0/me/*&since=50s")
            .expect("spec");
        let filter = spec.parse(now).expect("filter");
        let mut hit = record(20, 503, "upstream_error");
        assert!(filter.matches(&hit));
        hit.status = 200;
        assert!(!filter.matches(&hit));
        let early = record(5, 404, "miss");
        assert!(!filter.matches(&early), "before --since");
        assert!(FilterSpec::from_query("colour=red").is_err());
        let bad = FilterSpec {
            outcome: Some("forwarded".into()),
            ..FilterSpec::default()
        };
        assert!(bad.parse(now).is_err());
        // Every outcome the proxy writes can be filtered on.
        for outcome in ["tunnel", "injected"] {
            let spec = FilterSpec {
                outcome: Some(outcome.into()),
                ..FilterSpec::default()
            };
            let filter = spec.parse(now).expect(outcome);
            assert!(filter.matches(&record(30, 429, outcome)), "{outcome}");
        }
    }

    #[test]
    fn specs_survive_the_query_string() {
        let spec = FilterSpec {
            since: Some("2026-01-01T00:00:00+01:00".into()),
            path: Some("/v1.0/**".into()),
            limit: Some("5".into()),
            ..FilterSpec::default()
        };
        assert_eq!(
            FilterSpec::from_query(&spec.to_query()).expect("parse"),
            spec
        );
    }
}
