//! The audit trail: one record per exchange, in every mode, appended in order and
//! chained with SHA-256 so that an edited, inserted or removed record shows.
//!
//! - this file: [`AuditRecord`] (the stored form, versioned), the chain and [`verify`];
//! - [`query`]: filters shared by the CLI and the admin API;
//! - [`format`]: the aligned table's layout, HAR 1.2 entries and statistics;
//! - [`report`]: the records a filter matches, written out in each form as they are read;
//! - [`writer`]: the batching writer task and retention.
//!
//! The chain: `hash = sha256(previous hash || canonical bytes)`, where the canonical
//! bytes are the record serialised as JSON with `hash` empty (fields in declaration
//! order, so the bytes do not depend on how a record was stored or edited). The first
//! record chains from 32 zero bytes, or from the anchor that pruning leaves behind.
//! Sequence numbers are contiguous, so a removed record leaves a gap; the head (last
//! sequence number and hash, moved with every append) shows removals at the end and
//! records added after it. Without a secret, someone who can rewrite the whole store
//! can also recompute the chain: publish the head hash (`audit verify` prints it) to
//! pin a trail at a point in time.

pub mod command;
pub mod format;
pub mod query;
pub mod report;
pub mod writer;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoreError};

pub use writer::{AuditEvent, AuditLog, AuditWriter};

/// Version of [`AuditRecord`]'s stored form.
pub const AUDIT_SCHEMA: u32 = 1;

/// What the chain starts from before any record (and before any pruning).
pub const GENESIS: [u8; 32] = [0; 32];

/// The outcomes an audit record can carry. `error` is graphvcr's own failure (the
/// store could not write); `injected` is an answer of the chaos layer (`[chaos]`);
/// `tunnel` a forward-proxy tunnel to a host that is not intercepted; the others are
/// the list.
pub const OUTCOMES: [&str; 9] = [
    "recorded",
    "replayed",
    "miss",
    "passthrough",
    "upstream_error",
    "rejected",
    "error",
    "injected",
    "tunnel",
];

/// One exchange as the audit keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// [`AUDIT_SCHEMA`] when written.
    pub v: u32,
    /// Position in the trail: contiguous, starting at 1.
    pub seq: u64,
    /// When the request arrived: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub mode: String,
    pub cassette: String,
    /// The client's socket address.
    pub client: String,
    pub method: String,
    /// The host the client addressed (its `Host` header or `:authority`), for HAR URLs.
    pub host: String,
    /// Path and query, after the same sanitizing as stored requests.
    pub uri: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: String,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub status: u16,
    /// One of [`OUTCOMES`].
    pub outcome: String,
    /// From the request's arrival to the response being handed to the connection.
    pub latency_us: u64,
    /// Time spent waiting on the upstream, when it was called and answered.
    pub upstream_us: Option<u64>,
    /// The recorded interaction served or stored.
    pub interaction: Option<u64>,
    /// Graph's `request-id` from the response.
    pub request_id: Option<String>,
    /// The client's `client-request-id`, else the response's (Graph sets one).
    pub client_request_id: Option<String>,
    pub request_content_type: Option<String>,
    pub response_content_type: Option<String>,
    /// Sanitized request body, only with `audit.bodies = true`.
    pub request_body: Option<AuditBody>,
    /// Sanitized response body, only with `audit.bodies = true`.
    pub response_body: Option<AuditBody>,
    /// Remarks on the exchange, e.g. schema lint findings (`lint: PATCH /v1.0/…: request
    /// body /status: must be one of …`). Left out when empty, so records without notes
    /// keep the form (and hash) they always had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Hex SHA-256 over the previous record's hash and this record's canonical bytes.
    pub hash: String,
}

/// What retention reads of a stored record: its time and hash, parsed without building
/// the rest of the record.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordStamp {
    pub time: String,
    pub hash: String,
}

