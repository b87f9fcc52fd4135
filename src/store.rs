//! The cassette store: the only module that touches sled, and the owner of the store
//! directory (sled's files, the owner file and the audit trail's directory).
//!
//! Layout (sled trees; ids are big-endian `u64`, increasing in recording order):
//! - `interactions`: `cassette \0 id` -> the stored interaction (recording order);
//! - `index`: `cassette \0 rules-fingerprint(8) match-key(32) id` -> nothing. All episodes
//!   of one request sit together, so a lookup is one prefix scan of that request's own
//!   episodes, never of the cassette;
//! - `indexes`: `cassette \0 rules-fingerprint` -> nothing: the index for these rules is
//!   complete. When the match rules change, the cassette is re-indexed once, on first use;
//! - `cassettes`: cassette names;
//! - the audit trail is not in sled: append-only files in `audit/` (see [`AuditFiles`]).
//!
//! Durability is group commit: writers insert, then wait on a shared flusher that runs
//! one `flush` for every writer that arrived while the previous flush ran. Concurrent
//! requests share fsyncs instead of queueing behind each other's.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::matching::{Exhausted, MatchKey, ReplayOrder};
use crate::record::{Interaction, StoredFormError, StoredReply, SCHEMA_VERSION};

mod audit;
mod episodes;
pub use audit::{AuditFiles, AuditTail, LogFile, AUDIT_DIR, FILE_BYTES};
use episodes::EpisodeCache;

/// File in the store directory naming the process that holds it.
pub const OWNER_FILE: &str = "graphvcr.owner";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cassette store {path} is in use by another graphvcr process{holder}; stop it, or point --store at another directory")]
    Locked { path: PathBuf, holder: String },
    #[error(
        "cassette store {path} is damaged ({detail}); restore it from an export or move it aside"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("cannot open cassette store {path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("cassette store I/O failed: {0}")]
    Io(String),
    /// `key` names what was read: an interaction of a cassette, an audit file.
    #[error("{key} cannot be read from the store: {detail}")]
    Decode { key: String, detail: String },
    #[error("stored interaction has schema {found}, newer than this graphvcr understands ({SCHEMA_VERSION})")]
    NewerSchema { found: u32 },
    #[error("cassette store is shutting down")]
    Closed,
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        Self::Io(error.to_string())
    }
}

/// The process holding a store, written next to it so a second process can say who.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// The holder's admin API, when it runs one.
    #[serde(default)]
    pub admin: Option<String>,
}

/// One cassette's summary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CassetteInfo {
    pub name: String,
    pub interactions: u64,
}

/// A replayed episode.
#[derive(Debug, Clone)]
pub struct Episode {
    pub reply: StoredReply,
    /// 0-based position among the recordings of this request.
    pub index: usize,
    pub count: usize,
}

/// How an episode is chosen among the recordings of one request.
#[derive(Debug, Clone, Copy)]
pub struct EpisodePolicy {
    pub order: ReplayOrder,
    pub exhausted: Exhausted,
    /// Recordings made before this instant count as absent (`auto`'s `max_age`).
    pub recorded_after: Option<SystemTime>,
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(Box<Episode>),
    /// Recorded, but every episode has been served and the policy says stop.
    Exhausted {
        count: usize,
    },
    /// Never recorded (or only too long ago).
    Absent,
}

/// Computes a stored request's match key under the rules in force.
pub type KeyFn<'a> = &'a (dyn Fn(&Interaction) -> MatchKey + Sync);

/// A request to the group-commit flusher: interactions to insert before the flush (none
/// for a bare flush), and where the outcome goes once they are durable.
struct FlushWaiter {
    writes: Option<PendingWrite>,
    reply: oneshot::Sender<Result<Vec<Interaction>, StoreError>>,
}

/// What [`Store::insert_all`] does after the records: insert their index entries, mark
/// complete again the indexes that were, and forget what lookups remember of the
/// cassettes touched.
#[derive(Default)]
struct DeferredIndex {
    entries: Vec<Vec<u8>>,
    unmarked: Vec<Vec<u8>>,
    touched: Vec<String>,
}

/// Interactions one writer hands the flusher, indexed for the rules `fingerprint`.
struct PendingWrite {
    fingerprint: u64,
    records: Vec<(MatchKey, Interaction)>,
}

/// Handle to the open store; clones share one sled database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    cache_capacity_bytes: u64,
    db: sled::Db,
    interactions: sled::Tree,
    index: sled::Tree,
    indexes: sled::Tree,
    cassettes: sled::Tree,
    /// The audit trail's directory (see [`AuditFiles`]).
    audit_dir: PathBuf,
    /// Episodes served so far per cassette and `fingerprint match-key`, for sequential
    /// replay. Compact keys: one entry per replayed request of a 100,000-interaction
    /// cassette costs ~30 bytes instead of ~110 with a heap-allocated prefix.
    cursors: Mutex<HashMap<String, HashMap<CursorKey, u32>>>,
    /// Episode ids already read from `index` (see [`EpisodeCache`]).
    episodes: EpisodeCache,
    /// `cassette \0 fingerprint` of indexes known complete, to skip the sled check.
    complete: Mutex<HashSet<Vec<u8>>>,
    /// Serialises index builds and writes that must see a consistent index state.
    index_lock: Mutex<()>,
    /// The rules fingerprint each cassette was last prepared for inserts under (see
    /// `prepare_cassette_for_insert`), so recording does not repeat three sled reads per
    /// interaction. Forgotten when the cassette's indexes change otherwise.
    prepared_for: Mutex<HashMap<String, u64>>,
    flush_requests: mpsc::UnboundedSender<FlushWaiter>,
    flush_receiver: Mutex<Option<mpsc::UnboundedReceiver<FlushWaiter>>>,
    /// Writers on their way to a flush request (see [`WriteIntent`]).
    intents: Arc<Intents>,
    /// Flushes the group-commit flusher has made, for metrics.
    flushes: AtomicU64,
}

/// A request that will append and ask for a flush soon: it went upstream to record.
/// While any is outstanding, the group-commit flusher waits up to its commit delay for
/// them before flushing, so concurrent recordings share one flush (and one wake of
/// sled's I/O threads) instead of each paying for its own. It stops counting when
/// dropped; [`Store::append_intended`] drops it once its flush is queued.
pub struct WriteIntent {
    intents: Arc<Intents>,
}

/// The outstanding [`WriteIntent`]s, and a wake-up for a flusher waiting on them.
#[derive(Default)]
struct Intents {
    outstanding: AtomicUsize,
    released: tokio::sync::Notify,
}

impl Drop for WriteIntent {
    fn drop(&mut self) {
        self.intents.outstanding.fetch_sub(1, Ordering::AcqRel);
        // A writer that gives up (its upstream failed) must not hold a flush back.
        self.intents.released.notify_one();
    }
}

