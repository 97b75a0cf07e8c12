//! etcd's write-ahead log (`member/wal/*.wal`, etcd 3.4/3.5), read.
//!
//! etcd commits its backend (`member/snap/db`) only every `--backend-batch-interval` (100 ms by
//! default), but it acknowledges a write once the write's Raft entry is in the WAL: the entries
//! committed after the backend's `consistent_index` live only in the WAL until the next backend
//! commit. A member killed in between (kill -9, a crash, a power cut) holds acknowledged writes
//! there alone, so migrating its data directory must read them (`replay.rs` applies them).
//!
//! The format, as etcd's `wal/encoder.go` and `wal/decoder.go` write and read it:
//!
//! - Files are named `<seq>-<index>.wal` (16 hex digits each): `seq` counts files from 0 with no
//!   holes; `index` is the Raft index the file's first entry follows. etcd preallocates each
//!   file (64 MiB), so a file's records are followed by zeros.
//! - Each record is framed by a little-endian u64: its low 56 bits are the record's length; when
//!   the top bit is set, the top byte's low 3 bits are the zero bytes of padding that follow the
//!   record to keep frames 8-byte aligned. A zero frame ends the file's records.
//! - A record is a `walpb.Record { type, crc, data }`: 1 metadata (`etcdserverpb.Metadata`, the
//!   same in every file), 2 a `raftpb.Entry`, 3 a `raftpb.HardState`, 4 a CRC record (no data;
//!   `crc` carries the running CRC the file starts from), 5 a `walpb.Snapshot` (a Raft snapshot's
//!   index and term).
//! - `crc` is the CRC-32C (Castagnoli) of the data of every record so far, chained across files:
//!   each file opens with a CRC record holding the previous file's last CRC, which must match
//!   (unless the reader starts at that file, its predecessors purged).
//! - An entry whose index is at or below ones already read replaces them and everything after
//!   them (a new leader overwrote an uncommitted suffix).
//! - A torn tail (the last record of the last file only partly written before the process died:
//!   the file ends inside it, or one of its 512-byte sectors is all zeros) is not an error: etcd
//!   cuts it off at its next start, and it was never acknowledged, since etcd answers a write
//!   only after the fsync that completes its record. Anything else that does not decode or fails
//!   its CRC is damage, and reading stops with an error.

use std::path::{Path, PathBuf};

use concord_proto::raftpb::{Entry, HardState};
use concord_proto::walpb::{Record, Snapshot};
use prost::Message as _;

/// Record types (`wal/wal.go`).
const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;

/// Bytes of a record's length frame.
const FRAME_BYTES: usize = 8;
/// etcd's `minSectorSize`: a torn write leaves whole sectors of zeros.
const SECTOR_BYTES: u64 = 512;
/// etcd's `maxWALEntrySizeLimit`: a larger record is damage, not data.
const MAX_RECORD_BYTES: u64 = 10 * 1024 * 1024;

/// One entry of etcd's Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// The entry's Raft index.
    pub index: u64,
    /// The term it was proposed in.
    pub term: u64,
    /// `raftpb.EntryType`: 0 normal, 1 and 2 configuration changes.
    pub entry_type: i32,
    /// What was proposed: for a normal entry, an `etcdserverpb.InternalRaftRequest` (or a v2
    /// `etcdserverpb.Request`), or nothing (a new leader's first entry).
    pub data: Vec<u8>,
}

/// Where a torn last record was cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The WAL file (the last one).
    pub file: PathBuf,
    /// The offset of the torn record's frame: everything from here on was dropped.
    pub offset: u64,
}

/// What an etcd member's WAL holds past a given index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdWal {
    /// The last hard state recorded: `commit` is the highest index known committed.
    pub commit: u64,
    /// The term of that hard state.
    pub term: u64,
    /// The entries with an index above the one asked for, in log order and without holes (as
    /// they stand after every overwrite), committed or not.
    pub entries: Vec<WalEntry>,
    /// The index of every Raft snapshot recorded, in order.
    pub snapshots: Vec<u64>,
    /// The torn last record that was dropped, if the member died while writing one.
    pub torn_tail: Option<TornTail>,
}

