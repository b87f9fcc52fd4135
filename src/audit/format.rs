//! The pieces of audit records' output forms (`report` writes them out): the aligned
//! table's layout for people, HAR 1.2 entries for browser DevTools, and summary statistics.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{AuditBody, AuditRecord};

/// The aligned table: columns padded to their widest cell, numbers right-aligned, the
/// path last and unpadded. Widths are fitted to every record first ([`Table::fit`]), so
/// rows can then be written one at a time.
#[derive(Debug, Clone)]
pub struct Table {
    widths: [usize; 10],
}

const HEADER: [&str; 10] = [
    "SEQ",
    "TIME",
    "MODE",
    "CASSETTE",
    "METHOD",
    "STATUS",
    "OUTCOME",
    "MS",
    "UPSTREAM_MS",
    "PATH",
];
const RIGHT: [bool; 10] = [
    true, false, false, false, false, true, false, true, true, false,
];

impl Default for Table {
    fn default() -> Self {
        Self {
            widths: HEADER.map(str::len),
        }
    }
}

impl Table {
    /// Widens the columns to hold `record`'s cells.
    pub fn fit(&mut self, record: &AuditRecord) {
        for (width, cell) in self.widths.iter_mut().zip(cells(record)) {
            *width = (*width).max(cell.chars().count());
        }
    }

    pub fn header(&self) -> String {
        self.line(HEADER)
    }

    pub fn row(&self, record: &AuditRecord) -> String {
        let cells = cells(record);
        self.line(cells.each_ref().map(String::as_str))
    }

    fn line(&self, cells: [&str; 10]) -> String {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else if RIGHT[i] {
                out.push_str(&format!("{cell:>width$}  ", width = self.widths[i]));
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = self.widths[i]));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    }
}

fn cells(r: &AuditRecord) -> [String; 10] {
    [
        r.seq.to_string(),
        r.time.clone(),
        r.mode.clone(),
        r.cassette.clone(),
        r.method.clone(),
        r.status.to_string(),
        r.outcome.clone(),
        format!("{:.1}", r.latency_ms()),
        r.upstream_ms()
            .map_or("-".to_owned(), |ms| format!("{ms:.1}")),
        r.uri.clone(),
    ]
}

/// One HAR 1.2 entry (the log around it is `report`'s).
pub fn har_entry(r: &AuditRecord) -> Value {
    let query: Vec<Value> = r
        .uri
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({"name": unescape(name), "value": unescape(value)})
        })
        .collect();
    let total = r.latency_ms();
    let wait = r.upstream_ms().unwrap_or(total).min(total);
    let mut request = json!({
        "method": r.method,
        "url": format!("http://{}{}", if r.host.is_empty() { "localhost" } else { &r.host }, r.uri),
        "httpVersion": r.http_version,
        "cookies": [],
        "headers": [],
        "queryString": query,
        "headersSize": -1,
        "bodySize": r.request_bytes,
    });
    if let Some(body) = &r.request_body {
        request["postData"] = json!({
            "mimeType": r.request_content_type.as_deref().unwrap_or(""),
            "text": body.text,
            "params": [],
        });
    }
    let mut content = json!({
        "size": r.response_bytes,
        "mimeType": r.response_content_type.as_deref().unwrap_or(""),
    });
    if let Some(AuditBody { text, base64 }) = &r.response_body {
        content["text"] = json!(text);
        if *base64 {
            content["encoding"] = json!("base64");
        }
    }
    json!({
        "startedDateTime": r.time,
        "time": total,
        "request": request,
        "response": {
            "status": r.status,
            "statusText": status_text(r.status),
            "httpVersion": r.http_version,
            "cookies": [],
            "headers": [],
            "content": content,
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": r.response_bytes,
        },
        "cache": {},
        "timings": {"send": 0, "wait": wait, "receive": total - wait},
        "serverIPAddress": "",
        "_graphvcr": {
            "seq": r.seq,
            "outcome": r.outcome,
            "mode": r.mode,
            "cassette": r.cassette,
            "client": r.client,
            "interaction": r.interaction,
            "requestId": r.request_id,
            "clientRequestId": r.client_request_id,
            "hash": r.hash,
        },
    })
}

