//! The audit writer: one thread that appends records in order, off the request path.
//!
//! The proxy hands each finished exchange to [`AuditLog::send`], a bounded queue
//! ([`QUEUE`] exchanges): a send returns at once unless the writer has fallen that far
//! behind, and then the request waits for room rather than its record being dropped.
//! The writer runs on a thread of its own (sled calls block) and batches: after the first
//! record of a round it waits [`BATCH_WINDOW`] for more, then seals everything queued
//! (up to [`BATCH`]) onto the chain and appends it in 4 KiB segments (see
//! `store::AuditTree`): under load one round per few hundred exchanges and one sled value
//! per few records, instead of a write per exchange. There is no flush of its own: audit
//! records ride on the store's flush policy (the group flush that recordings wait for,
//! and sled's own flush every 500 ms), so replay never waits on an fsync for the audit.
//! A `kill -9` can therefore lose the last half second of audit records, never a record
//! from the middle, since sled recovers a prefix of the writes and a round writes its
//! records in order. A pruning cut short by a crash is finished when the writer starts.
//! At shutdown [`AuditWriter::close`] drains the queue before the store's final flush.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::query::age;
use super::{hex, AuditBody, AuditError, AuditRecord, ChainPoint, RecordStamp, AUDIT_SCHEMA};
use crate::config::AuditConfig;
use crate::store::Store;

/// Records appended per round at most; more wait for the next round.
const BATCH: usize = 4096;
/// How long the writer gathers records after the first of a round.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Exchanges queued for the writer at most before a request waits for room: bounds the
/// memory a writer that falls behind can hold (a queued exchange is well under 1 KiB).
pub const QUEUE: usize = 8192;
/// Segments removed per retention round, so one round never holds a huge batch.
const PRUNE_SEGMENTS: usize = 256;
/// How often age-based retention runs when no traffic arrives.
const RETENTION_TICK: Duration = Duration::from_secs(60);

/// One finished exchange, as the proxy knows it. Bodies are already sanitized.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub started: SystemTime,
    pub mode: String,
    pub cassette: String,
    pub client: String,
    pub method: String,
    pub host: String,
    pub uri: String,
    pub http_version: String,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub status: u16,
    pub outcome: &'static str,
    pub latency: Duration,
    pub upstream: Option<Duration>,
    pub interaction: Option<u64>,
    pub request_id: Option<String>,
    pub client_request_id: Option<String>,
    pub request_content_type: Option<String>,
    pub response_content_type: Option<String>,
    pub request_body: Option<Bytes>,
    pub response_body: Option<Bytes>,
    /// Remarks such as schema lint findings.
    pub notes: Vec<String>,
}

