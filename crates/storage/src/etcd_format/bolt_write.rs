//! A writer of bbolt files (the B+tree file format of Go's `go.etcd.io/bbolt`, etcd's backend),
//! for etcd-format snapshots.
//!
//! The file is written in one go, bottom-up, never updated: pages 0 and 1 are the two meta
//! pages, page 2 an empty freelist, then each bucket's pages (nested buckets before the bucket
//! holding them, leaves before the branches above them), and last the root bucket's pages. A
//! big bucket (etcd's `key`) can be streamed from an iterator, one page in memory at a time.
//! Every page is 4096 bytes; a node bigger than a page spans contiguous pages (bbolt's
//! `overflow`). A bucket without nested buckets that fits in a quarter page is stored inline in
//! its parent's value, as bbolt stores it.
//!
//! Layouts (little-endian, as bbolt writes them on every platform etcd ships for):
//! - page header: `id u64, flags u16, count u16, overflow u32` (16 bytes); flags: branch 0x01,
//!   leaf 0x02, meta 0x04, freelist 0x10.
//! - leaf element: `flags u32 (0x01 = bucket), pos u32, ksize u32, vsize u32`; branch element:
//!   `pos u32, ksize u32, pgid u64`; `pos` counts from the element's own header to its key.
//! - bucket value: `root pgid u64, sequence u64`, then, when `root` is 0, the inline leaf page.
//! - meta: `magic 0xED0CDAED u32, version 2 u32, page size u32, flags u32, root bucket (16),
//!   freelist pgid u64, high-water pgid u64, txid u64, checksum u64` (FNV-1a 64 of the 56 bytes
//!   before it).

use std::collections::BTreeMap;
use std::io::{self, Seek, SeekFrom, Write};

/// bbolt's page size for files written here (the page size of etcd's files on x86-64 Linux).
pub(crate) const PAGE_SIZE: usize = 4096;
/// bbolt's meta magic number.
pub(crate) const MAGIC: u32 = 0xED0C_DAED;
/// bbolt's data file format version.
pub(crate) const VERSION: u32 = 2;
pub(crate) const PAGE_HEADER: usize = 16;
pub(crate) const ELEMENT: usize = 16;
pub(crate) const BUCKET_HEADER: usize = 16;
pub(crate) const FLAG_BRANCH: u16 = 0x01;
pub(crate) const FLAG_LEAF: u16 = 0x02;
pub(crate) const FLAG_META: u16 = 0x04;
pub(crate) const FLAG_FREELIST: u16 = 0x10;
pub(crate) const ELEMENT_BUCKET: u32 = 0x01;
/// bbolt's `maxInlineBucketSize`: a quarter page.
const MAX_INLINE: usize = PAGE_SIZE / 4;
/// Elements per node at most (the page header's `count` is a `u16`).
const MAX_ELEMENTS: usize = u16::MAX as usize;

/// One bucket's content, sorted by key as bbolt keeps it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub entries: BTreeMap<Vec<u8>, Item>,
}

/// What a key of a bucket holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Value(Vec<u8>),
    Bucket(Bucket),
    /// A bucket already written with [`BoltWriter::stream_bucket`]: the value standing for it.
    Written(Vec<u8>),
}

impl Bucket {
    /// Sets `key` to a plain value.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.entries.insert(key.into(), Item::Value(value.into()));
    }

    /// The nested bucket `name`, created empty when missing (or replacing anything else).
    pub fn bucket(&mut self, name: &[u8]) -> &mut Bucket {
        let item = self
            .entries
            .entry(name.to_vec())
            .or_insert_with(|| Item::Bucket(Bucket::default()));
        if !matches!(item, Item::Bucket(_)) {
            *item = Item::Bucket(Bucket::default());
        }
        match item {
            Item::Bucket(b) => b,
            _ => unreachable!("replaced above"),
        }
    }
}