/// Why etcd's WAL cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file or the directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The files are not a WAL etcd would open (names out of sequence, say).
    #[error("{}: {what}", dir.display())]
    Layout {
        /// The WAL directory.
        dir: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A record is damaged (not a torn tail): etcd itself would refuse to start on it.
    #[error("{} at byte {offset}: {what}", file.display())]
    Damaged {
        /// The WAL file.
        file: PathBuf,
        /// The offset of the damaged record's frame.
        offset: u64,
        /// What is wrong.
        what: String,
    },
}

/// Reads etcd's WAL in `dir` and keeps the entries with an index above `after` (the backend's
/// consistent index: the ones before it are in the backend already), the last hard state and the
/// snapshot records. Like etcd, it starts at the last file whose name says it begins at or before
/// `after` (the earlier ones hold nothing needed, and wait to be purged). One file is in memory
/// at a time.
pub fn read_etcd_wal(dir: &Path, after: u64) -> Result<EtcdWal, WalError> {
    let files = wal_files(dir)?;
    let start = files.iter().rposition(|(first, _)| *first <= after).unwrap_or(0);
    let files = &files[start..];
    let mut reader = WalReader::new(after);
    for (i, (_, path)) in files.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|source| WalError::Io {
            path: path.clone(),
            source,
        })?;
        reader.read_file(path, &bytes, i + 1 == files.len())?;
    }
    Ok(reader.wal)
}

/// The `.wal` files of `dir` with the index each begins at (from its name), ordered by sequence
/// number, which must have no holes (etcd's `isValidSeq`). Files not named `<seq>-<index>.wal`
/// (`0.tmp`, the next file being preallocated) are not part of the log, as etcd ignores them.
fn wal_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let io = |source| WalError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let Some(name) = name.to_str() else { continue };
        let parsed = name
            .strip_suffix(".wal")
            .and_then(|stem| stem.split_once('-'))
            .filter(|(seq, index)| seq.len() == 16 && index.len() == 16)
            .and_then(|(seq, index)| Some((u64::from_str_radix(seq, 16).ok()?, u64::from_str_radix(index, 16).ok()?)));
        match parsed {
            Some((seq, index)) => files.push((seq, index, dir.join(name))),
            None if name.ends_with(".tmp") => {}
            None => tracing::warn!(
                file = name,
                "etcd's WAL directory: ignoring a file that is not part of the log"
            ),
        }
    }
    files.sort();
    for pair in files.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(WalError::Layout {
                dir: dir.to_path_buf(),
                what: format!("WAL file {} follows {}: a file is missing", pair[1].0, pair[0].0),
            });
        }
    }
    Ok(files.into_iter().map(|(_, index, path)| (index, path)).collect())
}

/// The decoder's state across files.
struct WalReader {
    after: u64,
    /// The running CRC-32C of every record's data so far (0 before the first file).
    crc: u32,
    metadata: Option<Vec<u8>>,
    wal: EtcdWal,
}

impl WalReader {
    fn new(after: u64) -> WalReader {
        WalReader {
            after,
            crc: 0,
            metadata: None,
            wal: EtcdWal::default(),
        }
    }