impl RecordStamp {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A kept body: UTF-8 text as is, anything else base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditBody {
    pub text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub base64: bool,
}

impl AuditBody {
    pub fn from_bytes(bytes: &[u8]) -> Self {
        use base64::Engine as _;
        match std::str::from_utf8(bytes) {
            Ok(text) => Self {
                text: text.to_owned(),
                base64: false,
            },
            Err(_) => Self {
                text: base64::engine::general_purpose::STANDARD.encode(bytes),
                base64: true,
            },
        }
    }
}

impl AuditRecord {
    /// The bytes the chain hashes: the record as JSON with `hash` empty.
    pub fn canonical(&self) -> Vec<u8> {
        let mut unhashed = self.clone();
        unhashed.hash.clear();
        // Plain data with string keys: serialisation cannot fail.
        serde_json::to_vec(&unhashed).unwrap_or_default()
    }

    /// The stored form (JSON, hash included).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Sets `hash` to chain this record after `previous`.
    pub fn seal(&mut self, previous: &[u8; 32]) {
        self.seal_to_bytes(previous);
    }

    /// Seals and returns the digest and the stored form, serialising once: `hash` is the
    /// last field, so the stored form is the canonical form with the digest written
    /// between the final empty quotes. The writer's hot path.
    pub fn seal_to_bytes(&mut self, previous: &[u8; 32]) -> ([u8; 32], Vec<u8>) {
        const EMPTY_HASH_END: &[u8] = b"\"hash\":\"\"}";
        /// Room for a record without bodies, so serialising rarely grows the buffer.
        const TYPICAL_BYTES: usize = 1024;
        self.hash.clear();
        let mut bytes = Vec::with_capacity(TYPICAL_BYTES);
        if serde_json::to_writer(&mut bytes, &*self).is_err() {
            bytes.clear();
        }
        let digest = chain_hash(previous, &bytes);
        self.hash = hex(&digest);
        if bytes.ends_with(EMPTY_HASH_END) {
            bytes.truncate(bytes.len() - 2);
            bytes.extend_from_slice(self.hash.as_bytes());
            bytes.extend_from_slice(b"\"}");
        } else {
            bytes = self.to_bytes();
        }
        (digest, bytes)
    }

    pub fn latency_ms(&self) -> f64 {
        self.latency_us as f64 / 1000.0
    }

    pub fn upstream_ms(&self) -> Option<f64> {
        self.upstream_us.map(|us| us as f64 / 1000.0)
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }
}

/// `sha256(previous || canonical)`.
pub fn chain_hash(previous: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(canonical);
    hasher.finalize().into()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Parses a 64-digit hex hash; anything else is `None`.
pub fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A point on the chain: the anchor left by pruning, or the head after the last append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainPoint {
    pub seq: u64,
    pub hash: String,
}

impl ChainPoint {
    pub fn genesis() -> Self {
        Self {
            seq: 0,
            hash: hex(&GENESIS),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn read(bytes: Option<Vec<u8>>, what: &str) -> Result<Option<Self>, AuditError> {
        match bytes {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AuditError::Damaged(format!("the audit {what} does not parse: {e}"))),
        }
    }

    fn raw_hash(&self) -> Option<[u8; 32]> {
        unhex(&self.hash)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Damaged(String),
    #[error("{0}")]
    Query(String),
    /// The writer thread could not be started (the OS refused a thread).
    #[error("cannot start the audit writer: {0}")]
    Writer(std::io::Error),
}

/// The first thing wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The record's content no longer matches its hash.
    Edited { seq: u64 },
    /// The record no longer parses as an audit record.
    Unreadable { seq: u64, detail: String },
    /// Records `from..=to` are missing.
    Removed { from: u64, to: u64 },
    /// The record does not belong to the chain: it is past the head, or the records
    /// around it chain to each other without it.
    Inserted { seq: u64 },
    /// The anchor or head themselves are damaged.
    Damaged { detail: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Edited { seq } => write!(
                f,
                "record {seq} was edited: its content does not match its hash"
            ),
            Self::Unreadable { seq, detail } => {
                write!(f, "record {seq} was edited: it no longer parses ({detail})")
            }
            Self::Removed { from, to } if from == to => write!(f, "record {from} was removed"),
            Self::Removed { from, to } => write!(f, "records {from} to {to} were removed"),
            Self::Inserted { seq } => write!(
                f,
                "record {seq} was inserted: it does not chain from the record before it"
            ),
            Self::Damaged { detail } => write!(f, "{detail}"),
        }
    }
}

/// What `audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub intact: bool,
    /// Records checked.
    pub records: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    /// The anchor left by pruning, if any.
    pub anchor: Option<ChainPoint>,
    /// The hash of the last record checked: publish it to pin the trail.
    pub head: Option<String>,
    pub problem: Option<Problem>,
    /// One line for people.
    pub message: String,
}

/// Walks the whole trail and reports the first edited, inserted or removed record.
///
/// A running proxy may prune while this walks (retention); pruning moves the anchor,
/// so a failure seen while the anchor changed is walked again rather than reported.
pub fn verify(store: &Store) -> Result<Verification, AuditError> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        let anchor_before = store.audit().anchor()?;
        let verification = verify_once(store)?;
        let pruned_meanwhile = store.audit().anchor()? != anchor_before;
        if verification.intact || !pruned_meanwhile || attempt == ATTEMPTS {
            return Ok(verification);
        }
        attempt += 1;
    }
}

