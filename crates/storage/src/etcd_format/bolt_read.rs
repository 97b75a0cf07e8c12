//! A reader of bbolt files (see `bolt_write.rs` for the layout), for importing etcd snapshots.
//!
//! It reads the whole file into memory and walks it, checking every offset: a damaged file
//! gives an error, never a panic or a loop (pages are followed only below the meta's
//! high-water mark, and trees only so deep). Any page size bbolt writes is accepted.

use super::bolt_write::{
    fnv64a, BUCKET_HEADER, ELEMENT, ELEMENT_BUCKET, FLAG_BRANCH, FLAG_LEAF, MAGIC, PAGE_HEADER, VERSION,
};
use crate::error::StorageError;

/// B+trees deeper than this are taken for damage (a real one of 2^63 keys is not as deep).
const MAX_DEPTH: usize = 64;

fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("bbolt file: {what}"))
}

/// A bbolt file in memory.
pub(crate) struct BoltFile {
    bytes: Vec<u8>,
    page_size: usize,
    high_water: u64,
    root: u64,
}

/// Where a bucket's tree is: a page, or inline in its parent's value.
#[derive(Clone, Copy)]
pub(crate) enum BucketRoot<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

/// One key of a bucket.
pub(crate) struct Entry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub is_bucket: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Whether `bytes` start like a bbolt file (a meta page with bbolt's magic at the front).
pub(crate) fn looks_like_bolt(bytes: &[u8]) -> bool {
    u32_at(bytes, PAGE_HEADER) == Some(MAGIC)
}

impl BoltFile {
    /// Parses the meta pages of `bytes` (the file without any trailer) and keeps the valid one
    /// with the higher transaction id, as bbolt does.
    pub fn parse(bytes: Vec<u8>) -> Result<BoltFile, StorageError> {
        let meta_at = |offset: usize| -> Option<(u64, usize, u64, u64)> {
            let m = bytes.get(offset + PAGE_HEADER..offset + PAGE_HEADER + 64)?;
            if u32_at(m, 0)? != MAGIC || u32_at(m, 4)? != VERSION || fnv64a(&m[0..56]) != u64_at(m, 56)? {
                return None;
            }
            let page_size = u32_at(m, 8)? as usize;
            Some((u64_at(m, 48)?, page_size, u64_at(m, 16)?, u64_at(m, 40)?))
        };
        let first = meta_at(0).ok_or_else(|| corrupt("the first meta page is invalid"));
        // The second meta page sits one page in; take the page size from the first valid one.
        let page_size = match &first {
            Ok((_, size, _, _)) => *size,
            Err(_) => [4096usize, 8192, 16384, 65536]
                .into_iter()
                .find(|size| meta_at(*size).is_some())
                .ok_or_else(|| corrupt("no valid meta page (not a bbolt file, or damaged)"))?,
        };
        if !(512..=1 << 20).contains(&page_size) {
            return Err(corrupt(format!("page size {page_size} is implausible")));
        }
        let second = meta_at(page_size);
        let (_, page_size, root, high_water) = match (first.ok(), second) {
            (Some(a), Some(b)) => {
                if b.0 > a.0 {
                    b
                } else {
                    a
                }
            }
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => return Err(corrupt("no valid meta page")),
        };
        if (high_water as u128) * (page_size as u128) > bytes.len() as u128 {
            return Err(corrupt(format!(
                "the meta page names {high_water} pages of {page_size} bytes but the file is {} bytes (truncated?)",
                bytes.len()
            )));
        }
        Ok(BoltFile {
            bytes,
            page_size,
            high_water,
            root,
        })
    }

    /// The root bucket (which holds the top-level buckets).
    pub fn root(&self) -> BucketRoot<'_> {
        BucketRoot::Page(self.root)
    }

    /// The top-level bucket `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRoot<'_>>, StorageError> {
        let entries = self.entries(self.root())?;
        match entries.into_iter().find(|e| e.key == name) {
            Some(e) if e.is_bucket => Ok(Some(self.open_bucket(e.value)?)),
            Some(_) => Err(corrupt(format!(
                "{} is a value, not a bucket",
                String::from_utf8_lossy(name)
            ))),
            None => Ok(None),
        }
    }

    /// Decodes the value standing for a nested bucket.
    pub fn open_bucket<'a>(&self, value: &'a [u8]) -> Result<BucketRoot<'a>, StorageError> {
        let root = u64_at(value, 0).ok_or_else(|| corrupt("bucket value too short"))?;
        if root == 0 {
            value
                .get(BUCKET_HEADER..)
                .map(BucketRoot::Inline)
                .ok_or_else(|| corrupt("inline bucket too short"))
        } else {
            Ok(BucketRoot::Page(root))
        }
    }

    /// Every key of a bucket, in order.
    pub fn entries<'a>(&'a self, bucket: BucketRoot<'a>) -> Result<Vec<Entry<'a>>, StorageError> {
        let mut out = Vec::new();
        match bucket {
            BucketRoot::Inline(page) => leaf_entries(page, &mut out)?,
            BucketRoot::Page(id) => {
                // A tree visits each page once: more visits mean pages shared by damage.
                let mut budget = self.high_water;
                self.walk(id, 0, &mut budget, &mut out)?
            }
        }
        Ok(out)
    }

    /// The bytes of page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<&[u8], StorageError> {
        if id < 2 || id >= self.high_water {
            return Err(corrupt(format!(
                "page {id} is out of range (high-water mark {})",
                self.high_water
            )));
        }
        let start = id as usize * self.page_size;
        let head = self
            .bytes
            .get(start..start + PAGE_HEADER)
            .ok_or_else(|| corrupt(format!("page {id} is past the end")))?;
        let overflow = u32_at(head, 12).unwrap_or(0) as u64;
        if id + overflow >= self.high_water {
            return Err(corrupt(format!("page {id} overflows past the high-water mark")));
        }
        let end = start + (overflow as usize + 1) * self.page_size;
        self.bytes
            .get(start..end)
            .ok_or_else(|| corrupt(format!("page {id} is past the end")))
    }

    fn walk<'a>(
        &'a self,
        id: u64,
        depth: usize,
        budget: &mut u64,
        out: &mut Vec<Entry<'a>>,
    ) -> Result<(), StorageError> {
        if depth > MAX_DEPTH {
            return Err(corrupt("tree too deep (a cycle?)"));
        }
        if *budget == 0 {
            return Err(corrupt(
                "a tree visits more pages than the file has (pages shared by damage)",
            ));
        }
        *budget -= 1;
        let page = self.page(id)?;
        let flags = u16_at(page, 8).unwrap_or(0);
        if flags & FLAG_LEAF != 0 {
            return leaf_entries(page, out);
        }
        if flags & FLAG_BRANCH == 0 {
            return Err(corrupt(format!(
                "page {id} is neither a branch nor a leaf (flags {flags:#x})"
            )));
        }
        let count = u16_at(page, 10).unwrap_or(0) as usize;
        for i in 0..count {
            let at = PAGE_HEADER + ELEMENT * i;
            let child = u64_at(page, at + 8).ok_or_else(|| corrupt(format!("page {id}: element {i} past the end")))?;
            self.walk(child, depth + 1, budget, out)?;
        }
        Ok(())
    }
}

