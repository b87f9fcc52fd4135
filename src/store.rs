//! The cassette store: the only module that touches sled.
//!
//! Layout: one tree of interactions keyed `cassette \0 match-key(32) id(8, big-endian)`,
//! so all episodes of one request sit together in recording order and a lookup is one
//! prefix scan of that request's own episodes, never of the cassette. A second tree
//! lists cassette names. A third, `audit`, holds the audit trail (see [`AuditTree`]).
//!
//! Durability is group commit: writers insert, then wait on a shared flusher that runs
//! one `flush` for every writer that arrived while the previous flush ran. Concurrent
//! requests share fsyncs instead of queueing behind each other's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::matching::MatchKey;
use crate::record::{Interaction, SCHEMA_VERSION};

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
    #[error("stored interaction {key} cannot be read: {detail}")]
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
    pub interaction: Interaction,
    /// 0-based position among the recordings of this request.
    pub index: usize,
    pub count: usize,
}

type FlushWaiter = oneshot::Sender<Result<(), String>>;

/// Handle to the open store; clones share one sled database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: sled::Db,
    interactions: sled::Tree,
    cassettes: sled::Tree,
    audit: sled::Tree,
    /// Episodes served so far per `cassette \0 key`, for sequential replay.
    cursors: Mutex<HashMap<Vec<u8>, usize>>,
    flush_requests: mpsc::UnboundedSender<FlushWaiter>,
    flush_receiver: Mutex<Option<mpsc::UnboundedReceiver<FlushWaiter>>>,
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
        let cassettes = db.open_tree("cassettes")?;
        let audit = db.open_tree(AUDIT_TREE)?;
        let (flush_requests, flush_receiver) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db,
                interactions,
                cassettes,
                audit,
                cursors: Mutex::new(HashMap::new()),
                flush_requests,
                flush_receiver: Mutex::new(Some(flush_receiver)),
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
    pub fn start_flusher(&self) {
        let receiver = self
            .inner
            .flush_receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut receiver) = receiver else {
            return;
        };
        let db = self.inner.db.clone();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let mut waiters = vec![first];
                while let Ok(next) = receiver.try_recv() {
                    waiters.push(next);
                }
                let db = db.clone();
                let result = match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(error) => Err(format!("flush task failed: {error}")),
                };
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        });
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (sender, receiver) = oneshot::channel();
        self.inner
            .flush_requests
            .send(sender)
            .map_err(|_| StoreError::Closed)?;
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(StoreError::Io(detail)),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Flushes synchronously; for shutdown and for commands without a runtime flusher.
    pub fn flush_now(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Stores `interaction` under `key` and returns once it is durable. Assigns the id.
    pub async fn append(
        &self,
        key: MatchKey,
        mut interaction: Interaction,
    ) -> Result<Interaction, StoreError> {
        self.insert(key, &mut interaction)?;
        self.flush().await?;
        Ok(interaction)
    }

    /// Inserts without waiting for durability (imports flush once at the end).
    fn insert(&self, key: MatchKey, interaction: &mut Interaction) -> Result<(), StoreError> {
        interaction.id = self.inner.db.generate_id()?;
        interaction.schema = SCHEMA_VERSION;
        let mut record_key = episode_prefix(&interaction.cassette, &key);
        record_key.extend_from_slice(&interaction.id.to_be_bytes());
        if !self
            .inner
            .cassettes
            .contains_key(interaction.cassette.as_bytes())?
        {
            self.inner
                .cassettes
                .insert(interaction.cassette.as_bytes(), &b"{}"[..])?;
        }
        self.inner
            .interactions
            .insert(record_key, interaction.to_bytes())?;
        Ok(())
    }

    /// The next episode for `key` in `cassette`: recorded order, and after the last one
    /// the last keeps answering. `None` when the request was never recorded.
    pub fn next_episode(
        &self,
        cassette: &str,
        key: &MatchKey,
    ) -> Result<Option<Episode>, StoreError> {
        let prefix = episode_prefix(cassette, key);
        let mut cursors = self.inner.cursors.lock().unwrap_or_else(|e| e.into_inner());
        let served = cursors.get(&prefix).copied().unwrap_or(0);
        let mut count = 0;
        let mut chosen = None;
        for entry in self.inner.interactions.scan_prefix(&prefix) {
            let (record_key, value) = entry?;
            if count <= served {
                chosen = Some((record_key, value));
            }
            count += 1;
        }
        let Some((record_key, value)) = chosen else {
            return Ok(None);
        };
        let index = served.min(count - 1);
        cursors.insert(prefix, served.saturating_add(1));
        drop(cursors);
        let interaction = decode(&record_key, &value)?;
        Ok(Some(Episode {
            interaction,
            index,
            count,
        }))
    }

    /// Forgets how far sequential replay has got, for every cassette.
    pub fn reset_cursors(&self) {
        self.inner
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Up to `limit` interactions of `cassette`, in key order (grouped by request).
    pub fn interactions(
        &self,
        cassette: &str,
        limit: usize,
    ) -> Result<Vec<Interaction>, StoreError> {
        let mut prefix = cassette.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for entry in self.inner.interactions.scan_prefix(&prefix).take(limit) {
            let (key, value) = entry?;
            out.push(decode(&key, &value)?);
        }
        Ok(out)
    }

    /// Every cassette with its interaction count.
    pub fn cassettes(&self) -> Result<Vec<CassetteInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.cassettes.iter() {
            let (name, _) = entry?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let mut prefix = name.as_bytes().to_vec();
            prefix.push(0);
            let interactions = self.inner.interactions.scan_prefix(&prefix).keys().count() as u64;
            out.push(CassetteInfo { name, interactions });
        }
        Ok(out)
    }

    /// Removes a cassette; returns how many interactions it held, or `None` if unknown.
    pub async fn delete_cassette(&self, cassette: &str) -> Result<Option<u64>, StoreError> {
        if !self.inner.cassettes.contains_key(cassette.as_bytes())? {
            return Ok(None);
        }
        let mut prefix = cassette.as_bytes().to_vec();
        prefix.push(0);
        let mut removed = 0;
        for key in self.inner.interactions.scan_prefix(&prefix).keys() {
            self.inner.interactions.remove(key?)?;
            removed += 1;
        }
        self.inner.cassettes.remove(cassette.as_bytes())?;
        self.inner
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !k.starts_with(&prefix));
        self.flush().await?;
        Ok(Some(removed))
    }

    /// Inserts already-built interactions (an import), keeping their order as episodes.
    pub fn insert_all(
        &self,
        records: impl IntoIterator<Item = (MatchKey, Interaction)>,
    ) -> Result<usize, StoreError> {
        let mut count = 0;
        for (key, mut interaction) in records {
            self.insert(key, &mut interaction)?;
            count += 1;
        }
        self.flush_now()?;
        Ok(count)
    }

    /// Total bytes sled reports on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Final flush and owner-file removal at shutdown.
    pub fn close(&self) -> Result<(), StoreError> {
        self.flush_now()?;
        let _ = std::fs::remove_file(self.inner.path.join(OWNER_FILE));
        Ok(())
    }
}