enum Message {
    Event(Box<AuditEvent>),
    /// Acknowledged once everything queued before it is appended.
    Sync(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// The proxy's handle on the audit trail. Clones share the writer.
#[derive(Clone)]
pub struct AuditLog {
    sender: SyncSender<Message>,
    bodies: bool,
    records: Arc<AtomicU64>,
}

/// The writer thread; close it at shutdown, before the store's final flush.
pub struct AuditWriter {
    sender: SyncSender<Message>,
    thread: JoinHandle<()>,
}

impl AuditLog {
    /// Starts the writer thread, continuing the chain already in `store`.
    pub fn start(store: Store, config: &AuditConfig) -> Result<(Self, AuditWriter), AuditError> {
        let state = State::load(store, config)?;
        let records = state.count.clone();
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("graphvcr-audit".to_owned())
            .spawn(move || state.run(receiver))
            .map_err(AuditError::Writer)?;
        Ok((
            Self {
                sender: sender.clone(),
                bodies: config.bodies,
                records,
            },
            AuditWriter { sender, thread },
        ))
    }

    /// Whether bodies are kept (`audit.bodies`); the proxy only sanitizes them then.
    pub fn keeps_bodies(&self) -> bool {
        self.bodies
    }

    /// Queues an exchange; waits only when [`QUEUE`] exchanges are already waiting.
    pub fn send(&self, event: AuditEvent) {
        // After close the writer is gone; an exchange finishing that late is not kept.
        let _ = self.queue(Message::Event(Box::new(event)));
    }

    /// Sends to the writer; on a full queue, waits for room (back-pressure: the record is
    /// kept, the request waits) without stalling the runtime's other tasks where it can.
    fn queue(&self, message: Message) -> bool {
        match self.sender.try_send(message) {
            Ok(()) => true,
            Err(TrySendError::Full(message)) => {
                let multi_thread = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if multi_thread {
                    tokio::task::block_in_place(|| self.sender.send(message)).is_ok()
                } else {
                    self.sender.send(message).is_ok()
                }
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Waits until every exchange queued so far is in the store, so a query made after a
    /// response was received sees that exchange (the admin API calls this first).
    pub async fn sync(&self) {
        let (ack, acked) = oneshot::channel();
        if self.queue(Message::Sync(ack)) {
            let _ = acked.await;
        }
    }

    /// Records in the trail now, for metrics.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }
}

impl AuditWriter {
    /// Appends everything queued so far and stops the writer.
    pub async fn close(self) {
        let (ack, acked) = oneshot::channel();
        if self.sender.send(Message::Close(ack)).is_ok() {
            let _ = acked.await;
        }
        // The writer acknowledged its last append; the thread ends right after.
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

struct State {
    store: Store,
    head: ChainPoint,
    previous: [u8; 32],
    count: Arc<AtomicU64>,
    max_records: u64,
    max_age: Option<Duration>,
    log: AuditLogSettings,
    last_retention: Instant,
    /// A pruning failed part-way: records at or before the anchor are left to remove
    /// before retention may pick a new anchor (one behind the old would break the chain).
    unfinished_pruning: bool,
}

struct AuditLogSettings {
    bodies: bool,
    max_body_bytes: usize,
}

impl State {
    fn load(store: Store, config: &AuditConfig) -> Result<Self, AuditError> {
        finish_pruning(&store)?;
        let point = resume_point(&store)?;
        let previous = point.raw_hash().ok_or_else(|| {
            AuditError::Damaged(format!(
                "audit record {} has no valid hash; run `graphvcr audit verify`",
                point.seq
            ))
        })?;
        let count = Arc::new(AtomicU64::new(store.audit().count()?));
        Ok(Self {
            store,
            head: point,
            previous,
            count,
            max_records: config.max_records,
            max_age: config.max_age,
            log: AuditLogSettings {
                bodies: config.bodies,
                max_body_bytes: config.max_body_bytes,
            },
            last_retention: Instant::now(),
            unfinished_pruning: false,
        })
    }
}

/// Removes records left at or before the anchor by a pruning that a crash cut short
/// (pruning moves the anchor first; see `store::AuditTree`).
fn finish_pruning(store: &Store) -> Result<(), AuditError> {
    let tree = store.audit();
    let Ok(Some(anchor)) = ChainPoint::read(tree.anchor()?, "anchor") else {
        // No anchor, or a damaged one that `audit verify` reports: nothing to finish.
        return Ok(());
    };
    if tree.first_seq()?.is_some_and(|first| first <= anchor.seq) {
        let removed = tree.prune(anchor.seq, &anchor.to_bytes())?;
        tracing::info!(
            through = anchor.seq,
            removed,
            "finished an audit pruning that was cut short"
        );
    }
    Ok(())
}

/// Where the chain continues: the last record; failing that the head, then the anchor.
fn resume_point(store: &Store) -> Result<ChainPoint, AuditError> {
    let tree = store.audit();
    let last = tree
        .last()?
        .and_then(|(seq, bytes)| AuditRecord::from_bytes(&bytes).ok().map(|r| (seq, r.hash)));
    let point = match last {
        Some((seq, hash)) => ChainPoint { seq, hash },
        None => match ChainPoint::read(tree.head()?, "head")
            .ok()
            .flatten()
            .or(ChainPoint::read(tree.anchor()?, "anchor").ok().flatten())
        {
            Some(point) => point,
            None => ChainPoint::genesis(),
        },
    };
    Ok(point)
}

impl State {
    fn run(mut self, receiver: mpsc::Receiver<Message>) {
        loop {
            let first = match receiver.recv_timeout(RETENTION_TICK) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    self.retain(true);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Gather a round: give records that are on their way a moment to arrive,
            // unless someone is waiting for this one to be written.
            if matches!(first, Message::Event(_)) {
                std::thread::sleep(BATCH_WINDOW);
            }
            let mut events = Vec::new();
            let mut close = None;
            let mut synced = Vec::new();
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Event(event) => events.push(*event),
                    Message::Sync(ack) => synced.push(ack),
                    Message::Close(ack) => {
                        close = Some(ack);
                        break;
                    }
                }
                if events.len() >= BATCH {
                    self.append(std::mem::take(&mut events));
                }
                next = receiver.try_recv().ok();
            }
            if !events.is_empty() {
                self.append(events);
            }
            self.retain(false);
            for ack in synced {
                let _ = ack.send(());
            }
            if let Some(ack) = close {
                // Anything still queued behind the close arrived after shutdown began.
                let late: Vec<AuditEvent> = receiver
                    .try_iter()
                    .filter_map(|m| match m {
                        Message::Event(event) => Some(*event),
                        _ => None,
                    })
                    .collect();
                if !late.is_empty() {
                    self.append(late);
                }
                self.retain(false);
                let _ = ack.send(());
                break;
            }
        }
    }

    fn append(&mut self, events: Vec<AuditEvent>) {
        let mut previous = self.previous;
        let mut seq = self.head.seq;
        let mut batch = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let mut record = self.record(seq, event);
            let (digest, bytes) = record.seal_to_bytes(&previous);
            previous = digest;
            batch.push((seq, bytes));
        }
        let head = ChainPoint {
            seq,
            hash: hex(&previous),
        };
        match self.store.audit().append(&batch, &head.to_bytes()) {
            Ok(()) => {
                self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.head = head;
                self.previous = previous;
            }
            // A prefix of the round may be in place: the chain continues from the last
            // record that was written.
            Err(error) => {
                let resumed = resume_point(&self.store)
                    .ok()
                    .and_then(|point| point.raw_hash().map(|hash| (point, hash)));
                let written = resumed
                    .as_ref()
                    .map_or(0, |(point, _)| point.seq.saturating_sub(self.head.seq))
                    .min(batch.len() as u64);
                tracing::error!(
                    %error,
                    written,
                    lost = batch.len() as u64 - written,
                    "audit records could not all be written"
                );
                if let Some((point, previous)) = resumed {
                    self.count.fetch_add(written, Ordering::Relaxed);
                    self.head = point;
                    self.previous = previous;
                }
            }
        }
    }

    fn record(&self, seq: u64, e: AuditEvent) -> AuditRecord {
        let body = |bytes: Option<Bytes>| {
            bytes
                .filter(|b| self.log.bodies && !b.is_empty() && b.len() <= self.log.max_body_bytes)
                .map(|b| AuditBody::from_bytes(&b))
        };
        AuditRecord {
            v: AUDIT_SCHEMA,
            seq,
            time: humantime::format_rfc3339_millis(e.started).to_string(),
            mode: e.mode,
            cassette: e.cassette,
            client: e.client,
            method: e.method,
            host: e.host,
            uri: e.uri,
            http_version: e.http_version,
            request_bytes: e.request_bytes,
            response_bytes: e.response_bytes,
            status: e.status,
            outcome: e.outcome.to_owned(),
            latency_us: micros(e.latency),
            upstream_us: e.upstream.map(micros),
            interaction: e.interaction,
            request_id: e.request_id,
            client_request_id: e.client_request_id,
            request_content_type: e.request_content_type,
            response_content_type: e.response_content_type,
            request_body: body(e.request_body),
            response_body: body(e.response_body),
            notes: e.notes,
            hash: String::new(),
        }
    }

    /// Prunes past `max_records`, and (at most once a second, or when `force`d by the
    /// idle tick) past `max_age`, a whole segment at a time: the oldest segment goes
    /// while the trail holds more than `max_records` or its newest record is too old.
    /// So the trail never exceeds `max_records`, and may hold up to one segment fewer.
    /// The last pruned record becomes the anchor.
    fn retain(&mut self, force: bool) {
        if self.unfinished_pruning {
            if let Err(error) = finish_pruning(&self.store) {
                tracing::error!(%error, "audit pruning still fails");
                return;
            }
            self.unfinished_pruning = false;
            if let Ok(count) = self.store.audit().count() {
                self.count.store(count, Ordering::Relaxed);
            }
        }
        let over = self.max_records > 0 && self.count.load(Ordering::Relaxed) > self.max_records;
        let age_due = self.max_age.is_some()
            && (force || self.last_retention.elapsed() >= Duration::from_secs(1));
        if !over && !age_due {
            return;
        }
        if age_due {
            self.last_retention = Instant::now();
        }
        let now = SystemTime::now();
        // One pass over the oldest segments per round.
        let tree = self.store.audit();
        let mut left = self.count.load(Ordering::Relaxed);
        let mut anchor = None;
        for segment in tree.oldest_segments().take(PRUNE_SEGMENTS) {
            let segment = match segment {
                Ok(segment) => segment,
                Err(error) => {
                    tracing::error!(%error, "audit retention cannot read the oldest records");
                    break;
                }
            };
            let (seq, bytes) = &segment.last;
            // A record that does not parse stays for `audit verify` to report.
            let Ok(newest) = RecordStamp::from_bytes(bytes) else {
                break;
            };
            let over = self.max_records > 0 && left > self.max_records;
            let too_old = self
                .max_age
                .is_some_and(|max| age(&newest.time, now).is_some_and(|a| a > max));
            if !over && !too_old {
                break;
            }
            left = left.saturating_sub(segment.records as u64);
            anchor = Some(ChainPoint {
                seq: *seq,
                hash: newest.hash,
            });
        }
        let Some(anchor) = anchor else {
            return;
        };
        match tree.prune(anchor.seq, &anchor.to_bytes()) {
            Ok(removed) => {
                self.count.fetch_sub(removed as u64, Ordering::Relaxed);
                tracing::debug!(through = anchor.seq, removed, "audit records pruned");
            }
            // Cut short: the anchor may have moved with records at or before it left;
            // the next round (or the writer's next start) removes them first.
            Err(error) => {
                tracing::error!(%error, "audit pruning failed");
                self.unfinished_pruning = true;
            }
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn event(status: u16) -> AuditEvent {
        AuditEvent {
            started: SystemTime::now(),
            mode: "replay".into(),
            cassette: "default".into(),
            client: "127.0.0.1:1".into(),
            method: "GET".into(),
            host: "h".into(),
            uri: "/v1.0/me".into(),
            http_version: "HTTP/1.1".into(),
            request_bytes: 0,
            response_bytes: 2,
            status,
            outcome: "replayed",
            latency: Duration::from_millis(3),
            upstream: None,
            interaction: None,
            request_id: None,
            client_request_id: None,
            request_content_type: None,
            response_content_type: None,
            request_body: Some(Bytes::from_static(b"{}")),
            response_body: None,
            notes: Vec::new(),
        }
    }

    pub(crate) fn config(max_records: u64) -> AuditConfig {
        AuditConfig {
            enabled: true,
            bodies: false,
            max_body_bytes: 1024,
            max_records,
            max_age: None,
        }
    }

    #[tokio::test]
    async fn appends_in_order_continues_the_chain_and_prunes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let (log, writer) = AuditLog::start(store.clone(), &config(0)).expect("start");
        for status in [200, 404, 599] {
            log.send(event(status));
        }
        writer.close().await;
        let records = super::super::query(&store, &Default::default()).expect("query");
        let statuses: Vec<(u64, u16)> = records.iter().map(|r| (r.seq, r.status)).collect();
        assert_eq!(statuses, vec![(1, 200), (2, 404), (3, 599)]);
        assert!(records[0].request_body.is_none(), "bodies are off");

        // A second writer continues the chain; retention keeps at most the newest 4,
        // dropping whole segments (the first writer's records went in one or more).
        let (log, writer) = AuditLog::start(store.clone(), &config(4)).expect("restart");
        for _ in 0..3 {
            log.send(event(201));
        }
        writer.close().await;
        let kept = log.records();
        assert!((1..=4).contains(&kept), "{kept} records kept");
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        assert_eq!(verification.records, kept);
        assert_eq!(verification.last, Some(6));
        assert_eq!(verification.first, Some(7 - kept));
        assert_eq!(verification.anchor.map(|a| a.seq), Some(6 - kept));
    }
}
