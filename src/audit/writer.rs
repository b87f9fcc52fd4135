//! The audit writer: one thread that appends records in order, off the request path.
//!
//! The proxy hands each finished exchange to [`AuditLog::send`], a bounded queue
//! ([`QUEUE`] exchanges): a send returns at once unless the writer has fallen that far
//! behind, and then the request waits for room rather than its record being dropped. It
//! waits as a task, not a thread: blocking the runtime's workers there (tokio's
//! `block_in_place`) made tokio start a thread for each waiting connection, and when a
//! disk busy writing back other files held the writer up for a moment, the proxy went
//! from 13 threads to 269 and from ~25 to ~70 MiB for the next 10 s.
//! The writer runs on a thread of its own (file writes block) and batches: after the
//! first record of a round it waits [`BATCH_WINDOW`] for more, then seals everything
//! queued (up to [`BATCH`]) onto the chain and appends it to the trail's newest file with
//! one `write` (see `store::AuditFiles`). Under load that is one write per few hundred
//! exchanges. The writer syncs the file and moves the on-disk head at most every
//! [`HEAD_SYNC`] (and when it closes), so replay never waits on an fsync for the audit.
//! A `kill -9` loses only the round being gathered (written records are in the page
//! cache); a power cut can lose the last [`HEAD_SYNC`] of records, never a record from the
//! middle. A torn last record and a pruning cut short are repaired when the writer starts.
//! At shutdown [`AuditWriter::close`] drains the queue and syncs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{oneshot, Semaphore};

use super::query::age;
use super::{hex, AuditBody, AuditError, AuditRecord, ChainPoint, RecordStamp, AUDIT_SCHEMA};
use crate::config::AuditConfig;
use crate::store::{AuditTail, LogFile, Store, StoreError};

/// Queue slots beyond [`QUEUE`] for `Sync` and `Close` messages.
const CONTROL_SLOTS: usize = 256;

/// Closes the queue's room when the writer stops (or panics), so senders stop waiting.
struct RoomGuard(Arc<Semaphore>);

impl Drop for RoomGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Records appended per round at most; more wait for the next round.
const BATCH: usize = 1024;
/// How long the writer gathers records after the first of a round.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// Exchanges queued for the writer at most before a request waits for room: bounds the
/// memory a writer that falls behind can hold (a queued exchange is well under 1 KiB).
pub const QUEUE: usize = 8192;
/// Files deleted per retention round at most, so one round stays short.
const PRUNE_FILES: usize = 64;
/// How often the writer syncs the newest file and moves the on-disk head under traffic.
pub const HEAD_SYNC: Duration = Duration::from_millis(500);
/// Files per `max_records`: a file closes at `max_records / FILES_PER_TRAIL` records (or
/// at `store::FILE_BYTES`), so retention, which deletes whole files, keeps the trail
/// within one file of `max_records`.
const FILES_PER_TRAIL: u64 = 16;
/// How often age-based retention runs when no traffic arrives.
const RETENTION_TICK: Duration = Duration::from_secs(60);