/// sled tree of the audit trail. Keys: `r` + sequence number (8 bytes, big-endian) for
/// records, so key order is append order; `m/anchor` and `m/head` for the chain's ends.
/// Tests that tamper with the trail open this tree directly.
pub const AUDIT_TREE: &str = "audit";
const AUDIT_RECORD: u8 = b'r';
const AUDIT_ANCHOR: &[u8] = b"m/anchor";
const AUDIT_HEAD: &[u8] = b"m/head";

/// The key of audit record `seq`.
pub fn audit_key(seq: u64) -> [u8; 9] {
    let mut key = [AUDIT_RECORD; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn audit_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// The audit trail's storage: opaque record bytes by sequence number, plus two small
/// values (the anchor left by pruning and the head after the last append). The record
/// format and the hash chain belong to `audit`; this only keeps bytes in order.
pub struct AuditTree<'a> {
    tree: &'a sled::Tree,
}

impl Store {
    /// The audit trail's tree.
    pub fn audit(&self) -> AuditTree<'_> {
        AuditTree {
            tree: &self.inner.audit,
        }
    }
}

impl AuditTree<'_> {
    /// Appends records and moves the head, atomically. Not flushed: the caller relies on
    /// the store's flush policy (sled's periodic flush, the group flusher, the final flush).
    pub fn append(&self, records: &[(u64, Vec<u8>)], head: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (seq, bytes) in records {
            batch.insert(&audit_key(*seq)[..], bytes.as_slice());
        }
        batch.insert(AUDIT_HEAD, head);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Every record, oldest first, as `(seq, bytes)`.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        self.tree.scan_prefix([AUDIT_RECORD]).map(|entry| {
            let (key, value) = entry?;
            let seq = audit_seq(&key).ok_or_else(|| StoreError::Decode {
                key: format!("audit key {key:?}"),
                detail: "not a sequence number".to_owned(),
            })?;
            Ok((seq, value.to_vec()))
        })
    }

    /// The oldest record.
    pub fn first(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.records().next().transpose()
    }

    /// The newest record.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.tree.scan_prefix([AUDIT_RECORD]).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry?;
                Ok(audit_seq(&key).map(|seq| (seq, value.to_vec())))
            }
        }
    }

    /// How many records there are (a key scan: for start-up and metrics, not per request).
    pub fn len(&self) -> usize {
        self.tree.scan_prefix([AUDIT_RECORD]).keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.scan_prefix([AUDIT_RECORD]).next().is_none()
    }

    /// The anchor left by the last pruning.
    pub fn anchor(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(AUDIT_ANCHOR)?.map(|v| v.to_vec()))
    }

    /// The head written with the last append.
    pub fn head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(AUDIT_HEAD)?.map(|v| v.to_vec()))
    }

    /// Removes every record up to and including `through`, and sets the anchor, atomically.
    pub fn prune(&self, through: u64, anchor: &[u8]) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for key in self
            .tree
            .range(&audit_key(0)[..]..=&audit_key(through)[..])
            .keys()
        {
            batch.remove(key?);
            removed += 1;
        }
        batch.insert(AUDIT_ANCHOR, anchor);
        self.tree.apply_batch(batch)?;
        Ok(removed)
    }
}