/// A leaf element: element flags, key, value.
type LeafElement = (u32, Vec<u8>, Vec<u8>);

/// Writes a bbolt file front to back: data pages as buckets are handed over (so a big bucket
/// streams through one page of memory), then the root bucket, then the meta and freelist pages
/// at the front.
pub(crate) struct BoltWriter<W: Write + Seek> {
    out: W,
    next_page: u64,
}

impl<W: Write + Seek> BoltWriter<W> {
    /// Starts a file; pages 0 to 2 (meta, meta, freelist) are written by [`finish`](Self::finish).
    pub fn new(mut out: W) -> io::Result<BoltWriter<W>> {
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&[0u8; 3 * PAGE_SIZE])?;
        Ok(BoltWriter { out, next_page: 3 })
    }

    /// Appends a node (its bytes start with a page header whose id and overflow are filled in
    /// here) and returns its page id.
    fn push_node(&mut self, mut node: Vec<u8>) -> io::Result<u64> {
        let id = self.next_page;
        let pages = node.len().div_ceil(PAGE_SIZE).max(1);
        node[0..8].copy_from_slice(&id.to_le_bytes());
        node[12..16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
        node.resize(pages * PAGE_SIZE, 0);
        self.out.write_all(&node)?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Writes the branch levels above `level` (each child's first key and page) and returns the
    /// root's page.
    fn write_branches(&mut self, mut level: Vec<(Vec<u8>, u64)>) -> io::Result<u64> {
        while level.len() > 1 {
            let children = std::mem::take(&mut level);
            for run in runs(&children, |(k, _)| k.len()) {
                let chunk = &children[run];
                let ids: Vec<[u8; 8]> = chunk.iter().map(|(_, id)| id.to_le_bytes()).collect();
                let refs: Vec<(u32, &[u8], &[u8])> = chunk
                    .iter()
                    .zip(&ids)
                    .map(|((k, _), id)| (0, &k[..], &id[..]))
                    .collect();
                level.push((chunk[0].0.clone(), self.push_node(encode_node(FLAG_BRANCH, &refs))?));
            }
        }
        Ok(level.first().map_or(0, |(_, id)| *id))
    }

    /// Writes a leaf and notes its first key and page in `level`.
    fn flush_leaf(&mut self, leaf: &mut Vec<LeafElement>, level: &mut Vec<(Vec<u8>, u64)>) -> io::Result<()> {
        let refs: Vec<(u32, &[u8], &[u8])> = leaf.iter().map(|(f, k, v)| (*f, &k[..], &v[..])).collect();
        let id = self.push_node(encode_node(FLAG_LEAF, &refs))?;
        let first = leaf.first().map(|(_, k, _)| k.clone()).unwrap_or_default();
        level.push((first, id));
        leaf.clear();
        Ok(())
    }

    /// Writes a tree from elements in key order, one leaf in memory at a time; returns its root.
    fn write_tree<E>(&mut self, elements: impl IntoIterator<Item = Result<LeafElement, E>>) -> Result<u64, E>
    where
        E: From<io::Error>,
    {
        let mut level = Vec::new();
        let (mut leaf, mut used) = (Vec::new(), PAGE_HEADER);
        for element in elements {
            let element = element?;
            let size = ELEMENT + element.1.len() + element.2.len();
            if !leaf.is_empty() && (used + size > PAGE_SIZE || leaf.len() == MAX_ELEMENTS) {
                self.flush_leaf(&mut leaf, &mut level)?;
                used = PAGE_HEADER;
            }
            used += size;
            leaf.push(element);
        }
        if !leaf.is_empty() || level.is_empty() {
            self.flush_leaf(&mut leaf, &mut level)?;
        }
        Ok(self.write_branches(level)?)
    }

    /// Writes a bucket of plain values given in strictly increasing key order (never held in
    /// memory whole) and returns the value that stands for it in its parent ([`Item::Written`]).
    /// It is inlined, as bbolt would, when it turns out to fit in a quarter page.
    pub fn stream_bucket<E>(
        &mut self,
        entries: impl IntoIterator<Item = Result<(Vec<u8>, Vec<u8>), E>>,
    ) -> Result<Vec<u8>, E>
    where
        E: From<io::Error>,
    {
        let mut entries = entries.into_iter();
        let mut head = Vec::new();
        let mut size = PAGE_HEADER;
        for entry in entries.by_ref() {
            let (k, v) = entry?;
            size += ELEMENT + k.len() + v.len();
            head.push((0, k, v));
            if size > MAX_INLINE {
                break;
            }
        }
        let mut value = vec![0u8; BUCKET_HEADER];
        if size <= MAX_INLINE {
            let refs: Vec<(u32, &[u8], &[u8])> = head.iter().map(|(f, k, v)| (*f, &k[..], &v[..])).collect();
            value.extend_from_slice(&encode_node(FLAG_LEAF, &refs));
            return Ok(value);
        }
        let rest = entries.map(|e| e.map(|(k, v)| (0, k, v)));
        let root = self.write_tree(head.into_iter().map(Ok).chain(rest))?;
        value[0..8].copy_from_slice(&root.to_le_bytes());
        Ok(value)
    }

    /// The leaf elements of a bucket, its nested buckets written (or inlined) first.
    fn leaf_elements(&mut self, bucket: Bucket) -> io::Result<Vec<LeafElement>> {
        bucket
            .entries
            .into_iter()
            .map(|(key, item)| {
                Ok(match item {
                    Item::Value(v) => (0, key, v),
                    Item::Bucket(b) => (ELEMENT_BUCKET, key, self.bucket_value(b)?),
                    Item::Written(v) => (ELEMENT_BUCKET, key, v),
                })
            })
            .collect()
    }

    /// The value that stands for a nested bucket in its parent: its header, plus its inline page.
    fn bucket_value(&mut self, bucket: Bucket) -> io::Result<Vec<u8>> {
        let mut value = vec![0u8; BUCKET_HEADER];
        if inlineable(&bucket) {
            let elements: Vec<(u32, &[u8], &[u8])> = bucket
                .entries
                .iter()
                .filter_map(|(k, item)| match item {
                    Item::Value(v) => Some((0, &k[..], &v[..])),
                    _ => None,
                })
                .collect();
            value.extend_from_slice(&encode_node(FLAG_LEAF, &elements));
        } else {
            let elements = self.leaf_elements(bucket)?;
            let root = self.write_tree::<io::Error>(elements.into_iter().map(Ok))?;
            value[0..8].copy_from_slice(&root.to_le_bytes());
        }
        Ok(value)
    }

    /// Writes `root`'s buckets (the top level holds only buckets, as in etcd's backend), then
    /// the freelist and meta pages, and returns the output and the file's size.
    pub fn finish(mut self, root: Bucket) -> io::Result<(W, u64)> {
        let elements = self.leaf_elements(root)?;
        let root_id = self.write_tree::<io::Error>(elements.into_iter().map(Ok))?;
        let high_water = self.next_page;
        let mut front = vec![0u8; 3 * PAGE_SIZE];
        front[0..PAGE_SIZE].copy_from_slice(&meta_page(0, root_id, high_water, 1));
        front[PAGE_SIZE..2 * PAGE_SIZE].copy_from_slice(&meta_page(1, root_id, high_water, 2));
        // Page 2: an empty freelist.
        front[2 * PAGE_SIZE..2 * PAGE_SIZE + 8].copy_from_slice(&2u64.to_le_bytes());
        front[2 * PAGE_SIZE + 8..2 * PAGE_SIZE + 10].copy_from_slice(&FLAG_FREELIST.to_le_bytes());
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&front)?;
        self.out.flush()?;
        Ok((self.out, high_water * PAGE_SIZE as u64))
    }
}

/// Encodes a node: `flags` is leaf or branch; each element is (element flags, key, value) for
/// leaves and (0, key, child pgid as 8 bytes) for branches.
fn encode_node(flags: u16, elements: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
    let data: usize = elements
        .iter()
        .map(|(_, k, v)| k.len() + if flags == FLAG_LEAF { v.len() } else { 0 })
        .sum();
    let mut out = vec![0u8; PAGE_HEADER + ELEMENT * elements.len()];
    out.reserve(data);
    out[8..10].copy_from_slice(&flags.to_le_bytes());
    out[10..12].copy_from_slice(&(elements.len() as u16).to_le_bytes());
    for (i, (eflags, key, value)) in elements.iter().enumerate() {
        let at = PAGE_HEADER + ELEMENT * i;
        let pos = (out.len() - at) as u32;
        let header = &mut out[at..at + ELEMENT];
        if flags == FLAG_LEAF {
            header[0..4].copy_from_slice(&eflags.to_le_bytes());
            header[4..8].copy_from_slice(&pos.to_le_bytes());
            header[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            header[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(value);
        } else {
            header[0..4].copy_from_slice(&pos.to_le_bytes());
            header[4..8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            header[8..16].copy_from_slice(value);
            out.extend_from_slice(key);
        }
    }
    out
}

/// Splits a level's children into branch nodes that fill a page each. A node holds at least two
/// children (bbolt's `minKeysPerPage`), overflowing its page if their keys are big: with one
/// child per node a level of keys bigger than half a page would never shrink, and the tree
/// would grow a level at a time for good.
fn runs<T>(elements: &[T], size: impl Fn(&T) -> usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, PAGE_HEADER);
    for (i, e) in elements.iter().enumerate() {
        let s = ELEMENT + size(e);
        if i > start + 1 && (used + s > PAGE_SIZE || i - start == MAX_ELEMENTS) {
            out.push(start..i);
            start = i;
            used = PAGE_HEADER;
        }
        used += s;
    }
    if start < elements.len() || out.is_empty() {
        out.push(start..elements.len());
    }
    out
}

/// Whether bbolt would store this bucket inline: no nested buckets, and its leaf fits in a
/// quarter page.
fn inlineable(bucket: &Bucket) -> bool {
    let mut size = PAGE_HEADER;
    for (key, item) in &bucket.entries {
        match item {
            Item::Value(v) => size += ELEMENT + key.len() + v.len(),
            _ => return false,
        }
        if size > MAX_INLINE {
            return false;
        }
    }
    true
}

/// FNV-1a, 64 bits: the checksum of bbolt's meta pages.
pub(crate) fn fnv64a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A meta page: `txid` tells the two copies apart (bbolt uses the valid one with the higher).
fn meta_page(id: u64, root: u64, high_water: u64, txid: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    page[0..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&FLAG_META.to_le_bytes());
    let m = &mut page[PAGE_HEADER..PAGE_HEADER + 64];
    m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    m[4..8].copy_from_slice(&VERSION.to_le_bytes());
    m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    // flags (12..16) and the root bucket's sequence (24..32) stay 0.
    m[16..24].copy_from_slice(&root.to_le_bytes());
    m[32..40].copy_from_slice(&2u64.to_le_bytes());
    m[40..48].copy_from_slice(&high_water.to_le_bytes());
    m[48..56].copy_from_slice(&txid.to_le_bytes());
    let sum = fnv64a(&m[0..56]);
    m[56..64].copy_from_slice(&sum.to_le_bytes());
    page
}

/// The whole bbolt file holding `root`'s buckets, in memory (for tests and small files).
#[cfg(test)]
pub(crate) fn encode_file(root: &Bucket) -> Vec<u8> {
    let writer = BoltWriter::new(io::Cursor::new(Vec::new())).expect("writing to memory");
    writer.finish(root.clone()).expect("writing to memory").0.into_inner()
}
