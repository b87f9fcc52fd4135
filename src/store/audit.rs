//! The audit trail's storage: opaque record bytes in sequence order, packed into
//! segments, plus two small values (the anchor left by pruning and the head after the
//! last append). The record format and the hash chain belong to `audit`; this only keeps
//! bytes in order.
//!
//! Why segments: sled 0.34 splits leaves every 16 keys and logs each insert with its
//! share of a leaf rewrite, so one key per ~1.4 KB record cost about 7 KB of log writes
//! and most of the proxy's CPU under replay load. A segment packs consecutive records
//! of one append (up to [`SEGMENT_BYTES`]), so sled sees a few inserts per round of the
//! writer instead of one per exchange.
//!
//! Why no sled batches: `apply_batch` takes a process-wide lock exclusively, and after
//! the first batch sled makes every read in the process take that lock shared. Replay's
//! lookups then queued behind each audit round (p99 at concurrency 64 was 10-19 ms with
//! batches, 7.5-8.6 ms without). Order does the batch's job instead, because sled
//! recovers a prefix of the writes it was given: an append inserts its segments oldest
//! first and then the head, so a crash leaves the head at or behind the last record
//! (the writer resumes from the last record); a pruning moves the anchor first and then
//! removes the records up to it, so a crash leaves records at or before the anchor,
//! which readers of the chain skip and the next writer removes ([`AuditTree::prune`]
//! again with the same anchor).
//!
//! Keys: `s` + the sequence number of the segment's *last* record (8 bytes, big-endian),
//! so key order is append order and a segment's key survives trimming its oldest records.
//! A segment's value is a run of frames: `seq` (u64 BE), `len` (u32 BE), `len` bytes.
//! Keys `r` + sequence number hold one record each (the layout before segments); they
//! sort before every `s` key and read as one-record segments, so older stores keep
//! working. `m/anchor` and `m/head` are the chain's ends.

use super::StoreError;

/// sled tree of the audit trail.
pub const AUDIT_TREE: &str = "audit";
/// One record per key: the layout before segments, still read.
const SINGLE: u8 = b'r';
const SEGMENT: u8 = b's';
const ANCHOR: &[u8] = b"m/anchor";
const HEAD: &[u8] = b"m/head";
/// A segment is closed at this size; an append of more writes several.
/// Small on purpose: sled keeps 16 values to a leaf and holds whole leaves in memory, so
/// with 64 KiB segments the writer's leaves alone took ~40 MiB of RSS under load; with
/// 4 KiB (about three records) it is a few MiB, and sled still sees a third of the
/// inserts.
pub const SEGMENT_BYTES: usize = 4 * 1024;
const FRAME_HEADER: usize = 12;

/// Records as `(seq, bytes)`, oldest first.
pub type Records = Vec<(u64, Vec<u8>)>;

