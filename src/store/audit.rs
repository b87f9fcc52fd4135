//! The audit trail's storage: opaque record bytes in sequence order, appended to files in
//! `<store>/audit/`, plus two small files (the anchor left by pruning and the head after
//! the last synced append). The record format and the hash chain belong to `audit`; this
//! only keeps bytes in order.
//!
//! Why files and not sled: the trail is append-only and pruned from the oldest end, which
//! is what a log file does for free. In sled it cost about half of the audit writer's CPU
//! (sled logs several times the bytes it stores for small values), retention pulled long
//! evicted pages back into sled's cache to delete them, and the trail's pages shared that
//! cache with the cassettes'. Here an append is one `write` per round of the writer and a
//! pruning deletes whole files.
//!
//! Layout: `<first seq, 20 digits>.log` files, each a run of frames `seq` (u64 BE),
//! `len` (u32 BE), `crc32` (u32 BE, of seq, len and the bytes), then `len` bytes. A file is
//! named after its first record, so name order is sequence order, and a file's record
//! count is the next file's first sequence number minus its own.
//!
//! Crash safety, by order rather than transactions:
//! - an append writes frames at the end of the newest file; only the newest file can end
//!   in a torn frame, since a file is synced before the next one is started. Readers take
//!   a frame cut short at the end of the newest file as the end of the trail (a write in
//!   progress); the writer cuts such a tail off when it starts ([`AuditFiles::repair_tail`]);
//! - the head moves only after the newest file is synced ([`AuditFiles::set_head`]), so it
//!   is always at or behind the last durable record;
//! - a pruning writes and syncs the anchor first, then deletes files, so a crash leaves
//!   records at or before the anchor, which readers of the chain skip and the next writer
//!   removes ([`AuditFiles::prune`] again with the same anchor).
//!
//! Stores written before the trail moved to files kept it in the sled tree
//! [`LEGACY_TREE`]; [`migrate_legacy`] moves it here once, when the store opens.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// Directory of the trail inside the store directory.
pub const AUDIT_DIR: &str = "audit";
/// sled tree that held the trail in older stores.
pub const LEGACY_TREE: &str = "audit";
const ANCHOR_FILE: &str = "anchor";
const HEAD_FILE: &str = "head";
const EXTENSION: &str = "log";
/// A file is closed at this size (or at the writer's record limit per file, whichever
/// comes first); retention deletes whole files, so this is its granularity too.
pub const FILE_BYTES: u64 = 4 << 20;
const FRAME_HEADER: usize = 16;

/// Records as `(seq, bytes)`, oldest first.
pub type Records = Vec<(u64, Vec<u8>)>;

fn io(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {error}", path.display()))
}

fn file_name(first: u64) -> String {
    format!("{first:020}.{EXTENSION}")
}

fn frame_crc(seq: u64, len: u32, bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_be_bytes());
    hasher.update(&len.to_be_bytes());
    hasher.update(bytes);
    hasher.finalize()
}

fn push_frame(out: &mut Vec<u8>, seq: u64, bytes: &[u8]) {
    // A record over 4 GiB cannot occur (bodies are capped far below); saturate rather than
    // wrap if it ever did, so the frame reads back as cut short, not as garbage.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&frame_crc(seq, len, bytes).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Why a file's frames stop before its end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    CutShort,
    Checksum,
}

/// A file's frames as `(seq, byte range)`, and where and why they stop if they do before
/// the end of the data.
struct Scan {
    records: Vec<(u64, std::ops::Range<usize>)>,
    valid: usize,
    stop: Option<Stop>,
}

/// A frame header's sequence number, length and checksum.
fn frame_header(header: &[u8]) -> (u64, u32, u32) {
    let field = |range: std::ops::Range<usize>| header.get(range).unwrap_or(&[]);
    (
        u64::from_be_bytes(field(0..8).try_into().unwrap_or([0; 8])),
        u32::from_be_bytes(field(8..12).try_into().unwrap_or([0; 4])),
        u32::from_be_bytes(field(12..16).try_into().unwrap_or([0; 4])),
    )
}

/// [`scan`]'s last record and stop for a file of `size` bytes, read a frame at a time:
/// retention needs only a file's last record, and reading a whole file and copying out
/// its records made each pruning a spike of twice the file's size in the proxy's memory.
fn last_frame(mut reader: impl Read, size: u64) -> std::io::Result<LastFrame> {
    let mut last: Option<(u64, Vec<u8>)> = None;
    let mut body = Vec::new();
    let mut at = 0u64;
    let mut header = [0u8; FRAME_HEADER];
    let stop = loop {
        if at == size {
            break None;
        }
        if size - at < FRAME_HEADER as u64 {
            break Some(Stop::CutShort);
        }
        reader.read_exact(&mut header)?;
        let (seq, len, crc) = frame_header(&header);
        at += FRAME_HEADER as u64;
        // Checked against the size before allocating: a damaged length is not a request
        // for gigabytes.
        if size - at < u64::from(len) {
            break Some(Stop::CutShort);
        }
        body.resize(len as usize, 0);
        reader.read_exact(&mut body)?;
        at += u64::from(len);
        if frame_crc(seq, len, &body) != crc {
            break Some(Stop::Checksum);
        }
        // The previous frame's buffer takes the next frame.
        if let Some((_, buffer)) = last.replace((seq, std::mem::take(&mut body))) {
            body = buffer;
        }
    };
    Ok((last, stop))
}