fn unescape(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn status_text(status: u16) -> &'static str {
    if status == crate::error::MISS_STATUS {
        return "Replay Miss";
    }
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// Counts and latency percentiles over a set of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub records: usize,
    pub by_outcome: BTreeMap<String, usize>,
    pub by_status: BTreeMap<u16, usize>,
    /// p50, p90, p99 of the total latency, in milliseconds.
    pub latency_ms: Option<Percentiles>,
    /// The same over exchanges that waited on the upstream.
    pub upstream_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` for no values.
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[index.clamp(1, values.len()) - 1]
        };
        Some(Self {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
        })
    }
}

/// [`Stats`] gathered one record at a time, so a whole trail need not be held: only its
/// latencies are (8 bytes a record), for the percentiles.
#[derive(Debug, Default)]
pub struct Tally {
    records: usize,
    by_outcome: BTreeMap<String, usize>,
    by_status: BTreeMap<u16, usize>,
    latency_ms: Vec<f64>,
    upstream_ms: Vec<f64>,
}

impl Tally {
    pub fn add(&mut self, record: &AuditRecord) {
        self.records += 1;
        if let Some(count) = self.by_outcome.get_mut(&record.outcome) {
            *count += 1;
        } else {
            self.by_outcome.insert(record.outcome.clone(), 1);
        }
        *self.by_status.entry(record.status).or_insert(0) += 1;
        self.latency_ms.push(record.latency_ms());
        self.upstream_ms.extend(record.upstream_ms());
    }

    pub fn stats(self) -> Stats {
        Stats {
            records: self.records,
            by_outcome: self.by_outcome,
            by_status: self.by_status,
            latency_ms: Percentiles::of(self.latency_ms),
            upstream_ms: Percentiles::of(self.upstream_ms),
        }
    }
}

/// The statistics as aligned text.
pub fn stats_text(stats: &Stats) -> String {
    let mut out = format!("records  {}\n\n", stats.records);
    let width = stats
        .by_outcome
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max("OUTCOME".len());
    out.push_str(&format!("{:<width$}  {:>6}\n", "OUTCOME", "COUNT"));
    for (outcome, count) in &stats.by_outcome {
        out.push_str(&format!("{outcome:<width$}  {count:>6}\n"));
    }
    out.push_str(&format!("\n{:<6}  {:>6}\n", "STATUS", "COUNT"));
    for (status, count) in &stats.by_status {
        out.push_str(&format!("{status:<6}  {count:>6}\n"));
    }
    out.push_str(&format!(
        "\n{:<12}  {:>9}  {:>9}  {:>9}\n",
        "LATENCY_MS", "P50", "P90", "P99"
    ));
    for (name, percentiles) in [
        ("total", &stats.latency_ms),
        ("upstream", &stats.upstream_ms),
    ] {
        match percentiles {
            Some(p) => out.push_str(&format!(
                "{name:<12}  {:>9.1}  {:>9.1}  {:>9.1}\n",
                p.p50, p.p90, p.p99
            )),
            None => out.push_str(&format!("{name:<12}  {:>9}  {:>9}  {:>9}\n", "-", "-", "-")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::record;

    #[test]
    fn table_columns_line_up() {
        let mut long = record(10, 599, "miss");
        long.cassette = "a-much-longer-name".into();
        let records = [record(1, 200, "replayed"), long];
        let mut table = Table::default();
        records.iter().for_each(|r| table.fit(r));
        let text: String = std::iter::once(table.header())
            .chain(records.iter().map(|r| table.row(r)))
            .collect();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let column = |line: &str| line.find("/v1.0").expect("path column");
        assert_eq!(column(lines[1]), column(lines[2]));
        assert_eq!(lines[0].find("PATH"), Some(column(lines[1])));
        assert!(lines[2].contains("a-much-longer-name"));
    }

    #[test]
    fn har_entries_have_the_required_fields() {
        let entry = har_entry(&record(1, 599, "miss"));
        for field in [
            "startedDateTime",
            "time",
            "request",
            "response",
            "cache",
            "timings",
        ] {
            assert!(!entry[field].is_null(), "{field}");
        }
        assert_eq!(
            entry["request"]["url"],
            "http://127.0.0.1:7878/v1.0/me/1?a=1"
        );
        assert_eq!(entry["request"]["queryString"][0]["name"], "a");
        assert_eq!(entry["response"]["statusText"], "Replay Miss");
        assert_eq!(entry["response"]["content"]["size"], 10);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).collect()).expect("some");
        assert_eq!((p.p50, p.p90, p.p99), (50.0, 90.0, 99.0));
        let one = Percentiles::of(vec![7.0]).expect("some");
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert_eq!(Percentiles::of(Vec::new()), None);
        let mut tally = Tally::default();
        for r in [record(1, 200, "replayed"), record(2, 599, "miss")] {
            tally.add(&r);
        }
        let s = tally.stats();
        assert_eq!(s.by_status.get(&599), Some(&1));
        assert!(stats_text(&s).contains("miss"));
    }
}
