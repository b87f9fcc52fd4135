//! The audit writer: one task that appends records in order, off the request path.
//!
//! The proxy hands each finished exchange to [`AuditLog::send`] (an unbounded channel:
//! a send never waits). The writer takes everything queued, seals each record onto the
//! chain and appends the batch in one atomic sled batch, without its own flush: audit
//! records ride on the store's flush policy (the group flush that recordings wait for,
//! and sled's own flush every 500 ms), so replay never waits on an fsync for the audit.
//! A `kill -9` can therefore lose the last half second of audit records — never a
//! record from the middle, since batches apply atomically and in order. At shutdown
//! [`AuditWriter::close`] drains the queue before the store's final flush.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::query::age;
use super::{hex, AuditBody, AuditError, AuditRecord, ChainPoint, AUDIT_SCHEMA};
use crate::config::AuditConfig;
use crate::store::Store;

/// Records appended per sled batch at most; more wait for the next round.
const BATCH: usize = 1024;
/// Records removed per pruning batch, so one pruning never holds a huge batch.
const PRUNE_CHUNK: usize = 10_000;
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
    sender: mpsc::UnboundedSender<Message>,
    bodies: bool,
    records: Arc<AtomicU64>,
}

/// The writer task; close it at shutdown, before the store's final flush.
pub struct AuditWriter {
    sender: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

impl AuditLog {
    /// Starts the writer on the current runtime, continuing the chain already in `store`.
    pub fn start(store: Store, config: &AuditConfig) -> Result<(Self, AuditWriter), AuditError> {
        let state = State::load(store, config)?;
        let records = state.count.clone();
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(state.run(receiver));
        Ok((
            Self {
                sender: sender.clone(),
                bodies: config.bodies,
                records,
            },
            AuditWriter { sender, task },
        ))
    }

    /// Whether bodies are kept (`audit.bodies`); the proxy only sanitizes them then.
    pub fn keeps_bodies(&self) -> bool {
        self.bodies
    }

    /// Queues an exchange; never waits.
    pub fn send(&self, event: AuditEvent) {
        // After close the writer is gone; an exchange finishing that late is not kept.
        let _ = self.sender.send(Message::Event(Box::new(event)));
    }

    /// Waits until every exchange queued so far is in the store, so a query made after a
    /// response was received sees that exchange (the admin API calls this first).
    pub async fn sync(&self) {
        let (ack, acked) = oneshot::channel();
        if self.sender.send(Message::Sync(ack)).is_ok() {
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
        let _ = self.task.await;
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
}

struct AuditLogSettings {
    bodies: bool,
    max_body_bytes: usize,
}

impl State {
    fn load(store: Store, config: &AuditConfig) -> Result<Self, AuditError> {
        let tree = store.audit();
        // Continue from the last record; fall back to the head, then the anchor.
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
        let previous = point.raw_hash().ok_or_else(|| {
            AuditError::Damaged(format!(
                "audit record {} has no valid hash; run `graphvcr audit verify`",
                point.seq
            ))
        })?;
        let count = Arc::new(AtomicU64::new(tree.count()?));
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
        })
    }

    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Message>) {
        let mut tick = tokio::time::interval(RETENTION_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                message = receiver.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
                _ = tick.tick() => {
                    self.retain(true);
                    continue;
                }
            };
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
                if events.len() < BATCH {
                    next = receiver.try_recv().ok();
                }
            }
            if !events.is_empty() {
                self.append(events);
                self.retain(false);
            }
            for ack in synced {
                let _ = ack.send(());
            }
            if let Some(ack) = close {
                // Anything still queued behind the close arrived after shutdown began.
                while let Ok(Message::Event(event)) = receiver.try_recv() {
                    self.append(vec![*event]);
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
            // The batch applied atomically or not at all; the chain continues from the
            // last head that was written.
            Err(error) => {
                tracing::error!(%error, lost = batch.len(), "audit records could not be written")
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
    /// idle tick) past `max_age`. The last pruned record becomes the anchor.
    fn retain(&mut self, force: bool) {
        let over = self.max_records > 0 && self.count.load(Ordering::Relaxed) > self.max_records;
        let age_due = self.max_age.is_some()
            && (force || self.last_retention.elapsed() >= Duration::from_secs(1));
        if !over && !age_due {
            return;
        }
        self.last_retention = Instant::now();
        let now = SystemTime::now();
        loop {
            let count = self.count.load(Ordering::Relaxed);
            let excess = if self.max_records > 0 {
                count.saturating_sub(self.max_records)
            } else {
                0
            };
            let mut anchor = None;
            let mut scanned = 0u64;
            for entry in self.store.audit().records() {
                let Ok((seq, bytes)) = entry else { break };
                let Ok(record) = AuditRecord::from_bytes(&bytes) else {
                    // A damaged record stays for `audit verify` to report.
                    break;
                };
                let too_old = self
                    .max_age
                    .is_some_and(|max| age(&record.time, now).is_some_and(|a| a > max));
                if !(scanned < excess || too_old) || scanned as usize >= PRUNE_CHUNK {
                    break;
                }
                anchor = Some(ChainPoint {
                    seq,
                    hash: record.hash,
                });
                scanned += 1;
            }
            let Some(anchor) = anchor else { return };
            match self.store.audit().prune(anchor.seq, &anchor.to_bytes()) {
                Ok(removed) => {
                    self.count.fetch_sub(removed as u64, Ordering::Relaxed);
                    tracing::info!(through = anchor.seq, removed, "audit records pruned");
                }
                Err(error) => {
                    tracing::error!(%error, "audit pruning failed");
                    return;
                }
            }
            if (scanned as usize) < PRUNE_CHUNK {
                return;
            }
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
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

    fn config(max_records: u64) -> AuditConfig {
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

        // A second writer continues the chain; retention keeps the newest 4.
        let (log, writer) = AuditLog::start(store.clone(), &config(4)).expect("restart");
        for _ in 0..3 {
            log.send(event(201));
        }
        writer.close().await;
        assert_eq!(log.records(), 4);
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        assert_eq!((verification.first, verification.last), (Some(3), Some(6)));
        assert_eq!(verification.anchor.map(|a| a.seq), Some(2));
    }
}