fn verify_once(store: &Store) -> Result<Verification, AuditError> {
    let tree = store.audit();
    let anchor = match ChainPoint::read(tree.anchor()?, "anchor") {
        Ok(anchor) => anchor,
        Err(error) => {
            return Ok(broken(
                0,
                None,
                None,
                None,
                Problem::Damaged {
                    detail: error.to_string(),
                },
            ))
        }
    };
    let head = match ChainPoint::read(tree.head()?, "head") {
        Ok(head) => head,
        Err(error) => {
            return Ok(broken(
                0,
                None,
                None,
                anchor,
                Problem::Damaged {
                    detail: error.to_string(),
                },
            ))
        }
    };
    let start = anchor.clone().unwrap_or_else(ChainPoint::genesis);
    let Some(mut previous) = start.raw_hash() else {
        return Ok(broken(
            0,
            None,
            None,
            anchor,
            Problem::Damaged {
                detail: "the audit anchor's hash is not 64 hex digits".to_owned(),
            },
        ));
    };
    let mut expected = start.seq + 1;
    let mut checked = 0u64;
    let mut first = None;
    let mut records = tree.records().peekable();
    while let Some(entry) = records.next() {
        let (seq, bytes) = match entry {
            Ok(entry) => entry,
            // Bytes that no longer frame records are damage to report, not a failure.
            Err(StoreError::Decode { key, detail }) => {
                return Ok(broken(
                    checked,
                    first,
                    None,
                    anchor,
                    Problem::Damaged {
                        detail: format!(
                            "the audit trail's storage was edited after record {}: {key} no longer reads ({detail})",
                            expected - 1
                        ),
                    },
                ))
            }
            Err(error) => return Err(error.into()),
        };
        // Records at or before the anchor are what a pruning cut short by a crash left
        // (it moves the anchor first); the writer's next start removes them.
        if checked == 0 && anchor.as_ref().is_some_and(|a| seq <= a.seq) {
            continue;
        }
        first.get_or_insert(seq);
        let fail = |problem| Ok(broken(checked, first, Some(seq), anchor.clone(), problem));
        if seq < expected {
            return fail(Problem::Inserted { seq });
        }
        if seq > expected {
            return fail(Problem::Removed {
                from: expected,
                to: seq - 1,
            });
        }
        let record = match AuditRecord::from_bytes(&bytes) {
            Ok(record) => record,
            Err(e) => {
                return fail(Problem::Unreadable {
                    seq,
                    detail: e.to_string(),
                })
            }
        };
        if record.seq != seq {
            return fail(Problem::Edited { seq });
        }
        let computed = chain_hash(&previous, &record.canonical());
        if hex(&computed) != record.hash {
            let past_head = head.as_ref().is_some_and(|h| seq > h.seq);
            // If the next record chains straight from this one's predecessor, this one
            // was slipped in between them.
            let skipped_over = match records.peek() {
                Some(Ok((_, next))) => AuditRecord::from_bytes(next)
                    .is_ok_and(|n| hex(&chain_hash(&previous, &n.canonical())) == n.hash),
                _ => false,
            };
            return fail(if past_head || skipped_over {
                Problem::Inserted { seq }
            } else {
                Problem::Edited { seq }
            });
        }
        previous = computed;
        expected = seq + 1;
        checked += 1;
    }
    let last = expected.checked_sub(1).filter(|_| checked > 0);
    if let Some(head) = &head {
        if head.seq >= expected {
            return Ok(broken(
                checked,
                first,
                last,
                anchor,
                Problem::Removed {
                    from: expected,
                    to: head.seq,
                },
            ));
        }
        if head.seq + 1 == expected && head.hash != hex(&previous) {
            return Ok(broken(
                checked,
                first,
                last,
                anchor,
                Problem::Edited { seq: head.seq },
            ));
        }
    }
    let head_hash = (checked > 0 || anchor.is_some()).then(|| hex(&previous));
    let message = match (first, last) {
        (Some(first), Some(last)) => format!(
            "audit chain intact: {checked} records ({first} to {last}), head {}",
            head_hash.as_deref().unwrap_or("")
        ),
        _ => "audit chain intact: no records".to_owned(),
    };
    Ok(Verification {
        intact: true,
        records: checked,
        first,
        last,
        anchor,
        head: head_hash,
        problem: None,
        message,
    })
}

