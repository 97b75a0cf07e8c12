//! Encryption at rest for Concord (`concord serve --encryption-key-file FILE`).
//!
//! Values in the MVCC store and the data of Raft log entries are sealed with AES-256-GCM from
//! `ring` (already in the tree through rustls). This crate knows nothing of either: it reads key
//! files ([`Keyring`]), seals and opens byte strings ([`Sealer`], [`Keyring::open`]), and keeps
//! the set of keys this process can open with ([`register`], [`open_registered`]). The storage
//! and Raft crates decide what is sealed and what associated data binds it to its place.
//!
//! # Key file
//!
//! UTF-8 text, one key per line: `name:64-hex-digits` (the 32 bytes of an AES-256 key). Blank
//! lines and lines starting with `#` are ignored. Names are 1–64 characters of `A-Z a-z 0-9 . _ -`
//! and only label keys for people. **The first key seals everything written from now on; the
//! others only open data sealed before.** Generate a key with `openssl rand -hex 32` (or
//! `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'`).
//!
//! ```text
//! # newest first
//! 2026-q3:6b7f1c...(64 hex digits)
//! 2026-q2:0e3a9d...(64 hex digits)
//! ```
//!
//! A file that is not valid (bad line, wrong length, non-hex, duplicate name or key, all-zero
//! key, no key at all) is refused with the line number and the reason; key material is never
//! echoed. A file that other users may read or write gets a warning in the log.
//!
//! **Key ids.** Sealed data names its key by a 32-bit *key id*, the first four bytes of
//! SHA-256(`"concord-crypt key id v1"` ‖ 0 ‖ key). It is derived from the key itself, so two
//! members can never disagree on which bytes an id stands for, and a renamed key keeps its id.
//! Two keys of one file with the same id are refused (a 2⁻³² accident per pair).
//!
//! # Sealed format (version 1)
//!
//! ```text
//! byte 0       0x01, the format version
//! bytes 1..5   key id, big-endian
//! bytes 5..17  nonce (96 bits): the sealer's 64-bit random prefix ‖ 32-bit counter, big-endian
//! bytes 17..   AES-256-GCM ciphertext, then its 16-byte tag
//! ```
//!
//! [`OVERHEAD`] is 33 bytes per sealed item. The GCM associated data is bytes 0..5 followed by
//! the caller's associated data (the record header for store values; group, index and term for
//! Raft entries), so a sealed item moved to another place, or with its header altered, fails to
//! open.
//!
//! # Why nonces do not repeat
//!
//! GCM breaks if one key ever seals two messages under the same nonce. A [`Sealer`] draws a
//! 64-bit prefix from the operating system's CSPRNG when it is made and counts the low 32 bits
//! up from 0 under a lock; after 2³² nonces it draws a fresh prefix. Within one prefix nonces are
//! distinct by construction. Across prefixes (other processes, restarts, other members sharing
//! the key file, a restored copy of the cluster) a repeat needs two equal 64-bit draws: after
//! *P* prefixes have been drawn under one key the chance of any repeat is below *P*²/2⁶⁵, so
//! below 2⁻³³ for 65 536 restarts and below 3·10⁻⁸ for a million. Random 96-bit nonces would
//! allow only about 2³² messages per key for the same margin; this construction allows 2³² per
//! process start.
//!
//! Nonces are *not* derived from Raft positions or revisions: the same (index, term) or
//! revision recurs in other Raft groups, in a cluster restored from a snapshot, and in any new
//! cluster given the same key file, each time with different content.
//!
//! # Rotation
//!
//! 1. Add the new key to every member's key file as a *second* line and restart the members one
//!    by one. Every member can now open data sealed with it (a snapshot from another member
//!    carries the sender's sealed values, see below).
//! 2. Move the new key to the top everywhere and restart the members one by one. From then on
//!    new values and new Raft entries are sealed with it; old data stays readable while its key
//!    is listed.
//! 3. Re-seal old data. Raft log: entries sealed with the old key disappear as the log is
//!    truncated behind snapshots (every `--snapshot-count` applied entries). Store: run a
//!    defragment on each member (`etcdctl defrag`), which rewrites every value under the first
//!    key.
//! 4. Remove the old key. A member refuses to start when its store or its Raft log may still
//!    hold data sealed with a key that is not in the file, and says which key id and where, so
//!    removing a key too early is safe: put it back and finish step 3.
//!
//! Truncated log entries can linger as unreadable ciphertext in raft-engine's files until those
//! files are purged; they are never read again, so they do not need the key.
//!
//! # Turning encryption on, and mixing
//!
//! Starting with a key file on a data directory written without one is allowed: existing
//! plaintext values and entries stay readable, everything written afterwards is sealed, and a
//! defragment seals the remaining store values. Starting *without* a key file on data that holds
//! sealed values or entries is refused. Every member of a cluster must hold the keys that seal
//! the others' data, since a snapshot sent to a lagging member is a copy of the sender's store;
//! a member given a snapshot sealed with a key it lacks refuses to install it.

mod error;
mod keyfile;
mod registry;
mod seal;

pub use error::CryptError;
pub use keyfile::{permission_warning, KeyId, Keyring};
pub use registry::{is_registered, open_registered, register};
pub use seal::{sealed_key_id, Sealer, FORMAT_V1, OVERHEAD};