/// A file's last whole record, and where its frames stop early if they do.
type LastFrame = (Option<(u64, Vec<u8>)>, Option<Stop>);

fn scan(data: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut at = 0;
    let stop = loop {
        let Some(header) = data.get(at..at + FRAME_HEADER) else {
            break (at < data.len()).then_some(Stop::CutShort);
        };
        let (seq, len, crc) = frame_header(header);
        let start = at + FRAME_HEADER;
        let Some(bytes) = data.get(start..start + len as usize) else {
            break Some(Stop::CutShort);
        };
        if frame_crc(seq, len, bytes) != crc {
            break Some(Stop::Checksum);
        }
        records.push((seq, start..start + len as usize));
        at = start + len as usize;
    };
    Scan {
        records,
        valid: at,
        stop,
    }
}

/// One log file: its name's sequence number and path.
#[derive(Debug, Clone)]
pub struct LogFile {
    pub first: u64,
    path: PathBuf,
}

impl LogFile {
    fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The records of one file, and whether its frames stop early.
struct FileRecords {
    records: Records,
    stop: Option<Stop>,
}

/// The audit trail's files; see the module documentation.
pub struct AuditFiles<'a> {
    pub(super) dir: &'a Path,
}

impl AuditFiles<'_> {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn damaged(&self, file: &LogFile, stop: Stop) -> StoreError {
        StoreError::Decode {
            key: format!("the audit file {}", file.name()),
            detail: match stop {
                Stop::CutShort => "a record is cut short".to_owned(),
                Stop::Checksum => "a record's checksum does not match".to_owned(),
            },
        }
    }

    /// The log files, oldest first.
    pub fn files(&self) -> Result<Vec<LogFile>, StoreError> {
        let entries = match fs::read_dir(self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("cannot list the audit trail in", self.dir, e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io("cannot list the audit trail in", self.dir, e))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&format!(".{EXTENSION}")))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            files.push(LogFile {
                first,
                path: entry.path(),
            });
        }
        files.sort_by_key(|f| f.first);
        Ok(files)
    }

    /// Reads one file; `None` if it is gone (pruned meanwhile).
    fn read(&self, file: &LogFile) -> Result<Option<FileRecords>, StoreError> {
        let data = match fs::read(&file.path) {
            Ok(data) => data,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot read", &file.path, e)),
        };
        let scan = scan(&data);
        let records = scan
            .records
            .iter()
            .map(|(seq, range)| (*seq, data[range.clone()].to_vec()))
            .collect();
        Ok(Some(FileRecords {
            records,
            stop: scan.stop,
        }))
    }

    /// A file's records for a reader, and the damage they stop at if any; a frame cut
    /// short at the end of the newest file is no damage but a write in progress (or a
    /// crash's torn tail).
    fn read_partial(
        &self,
        file: &LogFile,
        newest: bool,
    ) -> Result<(Records, Option<StoreError>), StoreError> {
        let Some(read) = self.read(file)? else {
            return Ok((Vec::new(), None));
        };
        Ok((read.records, self.damage(file, read.stop, newest)))
    }

    /// Where a file's frames stop, as damage: a frame cut short at the end of the newest
    /// file is none but a write in progress (or a crash's torn tail).
    fn damage(&self, file: &LogFile, stop: Option<Stop>, newest: bool) -> Option<StoreError> {
        match stop {
            None => None,
            Some(Stop::CutShort) if newest => None,
            Some(stop) => Some(self.damaged(file, stop)),
        }
    }

    /// A file's records; damage is an error.
    fn read_checked(&self, file: &LogFile, newest: bool) -> Result<Records, StoreError> {
        match self.read_partial(file, newest)? {
            (records, None) => Ok(records),
            (_, Some(damage)) => Err(damage),
        }
    }

    /// Appends records (in sequence order) to the newest file, starting a new file when
    /// it reaches [`FILE_BYTES`] or `records_per_file`; returns the last sequence number
    /// of each file it closed. Not synced: [`Self::set_head`] syncs before it moves the
    /// head. On an error a prefix of the records may be in place, possibly ending in a
    /// torn frame ([`Self::repair_tail`] cuts it off).
    pub fn write(
        &self,
        records: &[(u64, Vec<u8>)],
        records_per_file: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.write_at(&mut AuditTail::default(), records, records_per_file)
    }

    /// [`Self::write`] for the one writer, which keeps the newest file open in `tail`
    /// from round to round instead of listing the directory and reopening the file.
    pub fn write_at(
        &self,
        tail: &mut AuditTail,
        records: &[(u64, Vec<u8>)],
        records_per_file: u64,
    ) -> Result<Vec<u64>, StoreError> {
        let mut closed = Vec::new();
        let Some((first_seq, _)) = records.first() else {
            return Ok(closed);
        };
        // Whatever fails below leaves the file's end unknown: reopened next time.
        let mut current = match tail.open.take() {
            Some(file) => Some(file),
            None => self.open_newest(*first_seq)?,
        };
        // One allocation for the round's frames (a file switch empties it, keeping room).
        let mut buffer =
            Vec::with_capacity(records.iter().map(|(_, b)| FRAME_HEADER + b.len()).sum());
        for (seq, bytes) in records {
            let frame = (FRAME_HEADER + bytes.len()) as u64;
            let full = current.as_ref().is_none_or(|f| {
                f.records > 0
                    && (f.size + frame > FILE_BYTES || f.records >= records_per_file.max(1))
            });
            if full {
                if let Some(mut file) = current.take() {
                    closed.push(seq.saturating_sub(1));
                    file.write(&mut buffer)?;
                    // Only the newest file may end torn: the one before is synced first.
                    file.handle
                        .sync_data()
                        .map_err(|e| io("cannot sync", &file.path, e))?;
                }
                let path = self.path(&file_name(*seq));
                let handle = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| io("cannot create", &path, e))?;
                current = Some(OpenFile {
                    handle,
                    path,
                    size: 0,
                    records: 0,
                });
            }
            if let Some(file) = current.as_mut() {
                push_frame(&mut buffer, *seq, bytes);
                file.size += frame;
                file.records += 1;
            }
        }
        if let Some(mut file) = current {
            file.write(&mut buffer)?;
            tail.open = Some(file);
        }
        Ok(closed)
    }

    /// The newest file, open for appending records from `first_seq` on; `None` if there
    /// is no file yet.
    fn open_newest(&self, first_seq: u64) -> Result<Option<OpenFile>, StoreError> {
        fs::create_dir_all(self.dir).map_err(|e| io("cannot create", self.dir, e))?;
        let Some(file) = self.files()?.pop() else {
            return Ok(None);
        };
        let handle = OpenOptions::new()
            .append(true)
            .open(&file.path)
            .map_err(|e| io("cannot open", &file.path, e))?;
        let size = handle
            .metadata()
            .map_err(|e| io("cannot read the size of", &file.path, e))?
            .len();
        Ok(Some(OpenFile {
            handle,
            path: file.path,
            size,
            records: first_seq.saturating_sub(file.first),
        }))
    }

    /// Syncs the newest file, then records `head` as the chain's end: the head is never
    /// ahead of what a crash keeps.
    pub fn set_head(&self, head: &[u8]) -> Result<(), StoreError> {
        self.set_head_at(&AuditTail::default(), head)
    }

    /// [`Self::set_head`] through the writer's open newest file, if it has one.
    pub fn set_head_at(&self, tail: &AuditTail, head: &[u8]) -> Result<(), StoreError> {
        match &tail.open {
            Some(file) => file
                .handle
                .sync_data()
                .map_err(|e| io("cannot sync", &file.path, e))?,
            None => self.sync_newest()?,
        }
        self.replace(HEAD_FILE, head, false)
    }

    fn sync_newest(&self) -> Result<(), StoreError> {
        if let Some(newest) = self.files()?.pop() {
            File::open(&newest.path)
                .and_then(|file| file.sync_data())
                .map_err(|e| io("cannot sync", &newest.path, e))?;
        }
        Ok(())
    }

    /// [`Self::write`] then [`Self::set_head`].
    pub fn append(&self, records: &[(u64, Vec<u8>)], head: &[u8]) -> Result<(), StoreError> {
        self.write(records, u64::MAX)?;
        self.set_head(head)
    }

    /// Replaces a small file whole: written aside, synced, renamed over the old one (and
    /// the directory synced when the rename must be durable before what follows).
    fn replace(&self, name: &str, bytes: &[u8], sync_dir: bool) -> Result<(), StoreError> {
        fs::create_dir_all(self.dir).map_err(|e| io("cannot create", self.dir, e))?;
        let aside = self.path(&format!("{name}.tmp"));
        let target = self.path(name);
        let mut file = File::create(&aside).map_err(|e| io("cannot create", &aside, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| io("cannot write", &aside, e))?;
        fs::rename(&aside, &target).map_err(|e| io("cannot replace", &target, e))?;
        if sync_dir {
            File::open(self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("cannot sync", self.dir, e))?;
        }
        Ok(())
    }

    fn small_file(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot read", &path, e)),
        }
    }

    /// Cuts off a torn frame at the end of the newest file (a crash or a failed write left
    /// it); returns the bytes removed. Damage elsewhere is left for `audit verify`.
    pub fn repair_tail(&self) -> Result<usize, StoreError> {
        let Some(newest) = self.files()?.pop() else {
            return Ok(0);
        };
        let data = match fs::read(&newest.path) {
            Ok(data) => data,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io("cannot read", &newest.path, e)),
        };
        let scan = scan(&data);
        // A torn tail is the last frame only: a bad frame followed by good ones is damage.
        let torn = match scan.stop {
            Some(Stop::CutShort) => true,
            Some(Stop::Checksum) => is_torn_tail(data.get(scan.valid..).unwrap_or(&[])),
            None => false,
        };
        if !torn {
            return Ok(0);
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&newest.path)
            .map_err(|e| io("cannot open", &newest.path, e))?;
        file.set_len(scan.valid as u64)
            .and_then(|()| file.sync_data())
            .map_err(|e| io("cannot truncate", &newest.path, e))?;
        Ok(data.len() - scan.valid)
    }

    /// Every record, oldest first, as `(seq, bytes)`.
    pub fn records(&self) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> + '_ {
        let (files, error) = match self.files() {
            Ok(files) => (files, None),
            Err(error) => (Vec::new(), Some(error)),
        };
        let newest = files.len().saturating_sub(1);
        let per_file = files.into_iter().enumerate().flat_map(move |(i, file)| {
            let (records, error) = match self.read_partial(&file, i == newest) {
                Ok(read) => read,
                Err(error) => (Vec::new(), Some(error)),
            };
            records.into_iter().map(Ok).chain(error.map(Err))
        });
        error.into_iter().map(Err).chain(per_file)
    }

    /// A file's last record (retention needs only that of a file it deletes), read
    /// through a small buffer; damage is an error. `None` if the file is empty or gone.
    pub fn file_last(
        &self,
        file: &LogFile,
        newest: bool,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let handle = match File::open(&file.path) {
            Ok(handle) => handle,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot read", &file.path, e)),
        };
        let size = handle
            .metadata()
            .map_err(|e| io("cannot read the size of", &file.path, e))?
            .len();
        let (last, stop) = match last_frame(BufReader::with_capacity(64 << 10, handle), size) {
            Ok(read) => read,
            // Shorter than its size said: cut while being read, as a repair does.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => (None, Some(Stop::CutShort)),
            Err(e) => return Err(io("cannot read", &file.path, e)),
        };
        match self.damage(file, stop, newest) {
            None => Ok(last),
            Some(damage) => Err(damage),
        }
    }

    /// The newest record.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let files = self.files()?;
        let newest = files.len().saturating_sub(1);
        for (i, file) in files.iter().enumerate().rev() {
            if let Some(last) = self.file_last(file, i == newest)? {
                return Ok(Some(last));
            }
        }
        Ok(None)
    }

    /// The oldest record's sequence number, from its first frame alone.
    pub fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        for file in self.files()? {
            let mut header = [0u8; 8];
            let read = File::open(&file.path).and_then(|mut f| f.read_exact(&mut header));
            match read {
                Ok(()) => return Ok(Some(u64::from_be_bytes(header))),
                // Gone (pruned meanwhile) or empty (just started): the next file tells.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::UnexpectedEof) => {}
                Err(e) => return Err(io("cannot read", &file.path, e)),
            }
        }
        Ok(None)
    }

    /// How many records there are, reading only the first frame and the newest file:
    /// records are appended in sequence and pruned from the oldest, so they are numbered
    /// contiguously from the first to the last.
    pub fn count(&self) -> Result<u64, StoreError> {
        let (Some(first), Some((last, _))) = (self.first_seq()?, self.last()?) else {
            return Ok(0);
        };
        Ok(last.saturating_sub(first) + 1)
    }

    /// How many records there are, counted one by one (for tests of [`Self::count`]).
    pub fn len(&self) -> usize {
        self.records().count()
    }

    pub fn is_empty(&self) -> bool {
        self.first_seq().ok().flatten().is_none()
    }

    /// Bytes the trail takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.files()
            .unwrap_or_default()
            .iter()
            .filter_map(|f| fs::metadata(&f.path).ok())
            .map(|m| m.len())
            .sum()
    }

    /// The anchor left by the last pruning.
    pub fn anchor(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.small_file(ANCHOR_FILE)
    }

    /// The head written with the last synced append.
    pub fn head(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.small_file(HEAD_FILE)
    }

    /// Sets the anchor (durably), then removes every record up to and including
    /// `through`, oldest first (see the module documentation for why in that order).
    /// Returns how many records were removed. Files wholly within the cut are deleted
    /// unread; a file cut in the middle is rewritten. Running it again with the same
    /// arguments finishes a pruning that was cut short.
    pub fn prune(&self, through: u64, anchor: &[u8]) -> Result<usize, StoreError> {
        self.prune_at(&mut AuditTail::default(), through, anchor)
    }

    /// [`Self::prune`] for the writer: it may rewrite the newest file under another name,
    /// so the writer's held file is forgotten first.
    pub fn prune_at(
        &self,
        tail: &mut AuditTail,
        through: u64,
        anchor: &[u8],
    ) -> Result<usize, StoreError> {
        tail.forget();
        self.replace(ANCHOR_FILE, anchor, true)?;
        let files = self.files()?;
        let mut removed = 0;
        for (i, file) in files.iter().enumerate() {
            let next_first = files.get(i + 1).map(|f| f.first);
            if next_first.is_some_and(|next| next.saturating_sub(1) <= through) {
                removed += next_first.unwrap_or(file.first).saturating_sub(file.first) as usize;
                remove(&file.path)?;
                continue;
            }
            if file.first > through {
                break;
            }
            let records = self.read_checked(file, next_first.is_none())?;
            let total = records.len();
            let keep: Records = records
                .into_iter()
                .filter(|(seq, _)| *seq > through)
                .collect();
            removed += total - keep.len();
            if keep.is_empty() {
                remove(&file.path)?;
            } else if keep.len() < total {
                self.rewrite(file, &keep)?;
            }
            break;
        }
        Ok(removed)
    }

    /// Replaces a file's records with `records`, under the name of the first of them.
    fn rewrite(&self, file: &LogFile, records: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        let Some((first, _)) = records.first() else {
            return remove(&file.path);
        };
        let name = file_name(*first);
        self.replace(&name, &frame_bytes(records), true)?;
        if self.path(&name) != file.path {
            remove(&file.path)?;
        }
        Ok(())
    }

    /// Writes raw bytes as the file whose first record would be `first`, framed or not:
    /// damage that `audit verify` must report.
    #[cfg(test)]
    pub(crate) fn tamper_raw(&self, first: u64, value: &[u8]) -> Result<(), StoreError> {
        self.replace(&file_name(first), value, false)
    }

    /// The path of the file named after `first`, for tests that damage it.
    #[cfg(test)]
    pub(crate) fn file_path(&self, first: u64) -> PathBuf {
        self.path(&file_name(first))
    }

    /// Replaces, inserts (`Some`) or removes (`None`) one record's bytes in place, leaving
    /// the head, the anchor and every other record as they are: what someone editing the
    /// store's files could do. For tests of `audit verify`; graphvcr never calls it.
    pub fn tamper(&self, seq: u64, bytes: Option<Vec<u8>>) -> Result<(), StoreError> {
        let files = self.files()?;
        let Some(holder) = files.iter().rev().find(|f| f.first <= seq) else {
            if let Some(bytes) = bytes {
                self.replace(&file_name(seq), &frame_bytes(&[(seq, bytes)]), false)?;
            }
            return Ok(());
        };
        let mut records = self.read_checked(holder, false)?;
        records.retain(|(s, _)| *s != seq);
        if let Some(bytes) = bytes {
            let at = records.partition_point(|(s, _)| *s < seq);
            records.insert(at, (seq, bytes));
        }
        if records.is_empty() {
            remove(&holder.path)
        } else {
            // Same name whatever the first record is now: an edit, not a reorganisation.
            self.replace(&holder.name(), &frame_bytes(&records), false)
        }
    }
}