fn key(kind: u8, seq: u64) -> [u8; 9] {
    let mut key = [kind; 9];
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn key_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(1..9)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

fn damaged(key: &[u8], detail: &str) -> StoreError {
    let key = match (key.first(), key_seq(key)) {
        (Some(&SEGMENT), Some(seq)) => format!("the audit segment ending at record {seq}"),
        (Some(&SINGLE), Some(seq)) => format!("audit record {seq}"),
        _ => format!("audit key {key:?}"),
    };
    StoreError::Decode {
        key,
        detail: detail.to_owned(),
    }
}

/// Visits the records of one stored value, oldest first, as `(seq, bytes)` borrowed
/// from the value; stops at the first frame that is cut short.
fn for_each_record<'v>(
    key: &[u8],
    value: &'v [u8],
    mut visit: impl FnMut(u64, &'v [u8]),
) -> Result<(), StoreError> {
    let seq = key_seq(key).ok_or_else(|| damaged(key, "not a sequence number"))?;
    match key.first() {
        Some(&SINGLE) => {
            visit(seq, value);
            Ok(())
        }
        Some(&SEGMENT) => {
            let mut rest = value;
            while !rest.is_empty() {
                let (header, body) = rest
                    .split_at_checked(FRAME_HEADER)
                    .ok_or_else(|| damaged(key, "segment frame cut short"))?;
                let (seq_bytes, len_bytes) = header.split_at(8);
                let record_seq = u64::from_be_bytes(seq_bytes.try_into().unwrap_or([0; 8]));
                let len = u32::from_be_bytes(len_bytes.try_into().unwrap_or([0; 4])) as usize;
                let (bytes, after) = body
                    .split_at_checked(len)
                    .ok_or_else(|| damaged(key, "segment frame cut short"))?;
                visit(record_seq, bytes);
                rest = after;
            }
            Ok(())
        }
        _ => Err(damaged(key, "not an audit record key")),
    }
}

/// The records of one stored value, oldest first.
fn decode(key: &[u8], value: &[u8]) -> Result<Records, StoreError> {
    let mut records = Vec::new();
    for_each_record(key, value, |seq, bytes| records.push((seq, bytes.to_vec())))?;
    Ok(records)
}

/// How many records a stored value holds and the newest of them, without copying the
/// others: what retention needs to decide on a whole segment.
fn summary(key: &[u8], value: &[u8]) -> Result<SegmentEnd, StoreError> {
    let mut records = 0;
    let mut last = None;
    for_each_record(key, value, |seq, bytes| {
        records += 1;
        last = Some((seq, bytes));
    })?;
    let (seq, bytes) = last.ok_or_else(|| damaged(key, "segment without records"))?;
    Ok(SegmentEnd {
        records,
        last: (seq, bytes.to_vec()),
    })
}

/// A stored value's record count and newest record `(seq, bytes)`.
pub struct SegmentEnd {
    pub records: usize,
    pub last: (u64, Vec<u8>),
}

/// The first record's sequence number, without copying the segment.
fn first_seq(key: &[u8], value: &[u8]) -> Option<u64> {
    match key.first() {
        Some(&SINGLE) => key_seq(key),
        Some(&SEGMENT) => Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?)),
        _ => None,
    }
}

fn encode(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let size = records
        .iter()
        .map(|(_, b)| FRAME_HEADER + b.len())
        .sum::<usize>();
    let mut value = Vec::with_capacity(size);
    for (seq, bytes) in records {
        value.extend_from_slice(&seq.to_be_bytes());
        // A record over 4 GiB cannot occur (bodies are capped far below); saturate rather
        // than wrap if it ever did, so the frame reads back as cut short, not as garbage.
        value.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        value.extend_from_slice(bytes);
    }
    value
}

/// Splits records into segments of at most [`SEGMENT_BYTES`] (a bigger record gets one
/// to itself).
fn segments(records: &[(u64, Vec<u8>)]) -> Vec<&[(u64, Vec<u8>)]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, (_, bytes)) in records.iter().enumerate() {
        let frame = FRAME_HEADER + bytes.len();
        if i > start && size + frame > SEGMENT_BYTES {
            out.push(&records[start..i]);
            start = i;
            size = 0;
        }
        size += frame;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// The audit trail's tree; see the module documentation.
pub struct AuditTree<'a> {
    pub(super) tree: &'a sled::Tree,
}