impl Store {
    /// Opens (or creates) the store at `path`. Fails at once, naming the path and the
    /// holder, when another process has it open.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .open()
            .map_err(|error| classify_open_error(path, error))?;
        let interactions = db.open_tree("interactions")?;
        let index = db.open_tree("index")?;
        let indexes = db.open_tree("indexes")?;
        let cassettes = db.open_tree("cassettes")?;
        let audit_dir = path.join(AUDIT_DIR);
        let legacy_audit = db.open_tree(audit::LEGACY_TREE)?;
        let moved = audit::migrate_legacy(&legacy_audit, &audit_dir)?;
        if moved > 0 {
            tracing::info!(
                records = moved,
                "moved the audit trail out of the sled store into {}",
                audit_dir.display()
            );
        }
        let (flush_requests, flush_receiver) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                cache_capacity_bytes,
                db,
                interactions,
                index,
                indexes,
                cassettes,
                audit_dir,
                cursors: Mutex::new(HashMap::new()),
                episodes: EpisodeCache::new(),
                complete: Mutex::new(HashSet::new()),
                index_lock: Mutex::new(()),
                prepared_for: Mutex::new(HashMap::new()),
                flush_requests,
                flush_receiver: Mutex::new(Some(flush_receiver)),
                intents: Arc::new(Intents::default()),
                flushes: AtomicU64::new(0),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records which process holds the store (best effort: the lock itself is sled's).
    pub fn write_owner(&self, owner: &Owner) {
        let path = self.inner.path.join(OWNER_FILE);
        if let Ok(text) = serde_json::to_string(owner) {
            let _ = std::fs::write(path, text);
        }
    }

    /// Reads the owner file of a store some other process holds.
    pub fn read_owner(path: &Path) -> Option<Owner> {
        let text = std::fs::read_to_string(path.join(OWNER_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Starts the group-commit flusher on the current runtime. Writers that call
    /// [`Store::append`] before this wait until it runs.
    ///
    /// Each round inserts the interactions of every waiter queued by the time it starts
    /// (see `insert_and_flush`), then flushes once for all of them. With `commit_delay`
    /// above zero and other writers still on their way ([`WriteIntent`]s outstanding),
    /// it first waits up to that long for them, as a database's commit delay does: a
    /// lone writer never waits, concurrent ones share a flush.
    pub fn start_flusher(&self, commit_delay: Duration) {
        let receiver = self
            .inner
            .flush_receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut receiver) = receiver else {
            return;
        };
        // A weak handle: the flusher must not keep the database (and its lock) alive once
        // every `Store` clone is gone; the channel then closes and the task ends.
        let inner = Arc::downgrade(&self.inner);
        let intents = self.inner.intents.clone();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut waiters = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    waiters.push(next);
                }
                if !commit_delay.is_zero() {
                    let deadline = tokio::time::Instant::now() + commit_delay;
                    while intents.outstanding.load(Ordering::Acquire) > 0 {
                        tokio::select! {
                            next = receiver.recv() => match next {
                                Some(next) => waiters.push(next),
                                None => break,
                            },
                            () = intents.released.notified() => {}
                            () = tokio::time::sleep_until(deadline) => break,
                        }
                        while let Ok(next) = receiver.try_recv() {
                            waiters.push(next);
                        }
                    }
                }
                let Some(inner) = inner.upgrade() else {
                    break;
                };
                inner.flushes.fetch_add(1, Ordering::Relaxed);
                let store = Store { inner };
                let (writes, replies): (Vec<_>, Vec<_>) =
                    waiters.into_iter().map(|w| (w.writes, w.reply)).unzip();
                let round = tokio::task::spawn_blocking(move || store.insert_and_flush(writes));
                match round.await {
                    Ok(outcomes) => {
                        for (reply, outcome) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(outcome);
                        }
                    }
                    Err(error) => {
                        let detail = format!("flush task failed: {error}");
                        for reply in replies {
                            let _ = reply.send(Err(StoreError::Io(detail.clone())));
                        }
                    }
                }
            }
        });
    }

    /// One round of the group-commit flusher: every writer's interactions inserted under
    /// one hold of the index lock, in the order they asked, then one flush for all. Inserting
    /// here rather than on the request's own worker keeps tokio's workers from blocking
    /// on that lock while another records, which cost record a futex wait and a wake per
    /// contended insert.
    fn insert_and_flush(
        &self,
        writes: Vec<Option<PendingWrite>>,
    ) -> Vec<Result<Vec<Interaction>, StoreError>> {
        let mut outcomes: Vec<Result<Vec<Interaction>, StoreError>> = {
            let _guard = self
                .inner
                .index_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            writes
                .into_iter()
                .map(|write| match write {
                    Some(write) => self.insert_locked(write.fingerprint, write.records, None),
                    None => Ok(Vec::new()),
                })
                .collect()
        };
        if let Err(error) = self.inner.db.flush() {
            let detail = error.to_string();
            for outcome in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *outcome = Err(StoreError::Io(detail.clone()));
            }
        }
        outcomes
    }

    /// Flushes made by the group-commit flusher since the store opened.
    pub fn flushes(&self) -> u64 {
        self.inner.flushes.load(Ordering::Relaxed)
    }

    /// Announces a write that will follow shortly (see [`WriteIntent`]).
    pub fn intend_write(&self) -> WriteIntent {
        self.inner
            .intents
            .outstanding
            .fetch_add(1, Ordering::AcqRel);
        WriteIntent {
            intents: self.inner.intents.clone(),
        }
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.flush_releasing(None).await
    }

    /// [`Store::flush`]; `intent` ends once the request is queued, so the flusher never
    /// sees the writer as neither outstanding nor waiting.
    async fn flush_releasing(&self, intent: Option<WriteIntent>) -> Result<(), StoreError> {
        self.through_flusher(None, intent).await.map(drop)
    }

    /// Hands `writes` (if any) to the group-commit flusher and waits until they, and
    /// everything written before, are durable. `intent` ends once the request is queued.
    async fn through_flusher(
        &self,
        writes: Option<PendingWrite>,
        intent: Option<WriteIntent>,
    ) -> Result<Vec<Interaction>, StoreError> {
        let (reply, receiver) = oneshot::channel();
        let queued = self
            .inner
            .flush_requests
            .send(FlushWaiter { writes, reply });
        drop(intent);
        queued.map_err(|_| StoreError::Closed)?;
        receiver.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Flushes synchronously; for shutdown and for commands without a runtime flusher.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Stores `interaction` (indexed for the rules `fingerprint` under `key`) and returns
    /// once it is durable. Assigns the id.
    pub async fn append(
        &self,
        fingerprint: u64,
        key: MatchKey,
        interaction: Interaction,
    ) -> Result<Interaction, StoreError> {
        self.append_through_flusher(fingerprint, key, interaction, None)
            .await
    }

    /// [`Store::append`] for a writer that announced itself: the intent ends once its
    /// flush is asked for.
    pub async fn append_intended(
        &self,
        intent: WriteIntent,
        fingerprint: u64,
        key: MatchKey,
        interaction: Interaction,
    ) -> Result<Interaction, StoreError> {
        self.append_through_flusher(fingerprint, key, interaction, Some(intent))
            .await
    }

    async fn append_through_flusher(
        &self,
        fingerprint: u64,
        key: MatchKey,
        interaction: Interaction,
        intent: Option<WriteIntent>,
    ) -> Result<Interaction, StoreError> {
        let write = PendingWrite {
            fingerprint,
            records: vec![(key, interaction)],
        };
        let mut stored = self.through_flusher(Some(write), intent).await?;
        stored.pop().ok_or(StoreError::Closed)
    }

    /// Inserts interactions in order (later ones become later episodes), indexed for the
    /// rules `fingerprint`. Not yet durable: call [`Store::flush`] or [`Store::flush_now`].
    ///
    /// For many interactions at once (an import): their index entries go in after the
    /// records, sorted, rather than each after its record. An entry's key starts with
    /// its match key, a hash, so one at a time they land on random leaves of the index
    /// tree, which sled must find, often read back and split; sorted they fill leaves in
    /// order. Until the last entry is in, the cassette's index is not marked complete, so
    /// an import cut short by a crash is re-indexed from its records on first use.
    pub fn insert_all(
        &self,
        fingerprint: u64,
        records: Vec<(MatchKey, Interaction)>,
    ) -> Result<Vec<Interaction>, StoreError> {
        let _guard = self
            .inner
            .index_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut deferred = DeferredIndex {
            entries: Vec::with_capacity(records.len()),
            ..DeferredIndex::default()
        };
        let stored = self.insert_locked(fingerprint, records, Some(&mut deferred))?;
        self.insert_index_entries(deferred.entries)?;
        // After the entries: a lookup in between remembered the index without them.
        for cassette in &deferred.touched {
            self.inner.episodes.forget(cassette);
        }
        // Only the indexes that were complete before: the others still need a rebuild.
        for marker in deferred.unmarked {
            self.inner.indexes.insert(&marker, &[][..])?;
            self.complete().insert(marker);
        }
        Ok(stored)
    }

    /// Index entries in key order (see [`Store::insert_all`]).
    fn insert_index_entries(&self, mut entries: Vec<Vec<u8>>) -> Result<(), StoreError> {
        entries.sort_unstable();
        for entry in entries {
            self.inner.index.insert(entry, &[][..])?;
        }
        Ok(())
    }

    fn complete(&self) -> std::sync::MutexGuard<'_, HashSet<Vec<u8>>> {
        self.inner
            .complete
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// [`Store::insert_all`] for a caller that holds the index lock. With `deferred`, the
    /// index entries and the touched cassettes are handed back there instead, and the
    /// touched cassettes' indexes are left unmarked until the caller has inserted them.
    fn insert_locked(
        &self,
        fingerprint: u64,
        records: Vec<(MatchKey, Interaction)>,
        mut deferred: Option<&mut DeferredIndex>,
    ) -> Result<Vec<Interaction>, StoreError> {
        let mut stored = Vec::with_capacity(records.len());
        let mut touched: Vec<String> = Vec::new();
        for (key, mut interaction) in records {
            let cassette = interaction.cassette.clone();
            if !touched.contains(&cassette) {
                self.prepare_cassette_for_insert(&cassette, fingerprint)?;
                if let Some(deferred) = deferred.as_deref_mut() {
                    let marker = index_marker(&cassette, fingerprint);
                    self.complete().remove(&marker);
                    if self.inner.indexes.remove(&marker)?.is_some() {
                        deferred.unmarked.push(marker);
                    }
                }
                touched.push(cassette.clone());
            }
            interaction.id = self.inner.db.generate_id()?;
            interaction.schema = SCHEMA_VERSION;
            let id = interaction.id.to_be_bytes();
            let mut data_key = cassette_prefix(&cassette);
            data_key.extend_from_slice(&id);
            let mut index_key = episode_prefix(&cassette, fingerprint, &key);
            index_key.extend_from_slice(&id);
            self.inner
                .interactions
                .insert(data_key, interaction.to_bytes())?;
            match deferred.as_deref_mut() {
                Some(deferred) => deferred.entries.push(index_key),
                None => {
                    self.inner.index.insert(index_key, &[][..])?;
                }
            }
            stored.push(interaction);
        }
        match deferred {
            Some(deferred) => deferred.touched = touched,
            None => {
                for cassette in &touched {
                    self.inner.episodes.forget(cassette);
                }
            }
        }
        Ok(stored)
    }

    /// Before inserting under `fingerprint`: a new cassette gets a complete (empty) index
    /// for it; indexes for other rules stop being complete.
    fn prepare_cassette_for_insert(
        &self,
        cassette: &str,
        fingerprint: u64,
    ) -> Result<(), StoreError> {
        if self.prepared_for(cassette) == Some(fingerprint) {
            return Ok(());
        }
        let prefix = cassette_prefix(cassette);
        if !self.has_cassette(cassette)? {
            self.inner
                .cassettes
                .insert(cassette.as_bytes(), &b"{}"[..])?;
        }
        let empty = self
            .inner
            .interactions
            .scan_prefix(&prefix)
            .next()
            .is_none();
        let marker = index_marker(cassette, fingerprint);
        let mut complete = self.complete();
        for stale in self.inner.indexes.scan_prefix(&prefix).keys() {
            let stale = stale?;
            if stale != marker[..] {
                self.inner.indexes.remove(&stale)?;
                complete.remove(stale.as_ref());
            }
        }
        if empty {
            self.inner.indexes.insert(&marker, &[][..])?;
            complete.insert(marker);
        }
        drop(complete);
        self.set_prepared_for(cassette, Some(fingerprint));
        Ok(())
    }

    fn prepared_for(&self, cassette: &str) -> Option<u64> {
        let prepared = self.inner.prepared_for.lock();
        prepared
            .unwrap_or_else(|e| e.into_inner())
            .get(cassette)
            .copied()
    }

    /// `None` forgets: the next insert prepares the cassette again.
    fn set_prepared_for(&self, cassette: &str, fingerprint: Option<u64>) {
        let mut prepared = self
            .inner
            .prepared_for
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match fingerprint {
            Some(fingerprint) => {
                prepared.insert(cassette.to_owned(), fingerprint);
            }
            None => {
                prepared.remove(cassette);
            }
        }
    }

    /// Whether `cassette` is known to be indexed for `fingerprint` (a memory check).
    pub fn index_ready(&self, cassette: &str, fingerprint: u64) -> bool {
        self.complete()
            .contains(&index_marker(cassette, fingerprint))
    }

    /// Whether the store holds an index of `cassette` for the rules `fingerprint`, built
    /// before (complete or not yet marked so in this process).
    pub fn index_built(&self, cassette: &str, fingerprint: u64) -> Result<bool, StoreError> {
        Ok(self.index_ready(cassette, fingerprint)
            || self
                .inner
                .indexes
                .contains_key(index_marker(cassette, fingerprint))?)
    }

    /// Makes sure `cassette` is indexed for the rules `fingerprint`, building the index
    /// from the stored interactions (once) when the rules have changed since.
    pub fn ensure_index(
        &self,
        cassette: &str,
        fingerprint: u64,
        key_of: KeyFn<'_>,
    ) -> Result<(), StoreError> {
        let marker = index_marker(cassette, fingerprint);
        if self.complete().contains(&marker) {
            return Ok(());
        }
        let _guard = self
            .inner
            .index_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !self.inner.indexes.contains_key(&marker)? {
            let mut fingerprint_prefix = cassette_prefix(cassette);
            fingerprint_prefix.extend_from_slice(&fingerprint.to_be_bytes());
            for key in self.inner.index.scan_prefix(&fingerprint_prefix).keys() {
                self.inner.index.remove(key?)?;
            }
            let mut entries = Vec::new();
            for entry in self
                .inner
                .interactions
                .scan_prefix(cassette_prefix(cassette))
            {
                let (data_key, value) = entry?;
                let interaction = decode(&data_key, &value)?;
                let mut index_key = episode_prefix(cassette, fingerprint, &key_of(&interaction));
                index_key.extend_from_slice(&interaction.id.to_be_bytes());
                entries.push(index_key);
            }
            let count = entries.len();
            self.insert_index_entries(entries)?;
            self.inner.indexes.insert(&marker, &[][..])?;
            self.inner.episodes.forget(cassette);
            // A complete index for other rules than the last insert's: the next insert
            // must mark it stale again.
            self.set_prepared_for(cassette, None);
            tracing::info!(
                cassette,
                interactions = count,
                "indexed cassette for the current match rules"
            );
        }
        self.complete().insert(marker);
        Ok(())
    }

    /// The episode that answers `key` in `cassette` under `policy`. Call
    /// [`Store::ensure_index`] for the same fingerprint first.
    pub fn next_episode(
        &self,
        cassette: &str,
        fingerprint: u64,
        key: &MatchKey,
        policy: EpisodePolicy,
    ) -> Result<Lookup, StoreError> {
        let ids = self.episode_ids(cassette, fingerprint, key)?;
        let mut episodes: Vec<(Vec<u8>, Option<StoredReply>)> = Vec::with_capacity(ids.len());
        for id in ids {
            let mut data_key = cassette_prefix(cassette);
            data_key.extend_from_slice(&id);
            episodes.push((data_key, None));
        }
        if let Some(cutoff) = policy.recorded_after {
            let mut fresh = Vec::with_capacity(episodes.len());
            for (data_key, _) in episodes {
                let Some(value) = self.inner.interactions.get(&data_key)? else {
                    continue;
                };
                let reply = decode_reply(&data_key, &value)?;
                let recorded = humantime::parse_rfc3339_weak(&reply.recorded_at).ok();
                if recorded.is_some_and(|at| at >= cutoff) {
                    fresh.push((data_key, Some(reply)));
                }
            }
            episodes = fresh;
        }
        let count = episodes.len();
        if count == 0 {
            return Ok(Lookup::Absent);
        }
        let index = {
            let mut cursors = self.inner.cursors.lock().unwrap_or_else(|e| e.into_inner());
            if !cursors.contains_key(cassette) {
                cursors.insert(cassette.to_owned(), HashMap::new());
            }
            let Some(per_cassette) = cursors.get_mut(cassette) else {
                return Ok(Lookup::Absent); // not reached: inserted just above
            };
            let served = per_cassette
                .entry(cursor_key(fingerprint, key))
                .or_insert(0);
            let done = *served as usize;
            let chosen = match (policy.order, policy.exhausted) {
                (ReplayOrder::First, _) => Some(0),
                (ReplayOrder::Sequential, _) if done < count => Some(done),
                (ReplayOrder::Sequential, Exhausted::RepeatLast) => Some(count - 1),
                (ReplayOrder::Sequential, Exhausted::Cycle) => Some(done % count),
                (ReplayOrder::Sequential, Exhausted::Miss | Exhausted::Forward) => None,
            };
            if chosen.is_some() {
                *served = served.saturating_add(1);
            }
            chosen
        };
        let Some(index) = index else {
            return Ok(Lookup::Exhausted { count });
        };
        let (data_key, decoded) = episodes.swap_remove(index);
        let reply = match decoded {
            Some(reply) => reply,
            None => match self.inner.interactions.get(&data_key)? {
                Some(value) => decode_reply(&data_key, &value)?,
                None => return Ok(Lookup::Absent),
            },
        };
        Ok(Lookup::Hit(Box::new(Episode {
            reply,
            index,
            count,
        })))
    }

    /// Whether `key` has any recording in `cassette`, without serving an episode (so a
    /// caller can decide between replaying and forwarding before touching any cursor).
    /// Call [`Store::ensure_index`] for the same fingerprint first.
    pub fn is_recorded(
        &self,
        cassette: &str,
        fingerprint: u64,
        key: &MatchKey,
    ) -> Result<bool, StoreError> {
        Ok(!self.episode_ids(cassette, fingerprint, key)?.is_empty())
    }

    /// The ids of `key`'s episodes in recording order: from memory when this request was
    /// looked up before, else from the index.
    fn episode_ids(
        &self,
        cassette: &str,
        fingerprint: u64,
        key: &MatchKey,
    ) -> Result<Vec<episodes::Id>, StoreError> {
        let cursor = cursor_key(fingerprint, key);
        let generation = match self.inner.episodes.get(cassette, cursor) {
            Ok(ids) => return Ok(ids),
            Err(generation) => generation,
        };
        let prefix = episode_prefix(cassette, fingerprint, key);
        let mut ids = Vec::new();
        for index_key in self.inner.index.scan_prefix(&prefix).keys() {
            let index_key = index_key?;
            let mut id = [0u8; 8];
            if let Some(tail) = index_key.get(index_key.len().saturating_sub(8)..) {
                id.copy_from_slice(tail);
            }
            ids.push(id);
        }
        self.inner.episodes.put(generation, cassette, cursor, &ids);
        Ok(ids)
    }

    /// Reads the episode ids of every request of `cassette` under the rules
    /// `fingerprint` into memory, so the first lookup of each does not read sled's
    /// index: a test suite replays most of its requests once per run, and at 100,000
    /// interactions an index read costs as much again as the lookup (BENCHMARKS.md).
    /// Meant for a thread of its own after start-up; stops early once `cancelled` is
    /// set, the cassette is written (lookups then read sled as before) or the memory's
    /// bound is reached. Does nothing until the cassette is indexed for these rules.
    /// Returns how many requests it remembered.
    pub fn warm_episodes(
        &self,
        cassette: &str,
        fingerprint: u64,
        cancelled: &AtomicBool,
    ) -> Result<usize, StoreError> {
        /// Requests handed over per lock of the memory, which lookups share.
        const BATCH: usize = 1024;
        if !self.index_ready(cassette, fingerprint) {
            return Ok(0);
        }
        let episodes = &self.inner.episodes;
        let generation = episodes.generation();
        let marker = index_marker(cassette, fingerprint);
        let mut batch: Vec<(CursorKey, Vec<episodes::Id>)> = Vec::with_capacity(BATCH);
        let mut current: Option<(MatchKey, Vec<episodes::Id>)> = None;
        let mut remembered = 0;
        let mut hand_over = |batch: &mut Vec<(CursorKey, Vec<episodes::Id>)>| {
            let outcome = episodes.put_all(generation, cassette, batch);
            batch.clear();
            match outcome {
                Some((added, room_left)) => {
                    remembered += added;
                    room_left && !cancelled.load(Ordering::Relaxed)
                }
                None => false,
            }
        };
        for index_key in self.inner.index.scan_prefix(&marker).keys() {
            let index_key = index_key?;
            // marker, the request's 32-byte match key, the interaction's 8-byte id.
            let Some((key, id)) = index_key
                .get(marker.len()..)
                .and_then(|rest| rest.split_at_checked(32))
            else {
                continue;
            };
            let (Ok(key), Ok(id)) = (<[u8; 32]>::try_from(key), <[u8; 8]>::try_from(id)) else {
                continue;
            };
            let key = MatchKey(key);
            match &mut current {
                Some((same, ids)) if *same == key => ids.push(id),
                _ => {
                    if let Some((done, ids)) = current.replace((key, vec![id])) {
                        batch.push((cursor_key(fingerprint, &done), ids));
                        if batch.len() == BATCH && !hand_over(&mut batch) {
                            return Ok(remembered);
                        }
                    }
                }
            }
        }
        if let Some((done, ids)) = current {
            batch.push((cursor_key(fingerprint, &done), ids));
        }
        hand_over(&mut batch);
        Ok(remembered)
    }

    /// Forgets how far sequential replay has got, for every cassette.
    pub fn reset_cursors(&self) {
        self.inner
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Every interaction of `cassette`, in recording order, read as iterated: an export of
    /// a large cassette need not hold it all.
    pub fn each_interaction(
        &self,
        cassette: &str,
    ) -> impl Iterator<Item = Result<Interaction, StoreError>> + 'static {
        self.inner
            .interactions
            .scan_prefix(cassette_prefix(cassette))
            .map(|entry| {
                let (key, value) = entry?;
                decode(&key, &value)
            })
    }

    /// Up to `limit` interactions of `cassette`, in recording order.
    pub fn interactions(
        &self,
        cassette: &str,
        limit: usize,
    ) -> Result<Vec<Interaction>, StoreError> {
        let mut out = Vec::new();
        for entry in self
            .inner
            .interactions
            .scan_prefix(cassette_prefix(cassette))
            .take(limit)
        {
            let (key, value) = entry?;
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }

    /// Removes interactions recorded before `cutoff`; returns how many. Indexes of the
    /// cassette are rebuilt on next use.
    pub async fn prune(&self, cassette: &str, cutoff: SystemTime) -> Result<u64, StoreError> {
        let mut removed = 0;
        {
            let _guard = self
                .inner
                .index_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for entry in self
                .inner
                .interactions
                .scan_prefix(cassette_prefix(cassette))
            {
                let (key, value) = entry?;
                let interaction = decode(&key, &value)?;
                let old = humantime::parse_rfc3339_weak(&interaction.recorded_at)
                    .is_ok_and(|at| at < cutoff);
                if old {
                    self.inner.interactions.remove(&key)?;
                    removed += 1;
                }
            }
            if removed > 0 {
                self.drop_indexes(cassette)?;
            }
        }
        self.flush().await?;
        Ok(removed)
    }

    fn drop_indexes(&self, cassette: &str) -> Result<(), StoreError> {
        let prefix = cassette_prefix(cassette);
        for key in self.inner.index.scan_prefix(&prefix).keys() {
            self.inner.index.remove(key?)?;
        }
        for key in self.inner.indexes.scan_prefix(&prefix).keys() {
            self.inner.indexes.remove(key?)?;
        }
        self.inner.episodes.forget(cassette);
        self.set_prepared_for(cassette, None);
        self.complete().retain(|k| !k.starts_with(&prefix));
        self.inner
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(cassette);
        Ok(())
    }

    /// Whether a cassette named `cassette` exists (with or without interactions): one
    /// key read, where [`Store::cassettes`] counts every cassette's interactions.
    pub fn has_cassette(&self, cassette: &str) -> Result<bool, StoreError> {
        Ok(self.inner.cassettes.contains_key(cassette.as_bytes())?)
    }

    /// Every cassette with its interaction count.
    pub fn cassettes(&self) -> Result<Vec<CassetteInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.cassettes.iter() {
            let (name, _) = entry?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let interactions = self
                .inner
                .interactions
                .scan_prefix(cassette_prefix(&name))
                .keys()
                .count() as u64;
            out.push(CassetteInfo { name, interactions });
        }
        Ok(out)
    }

    /// Removes a cassette; returns how many interactions it held, or `None` if unknown.
    pub async fn delete_cassette(&self, cassette: &str) -> Result<Option<u64>, StoreError> {
        let removed = {
            let _guard = self
                .inner
                .index_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !self.has_cassette(cassette)? {
                return Ok(None);
            }
            let mut removed = 0;
            for key in self
                .inner
                .interactions
                .scan_prefix(cassette_prefix(cassette))
                .keys()
            {
                self.inner.interactions.remove(key?)?;
                removed += 1;
            }
            self.drop_indexes(cassette)?;
            self.inner.cassettes.remove(cassette.as_bytes())?;
            removed
        };
        self.flush().await?;
        Ok(Some(removed))
    }

    /// Total bytes on disk: what sled reports, plus the audit trail's files.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0) + self.audit().size_on_disk()
    }

    /// Final flush and owner-file removal at shutdown.
    pub fn close(&self) -> Result<(), StoreError> {
        self.flush_now()?;
        let _ = std::fs::remove_file(self.inner.path.join(OWNER_FILE));
        Ok(())
    }

    /// Closes the store and releases its lock, so the same process can open it again.
    /// Fails if another clone of this handle is still alive.
    pub fn close_and_release(self) -> Result<(), StoreError> {
        self.close()?;
        let path = self.inner.path.clone();
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                drop(inner);
                Ok(())
            }
            Err(_) => Err(StoreError::Io(format!(
                "cassette store {} is still in use inside this process",
                path.display()
            ))),
        }
    }

    /// [`Store::close_and_release`], then opens the store once more and closes it: sled
    /// 0.34 writes its recovery snapshot only while opening a store, so otherwise the next
    /// start replays everything written since this one opened from the log (after an
    /// import of 100,000 interactions, a quarter to half a second). The cost moves to here, off the next start.
    /// Compacting is an optimisation: if the store cannot be opened again (another
    /// process took it in the meantime), the store stays as closed and this says so.
    pub fn close_and_compact(self) -> Result<(), StoreError> {
        /// sled's I/O threads can hold the file lock for a moment after the last handle
        /// is dropped, and there is nothing to await for them.
        const LOCK_WAIT: Duration = Duration::from_secs(2);
        let path = self.inner.path.clone();
        let cache_capacity_bytes = self.inner.cache_capacity_bytes;
        self.close_and_release()?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Store::open(&path, cache_capacity_bytes) {
                Ok(store) => return store.close_and_release(),
                Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "the store is closed but not compacted: its next start replays this run's writes from sled's log"
                    );
                    return Ok(());
                }
            }
        }
    }
}