/// Whether `rest`, starting at a frame with a bad checksum, is a torn tail: the frame
/// reaches the end of the file, or only zeros follow (what a write lost in a power cut
/// leaves), as opposed to an edit in the middle.
fn is_torn_tail(rest: &[u8]) -> bool {
    let declared = rest
        .get(8..12)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, |b| u32::from_be_bytes(b) as usize);
    FRAME_HEADER + declared >= rest.len() || rest.iter().all(|b| *b == 0)
}

fn frame_bytes(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (seq, record) in records {
        push_frame(&mut bytes, *seq, record);
    }
    bytes
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("cannot remove", path, e)),
    }
}

/// The newest file while an append writes to it.
/// The newest file as the writer left it after its last round, so the next round appends
/// without listing the directory and reopening the file (that was ~1% of replay's CPU).
/// [`AuditFiles::prune_at`] forgets it (a pruning may replace the newest file by a
/// rewritten one); a failed write leaves nothing held.
#[derive(Default)]
pub struct AuditTail {
    open: Option<OpenFile>,
}

impl AuditTail {
    fn forget(&mut self) {
        self.open = None;
    }
}

struct OpenFile {
    handle: File,
    path: PathBuf,
    size: u64,
    records: u64,
}

impl OpenFile {
    fn write(&mut self, buffer: &mut Vec<u8>) -> Result<(), StoreError> {
        if !buffer.is_empty() {
            self.handle
                .write_all(buffer)
                .map_err(|e| io("cannot append to", &self.path, e))?;
            buffer.clear();
        }
        Ok(())
    }
}