impl AuditTree<'_> {
    fn values(&self) -> impl DoubleEndedIterator<Item = sled::Result<(sled::IVec, sled::IVec)>> {
        self.tree.range(&[SINGLE][..]..&[SEGMENT + 1][..])
    }

    /// Appends records (in sequence order), then moves the head; see the module
    /// documentation for why in that order and not as a batch. Not flushed: the caller
    /// relies on the store's flush policy (sled's periodic flush, the group flusher, the
    /// final flush). On an error, a prefix of the records may be in place.
    pub fn append(&self, records: &[(u64, Vec<u8>)], head: &[u8]) -> Result<(), StoreError> {
        for segment in segments(records) {
            if let Some((last, _)) = segment.last() {
                self.tree
                    .insert(&key(SEGMENT, *last)[..], encode(segment))?;
            }
        }
        self.tree.insert(HEAD, head)?;
        Ok(())
    }

    /// Every record, oldest first, as `(seq, bytes)`.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        self.values().flat_map(|entry| {
            let decoded = entry
                .map_err(StoreError::from)
                .and_then(|(key, value)| decode(&key, &value));
            let (records, error) = match decoded {
                Ok(records) => (records, None),
                Err(error) => (Vec::new(), Some(error)),
            };
            records.into_iter().map(Ok).chain(error.map(Err))
        })
    }

    /// Segments oldest first, each as its record count and newest record: what retention
    /// walks, stopping at the first it keeps.
    pub fn oldest_segments(&self) -> impl Iterator<Item = Result<SegmentEnd, StoreError>> + '_ {
        self.values().map(|entry| {
            let (key, value) = entry?;
            summary(&key, &value)
        })
    }

    /// The newest record.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self.values().next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry?;
                Ok(decode(&key, &value)?.pop())
            }
        }
    }

    /// How many records there are, without reading them: records are appended in
    /// sequence and pruned from the oldest, so they are numbered contiguously from the
    /// first to the last (a scan took 140-200 ms at every start-up with 100,000 records).
    pub fn count(&self) -> Result<u64, StoreError> {
        let mut values = self.values();
        let Some(first) = values.next() else {
            return Ok(0);
        };
        let (first_key, first_value) = first?;
        let first = first_seq(&first_key, &first_value)
            .ok_or_else(|| damaged(&first_key, "segment without records"))?;
        let last = match values.next_back() {
            Some(last) => key_seq(&last?.0).unwrap_or(first),
            None => key_seq(&first_key).unwrap_or(first),
        };
        Ok(last.saturating_sub(first) + 1)
    }

    /// How many records there are, counted one by one (for tests of [`Self::count`]).
    pub fn len(&self) -> usize {
        self.records().count()
    }

    pub fn is_empty(&self) -> bool {
        self.values().next().is_none()
    }

    /// The anchor left by the last pruning.
    pub fn anchor(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(ANCHOR)?.map(|v| v.to_vec()))
    }

    /// The head written with the last append.
    pub fn head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(HEAD)?.map(|v| v.to_vec()))
    }

    /// Sets the anchor, then removes every record up to and including `through`, oldest
    /// first (see the module documentation for why in that order). Returns how many
    /// records were removed. Retention passes a segment's last record, so whole segments
    /// go; a segment cut in the middle is rewritten. Running it again with the same
    /// arguments finishes a pruning that was cut short.
    pub fn prune(&self, through: u64, anchor: &[u8]) -> Result<usize, StoreError> {
        self.tree.insert(ANCHOR, anchor)?;
        let mut removed = 0;
        for entry in self.values() {
            let (key, value) = entry?;
            // A value whose last record is within the cut goes whole, unread.
            if key_seq(&key).is_some_and(|last| last <= through) {
                removed += summary(&key, &value)?.records;
                self.tree.remove(key)?;
                continue;
            }
            let records = decode(&key, &value)?;
            let keep: Vec<(u64, Vec<u8>)> = records
                .iter()
                .filter(|(seq, _)| *seq > through)
                .cloned()
                .collect();
            removed += records.len() - keep.len();
            if keep.is_empty() {
                self.tree.remove(key)?;
            } else {
                if keep.len() < records.len() {
                    self.tree.insert(key, encode(&keep))?;
                }
                break;
            }
        }
        Ok(removed)
    }

    /// The oldest record's sequence number.
    pub fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        match self.values().next() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry?;
                first_seq(&key, &value)
                    .map(Some)
                    .ok_or_else(|| damaged(&key, "segment without records"))
            }
        }
    }

    /// Finds the stored value holding record `seq` (or where it would go).
    fn holder(&self, seq: u64) -> Result<Option<(sled::IVec, Records)>, StoreError> {
        if let Some(value) = self.tree.get(key(SINGLE, seq))? {
            return Ok(Some((
                key(SINGLE, seq)[..].into(),
                vec![(seq, value.to_vec())],
            )));
        }
        match self
            .tree
            .range(&key(SEGMENT, seq)[..]..&[SEGMENT + 1][..])
            .next()
        {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry?;
                let records = decode(&key, &value)?;
                Ok(Some((key, records)))
            }
        }
    }

    /// Writes raw bytes as the segment ending at `last`, framed or not: damage that
    /// `audit verify` must report.
    #[cfg(test)]
    pub(crate) fn tamper_raw(&self, last: u64, value: &[u8]) -> Result<(), StoreError> {
        self.tree.insert(key(SEGMENT, last), value)?;
        Ok(())
    }

    /// Replaces, inserts (`Some`) or removes (`None`) one record's bytes in place, leaving
    /// the head, the anchor and every other record as they are: what someone editing the
    /// store's files could do. For tests of `audit verify`; graphvcr never calls it.
    pub fn tamper(&self, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), StoreError> {
        let Some((holder, mut records)) = self.holder(seq)? else {
            if let Some(bytes) = bytes {
                self.tree
                    .insert(key(SEGMENT, seq), encode(&[(seq, bytes)]))?;
            }
            return Ok(());
        };
        records.retain(|(s, _)| *s != seq);
        if let Some(bytes) = bytes {
            let at = records.partition_point(|(s, _)| *s < seq);
            records.insert(at, (seq, bytes));
        }
        if records.is_empty() {
            self.tree.remove(holder)?;
        } else if holder.first() == Some(&SINGLE) {
            self.tree.insert(holder, records.remove(0).1)?;
        } else {
            self.tree.insert(holder, encode(&records))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Store;

    fn records(range: std::ops::RangeInclusive<u64>, size: usize) -> Vec<(u64, Vec<u8>)> {
        range.map(|seq| (seq, vec![seq as u8; size])).collect()
    }

    #[test]
    fn count_follows_appends_and_pruning_without_a_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let audit = store.audit();
        assert_eq!(audit.count().expect("count"), 0);
        audit.append(&records(1..=5, 1), b"head").expect("append");
        assert_eq!(audit.count().expect("count"), 5);
        assert_eq!(audit.prune(2, b"anchor").expect("prune"), 2);
        assert_eq!(audit.count().expect("count"), 3);
        assert_eq!(audit.count().expect("count"), audit.len() as u64);
        assert_eq!(audit.prune(5, b"anchor").expect("prune"), 3);
        assert_eq!(audit.count().expect("count"), 0);
        assert!(audit.is_empty());
    }

    #[test]
    fn big_appends_span_segments_and_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let audit = store.audit();
        // 100 records of 2 KB: more than three segments.
        let written = records(1..=100, 2000);
        audit.append(&written, b"head").expect("append");
        audit
            .append(&records(101..=103, 10), b"head2")
            .expect("append");
        let read: Vec<(u64, Vec<u8>)> = audit.records().map(|r| r.expect("read")).collect();
        assert_eq!(read.len(), 103);
        assert_eq!(read[..100], written[..]);
        assert_eq!(audit.count().expect("count"), 103);
        assert_eq!(audit.last().expect("last").map(|(s, _)| s), Some(103));
        let oldest = audit.oldest_segments().next().expect("a segment");
        let oldest = oldest.expect("oldest");
        assert!(oldest.records < 100);
        assert_eq!(oldest.last, written[oldest.records - 1]);
        assert_eq!(audit.head().expect("head").as_deref(), Some(&b"head2"[..]));
    }

    #[test]
    fn older_one_record_keys_read_before_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let audit = store.audit();
        for seq in 1..=2u64 {
            audit
                .tree
                .insert(super::key(super::SINGLE, seq), vec![seq as u8])
                .expect("legacy");
        }
        audit.append(&records(3..=4, 1), b"head").expect("append");
        let seqs: Vec<u64> = audit.records().map(|r| r.expect("read").0).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(audit.count().expect("count"), 4);
        assert_eq!(audit.prune(3, b"anchor").expect("prune"), 3);
        assert_eq!(audit.count().expect("count"), 1);
    }

    #[test]
    fn tampering_edits_removes_and_restores_one_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let audit = store.audit();
        audit.append(&records(1..=4, 1), b"head").expect("append");
        audit.tamper(2, Some(b"edited".to_vec())).expect("edit");
        audit.tamper(3, None).expect("remove");
        let read: Vec<(u64, Vec<u8>)> = audit.records().map(|r| r.expect("read")).collect();
        assert_eq!(
            read,
            vec![(1, vec![1]), (2, b"edited".to_vec()), (4, vec![4])]
        );
        audit.tamper(3, Some(vec![3])).expect("restore");
        audit.tamper(2, Some(vec![2])).expect("restore");
        let read: Vec<(u64, Vec<u8>)> = audit.records().map(|r| r.expect("read")).collect();
        assert_eq!(read, records(1..=4, 1));
        // Past the end: a new segment.
        audit.tamper(9, Some(vec![9])).expect("insert");
        assert_eq!(audit.last().expect("last"), Some((9, vec![9])));
    }

    #[test]
    fn a_cut_short_segment_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        let audit = store.audit();
        audit.tamper_raw(7, &[0, 0, 0]).expect("insert");
        let results: Vec<_> = audit.records().collect();
        assert!(matches!(results.as_slice(), [Err(_)]), "{results:?}");
    }
}