/// The elements of a leaf page (whose bytes start with its page header).
fn leaf_entries<'a>(page: &'a [u8], out: &mut Vec<Entry<'a>>) -> Result<(), StorageError> {
    let count = u16_at(page, 10).ok_or_else(|| corrupt("leaf page too short"))? as usize;
    if count > 0 && u16_at(page, 8).is_some_and(|f| f & FLAG_LEAF == 0) {
        return Err(corrupt("inline bucket page is not a leaf"));
    }
    for i in 0..count {
        let at = PAGE_HEADER + ELEMENT * i;
        let bad = || corrupt(format!("leaf element {i} points outside its page"));
        let flags = u32_at(page, at).ok_or_else(bad)?;
        let pos = u32_at(page, at + 4).ok_or_else(bad)? as usize;
        let ksize = u32_at(page, at + 8).ok_or_else(bad)? as usize;
        let vsize = u32_at(page, at + 12).ok_or_else(bad)? as usize;
        let kstart = at.checked_add(pos).ok_or_else(bad)?;
        let vstart = kstart.checked_add(ksize).ok_or_else(bad)?;
        let vend = vstart.checked_add(vsize).ok_or_else(bad)?;
        out.push(Entry {
            key: page.get(kstart..vstart).ok_or_else(bad)?,
            value: page.get(vstart..vend).ok_or_else(bad)?,
            is_bucket: flags & ELEMENT_BUCKET != 0,
        });
    }
    Ok(())
}