/// Moves a trail kept in the sled tree of older stores into files, once: written into a
/// directory aside, which is renamed into place when complete, and only then is the tree
/// cleared. A migration cut short starts over; one whose rename was done but whose tree
/// was not yet cleared just clears it. Returns how many records moved.
pub(super) fn migrate_legacy(tree: &sled::Tree, dir: &Path) -> Result<u64, StoreError> {
    if tree.is_empty() {
        return Ok(0);
    }
    if dir.exists() {
        // Renamed into place before a crash: the tree is what is left to clear.
        tree.clear()?;
        tree.flush()?;
        return Ok(0);
    }
    let aside = dir.with_extension("migrating");
    if aside.exists() {
        fs::remove_dir_all(&aside).map_err(|e| io("cannot remove", &aside, e))?;
    }
    fs::create_dir_all(&aside).map_err(|e| io("cannot create", &aside, e))?;
    let files = AuditFiles { dir: &aside };
    let mut moved = 0u64;
    let mut batch: Records = Vec::new();
    let mut batch_bytes = 0;
    for entry in tree.range(&[legacy::SINGLE][..]..&[legacy::SEGMENT + 1][..]) {
        let (key, value) = entry?;
        for record in legacy::decode(&key, &value)? {
            batch_bytes += record.1.len();
            batch.push(record);
        }
        if batch_bytes >= FILE_BYTES as usize {
            moved += batch.len() as u64;
            files.write(&std::mem::take(&mut batch), u64::MAX)?;
            batch_bytes = 0;
        }
    }
    moved += batch.len() as u64;
    files.write(&batch, u64::MAX)?;
    if let Some(anchor) = tree.get(legacy::ANCHOR)? {
        files.replace(ANCHOR_FILE, &anchor, false)?;
    }
    match tree.get(legacy::HEAD)? {
        Some(head) => files.set_head(&head)?,
        None => files.sync_newest()?,
    }
    fs::rename(&aside, dir).map_err(|e| io("cannot move into place", dir, e))?;
    if let Some(parent) = dir.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync", parent, e))?;
    }
    tree.clear()?;
    tree.flush()?;
    Ok(moved)
}