    /// Reads one file's records; `last`: it is the last file, the only one that may end in a
    /// torn record.
    fn read_file(&mut self, path: &Path, bytes: &[u8], last: bool) -> Result<(), WalError> {
        let mut offset = 0usize;
        loop {
            let damaged = |what: String| WalError::Damaged {
                file: path.to_path_buf(),
                offset: offset as u64,
                what,
            };
            let torn = |wal: &mut EtcdWal| -> Result<(), WalError> {
                if !last {
                    return Err(damaged("a record is cut short, and more WAL files follow".into()));
                }
                wal.torn_tail = Some(TornTail {
                    file: path.to_path_buf(),
                    offset: offset as u64,
                });
                Ok(())
            };
            let rest = &bytes[offset..];
            if rest.is_empty() {
                return Ok(());
            }
            if rest.len() < FRAME_BYTES {
                return torn(&mut self.wal);
            }
            let frame = u64::from_le_bytes(rest[..FRAME_BYTES].try_into().expect("8 bytes"));
            if frame == 0 {
                // The end of the records: preallocated space follows.
                return Ok(());
            }
            let (len, pad) = frame_size(frame);
            if len >= MAX_RECORD_BYTES - pad {
                return Err(damaged(format!("a record of {len} bytes exceeds etcd's limit")));
            }
            let (len, pad) = (len as usize, pad as usize);
            let Some(framed) = rest.get(FRAME_BYTES..FRAME_BYTES + len + pad) else {
                return torn(&mut self.wal);
            };
            let data_offset = (offset + FRAME_BYTES) as u64;
            let record = match Record::decode(&framed[..len]) {
                Ok(record) => record,
                Err(_) if last && has_zero_sector(framed, data_offset) => return torn(&mut self.wal),
                Err(e) => return Err(damaged(format!("undecodable record: {e}"))),
            };
            let kind = record.r#type.unwrap_or(0);
            let data = record.data.as_deref().unwrap_or_default();
            if kind == CRC {
                // The file's first record: the running CRC it continues from.
                let carried = record.crc.unwrap_or(0);
                if self.crc != 0 && carried != self.crc {
                    return Err(damaged(format!(
                        "the CRC chain breaks: the file continues from {carried:#010x}, the previous one ended at {:#010x}",
                        self.crc
                    )));
                }
                self.crc = carried;
            } else {
                let crc = crc32c::crc32c_append(self.crc, data);
                if record.crc != Some(crc) {
                    if last && has_zero_sector(framed, data_offset) {
                        return torn(&mut self.wal);
                    }
                    return Err(damaged(format!(
                        "CRC mismatch: the record says {:#010x}, its data gives {crc:#010x}",
                        record.crc.unwrap_or(0)
                    )));
                }
                self.crc = crc;
                self.take(kind, data).map_err(damaged)?;
            }
            offset += FRAME_BYTES + len + pad;
        }
    }

    /// Takes in one record whose CRC checked out.
    fn take(&mut self, kind: i64, data: &[u8]) -> Result<(), String> {
        match kind {
            ENTRY => {
                let entry = Entry::decode(data).map_err(|e| format!("undecodable entry: {e}"))?;
                self.entry(WalEntry {
                    index: entry.index(),
                    term: entry.term(),
                    entry_type: entry.r#type.unwrap_or(0),
                    data: entry.data.unwrap_or_default(),
                })
            }
            STATE => {
                let state = HardState::decode(data).map_err(|e| format!("undecodable hard state: {e}"))?;
                self.wal.commit = state.commit();
                self.wal.term = state.term();
                Ok(())
            }
            METADATA => match &self.metadata {
                Some(seen) if seen.as_slice() != data => Err("the metadata differs from an earlier file's".into()),
                _ => {
                    self.metadata = Some(data.to_vec());
                    Ok(())
                }
            },
            SNAPSHOT => {
                let snapshot = Snapshot::decode(data).map_err(|e| format!("undecodable snapshot record: {e}"))?;
                self.wal.snapshots.push(snapshot.index());
                Ok(())
            }
            other => Err(format!("unknown record type {other}")),
        }
    }

    /// Adds an entry: it replaces any kept entry at its index or after, and is kept if its index
    /// is above `after`.
    fn entry(&mut self, entry: WalEntry) -> Result<(), String> {
        let entries = &mut self.wal.entries;
        let keep = entries.partition_point(|e| e.index < entry.index);
        entries.truncate(keep);
        if entry.index <= self.after {
            return Ok(());
        }
        if let Some(previous) = entries.last() {
            if previous.index + 1 != entry.index {
                return Err(format!(
                    "entry {} follows entry {}: the log has a hole",
                    entry.index, previous.index
                ));
            }
        }
        entries.push(entry);
        Ok(())
    }
}