impl Store {
    /// The audit trail's files.
    pub fn audit(&self) -> AuditFiles<'_> {
        AuditFiles {
            dir: &self.inner.audit_dir,
        }
    }
}

fn cassette_prefix(cassette: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(cassette.len() + 1 + 8 + 32 + 8);
    prefix.extend_from_slice(cassette.as_bytes());
    prefix.push(0);
    prefix
}

fn index_marker(cassette: &str, fingerprint: u64) -> Vec<u8> {
    let mut marker = cassette_prefix(cassette);
    marker.extend_from_slice(&fingerprint.to_be_bytes());
    marker
}

/// A request's cursor within its cassette: 128 bits of its match key (a BLAKE3 hash, so
/// any 128 of its bits are as good as all 256 against collisions) mixed with the rules'
/// fingerprint. 24 bytes an entry with its count, a third of the full 40-byte key's.
type CursorKey = [u64; 2];

fn cursor_key(fingerprint: u64, key: &MatchKey) -> CursorKey {
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&key.0[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    [
        word(0) ^ fingerprint,
        word(8) ^ word(16).rotate_left(32) ^ word(24),
    ]
}

fn episode_prefix(cassette: &str, fingerprint: u64, key: &MatchKey) -> Vec<u8> {
    let mut prefix = index_marker(cassette, fingerprint);
    prefix.extend_from_slice(&key.0);
    prefix
}

fn decode(key: &[u8], value: &[u8]) -> Result<Interaction, StoreError> {
    Interaction::from_bytes(value).map_err(|e| undecodable(key, e))
}

/// Replay's read: the response side only (see [`StoredReply`]).
fn decode_reply(key: &[u8], value: &[u8]) -> Result<StoredReply, StoreError> {
    StoredReply::from_bytes(value).map_err(|e| undecodable(key, e))
}

fn undecodable(key: &[u8], error: StoredFormError) -> StoreError {
    if let StoredFormError::NewerSchema { found } = error {
        return StoreError::NewerSchema { found };
    }
    StoreError::Decode {
        key: format!(
            "an interaction of cassette {:?}",
            String::from_utf8_lossy(key.split(|b| *b == 0).next().unwrap_or(b""))
        ),
        detail: error.to_string(),
    }
}

fn classify_open_error(path: &Path, error: sled::Error) -> StoreError {
    let detail = error.to_string();
    match error {
        sled::Error::Io(ref io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || detail.contains("could not acquire lock") =>
        {
            let holder = Store::read_owner(path)
                .map(|owner| format!(" (pid {})", owner.pid))
                .unwrap_or_default();
            StoreError::Locked {
                path: path.to_owned(),
                holder,
            }
        }
        sled::Error::Corruption { .. } => StoreError::Corrupt {
            path: path.to_owned(),
            detail,
        },
        _ => StoreError::Open {
            path: path.to_owned(),
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{RecordedRequest, RecordedResponse};
    use bytes::Bytes;

    fn interaction(cassette: &str, status: u16) -> Interaction {
        Interaction {
            schema: SCHEMA_VERSION,
            id: 0,
            cassette: cassette.to_owned(),
            recorded_at: "2026-01-01T00:00:00Z".to_owned(),
            upstream_latency_ms: 1.0,
            request: RecordedRequest {
                method: "GET".into(),
                uri: "/v1.0/x".into(),
                host: None,
                headers: vec![],
                body: Bytes::new(),
            },
            response: RecordedResponse {
                status,
                headers: vec![],
                body: Bytes::new(),
            },
        }
    }

    /// Lets every other task on the test's single-threaded runtime run until it waits.
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    /// Far longer than the tests' bound: a flush that waited it out would fail them.
    const LONG_DELAY: Duration = Duration::from_secs(600);
    const BOUND: Duration = Duration::from_secs(20);

    fn delayed_store(dir: &Path) -> Store {
        let store = Store::open(dir, 1 << 20).expect("open");
        store.start_flusher(LONG_DELAY);
        store
    }

    /// An unannounced writer appending under `MatchKey([1; 32])`, on a task of its own.
    fn append_in_background(
        store: &Store,
    ) -> tokio::task::JoinHandle<Result<Interaction, StoreError>> {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .append(1, MatchKey([1; 32]), interaction("c", 200))
                .await
        })
    }

    #[tokio::test]
    async fn a_flush_waits_for_announced_writers_and_covers_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = delayed_store(dir.path());
        let announced = store.intend_write();
        let early = append_in_background(&store);
        settle().await;
        assert!(
            !early.is_finished(),
            "the flush waits for the announced writer"
        );
        assert_eq!(store.flushes(), 0);
        let late = tokio::time::timeout(
            BOUND,
            store.append_intended(announced, 1, MatchKey([2; 32]), interaction("c", 201)),
        )
        .await
        .expect("the last announced writer ends the wait")
        .expect("append");
        let early = tokio::time::timeout(BOUND, early)
            .await
            .expect("the early writer is flushed too")
            .expect("task")
            .expect("append");
        assert_ne!(early.id, late.id);
        assert_eq!(store.flushes(), 1, "both writers shared one flush");
        assert!(store.is_recorded("c", 1, &MatchKey([1; 32])).expect("read"));
        assert!(store.is_recorded("c", 1, &MatchKey([2; 32])).expect("read"));
    }

    /// The flusher inserts a round's interactions itself: in the order their writers
    /// asked, so one request's episodes keep their order however the round is shared.
    #[tokio::test]
    async fn a_shared_round_inserts_in_the_order_writers_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = delayed_store(dir.path());
        let announced = store.intend_write();
        let mut writers = Vec::new();
        for status in [200, 201, 202] {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                store
                    .append(1, MatchKey([1; 32]), interaction("c", status))
                    .await
            }));
            settle().await;
        }
        assert_eq!(
            store.flushes(),
            0,
            "the round waits for the announced writer"
        );
        let last = tokio::time::timeout(
            BOUND,
            store.append_intended(announced, 1, MatchKey([1; 32]), interaction("c", 203)),
        )
        .await
        .expect("the last announced writer ends the wait")
        .expect("append");
        let mut stored = Vec::new();
        for writer in writers {
            let interaction = tokio::time::timeout(BOUND, writer)
                .await
                .expect("flushed in the same round")
                .expect("task")
                .expect("append");
            stored.push(interaction);
        }
        stored.push(last);
        assert_eq!(store.flushes(), 1, "all four shared one flush");
        let statuses: Vec<u16> = stored.iter().map(|i| i.response.status).collect();
        assert_eq!(statuses, [200, 201, 202, 203]);
        assert!(
            stored.windows(2).all(|pair| pair[0].id < pair[1].id),
            "ids follow the order of asking: {:?}",
            stored.iter().map(|i| i.id).collect::<Vec<_>>()
        );
        assert!(stored.iter().all(|i| i.schema == SCHEMA_VERSION));
        let listed = store.interactions("c", 10).expect("list");
        assert_eq!(listed, stored, "stored as answered, in recording order");
    }

    #[tokio::test]
    async fn a_writer_that_gives_up_does_not_hold_the_flush_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = delayed_store(dir.path());
        let announced = store.intend_write();
        let waiting = append_in_background(&store);
        settle().await;
        assert!(!waiting.is_finished());
        // Its upstream failed: nothing to store.
        drop(announced);
        tokio::time::timeout(BOUND, waiting)
            .await
            .expect("flushed once the announcement is withdrawn")
            .expect("task")
            .expect("append");
        assert_eq!(store.flushes(), 1);
    }

    #[tokio::test]
    async fn a_lone_writer_is_flushed_without_a_delay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = delayed_store(dir.path());
        for status in [200, 201] {
            let announced = store.intend_write();
            tokio::time::timeout(
                BOUND,
                store.append_intended(announced, 1, MatchKey([1; 32]), interaction("c", status)),
            )
            .await
            .expect("no other writer to wait for")
            .expect("append");
        }
        assert_eq!(store.flushes(), 2);
    }

    /// A store written before schema 2 holds JSON values; they replay and list as they
    /// did, next to binary ones. A value from a newer graphvcr, or a damaged one, is a
    /// specific error for that lookup, not a panic or someone else's answer.
    #[tokio::test]
    async fn values_of_every_stored_form_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.start_flusher(Duration::ZERO);
        let policy = EpisodePolicy {
            order: ReplayOrder::First,
            exhausted: Exhausted::RepeatLast,
            recorded_after: None,
        };
        let mut old = interaction("c", 201);
        old.response.body = Bytes::from_static(b"{\"id\":\"old\"}");
        old.response.headers = vec![crate::record::Header::new("x-form", b"json")];
        let old = store
            .append(1, MatchKey([1; 32]), old)
            .await
            .expect("append");
        let new = store
            .append(1, MatchKey([2; 32]), interaction("c", 202))
            .await
            .expect("append");
        let data_key = |id: u64| {
            let mut key = cassette_prefix("c");
            key.extend_from_slice(&id.to_be_bytes());
            key
        };
        // Rewritten as schema 1 wrote it.
        let mut as_v1 = old.clone();
        as_v1.schema = 1;
        let json = serde_json::to_vec(&as_v1).expect("json");
        assert_eq!(json.first(), Some(&b'{'));
        store
            .inner
            .interactions
            .insert(data_key(old.id), json)
            .expect("rewrite");

        let reply = |key: u8| match store.next_episode("c", 1, &MatchKey([key; 32]), policy) {
            Ok(Lookup::Hit(episode)) => Ok(episode.reply),
            Ok(other) => panic!("not a hit: {other:?}"),
            Err(e) => Err(e),
        };
        let from_json = reply(1).expect("JSON value reads");
        assert_eq!(from_json.schema, 1);
        assert_eq!(from_json.id, old.id);
        assert_eq!(from_json.response.status, 201);
        assert_eq!(from_json.response.body, old.response.body);
        assert_eq!(from_json.response.headers["x-form"], "json");
        let from_binary = reply(2).expect("binary value reads");
        assert_eq!(from_binary.schema, SCHEMA_VERSION);
        assert_eq!(from_binary.response.status, 202);
        let listed = store.interactions("c", 10).expect("list");
        assert_eq!(listed, vec![as_v1, new.clone()]);

        store
            .inner
            .interactions
            .insert(data_key(new.id), &b"\xb2\x09newer"[..])
            .expect("rewrite");
        assert!(
            matches!(reply(2), Err(StoreError::NewerSchema { found: 9 })),
            "{:?}",
            reply(2)
        );
        store
            .inner
            .interactions
            .insert(data_key(new.id), &b"garbage"[..])
            .expect("rewrite");
        let damaged = reply(2).expect_err("garbage");
        assert!(
            matches!(&damaged, StoreError::Decode { key, .. } if key.contains("\"c\"")),
            "{damaged}"
        );
        assert!(damaged.to_string().contains("first byte 0x67"), "{damaged}");
        assert_eq!(reply(1).expect("others still read").id, old.id);
    }

    /// A bulk insert writes its index entries after its records, sorted: every record is
    /// found, episodes keep their insertion order, and only an index that was complete
    /// before is marked complete after.
    #[tokio::test]
    async fn a_bulk_insert_indexes_every_record_and_marks_only_complete_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        // Keys in an order unlike their sorted one; status 200 + i, two episodes of key 7.
        let key = |status: u16| MatchKey([((status - 200) % 8 * 37 % 256) as u8; 32]);
        let key_of = |i: &Interaction| key(i.response.status % 100 + 200);
        let batch = |statuses: &[u16]| {
            statuses
                .iter()
                .map(|&status| (key(status % 100 + 200), interaction("c", status)))
                .collect::<Vec<_>>()
        };
        let first = |fingerprint, status: u16| {
            let policy = EpisodePolicy {
                order: ReplayOrder::First,
                exhausted: Exhausted::RepeatLast,
                recorded_after: None,
            };
            match store
                .next_episode("c", fingerprint, &key(status), policy)
                .expect("read")
            {
                Lookup::Hit(episode) => (episode.reply.response.status, episode.count),
                other => panic!("{status}: {other:?}"),
            }
        };
        store
            .insert_all(1, batch(&[205, 207, 201, 203, 307, 200]))
            .expect("insert");
        assert!(store.index_ready("c", 1) && store.index_built("c", 1).expect("read"));
        for status in [200, 201, 203, 205] {
            assert_eq!(first(1, status), (status, 1));
        }
        assert_eq!(first(1, 207), (207, 2), "the earlier episode first");

        // Under other rules the cassette is not empty, so their index is incomplete, and
        // a bulk insert must not mark it complete.
        store.insert_all(2, batch(&[202])).expect("insert");
        assert!(
            !store.index_built("c", 1).expect("read"),
            "rules 1 went stale"
        );
        assert!(
            !store.index_built("c", 2).expect("read"),
            "never built for rules 2"
        );
        store.ensure_index("c", 2, &key_of).expect("index rules 2");
        for status in [200, 202, 203] {
            assert_eq!(first(2, status), (status, 1));
        }
        assert_eq!(first(2, 207), (207, 2));
        store.insert_all(2, batch(&[204])).expect("insert");
        assert!(
            store.index_built("c", 2).expect("read"),
            "complete before, so after"
        );
        assert_eq!(first(2, 204), (204, 1));

        // As a restart sees it: the markers are in sled, not only in memory.
        store.close_and_release().expect("close");
        let store = Store::open(dir.path(), 1 << 20).expect("reopen");
        assert!(!store.index_ready("c", 2), "nothing in memory yet");
        assert!(store.index_built("c", 2).expect("read"));
        assert!(!store.index_built("c", 1).expect("read"));
    }

    /// Lookups remember episode ids; every kind of index write must show through.
    #[tokio::test]
    async fn lookups_see_every_index_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.start_flusher(Duration::ZERO);
        let key = MatchKey([3; 32]);
        let policy = EpisodePolicy {
            order: ReplayOrder::First,
            exhausted: Exhausted::RepeatLast,
            recorded_after: None,
        };
        let count = |fingerprint| match store
            .next_episode("c", fingerprint, &key, policy)
            .expect("read")
        {
            Lookup::Hit(episode) => episode.count,
            Lookup::Exhausted { count } => count,
            Lookup::Absent => 0,
        };
        assert_eq!(count(1), 0);
        store
            .append(1, key, interaction("c", 200))
            .await
            .expect("append");
        assert!(store.is_recorded("c", 1, &key).expect("read"));
        assert_eq!(count(1), 1);
        assert_eq!(count(1), 1, "now from memory");
        store
            .append(1, key, interaction("c", 201))
            .await
            .expect("append");
        assert_eq!(count(1), 2, "a new episode shows at once");
        // Re-indexing under other rules, then back: the first index is rebuilt.
        store
            .ensure_index("c", 2, &|_| key)
            .expect("index under rules 2");
        assert_eq!(count(2), 2);
        store
            .append(2, key, interaction("c", 202))
            .await
            .expect("append");
        assert_eq!(count(2), 3);
        store
            .ensure_index("c", 1, &|_| key)
            .expect("re-index rules 1");
        assert_eq!(count(1), 3, "rebuilt, not remembered from before");
        let cutoff = SystemTime::now();
        assert_eq!(store.prune("c", cutoff).await.expect("prune"), 3);
        store.ensure_index("c", 1, &|_| key).expect("re-index");
        assert_eq!(count(1), 0, "pruned episodes are gone");
        store
            .append(1, key, interaction("c", 200))
            .await
            .expect("append");
        assert_eq!(count(1), 1);
        store
            .insert_all(1, vec![(key, interaction("c", 201))])
            .expect("bulk insert");
        assert_eq!(count(1), 2, "a bulk insert shows through");
        assert_eq!(store.delete_cassette("c").await.expect("delete"), Some(2));
        assert_eq!(count(1), 0, "a deleted cassette answers nothing");
        assert!(!store.is_recorded("c", 1, &key).expect("read"));
    }

    #[tokio::test]
    async fn warming_remembers_every_request_as_its_lookup_would() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.start_flusher(Duration::ZERO);
        let never = AtomicBool::new(false);
        assert_eq!(
            store.warm_episodes("c", 1, &never).expect("warm"),
            0,
            "not indexed yet"
        );
        let keys: Vec<MatchKey> = (0..1500u16)
            .map(|n| {
                let mut key = [0u8; 32];
                key[..2].copy_from_slice(&n.to_be_bytes());
                key[31] = 7;
                MatchKey(key)
            })
            .collect();
        for (n, key) in keys.iter().enumerate() {
            store
                .append(1, *key, interaction("c", 200 + (n % 50) as u16))
                .await
                .expect("append");
        }
        // A second episode for one request, and another cassette that must stay apart.
        store
            .append(1, keys[3], interaction("c", 299))
            .await
            .expect("append");
        store
            .append(1, keys[0], interaction("other", 201))
            .await
            .expect("append");
        let expected: Vec<Vec<episodes::Id>> = keys
            .iter()
            .map(|key| {
                let prefix = episode_prefix("c", 1, key);
                store
                    .inner
                    .index
                    .scan_prefix(&prefix)
                    .keys()
                    .map(|k| {
                        let k = k.expect("index key");
                        <[u8; 8]>::try_from(&k[k.len() - 8..]).expect("id")
                    })
                    .collect()
            })
            .collect();
        store.inner.episodes.forget("c");
        assert_eq!(store.warm_episodes("c", 1, &never).expect("warm"), 1500);
        for (key, ids) in keys.iter().zip(&expected) {
            assert_eq!(
                store.inner.episodes.get("c", cursor_key(1, key)).as_ref(),
                Ok(ids),
                "remembered as the index holds it"
            );
        }
        assert_eq!(expected[3].len(), 2);
        assert!(store
            .inner
            .episodes
            .get("other", cursor_key(1, &keys[0]))
            .is_err());
        assert_eq!(
            store.warm_episodes("c", 1, &never).expect("warm"),
            0,
            "once"
        );
        let policy = EpisodePolicy {
            order: ReplayOrder::Sequential,
            exhausted: Exhausted::RepeatLast,
            recorded_after: None,
        };
        match store
            .next_episode("c", 1, &keys[3], policy)
            .expect("lookup")
        {
            Lookup::Hit(episode) => assert_eq!((episode.index, episode.count), (0, 2)),
            _ => panic!("a warmed request is found"),
        }
        // Cancelled before the first hand-over: the first batch is kept, no more.
        store.inner.episodes.forget("c");
        let cancelled = AtomicBool::new(true);
        assert_eq!(store.warm_episodes("c", 1, &cancelled).expect("warm"), 1024);
    }

    #[tokio::test]
    async fn episodes_replay_in_order_then_repeat_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.start_flusher(Duration::ZERO);
        let key = MatchKey([7; 32]);
        for status in [429, 200] {
            store
                .append(1, key, interaction("c", status))
                .await
                .expect("append");
        }
        let policy = |exhausted| EpisodePolicy {
            order: ReplayOrder::Sequential,
            exhausted,
            recorded_after: None,
        };
        let served = |exhausted| match store
            .next_episode("c", 1, &key, policy(exhausted))
            .expect("read")
        {
            Lookup::Hit(episode) => {
                format!("{}#{}", episode.reply.response.status, episode.index)
            }
            Lookup::Exhausted { count } => format!("exhausted after {count}"),
            Lookup::Absent => "absent".to_owned(),
        };
        let repeat: Vec<String> = (0..4).map(|_| served(Exhausted::RepeatLast)).collect();
        assert_eq!(repeat, ["429#0", "200#1", "200#1", "200#1"]);
        store.reset_cursors();
        let cycle: Vec<String> = (0..3).map(|_| served(Exhausted::Cycle)).collect();
        assert_eq!(cycle, ["429#0", "200#1", "429#0"]);
        store.reset_cursors();
        let miss: Vec<String> = (0..3).map(|_| served(Exhausted::Miss)).collect();
        assert_eq!(miss, ["429#0", "200#1", "exhausted after 2"]);
        assert!(matches!(
            store.next_episode("other", 1, &key, policy(Exhausted::RepeatLast)),
            Ok(Lookup::Absent)
        ));
        assert_eq!(
            store.cassettes().expect("list"),
            vec![CassetteInfo {
                name: "c".into(),
                interactions: 2
            }]
        );
    }

    #[tokio::test]
    async fn changed_rules_reindex_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.start_flusher(Duration::ZERO);
        store
            .append(1, MatchKey([1; 32]), interaction("c", 200))
            .await
            .expect("append");
        let policy = EpisodePolicy {
            order: ReplayOrder::First,
            exhausted: Exhausted::RepeatLast,
            recorded_after: None,
        };
        store
            .ensure_index("c", 2, &|_| MatchKey([2; 32]))
            .expect("index");
        assert!(matches!(
            store.next_episode("c", 2, &MatchKey([2; 32]), policy),
            Ok(Lookup::Hit(_))
        ));
        assert!(matches!(
            store.next_episode("c", 2, &MatchKey([1; 32]), policy),
            Ok(Lookup::Absent)
        ));
        // Writing under fingerprint 2 makes the index for 1 stale: it is rebuilt on use.
        store
            .append(2, MatchKey([2; 32]), interaction("c", 201))
            .await
            .expect("append");
        store
            .ensure_index("c", 1, &|i| MatchKey([i.response.status as u8; 32]))
            .expect("reindex");
        assert!(matches!(
            store.next_episode("c", 1, &MatchKey([201u16 as u8; 32]), policy),
            Ok(Lookup::Hit(_))
        ));
        assert_eq!(store.interactions("c", 10).expect("list").len(), 2);
        // The store remembers which rules it last prepared "c" for; building the index
        // for other rules in between must still make the next write mark that index
        // stale.
        store
            .append(1, MatchKey([3; 32]), interaction("c", 202))
            .await
            .expect("append");
        store
            .ensure_index("c", 2, &|_| MatchKey([2; 32]))
            .expect("index");
        assert!(store.index_ready("c", 2));
        store
            .append(1, MatchKey([3; 32]), interaction("c", 203))
            .await
            .expect("append");
        assert!(!store.index_ready("c", 2), "rules 2's index is stale again");
        store
            .ensure_index("c", 2, &|_| MatchKey([2; 32]))
            .expect("reindex");
        let Ok(Lookup::Hit(episode)) = store.next_episode("c", 2, &MatchKey([2; 32]), policy)
        else {
            panic!("rules 2 answer");
        };
        assert_eq!(
            episode.count, 4,
            "every interaction, the last write's included"
        );
    }

    #[tokio::test]
    async fn compacting_on_close_keeps_everything_and_releases_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.start_flusher(Duration::ZERO);
        for status in [200, 201, 202] {
            store
                .append(1, MatchKey([status as u8; 32]), interaction("c", status))
                .await
                .expect("append");
        }
        store
            .audit()
            .append(&[(1, b"record".to_vec())], b"head")
            .expect("audit");
        store.close_and_compact().expect("compact");
        let reopened = Store::open(dir.path(), 1 << 20).expect("the lock is released");
        let statuses: Vec<u16> = reopened
            .interactions("c", 10)
            .expect("list")
            .iter()
            .map(|i| i.response.status)
            .collect();
        assert_eq!(statuses, [200, 201, 202]);
        assert_eq!(reopened.audit().len(), 1);
        assert_eq!(
            reopened.audit().head().expect("head").as_deref(),
            Some(&b"head"[..])
        );
    }

    #[test]
    fn a_second_open_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.write_owner(&Owner {
            pid: 4242,
            admin: None,
        });
        let error = Store::open(dir.path(), 1 << 20)
            .err()
            .expect("second open fails");
        let text = error.to_string();
        assert!(matches!(error, StoreError::Locked { .. }), "{text}");
        assert!(
            text.contains(&dir.path().display().to_string()) && text.contains("4242"),
            "{text}"
        );
    }
}