/// One finished exchange, as the proxy knows it. Bodies are already sanitized.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub started: SystemTime,
    pub mode: String,
    pub cassette: String,
    /// Formatted on the writer's thread, off the request's path.
    pub client: std::net::SocketAddr,
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
    /// Room for [`QUEUE`] events: a send takes a permit, the writer returns it when it
    /// takes the event off the queue, and closes it when it stops.
    room: Arc<Semaphore>,
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
        Self::start_with_queue(store, config, QUEUE)
    }

    fn start_with_queue(
        store: Store,
        config: &AuditConfig,
        queue: usize,
    ) -> Result<(Self, AuditWriter), AuditError> {
        let state = State::load(store, config)?;
        let records = state.count.clone();
        // Events are bounded by `room`; the extra slots are for `Sync` and `Close`.
        let (sender, receiver) = mpsc::sync_channel(queue + CONTROL_SLOTS);
        let room = Arc::new(Semaphore::new(queue));
        let writer_room = RoomGuard(room.clone());
        let thread = std::thread::Builder::new()
            .name("graphvcr-audit".to_owned())
            .spawn(move || state.run(receiver, writer_room))
            .map_err(AuditError::Writer)?;
        Ok((
            Self {
                sender: sender.clone(),
                room,
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
    pub async fn send(&self, event: AuditEvent) {
        // Closed once the writer is gone; an exchange finishing that late is not kept.
        let Ok(permit) = self.room.acquire().await else {
            return;
        };
        // The writer gives the permit back when it takes the event.
        permit.forget();
        let _ = self.queue(Message::Event(Box::new(event)));
    }

    /// Sends to the writer; on a full queue (only control messages can find it full),
    /// waits for room without stalling the runtime's other tasks where it can.
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
    /// The last sequence number the on-disk head points at.
    synced_head: u64,
    /// The newest record's time and hash (`None` until this writer appends).
    last_stamp: Option<RecordStamp>,
    /// The last record of each file this writer closed, by sequence number: what
    /// retention needs of a file it deletes, without reading it back.
    file_ends: BTreeMap<u64, RecordStamp>,
    last_head_sync: Instant,
    max_records: u64,
    max_age: Option<Duration>,
    log: AuditLogSettings,
    last_retention: Instant,
    /// A pruning failed part-way: records at or before the anchor are left to remove
    /// before retention may pick a new anchor (one behind the old would break the chain).
    unfinished_pruning: bool,
    /// The newest file, kept open between rounds; a pruning forgets it.
    tail: AuditTail,
}

struct AuditLogSettings {
    bodies: bool,
    max_body_bytes: usize,
}

impl State {
    fn load(store: Store, config: &AuditConfig) -> Result<Self, AuditError> {
        let cut = store.audit().repair_tail()?;
        if cut > 0 {
            tracing::warn!(
                bytes = cut,
                "cut a torn record off the end of the audit trail (a crash or a failed write left it)"
            );
        }
        finish_pruning(&store, &mut AuditTail::default())?;
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
            synced_head: point.seq,
            last_stamp: None,
            file_ends: BTreeMap::new(),
            head: point,
            previous,
            count,
            last_head_sync: Instant::now(),
            max_records: config.max_records,
            max_age: config.max_age,
            log: AuditLogSettings {
                bodies: config.bodies,
                max_body_bytes: config.max_body_bytes,
            },
            // Due at once: the first round also applies `max_age`.
            last_retention: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .unwrap_or_else(Instant::now),
            unfinished_pruning: false,
            tail: AuditTail::default(),
        })
    }
}

/// Removes records left at or before the anchor by a pruning that a crash cut short
/// (pruning moves the anchor first; see `store::AuditFiles`).
fn finish_pruning(store: &Store, tail: &mut AuditTail) -> Result<(), AuditError> {
    let tree = store.audit();
    let Ok(Some(anchor)) = ChainPoint::read(tree.anchor()?, "anchor") else {
        // No anchor, or a damaged one that `audit verify` reports: nothing to finish.
        return Ok(());
    };
    if tree.first_seq()?.is_some_and(|first| first <= anchor.seq) {
        let removed = tree.prune_at(tail, anchor.seq, &anchor.to_bytes())?;
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
    fn run(mut self, receiver: mpsc::Receiver<Message>, room: RoomGuard) {
        loop {
            let head_behind = self.head.seq != self.synced_head;
            let wait = if head_behind {
                HEAD_SYNC
            } else {
                RETENTION_TICK
            };
            let first = match receiver.recv_timeout(wait) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) if head_behind => {
                    self.sync_head(true);
                    continue;
                }
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
                    Message::Event(event) => {
                        room.0.add_permits(1);
                        events.push(*event);
                    }
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
            self.sync_head(false);
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
                self.retain(true);
                self.sync_head(true);
                let _ = ack.send(());
                break;
            }
        }
    }

    fn append(&mut self, events: Vec<AuditEvent>) {
        let mut previous = self.previous;
        let mut seq = self.head.seq;
        let mut batch = Vec::with_capacity(events.len());
        let mut stamps = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let mut record = self.record(seq, event);
            let (digest, bytes) = record.seal_to_bytes(&previous);
            previous = digest;
            batch.push((seq, bytes));
            stamps.push((std::mem::take(&mut record.time), digest));
        }
        let head = ChainPoint {
            seq,
            hash: hex(&previous),
        };
        let first = self.head.seq + 1;
        let records_per_file = self.records_per_file();
        match self
            .store
            .audit()
            .write_at(&mut self.tail, &batch, records_per_file)
        {
            Ok(closed) => {
                // Remember how each closed file ends, so retention need not read it back.
                for last in closed {
                    let end = match last.checked_sub(first) {
                        None => self.last_stamp.clone(),
                        Some(at) => stamps.get(at as usize).map(|(time, digest)| RecordStamp {
                            time: time.clone(),
                            hash: hex(digest),
                        }),
                    };
                    if let Some(end) = end {
                        self.file_ends.insert(last, end);
                    }
                }
                self.last_stamp = stamps.pop().map(|(time, digest)| RecordStamp {
                    time,
                    hash: hex(&digest),
                });
                self.count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                self.head = head;
                self.previous = previous;
            }
            // A prefix of the round may be in place, perhaps ending in a torn record: the
            // chain continues from the last whole record that was written.
            Err(error) => {
                self.last_stamp = None;
                self.file_ends.clear();
                if let Err(error) = self.store.audit().repair_tail() {
                    tracing::error!(%error, "the end of the audit trail cannot be repaired");
                }
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

    /// The sequence number, time and hash of file `i`'s last record: remembered if this
    /// writer closed the file, read back otherwise.
    fn file_end(
        &mut self,
        files: &[LogFile],
        i: usize,
    ) -> Result<Option<(u64, RecordStamp)>, StoreError> {
        let last = match files.get(i + 1) {
            Some(next) => next.first.saturating_sub(1),
            None => self.head.seq,
        };
        let known = match self.file_ends.get(&last) {
            Some(end) => Some(end.clone()),
            None if last == self.head.seq => self.last_stamp.clone(),
            None => None,
        };
        if let Some(end) = known {
            return Ok(Some((last, end)));
        }
        let Some(file) = files.get(i) else {
            return Ok(None);
        };
        let newest = i + 1 == files.len();
        let end = self
            .store
            .audit()
            .file_last(file, newest)?
            .and_then(|(seq, bytes)| {
                RecordStamp::from_bytes(&bytes)
                    .ok()
                    .map(|stamp| (seq, stamp))
            });
        // A closed file's end never changes: read once, not at every retention pass.
        if let (false, Some((seq, stamp))) = (newest, &end) {
            self.file_ends.insert(*seq, stamp.clone());
        }
        Ok(end)
    }

    fn records_per_file(&self) -> u64 {
        match self.max_records {
            0 => u64::MAX,
            max => (max / FILES_PER_TRAIL).max(1),
        }
    }

    /// Syncs the newest file and moves the on-disk head to the last record, at most every
    /// [`HEAD_SYNC`] unless `now`.
    fn sync_head(&mut self, now: bool) {
        if self.head.seq == self.synced_head || (!now && self.last_head_sync.elapsed() < HEAD_SYNC)
        {
            return;
        }
        self.last_head_sync = Instant::now();
        match self
            .store
            .audit()
            .set_head_at(&self.tail, &self.head.to_bytes())
        {
            Ok(()) => self.synced_head = self.head.seq,
            Err(error) => tracing::error!(%error, "the audit trail cannot be synced"),
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
            client: e.client.to_string(),
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
    /// idle tick) past `max_age`, a whole file at a time: the oldest file goes while the
    /// trail holds more than `max_records` or its newest record is too old. So the trail
    /// never exceeds `max_records`, and may hold up to one file fewer. The last pruned
    /// record becomes the anchor.
    fn retain(&mut self, force: bool) {
        if self.unfinished_pruning {
            if let Err(error) = finish_pruning(&self.store, &mut self.tail) {
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
        let files = match self.store.audit().files() {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(%error, "audit retention cannot list the trail");
                return;
            }
        };
        let mut left = self.count.load(Ordering::Relaxed);
        // The oldest files go while the trail is over `max_records` (known from the file
        // names alone) or their newest record is too old; the newest record of the last
        // one to go becomes the anchor.
        let limit = files.len().min(PRUNE_FILES);
        let mut anchor = None;
        for (i, file) in files.iter().enumerate().take(limit) {
            let records = match files.get(i + 1) {
                Some(next) => next.first.saturating_sub(file.first),
                None => (self.head.seq + 1).saturating_sub(file.first),
            };
            let over = self.max_records > 0 && left > self.max_records;
            if !over && !age_due {
                break;
            }
            let next_goes_too =
                over && i + 1 < limit && left.saturating_sub(records) > self.max_records;
            let end = if next_goes_too {
                None
            } else {
                match self.file_end(&files, i) {
                    Ok(end) => end,
                    Err(error) => {
                        tracing::error!(%error, "audit retention cannot read the oldest records");
                        break;
                    }
                }
            };
            let too_old = |stamp: &RecordStamp| {
                self.max_age
                    .is_some_and(|max| age(&stamp.time, now).is_some_and(|a| a > max))
            };
            if !over && !end.as_ref().is_some_and(|(_, stamp)| too_old(stamp)) {
                break;
            }
            left = left.saturating_sub(records);
            anchor = end.map(|(seq, stamp)| ChainPoint {
                seq,
                hash: stamp.hash,
            });
        }
        // `None` also when the last file to go ends in a record that does not parse: it
        // stays for `audit verify` to report.
        let Some(anchor) = anchor else {
            return;
        };
        match self
            .store
            .audit()
            .prune_at(&mut self.tail, anchor.seq, &anchor.to_bytes())
        {
            Ok(removed) => {
                self.count.fetch_sub(removed as u64, Ordering::Relaxed);
                self.file_ends = self.file_ends.split_off(&(anchor.seq + 1));
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
            client: ([127, 0, 0, 1], 1).into(),
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
            log.send(event(status)).await;
        }
        writer.close().await;
        let records = super::super::query(&store, &Default::default()).expect("query");
        let statuses: Vec<(u64, u16)> = records.iter().map(|r| (r.seq, r.status)).collect();
        assert_eq!(statuses, vec![(1, 200), (2, 404), (3, 599)]);
        assert!(records[0].request_body.is_none(), "bodies are off");

        // A second writer continues the chain; retention keeps at most the newest 4,
        // dropping whole files: the first writer's three records share one (it had no
        // limit), so it goes whole and three records are left.
        let (log, writer) = AuditLog::start(store.clone(), &config(4)).expect("restart");
        for _ in 0..3 {
            log.send(event(201)).await;
        }
        writer.close().await;
        let kept = log.records();
        assert_eq!(kept, 3);
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        assert_eq!(verification.records, kept);
        assert_eq!(verification.last, Some(6));
        assert_eq!(verification.first, Some(7 - kept));
        assert_eq!(verification.anchor.map(|a| a.seq), Some(6 - kept));
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_at_start_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let (log, writer) = AuditLog::start(store.clone(), &config(0)).expect("start");
        log.send(event(200)).await;
        log.send(event(201)).await;
        writer.close().await;
        // What a crash in the middle of a write leaves: part of a third record.
        let path = store.audit().file_path(1);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        std::io::Write::write_all(&mut file, &[0, 0, 0, 0, 0, 0, 0, 3, 0, 0]).expect("write");
        drop(file);

        let (log, writer) = AuditLog::start(store.clone(), &config(0)).expect("restart");
        log.send(event(202)).await;
        writer.close().await;
        let statuses: Vec<(u64, u16)> = super::super::query(&store, &Default::default())
            .expect("query")
            .iter()
            .map(|r| (r.seq, r.status))
            .collect();
        assert_eq!(statuses, vec![(1, 200), (2, 201), (3, 202)]);
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        // The head was synced at close.
        assert_eq!(verification.last, Some(3));
        let head = ChainPoint::read(store.audit().head().expect("head"), "head").expect("parse");
        assert_eq!(head.map(|h| h.seq), Some(3));
    }

    #[tokio::test]
    async fn retention_deletes_whole_files_by_count_and_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let settings = AuditConfig {
            max_age: Some(Duration::from_secs(3600)),
            ..config(40)
        };
        // 40 records at most: two to a file.
        let (log, writer) = AuditLog::start(store.clone(), &settings).expect("start");
        for _ in 0..100 {
            log.send(event(200)).await;
            log.sync().await;
        }
        let kept = log.records();
        assert!((39..=40).contains(&kept), "{kept} records kept");
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        assert_eq!(verification.last, Some(100));
        assert_eq!(verification.anchor.map(|a| a.seq), Some(100 - kept));

        // Two hours old, then fresh: at close the old files go, by age this time. The
        // anchor comes from what the writer remembers of the files it closed.
        let old = SystemTime::now() - Duration::from_secs(7200);
        for _ in 0..30 {
            log.send(AuditEvent {
                started: old,
                ..event(500)
            })
            .await;
        }
        for _ in 0..10 {
            log.send(event(201)).await;
        }
        writer.close().await;
        let statuses: Vec<u16> = super::super::query(&store, &Default::default())
            .expect("query")
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses, [201; 10]);
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        assert_eq!(verification.anchor.map(|a| a.seq), Some(130));

        // A new writer reads the ends of files it did not close: of 11 records in files
        // of two (the new one alone), whole files go until at most 4 are left.
        let (log, writer) = AuditLog::start(store.clone(), &config(4)).expect("restart");
        log.send(event(202)).await;
        writer.close().await;
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        assert_eq!((verification.records, verification.last), (3, Some(141)));
        assert_eq!(log.records(), 3);
    }

    #[tokio::test]
    async fn senders_beyond_the_queue_wait_as_tasks_and_every_record_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        // Room for 2: most of the 200 senders find the queue full and wait for room.
        let (log, writer) =
            AuditLog::start_with_queue(store.clone(), &config(0), 2).expect("start");
        let senders: Vec<_> = (0..200)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move { log.send(event(200)).await })
            })
            .collect();
        for sender in senders {
            tokio::time::timeout(Duration::from_secs(30), sender)
                .await
                .expect("a sender waited for room that never came")
                .expect("sender task");
        }
        writer.close().await;
        assert_eq!(log.records(), 200);
        let verification = super::super::verify(&store).expect("verify");
        assert!(verification.intact, "{}", verification.message);
        assert_eq!(verification.records, 200);

        // Once the writer is gone, a late exchange is not kept and does not wait.
        tokio::time::timeout(Duration::from_secs(30), log.send(event(200)))
            .await
            .expect("a send after close returns");
        assert_eq!(log.records(), 200);
    }
}