fn episode_prefix(cassette: &str, key: &MatchKey) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(cassette.len() + 1 + 32 + 8);
    prefix.extend_from_slice(cassette.as_bytes());
    prefix.push(0);
    prefix.extend_from_slice(&key.0);
    prefix
}

fn decode(key: &[u8], value: &[u8]) -> Result<Interaction, StoreError> {
    let interaction = Interaction::from_bytes(value).map_err(|e| StoreError::Decode {
        key: String::from_utf8_lossy(key.split(|b| *b == 0).next().unwrap_or(b"")).into_owned(),
        detail: e.to_string(),
    })?;
    if interaction.schema > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: interaction.schema,
        });
    }
    Ok(interaction)
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

    #[tokio::test]
    async fn episodes_replay_in_order_then_repeat_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        store.start_flusher();
        let key = MatchKey([7; 32]);
        for status in [429, 200] {
            store
                .append(key, interaction("c", status))
                .await
                .expect("append");
        }
        let statuses: Vec<(u16, usize)> = (0..4)
            .map(|_| {
                let episode = store.next_episode("c", &key).expect("read").expect("hit");
                (episode.interaction.response.status, episode.index)
            })
            .collect();
        assert_eq!(statuses, vec![(429, 0), (200, 1), (200, 1), (200, 1)]);
        assert!(store.next_episode("other", &key).expect("read").is_none());
        assert_eq!(
            store.cassettes().expect("list"),
            vec![CassetteInfo {
                name: "c".into(),
                interactions: 2
            }]
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