/// The sled layout of older stores, read only to migrate it.
mod legacy {
    use super::{Records, StoreError};

    /// One record per key: `r` + sequence number (8 bytes, big-endian).
    pub const SINGLE: u8 = b'r';
    /// `s` + the sequence number of the segment's last record; the value a run of frames
    /// `seq` (u64 BE), `len` (u32 BE), `len` bytes.
    pub const SEGMENT: u8 = b's';
    pub const ANCHOR: &[u8] = b"m/anchor";
    pub const HEAD: &[u8] = b"m/head";
    const FRAME_HEADER: usize = 12;

    fn damaged(key: &[u8], detail: &str) -> StoreError {
        StoreError::Decode {
            key: format!("the older audit key {key:?}"),
            detail: detail.to_owned(),
        }
    }

    #[cfg(test)]
    pub fn key(kind: u8, seq: u64) -> [u8; 9] {
        let mut key = [kind; 9];
        key[1..].copy_from_slice(&seq.to_be_bytes());
        key
    }

    /// The records of one stored value, oldest first.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<Records, StoreError> {
        let seq = key
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| damaged(key, "not a sequence number"))?;
        match key.first() {
            Some(&SINGLE) => Ok(vec![(seq, value.to_vec())]),
            Some(&SEGMENT) => {
                let mut records = Vec::new();
                let mut rest = value;
                while !rest.is_empty() {
                    let (header, body) = rest
                        .split_at_checked(FRAME_HEADER)
                        .ok_or_else(|| damaged(key, "segment frame cut short"))?;
                    let (seq_bytes, len_bytes) = header.split_at(8);
                    let seq = u64::from_be_bytes(seq_bytes.try_into().unwrap_or([0; 8]));
                    let len = u32::from_be_bytes(len_bytes.try_into().unwrap_or([0; 4])) as usize;
                    let (bytes, after) = body
                        .split_at_checked(len)
                        .ok_or_else(|| damaged(key, "segment frame cut short"))?;
                    records.push((seq, bytes.to_vec()));
                    rest = after;
                }
                Ok(records)
            }
            _ => Err(damaged(key, "not an audit record key")),
        }
    }

    /// A value in the older layout: `records` packed as one segment.
    #[cfg(test)]
    pub fn segment(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut value = Vec::new();
        for (seq, bytes) in records {
            value.extend_from_slice(&seq.to_be_bytes());
            value.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            value.extend_from_slice(bytes);
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn records(range: std::ops::RangeInclusive<u64>, size: usize) -> Vec<(u64, Vec<u8>)> {
        range.map(|seq| (seq, vec![seq as u8; size])).collect()
    }

    /// A store in a fresh directory (kept as long as the returned guard).
    fn opened() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1 << 20).expect("open");
        (dir, store)
    }

    fn firsts(audit: &AuditFiles) -> Vec<u64> {
        audit
            .files()
            .expect("files")
            .iter()
            .map(|f| f.first)
            .collect()
    }

    fn read_all(audit: &AuditFiles) -> Records {
        audit.records().map(|r| r.expect("read")).collect()
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut file = OpenOptions::new().append(true).open(path).expect("open");
        file.write_all(bytes).expect("write");
    }

    #[test]
    fn count_follows_appends_and_pruning_without_a_scan() {
        let (_dir, store) = opened();
        let audit = store.audit();
        assert_eq!(audit.count().expect("count"), 0);
        assert!(audit.is_empty());
        audit.append(&records(1..=5, 1), b"head").expect("append");
        assert_eq!(audit.count().expect("count"), 5);
        assert_eq!(audit.prune(2, b"anchor").expect("prune"), 2);
        assert_eq!(audit.count().expect("count"), 3);
        assert_eq!(audit.count().expect("count"), audit.len() as u64);
        assert_eq!(
            audit.anchor().expect("anchor").as_deref(),
            Some(&b"anchor"[..])
        );
        assert_eq!(audit.prune(5, b"anchor").expect("prune"), 3);
        assert_eq!(audit.count().expect("count"), 0);
        assert!(audit.is_empty());
    }

    #[test]
    fn files_close_at_the_record_limit_and_read_back_in_order() {
        let (_dir, store) = opened();
        let audit = store.audit();
        let written = records(1..=25, 100);
        audit.write(&written[..12], 10).expect("write");
        audit.write(&written[12..], 10).expect("write");
        audit.set_head(b"head").expect("head");
        assert_eq!(firsts(&audit), [1, 11, 21]);
        assert_eq!(read_all(&audit), written);
        assert_eq!(audit.count().expect("count"), 25);
        assert_eq!(audit.first_seq().expect("first"), Some(1));
        assert_eq!(audit.last().expect("last").map(|(s, _)| s), Some(25));
        assert_eq!(audit.head().expect("head").as_deref(), Some(&b"head"[..]));

        // Whole files within the cut go unread; the file it falls in is rewritten.
        assert_eq!(audit.prune(10, b"a").expect("prune"), 10);
        assert_eq!(audit.prune(13, b"a").expect("prune"), 3);
        assert_eq!(firsts(&audit), [14, 21]);
        assert_eq!(read_all(&audit), written[13..]);
    }

    #[test]
    fn a_held_tail_appends_where_a_fresh_one_would_and_a_pruning_makes_it_forget() {
        let (_dir, store) = opened();
        let audit = store.audit();
        let written = records(1..=40, 100);
        let mut tail = AuditTail::default();
        for round in written[..25].chunks(4) {
            audit.write_at(&mut tail, round, 10).expect("write");
        }
        audit.set_head_at(&tail, b"h1").expect("head");
        // The same files and frames as rounds that list and reopen each time.
        assert_eq!(firsts(&audit), [1, 11, 21]);
        assert_eq!(read_all(&audit), written[..25]);
        assert_eq!(audit.head().expect("head").as_deref(), Some(&b"h1"[..]));

        // A pruning that cuts into the newest file rewrites it under another name: the
        // held handle would append to the replaced file.
        assert_eq!(audit.prune_at(&mut tail, 22, b"a").expect("prune"), 22);
        assert_eq!(firsts(&audit), [23]);
        for round in written[25..].chunks(4) {
            audit.write_at(&mut tail, round, 10).expect("write");
        }
        audit.set_head_at(&tail, b"h2").expect("head");
        // 23..=32 fill the rewritten file up to ten records; 33 starts the next.
        assert_eq!(firsts(&audit), [23, 33]);
        assert_eq!(read_all(&audit), written[22..]);
        assert_eq!(audit.count().expect("count"), 18);
    }

    #[test]
    fn a_torn_last_record_is_the_end_and_is_cut_off_on_repair() {
        let (_dir, store) = opened();
        let audit = store.audit();
        audit.append(&records(1..=3, 50), b"head").expect("append");
        let path = audit.file_path(1);
        let whole = fs::metadata(&path).expect("size").len();

        // A write cut short: part of a frame.
        let mut frame = Vec::new();
        push_frame(&mut frame, 4, &[4; 50]);
        append_raw(&path, &frame[..30]);
        assert_eq!(read_all(&audit), records(1..=3, 50));
        assert_eq!(audit.last().expect("last"), Some((3, vec![3; 50])));
        assert_eq!(audit.repair_tail().expect("repair"), 30);
        assert_eq!(fs::metadata(&path).expect("size").len(), whole);

        // A write lost in a power cut: zeros where the frame should be.
        append_raw(&path, &[0; 64]);
        assert!(audit.records().any(|r| r.is_err()), "zeros are not records");
        assert_eq!(audit.repair_tail().expect("repair"), 64);
        assert_eq!(read_all(&audit), records(1..=3, 50));

        // The trail goes on after a repair.
        audit.append(&records(4..=4, 50), b"head").expect("append");
        assert_eq!(read_all(&audit), records(1..=4, 50));
    }

    #[test]
    fn an_edit_in_the_middle_is_damage_and_is_not_repaired_away() {
        let (_dir, store) = opened();
        let audit = store.audit();
        audit.append(&records(1..=3, 50), b"head").expect("append");
        let path = audit.file_path(1);
        let mut bytes = fs::read(&path).expect("read");
        bytes[FRAME_HEADER + 50 + FRAME_HEADER + 10] ^= 0xff; // inside record 2
        fs::write(&path, &bytes).expect("write");
        let results: Vec<_> = audit.records().collect();
        assert!(
            matches!(results.as_slice(), [Ok(_), Err(StoreError::Decode { key, detail })]
                if key.contains("00000000000000000001.log") && detail.contains("checksum")),
            "{results:?}"
        );
        assert_eq!(audit.repair_tail().expect("repair"), 0);
        assert_eq!(fs::read(&path).expect("read"), bytes, "evidence is kept");
    }

    #[test]
    fn a_cut_short_older_file_is_an_error_not_a_panic() {
        let (_dir, store) = opened();
        let audit = store.audit();
        audit.tamper_raw(1, &[0, 0, 0]).expect("insert");
        audit.write(&records(5..=6, 1), 1).expect("write");
        let results: Vec<_> = audit.records().collect();
        assert!(
            matches!(results.as_slice(), [Err(_), Ok(_), Ok(_)]),
            "{results:?}"
        );
        // Retention reading the damaged file's last record gets the damage too.
        let files = audit.files().expect("files");
        assert!(
            matches!(
                audit.file_last(&files[0], false),
                Err(StoreError::Decode { .. })
            ),
            "an older file cut short is damage"
        );
        assert_eq!(
            audit.file_last(&files[2], true).expect("newest reads"),
            Some((6, vec![6]))
        );
    }

    #[test]
    fn tampering_edits_removes_and_restores_one_record() {
        let (_dir, store) = opened();
        let audit = store.audit();
        audit.append(&records(1..=4, 1), b"head").expect("append");
        audit.tamper(2, Some(b"edited".to_vec())).expect("edit");
        audit.tamper(3, None).expect("remove");
        assert_eq!(
            read_all(&audit),
            vec![(1, vec![1]), (2, b"edited".to_vec()), (4, vec![4])]
        );
        audit.tamper(3, Some(vec![3])).expect("restore");
        audit.tamper(2, Some(vec![2])).expect("restore");
        assert_eq!(read_all(&audit), records(1..=4, 1));
        audit.tamper(9, Some(vec![9])).expect("insert");
        assert_eq!(audit.last().expect("last"), Some((9, vec![9])));
    }

    #[test]
    fn any_bytes_scan_without_a_panic_and_never_past_the_end() {
        use rand_chacha::rand_core::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut valid = Vec::new();
        for (seq, bytes) in records(1..=5, 40) {
            push_frame(&mut valid, seq, &bytes);
        }
        for round in 0..5000 {
            let mut data = valid.clone();
            match round % 3 {
                // Cut anywhere.
                0 => data.truncate(rng.next_u32() as usize % (valid.len() + 1)),
                // One byte changed anywhere.
                1 => {
                    let at = rng.next_u32() as usize % data.len();
                    data[at] ^= 1 << (rng.next_u32() % 8);
                }
                // Noise.
                _ => {
                    data = vec![0; rng.next_u32() as usize % 200];
                    rng.fill_bytes(&mut data);
                }
            }
            let scan = scan(&data);
            assert!(scan.valid <= data.len());
            assert_eq!(scan.stop.is_none(), scan.valid == data.len());
            // Reading a frame at a time finds the same last record and the same stop.
            let (last, stop) = last_frame(&data[..], data.len() as u64).expect("reads from memory");
            let scanned_last = scan
                .records
                .last()
                .map(|(seq, range)| (*seq, data[range.clone()].to_vec()));
            assert_eq!(last, scanned_last);
            assert_eq!(stop, scan.stop);
            for (seq, range) in &scan.records {
                assert!(range.end <= scan.valid);
                if round % 3 != 2 {
                    // A record that reads back is one that was written, unchanged.
                    assert_eq!(data[range.clone()], vec![*seq as u8; 40][..]);
                }
            }
        }
    }

    fn legacy_tree(records: &[(u64, Vec<u8>)]) -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree(LEGACY_TREE).expect("tree");
        let (single, segment) = records.split_at(1);
        let (seq, bytes) = &single[0];
        tree.insert(legacy::key(legacy::SINGLE, *seq), bytes.clone())
            .expect("insert");
        for chunk in segment.chunks(3) {
            let last = chunk.last().map_or(0, |(s, _)| *s);
            tree.insert(legacy::key(legacy::SEGMENT, last), legacy::segment(chunk))
                .expect("insert");
        }
        tree.insert(legacy::ANCHOR, &b"anchor"[..]).expect("anchor");
        tree.insert(legacy::HEAD, &b"head"[..]).expect("head");
        tree
    }

    #[test]
    fn an_older_sled_trail_moves_to_files_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let trail_dir = dir.path().join(AUDIT_DIR);
        let written = records(3..=10, 20);
        let tree = legacy_tree(&written);
        // A migration cut short left a half-written directory aside: it starts over.
        fs::create_dir_all(trail_dir.with_extension("migrating")).expect("aside");
        fs::write(trail_dir.with_extension("migrating").join("junk.log"), b"x").expect("junk");

        assert_eq!(migrate_legacy(&tree, &trail_dir).expect("migrate"), 8);
        assert!(
            tree.is_empty(),
            "the tree is cleared once the files are in place"
        );
        assert!(!trail_dir.with_extension("migrating").exists());
        let audit = AuditFiles { dir: &trail_dir };
        assert_eq!(read_all(&audit), written);
        assert_eq!(
            audit.anchor().expect("anchor").as_deref(),
            Some(&b"anchor"[..])
        );
        assert_eq!(audit.head().expect("head").as_deref(), Some(&b"head"[..]));
        assert_eq!(migrate_legacy(&tree, &trail_dir).expect("again"), 0);

        // Renamed into place but the tree not cleared: only the clearing is left to do.
        let tree = legacy_tree(&written);
        assert_eq!(migrate_legacy(&tree, &trail_dir).expect("finish"), 0);
        assert!(tree.is_empty());
        assert_eq!(read_all(&audit), written);
    }
}