/// A frame's record length and padding (etcd's `decodeFrameSize`).
fn frame_size(frame: u64) -> (u64, u64) {
    let len = frame & !(0xff << 56);
    let pad = if frame >> 63 == 1 { (frame >> 56) & 0x7 } else { 0 };
    (len, pad)
}

/// etcd's `isTornEntry`: whether a sector-aligned chunk of a record's bytes (starting at file
/// offset `at`) is all zeros, which a write cut short by a crash leaves and damage does not.
fn has_zero_sector(framed: &[u8], at: u64) -> bool {
    let mut rest = framed;
    let mut at = at;
    while !rest.is_empty() {
        let chunk = ((SECTOR_BYTES - at % SECTOR_BYTES) as usize).min(rest.len());
        if rest[..chunk].iter().all(|b| *b == 0) {
            return true;
        }
        rest = &rest[chunk..];
        at += chunk as u64;
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes WAL files as etcd's encoder does, for tests.
    pub(crate) struct WalWriter {
        crc: u32,
        /// Each file's bytes.
        pub files: Vec<Vec<u8>>,
        /// The index each file begins at, as its name says.
        starts: Vec<u64>,
        last_index: u64,
    }

    /// etcd's name of WAL file `seq` that begins at `index`.
    pub(crate) fn file_name(seq: usize, index: u64) -> String {
        format!("{seq:016x}-{index:016x}.wal")
    }

    impl WalWriter {
        /// A WAL whose first file starts with the CRC record, the metadata and a snapshot at 0,
        /// as `wal.Create` writes them.
        pub fn new() -> WalWriter {
            let mut w = WalWriter {
                crc: 0,
                files: vec![Vec::new()],
                starts: vec![0],
                last_index: 0,
            };
            w.record(CRC, &[]);
            w.record(METADATA, b"meta");
            w.snapshot(0);
            w
        }

        /// Starts the next file as etcd's `cut` does: CRC record, metadata, hard state.
        pub fn cut(&mut self, commit: u64) {
            self.files.push(Vec::new());
            self.starts.push(self.last_index + 1);
            self.record(CRC, &[]);
            self.record(METADATA, b"meta");
            self.state(commit);
        }

        pub fn record(&mut self, kind: i64, data: &[u8]) {
            if kind != CRC {
                self.crc = crc32c::crc32c_append(self.crc, data);
            }
            let record = Record {
                r#type: Some(kind),
                crc: Some(self.crc),
                data: (kind != CRC).then(|| data.to_vec()),
            }
            .encode_to_vec();
            let pad = (8 - record.len() % 8) % 8;
            let mut frame = record.len() as u64;
            if pad != 0 {
                frame |= (0x80 | pad as u64) << 56;
            }
            let file = self.files.last_mut().unwrap();
            file.extend_from_slice(&frame.to_le_bytes());
            file.extend_from_slice(&record);
            file.extend(std::iter::repeat_n(0u8, pad));
        }

        pub fn entry(&mut self, index: u64, term: u64, data: &[u8]) {
            self.last_index = index;
            let entry = Entry {
                term: Some(term),
                index: Some(index),
                r#type: Some(0),
                data: Some(data.to_vec()),
            };
            self.record(ENTRY, &entry.encode_to_vec());
        }

        pub fn state(&mut self, commit: u64) {
            let state = HardState {
                term: Some(1),
                vote: Some(1),
                commit: Some(commit),
            };
            self.record(STATE, &state.encode_to_vec());
        }

        pub fn snapshot(&mut self, index: u64) {
            let snapshot = Snapshot {
                index: Some(index),
                term: Some(1),
            };
            self.record(SNAPSHOT, &snapshot.encode_to_vec());
        }

        /// Writes the files into `dir` with etcd's names, each followed by preallocated zeros.
        pub fn write_to(&self, dir: &Path) {
            std::fs::create_dir_all(dir).unwrap();
            for (seq, bytes) in self.files.iter().enumerate() {
                let mut bytes = bytes.clone();
                bytes.resize(bytes.len() + 4096, 0);
                std::fs::write(dir.join(file_name(seq, self.starts[seq])), bytes).unwrap();
            }
        }
    }

    fn indexes(wal: &EtcdWal) -> Vec<u64> {
        wal.entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn reads_entries_hard_state_and_snapshots() {
        let mut w = WalWriter::new();
        w.entry(1, 1, b"one");
        w.entry(2, 1, b"two");
        w.state(2);
        w.entry(3, 1, b"three");
        w.state(3);
        let dir = tempfile::tempdir().unwrap();
        w.write_to(dir.path());
        // A file being preallocated is not part of the log, nor is a stray one.
        std::fs::write(dir.path().join("0.tmp"), [7u8; 64]).unwrap();
        std::fs::write(dir.path().join("notes.wal"), [7u8; 64]).unwrap();

        let wal = read_etcd_wal(dir.path(), 0).unwrap();
        assert_eq!(indexes(&wal), [1, 2, 3]);
        assert_eq!(wal.entries[1].data, b"two");
        assert_eq!(
            (wal.commit, wal.snapshots.clone(), wal.torn_tail.clone()),
            (3, vec![0], None)
        );
        // Entries up to `after` are in the backend already.
        assert_eq!(indexes(&read_etcd_wal(dir.path(), 2).unwrap()), [3]);
        assert_eq!(indexes(&read_etcd_wal(dir.path(), 3).unwrap()), Vec::<u64>::new());
    }

    #[test]
    fn a_later_entry_replaces_the_suffix_it_overwrites() {
        let mut w = WalWriter::new();
        for i in 1..=4 {
            w.entry(i, 1, b"old");
        }
        w.state(2);
        // A new leader overwrote the uncommitted entries 3 and 4.
        w.entry(3, 2, b"new");
        w.state(3);
        let dir = tempfile::tempdir().unwrap();
        w.write_to(dir.path());
        let wal = read_etcd_wal(dir.path(), 1).unwrap();
        assert_eq!(indexes(&wal), [2, 3]);
        assert_eq!((wal.entries[1].term, wal.entries[1].data.as_slice()), (2, &b"new"[..]));
        // Overwriting at or below `after` drops what was kept past it.
        let wal = read_etcd_wal(dir.path(), 3).unwrap();
        assert_eq!(indexes(&wal), Vec::<u64>::new());
    }

    #[test]
    fn the_crc_chains_across_files() {
        let mut w = WalWriter::new();
        w.entry(1, 1, b"one");
        w.state(1);
        w.cut(1);
        w.entry(2, 1, b"two");
        w.state(2);
        let dir = tempfile::tempdir().unwrap();
        w.write_to(dir.path());
        let wal = read_etcd_wal(dir.path(), 0).unwrap();
        assert_eq!((indexes(&wal), wal.commit), (vec![1, 2], 2));

        // The second file alone (its predecessor purged) starts a chain of its own.
        std::fs::remove_file(dir.path().join(file_name(0, 0))).unwrap();
        let wal = read_etcd_wal(dir.path(), 0).unwrap();
        assert_eq!((indexes(&wal), wal.commit), (vec![2], 2));

        // Reading starts at the last file that begins at or before `after`: with the first file
        // damaged, entries after 1 are still read (the second file begins at 2).
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = w.files[0].clone();
        damaged.truncate(damaged.len() - 3);
        std::fs::write(dir.path().join(file_name(0, 0)), damaged).unwrap();
        std::fs::write(dir.path().join(file_name(1, 2)), &w.files[1]).unwrap();
        let wal = read_etcd_wal(dir.path(), 2).unwrap();
        assert_eq!((indexes(&wal), wal.commit), (vec![], 2));
        assert!(
            read_etcd_wal(dir.path(), 1).is_err(),
            "the damaged file is read for entry 2"
        );

        // A second file that does not continue the first one's CRC is damage.
        let mut other = WalWriter::new();
        other.entry(1, 1, b"another history");
        other.state(1);
        let dir = tempfile::tempdir().unwrap();
        let mut files = w.files.clone();
        files[0] = other.files[0].clone();
        for (seq, bytes) in files.iter().enumerate() {
            std::fs::write(dir.path().join(file_name(seq, seq as u64)), bytes).unwrap();
        }
        let err = read_etcd_wal(dir.path(), 0).unwrap_err().to_string();
        assert!(err.contains("CRC chain breaks"), "{err}");

        // A missing file in the sequence.
        let dir = tempfile::tempdir().unwrap();
        w.write_to(dir.path());
        std::fs::rename(dir.path().join(file_name(1, 2)), dir.path().join(file_name(2, 2))).unwrap();
        let err = read_etcd_wal(dir.path(), 0).unwrap_err().to_string();
        assert!(err.contains("a file is missing"), "{err}");
    }

    /// The WAL of `w` as one file cut at `len` bytes (no preallocated zeros after it).
    fn cut_at(w: &WalWriter, len: usize) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let name = file_name(0, 0);
        std::fs::write(dir.path().join(name), &w.files[0][..len]).unwrap();
        dir
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_what_precedes_it_kept() {
        let mut w = WalWriter::new();
        w.entry(1, 1, b"one");
        w.state(1);
        let complete = w.files[0].len();
        w.entry(2, 1, &[9u8; 600]);
        w.state(2);
        let end = w.files[0].len();

        // The file ends inside the record.
        for len in [complete + 4, complete + 8, complete + 100] {
            let wal = read_etcd_wal(cut_at(&w, len).path(), 0).unwrap();
            assert_eq!((indexes(&wal), wal.commit), (vec![1], 1), "cut at {len}");
            assert_eq!(wal.torn_tail.as_ref().map(|t| t.offset), Some(complete as u64));
        }

        // A sector of the record never reached the disk: zeros, from an aligned offset on.
        let mut zeroed = w.files.clone();
        let from = (complete as u64 + FRAME_BYTES as u64).next_multiple_of(SECTOR_BYTES) as usize;
        assert!(from < end, "the record spans a sector boundary");
        zeroed[0][from..end].fill(0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(0, 0)), &zeroed[0]).unwrap();
        let wal = read_etcd_wal(dir.path(), 0).unwrap();
        assert_eq!((indexes(&wal), wal.commit), (vec![1], 1));
        assert!(wal.torn_tail.is_some());
    }

    #[test]
    fn damage_is_an_error_and_so_is_a_tear_before_the_last_file() {
        let mut w = WalWriter::new();
        w.entry(1, 1, b"one");
        let at = w.files[0].len();
        w.entry(2, 1, b"two, with some length to it");
        w.state(2);

        // One flipped bit, no zero sector: not a torn write.
        let mut flipped = w.files.clone();
        flipped[0][at + FRAME_BYTES + 12] ^= 0x10;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(0, 0)), &flipped[0]).unwrap();
        let err = read_etcd_wal(dir.path(), 0).unwrap_err();
        assert!(
            matches!(&err, WalError::Damaged { offset, .. } if *offset == at as u64),
            "{err}"
        );

        // A file cut short with more files after it (and no preallocated zeros either).
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(file_name(0, 0)), &w.files[0][..at + 10]).unwrap();
        std::fs::write(dir.path().join(file_name(1, 2)), &WalWriter::new().files[0]).unwrap();
        let err = read_etcd_wal(dir.path(), 0).unwrap_err().to_string();
        assert!(err.contains("more WAL files follow"), "{err}");
    }
}