fn broken(
    records: u64,
    first: Option<u64>,
    last: Option<u64>,
    anchor: Option<ChainPoint>,
    problem: Problem,
) -> Verification {
    Verification {
        intact: false,
        records,
        first,
        last,
        anchor,
        head: None,
        message: format!("audit chain broken: {problem}"),
        problem: Some(problem),
    }
}

/// Every record matching `filter`, oldest first (the most recent `limit` when set). The
/// commands and the admin API write records out as they are read (`report`).
#[cfg(test)]
pub fn query(store: &Store, filter: &query::Filter) -> Result<Vec<AuditRecord>, AuditError> {
    let mut out = Vec::new();
    query_each(store, filter, |record| {
        out.push(record);
        Ok::<_, AuditError>(())
    })?;
    Ok(out)
}

/// The statistics of the records matching `filter`, gathered as the trail is read.
pub fn stats(store: &Store, filter: &query::Filter) -> Result<format::Stats, AuditError> {
    let mut tally = format::Tally::default();
    query_each(store, filter, |record| {
        tally.add(&record);
        Ok::<_, AuditError>(())
    })?;
    Ok(tally.stats())
}

/// [`query`], each record handed to `each` as it is read rather than collected, so a
/// whole trail can be written out in the memory of one record (with a `limit`, of that
/// many: which are the most recent is known only at the end). `each`'s first error ends
/// the query.
pub fn query_each<E: From<AuditError>>(
    store: &Store,
    filter: &query::Filter,
    mut each: impl FnMut(AuditRecord) -> Result<(), E>,
) -> Result<(), E> {
    let mut newest = std::collections::VecDeque::new();
    let tree = store.audit();
    // Records at or before the anchor were pruned; a crash may have left some behind.
    let pruned_through = ChainPoint::read(tree.anchor().map_err(AuditError::from)?, "anchor")
        .ok()
        .flatten()
        .map_or(0, |anchor| anchor.seq);
    for entry in tree.records() {
        let (seq, bytes) = entry.map_err(AuditError::from)?;
        // Records are read in sequence order.
        if filter.through_seq.is_some_and(|last| seq > last) {
            break;
        }
        if seq <= pruned_through {
            continue;
        }
        let record = AuditRecord::from_bytes(&bytes).map_err(|e| {
            AuditError::Damaged(format!(
                "audit record {seq} does not parse ({e}); run `graphvcr audit verify`"
            ))
        })?;
        if !filter.matches(&record) {
            continue;
        }
        match filter.limit {
            None => each(record)?,
            Some(limit) => {
                newest.push_back(record);
                if newest.len() > limit {
                    newest.pop_front();
                }
            }
        }
    }
    newest.into_iter().try_for_each(each)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(seq: u64, status: u16, outcome: &str) -> AuditRecord {
        AuditRecord {
            v: AUDIT_SCHEMA,
            seq,
            time: format!("2026-01-01T00:00:{:02}.000Z", seq % 60),
            mode: "replay".into(),
            cassette: "default".into(),
            client: "127.0.0.1:50000".into(),
            method: "GET".into(),
            host: "127.0.0.1:7878".into(),
            uri: format!("/v1.0/me/{seq}?a=1"),
            http_version: "HTTP/1.1".into(),
            request_bytes: 0,
            response_bytes: 10,
            status,
            outcome: outcome.into(),
            latency_us: seq * 1000,
            upstream_us: None,
            interaction: None,
            request_id: None,
            client_request_id: None,
            request_content_type: None,
            response_content_type: None,
            request_body: None,
            response_body: None,
            notes: Vec::new(),
            hash: String::new(),
        }
    }

    /// Writes `count` chained records the way the writer does.
    pub(crate) fn trail(store: &Store, count: u64) {
        let mut previous = GENESIS;
        let mut batch = Vec::new();
        for seq in 1..=count {
            let mut r = record(seq, 200, "replayed");
            r.seal(&previous);
            previous = unhex(&r.hash).expect("hex");
            batch.push((seq, r.to_bytes()));
        }
        let head = ChainPoint {
            seq: count,
            hash: hex(&previous),
        };
        store
            .audit()
            .append(&batch, &head.to_bytes())
            .expect("append");
    }

    fn problem(store: &Store) -> Option<Problem> {
        verify(store).expect("verify").problem
    }

    fn rewrite(store: &Store, seq: u64, edit: impl FnOnce(&mut AuditRecord)) {
        let (_, bytes) = store
            .audit()
            .records()
            .map(|e| e.expect("read"))
            .find(|(s, _)| *s == seq)
            .expect("record");
        let mut r = AuditRecord::from_bytes(&bytes).expect("parse");
        edit(&mut r);
        // Only the record changes: the head stays as it was.
        store
            .audit()
            .tamper(seq, Some(r.to_bytes()))
            .expect("write");
    }

    #[test]
    fn chain_detects_edits_removals_and_insertions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(problem(&store), None);
        trail(&store, 5);
        let ok = verify(&store).expect("verify");
        assert!(ok.intact, "{}", ok.message);
        assert_eq!((ok.first, ok.last, ok.records), (Some(1), Some(5), 5));

        rewrite(&store, 3, |r| r.status = 500);
        assert_eq!(problem(&store), Some(Problem::Edited { seq: 3 }));
        rewrite(&store, 3, |r| r.status = 200);
        assert_eq!(problem(&store), None);

        // A record appended past the head with a made-up hash.
        let mut fake = record(6, 200, "replayed");
        fake.seal(&GENESIS);
        let head = store.audit().head().expect("head").expect("some");
        store
            .audit()
            .append(&[(6, fake.to_bytes())], &head)
            .expect("insert");
        assert_eq!(problem(&store), Some(Problem::Inserted { seq: 6 }));
    }

    #[test]
    fn removals_are_named_in_the_middle_and_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        trail(&store, 5);
        let (_, second) = store.audit().records().nth(1).expect("2").expect("read");
        let (_, last) = store.audit().last().expect("last").expect("5");

        store.audit().tamper(2, None).expect("remove");
        assert_eq!(problem(&store), Some(Problem::Removed { from: 2, to: 2 }));
        store.audit().tamper(2, Some(second)).expect("restore");
        assert_eq!(problem(&store), None);

        store.audit().tamper(5, None).expect("remove");
        assert_eq!(problem(&store), Some(Problem::Removed { from: 5, to: 5 }));
        store.audit().tamper(5, Some(last)).expect("restore");
        assert_eq!(problem(&store), None);

        // A damaged anchor is reported as such.
        store.audit().prune(0, b"not json").expect("anchor");
        assert!(matches!(problem(&store), Some(Problem::Damaged { .. })));
    }

    #[test]
    fn storage_that_no_longer_frames_records_is_reported_as_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        trail(&store, 3);
        // A byte of record 2 changed by someone who does not know the file format.
        let path = store.audit().file_path(1);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x20;
        std::fs::write(&path, bytes).expect("write");
        let verification = verify(&store).expect("verify reports, not fails");
        assert!(!verification.intact);
        assert!(
            matches!(&verification.problem, Some(Problem::Damaged { detail })
                if detail.contains("after record 1")
                    && detail.contains("the audit file 00000000000000000001.log")),
            "{:?}",
            verification.problem
        );
    }

    /// The chain point of record `seq`, as pruning through it would leave the anchor.
    fn point_at(store: &Store, seq: u64) -> ChainPoint {
        let (_, bytes) = store
            .audit()
            .records()
            .find(|r| r.as_ref().is_ok_and(|(s, _)| *s == seq))
            .expect("the record")
            .expect("read");
        let record = AuditRecord::from_bytes(&bytes).expect("parse");
        ChainPoint {
            seq,
            hash: record.hash,
        }
    }

    #[test]
    fn pruning_keeps_the_chain_verifiable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        trail(&store, 6);
        let anchor = point_at(&store, 3);
        assert_eq!(
            store.audit().prune(3, &anchor.to_bytes()).expect("prune"),
            3
        );
        let ok = verify(&store).expect("verify");
        assert!(ok.intact, "{}", ok.message);
        assert_eq!((ok.first, ok.last, ok.records), (Some(4), Some(6), 3));
    }

    #[tokio::test]
    async fn a_pruning_cut_short_verifies_and_is_finished_by_the_next_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        trail(&store, 6);
        let anchor = point_at(&store, 3);
        // The state a crash right after moving the anchor leaves: records 1 to 3 remain.
        assert_eq!(
            store.audit().prune(0, &anchor.to_bytes()).expect("anchor"),
            0
        );
        assert_eq!(store.audit().count().expect("count"), 6);
        let ok = verify(&store).expect("verify");
        assert!(ok.intact, "{}", ok.message);
        assert_eq!((ok.first, ok.last, ok.records), (Some(4), Some(6), 3));

        let config = writer::tests::config(0);
        let (log, writer) = writer::AuditLog::start(store.clone(), &config).expect("start");
        writer.close().await;
        assert_eq!(log.records(), 3);
        let seqs: Vec<u64> = store
            .audit()
            .records()
            .map(|r| r.expect("read").0)
            .collect();
        assert_eq!(seqs, [4, 5, 6]);
        let ok = verify(&store).expect("verify");
        assert!(ok.intact, "{}", ok.message);
    }

    #[test]
    fn records_left_before_the_anchor_are_neither_verified_nor_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        trail(&store, 4);
        let anchor = point_at(&store, 2);
        let (_, second) = store.audit().records().nth(1).expect("2").expect("read");
        assert_eq!(
            store.audit().prune(2, &anchor.to_bytes()).expect("prune"),
            2
        );
        // Someone puts a record back before the anchor: it is outside the chain.
        store.audit().tamper(1, Some(second)).expect("insert");
        let ok = verify(&store).expect("verify");
        assert!(ok.intact, "{}", ok.message);
        assert_eq!((ok.first, ok.records), (Some(3), 2));
        let listed: Vec<u64> = query(&store, &Default::default())
            .expect("query")
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(listed, [3, 4]);
    }

    #[test]
    fn sealing_in_one_pass_matches_the_plain_forms() {
        let mut r = record(7, 200, "replayed");
        r.request_body = Some(AuditBody::from_bytes(b"{\"a\":\"\\\"hash\\\":\\\"\\\"}\"}"));
        let (digest, bytes) = r.seal_to_bytes(&GENESIS);
        assert_eq!(bytes, r.to_bytes());
        assert_eq!(digest, chain_hash(&GENESIS, &r.canonical()));
        assert_eq!(hex(&digest), r.hash);
    }

    #[test]
    fn hex_round_trips() {
        let hash = chain_hash(&GENESIS, b"x");
        assert_eq!(unhex(&hex(&hash)), Some(hash));
        assert_eq!(unhex("zz"), None);
    }
}
