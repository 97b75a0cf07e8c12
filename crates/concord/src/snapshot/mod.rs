//! `concord snapshot save|restore|status`: back up a running cluster, found a
//! new cluster from the backup, and tell what a backup holds.
//!
//! This is disaster recovery: when a cluster has lost its quorum for good
//! (or its data must move to new machines), a backup taken earlier is the way
//! back. It follows etcd's tools so that the same runbooks work:
//!
//! - `save` is `etcdctl snapshot save`: it streams Maintenance.Snapshot from
//!   one member into `FILE.part`, and renames it to `FILE` only once the
//!   stream is complete and its SHA-256 trailer matches. The file holds the
//!   bytes as sent (etcd's backend, a bbolt file, then the 32-byte SHA-256 of
//!   it), exactly what etcdctl writes, so `etcdctl snapshot status|restore`
//!   take it. A member of an earlier version sends its redb store instead:
//!   `save` converts that to etcd's format ([`etcd`]).
//! - `restore` is `etcdutl snapshot restore`: it checks the trailer, puts the
//!   store in a new data directory (importing an etcd-format snapshot, from
//!   etcd 3.4/3.5 or Concord, or copying a redb one), and writes a fresh membership from the
//!   `--initial-*` flags given now (new member ids, new cluster id). The
//!   restored store's applied index is set back to 0: the new cluster starts
//!   a new Raft log (`concord serve --initial-cluster-state new` bootstraps
//!   it), and the old log's positions mean nothing there.
//! - `status` is `etcdutl snapshot status` ([`status`]).
//!
//! `save` shows its progress with a bar on a terminal ([`progress`]).

mod etcd;
pub mod migrate;
mod progress;
mod status;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::{MemberListRequest, SnapshotRequest};
use concord_server::membership::{parse_initial_cluster, Membership};
use concord_storage::MvccStore;
use sha2::{Digest, Sha256};

use crate::client::{status_message, ClusterArgs, Session};
use progress::SaveProgress;

/// Length of the SHA-256 trailer that follows the store in a snapshot.
pub const TRAILER_LEN: usize = 32;

/// Flags of `concord snapshot`.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

/// What to do with a snapshot.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stream a snapshot of a running member's store into FILE, in etcd's format (like `etcdctl snapshot save`).
    Save(SaveArgs),
    /// Make a new member's data directory from a snapshot (like `etcdutl snapshot restore`).
    Restore(RestoreArgs),
    /// Show a snapshot's hash, revision, key count and size (like `etcdutl snapshot status`).
    Status(status::StatusArgs),
}

/// Flags of `concord snapshot save`.
#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the snapshot (written to FILE.part first, renamed when complete and verified).
    pub file: PathBuf,
    /// Where to connect; the first of --endpoints that answers sends the snapshot.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Flags of `concord snapshot restore`: etcdutl's, with `concord serve`'s defaults.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot file (from `concord snapshot save` or `etcdctl snapshot save`, etcd 3.4/3.5).
    pub file: PathBuf,
    /// Name of the member this data directory is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The data directory to create (default: <name>.etcd); it must not exist or be empty.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The new cluster's members (name=peer-url,...); default: <name>=<initial-advertise-peer-urls>.
    #[arg(long)]
    pub initial_cluster: Option<String>,
    /// The new cluster's token, which makes its member and cluster ids unique.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// This member's peer URLs; must match its entry in --initial-cluster.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Restore even if the SHA-256 trailer is missing or wrong (e.g. a kv.redb copied out of a data directory).
    #[arg(long)]
    pub skip_hash_check: bool,
}

/// Runs one `snapshot` subcommand.
pub async fn run(args: SnapshotArgs) -> Result<(), String> {
    match args.command {
        SnapshotCommand::Save(args) => save(args).await,
        SnapshotCommand::Restore(args) => tokio::task::spawn_blocking(move || restore(args))
            .await
            .map_err(|e| format!("restore failed: {e}"))?,
        SnapshotCommand::Status(args) => tokio::task::spawn_blocking(move || status::run(args))
            .await
            .map_err(|e| format!("status failed: {e}"))?,
    }
}

/// Checks a snapshot as it streams in: hashes every byte except the last 32
/// seen so far, which may be the trailer, and at the end compares them with
/// the hash. Chunks may split the trailer anywhere.
#[derive(Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    /// The last (up to) 32 bytes seen: not hashed yet.
    tail: Vec<u8>,
    /// Every byte seen, trailer included.
    total: u64,
}

impl TrailerCheck {
    /// A check that has seen nothing yet.
    pub fn new() -> TrailerCheck {
        TrailerCheck::default()
    }

    /// Feeds the next bytes of the snapshot.
    pub fn update(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if chunk.len() >= TRAILER_LEN {
            // Everything held back, and the chunk but its last 32 bytes, is content.
            self.hasher.update(&self.tail);
            let (content, tail) = chunk.split_at(chunk.len() - TRAILER_LEN);
            self.hasher.update(content);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(chunk);
            if self.tail.len() > TRAILER_LEN {
                let spill = self.tail.len() - TRAILER_LEN;
                self.hasher.update(&self.tail[..spill]);
                self.tail.drain(..spill);
            }
        }
    }

    /// Bytes fed so far, trailer included.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the last 32 bytes fed are the SHA-256 of everything before them.
    pub fn finish(self) -> Result<(), String> {
        if self.tail.len() < TRAILER_LEN {
            return Err(format!(
                "the snapshot is {} bytes, too short to hold its {TRAILER_LEN}-byte SHA-256 trailer",
                self.total
            ));
        }
        let digest = self.hasher.finalize();
        if digest.as_slice() != self.tail.as_slice() {
            return Err(format!(
                "the snapshot's SHA-256 trailer does not match its content (sha256 {}, trailer {})",
                hex(&digest),
                hex(&self.tail)
            ));
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.3 MiB`, `2.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The temporary name a snapshot is written to: FILE.part.
fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(".part");
    PathBuf::from(name)
}

/// Creates (or truncates) a file only its owner can read: a snapshot holds every key.
fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// fsyncs the directory holding `path`, so a rename or create in it is durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

async fn save(args: SaveArgs) -> Result<(), String> {
    let session = Session::connect(&args.cluster).await?;
    let endpoint = session.endpoint.clone();
    // Snapshots of big stores are big: lift the default 4 MiB message cap (chunks are 32 KiB).
    let mut client = MaintenanceClient::new(session.channel.clone()).max_decoding_message_size(64 << 20);
    let part = part_path(&args.file);
    let mut out = create_private(&part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut progress = SaveProgress::new(&endpoint);
    let mut stream = match client.snapshot(session.request(SnapshotRequest {})).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            progress.abandon();
            drop(out);
            let _ = std::fs::remove_file(&part);
            return Err(format!("{endpoint}: {}", status_message(status)));
        }
    };
    let result = async {
        let mut check = TrailerCheck::new();
        let mut total: Option<u64> = None;
        let mut remaining = u64::MAX;
        while let Some(msg) = stream.message().await.map_err(|s| {
            format!("{endpoint}: snapshot stream failed: {}", status_message(s))
        })? {
            let expected = *total.get_or_insert(check.total() + msg.blob.len() as u64 + msg.remaining_bytes);
            out.write_all(&msg.blob).map_err(|e| format!("{}: {e}", part.display()))?;
            check.update(&msg.blob);
            remaining = msg.remaining_bytes;
            if check.total() + remaining != expected {
                return Err(format!(
                    "the snapshot stream is inconsistent: {} bytes received and {remaining} announced remaining, of {expected}",
                    check.total()
                ));
            }
            progress.update(check.total(), expected);
        }
        if remaining != 0 {
            return Err(format!(
                "the snapshot stream ended early: {} of {} bytes received",
                check.total(),
                total.unwrap_or(0)
            ));
        }
        let received = check.total();
        check.finish()?;
        out.sync_all().map_err(|e| format!("{}: {e}", part.display()))?;
        Ok(received)
    }
    .await;
    drop(out);
    let result = match result {
        Ok(received) => to_etcd_format(&session, &part).await.map(|()| received),
        Err(e) => Err(e),
    };
    let received = match result {
        Ok(received) => received,
        Err(e) => {
            progress.abandon();
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, &args.file)
        .map_err(|e| format!("renaming {} to {}: {e}", part.display(), args.file.display()))?;
    sync_parent(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    progress.finish(received, &endpoint);
    println!("Snapshot saved at {}", args.file.display());
    Ok(())
}

/// Leaves the verified snapshot at `part` in etcd's format: as it is when the member sent
/// etcd's format, converted (with the cluster's member list) when it sent its redb store.
async fn to_etcd_format(session: &Session, part: &Path) -> Result<(), String> {
    let mut file = File::open(part).map_err(|e| format!("{}: {e}", part.display()))?;
    if etcd::is_etcd_snapshot(&mut file)? {
        return Ok(());
    }
    let layout = inspect(&mut file, false)?;
    drop(file);
    let mut cluster = ClusterClient::new(session.channel.clone());
    let members = session
        .call(cluster.member_list(session.request(MemberListRequest { linearizable: false })))
        .await?
        .members;
    let part = part.to_path_buf();
    tokio::task::spawn_blocking(move || etcd::convert_to_etcd(&part, layout.store_len, &members))
        .await
        .map_err(|e| format!("converting the snapshot failed: {e}"))?
}

/// Whether a directory is missing or empty (what restore may write into).
fn is_missing_or_empty(dir: &Path) -> Result<bool, String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// What is in a snapshot file: how many bytes of it are the store, and whether it had a valid trailer.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotLayout {
    /// Bytes of the store (the file but its trailer).
    pub store_len: u64,
    /// Whether the file ends with a matching SHA-256 trailer.
    pub verified: bool,
}

/// Reads a snapshot file and checks its trailer. Without a matching trailer it
/// is refused, unless `skip_hash_check`: then it is taken as a trailer-less
/// store file (such as a `kv.redb` copied out of a data directory) when its
/// size is a whole number of 4 KiB pages, and as a store with a damaged trailer
/// otherwise (what etcdutl does, with bbolt's 512-byte rule).
pub fn inspect(file: &mut File, skip_hash_check: bool) -> Result<SnapshotLayout, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut verified = false;
    let mut complaint = format!("the file is {len} bytes, too short to hold a SHA-256 trailer");
    if len >= TRAILER_LEN as u64 {
        let store_len = len - TRAILER_LEN as u64;
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        let mut hasher = Sha256::new();
        let mut reader = Read::by_ref(file).take(store_len);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let mut trailer = [0u8; TRAILER_LEN];
        file.read_exact(&mut trailer).map_err(|e| e.to_string())?;
        let digest = hasher.finalize();
        if digest.as_slice() == trailer {
            verified = true;
        } else {
            complaint = format!(
                "its SHA-256 trailer does not match its content (sha256 {}, trailer {})",
                hex(&digest),
                hex(&trailer)
            );
        }
    }
    if verified {
        return Ok(SnapshotLayout {
            store_len: len - TRAILER_LEN as u64,
            verified: true,
        });
    }
    if !skip_hash_check {
        return Err(format!(
            "{complaint}: the snapshot is damaged or not a snapshot (use --skip-hash-check to restore it anyway)"
        ));
    }
    let store_len = if len % 4096 == TRAILER_LEN as u64 {
        len - TRAILER_LEN as u64
    } else {
        len
    };
    Ok(SnapshotLayout {
        store_len,
        verified: false,
    })
}

/// What a restore made.
struct Restored {
    revision: i64,
    compact_revision: i64,
    store_len: u64,
    verified: bool,
    member_id: u64,
    cluster_id: u64,
}

fn restore(args: RestoreArgs) -> Result<(), String> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    let initial_cluster = args.initial_cluster.clone().unwrap_or_else(|| {
        args.initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{}={u}", args.name))
            .collect::<Vec<_>>()
            .join(",")
    });
    // Check the flags before touching the disk, as `concord serve` will check them.
    let spec = parse_initial_cluster(&initial_cluster).map_err(|e| e.to_string())?;
    let Some((_, urls)) = spec.iter().find(|(n, _)| *n == args.name) else {
        return Err(format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            args.name
        ));
    };
    let (mut mine, mut advertised) = (urls.clone(), args.initial_advertise_peer_urls.clone());
    mine.sort();
    advertised.sort();
    if mine != advertised {
        return Err(format!(
            "--initial-cluster has {}={mine:?} but --initial-advertise-peer-urls is {advertised:?}",
            args.name
        ));
    }
    if !is_missing_or_empty(&data_dir)? {
        return Err(format!(
            "data-dir {:?} exists and is not empty; restore into a new directory",
            data_dir.display().to_string()
        ));
    }
    let mut file = File::open(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let layout = inspect(&mut file, args.skip_hash_check).map_err(|e| format!("{}: {e}", args.file.display()))?;

    let created_dir = !data_dir.exists();
    let member_dir = data_dir.join("member");
    let result = write_member(&args, &initial_cluster, &mut file, &layout, &member_dir);
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            // Leave nothing half-made: a later serve would take it for a member.
            let _ = if created_dir {
                std::fs::remove_dir_all(&data_dir)
            } else {
                std::fs::remove_dir_all(&member_dir)
            };
            return Err(e);
        }
    };
    println!(
        "Restored snapshot {} ({}, revision {}, {}{}) into {}: member {:x} of cluster {:x}",
        args.file.display(),
        human_bytes(restored.store_len),
        restored.revision,
        match restored.compact_revision {
            c if c < 0 => "never compacted".to_string(),
            c => format!("compacted at {c}"),
        },
        if restored.verified { "" } else { ", hash not checked" },
        data_dir.display(),
        restored.member_id,
        restored.cluster_id,
    );
    Ok(())
}

/// Writes `DIR/member`: the store (applied index 0) and the new membership.
fn write_member(
    args: &RestoreArgs,
    initial_cluster: &str,
    file: &mut File,
    layout: &SnapshotLayout,
    member_dir: &Path,
) -> Result<Restored, String> {
    let source = args.file.display().to_string();
    let fill = |store_path: &Path| -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", store_path.display());
        if etcd::is_etcd_snapshot(file).map_err(|e| format!("{source}: {e}"))? {
            return etcd::import(file, layout, store_path).map_err(|e| format!("{source}: {e}"));
        }
        file.seek(SeekFrom::Start(0)).map_err(|e| format!("{source}: {e}"))?;
        let mut out = create_private(store_path).map_err(io)?;
        let copied = std::io::copy(&mut Read::by_ref(file).take(layout.store_len), &mut out).map_err(io)?;
        if copied != layout.store_len {
            return Err(format!("{source}: the file shrank while being read"));
        }
        out.sync_all().map_err(io)
    };
    let new = NewMember {
        name: &args.name,
        initial_cluster,
        token: &args.initial_cluster_token,
        client_urls: &[],
    };
    let made = make_member(member_dir, &new, &source, fill)?;
    Ok(Restored {
        revision: made.revision,
        compact_revision: made.compact_revision,
        store_len: layout.store_len,
        verified: layout.verified,
        member_id: made.member_id,
        cluster_id: made.cluster_id,
    })
}

/// Who the member of a new data directory is: `concord serve`'s `--name`, `--initial-cluster`,
/// `--initial-cluster-token` and `--advertise-client-urls`.
struct NewMember<'a> {
    name: &'a str,
    initial_cluster: &'a str,
    token: &'a str,
    client_urls: &'a [String],
}

/// What a new member directory holds.
struct MadeMember {
    revision: i64,
    compact_revision: i64,
    member_id: u64,
    cluster_id: u64,
}

/// Makes `member_dir` the directory of a member of a new cluster, as `concord serve
/// --initial-cluster-state new` then starts it: the store `fill` writes at `kv.redb` (from
/// `source`), with its applied index set back to 0 for the new Raft log, and a fresh membership.
fn make_member(
    member_dir: &Path,
    new: &NewMember<'_>,
    source: &str,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<MadeMember, String> {
    std::fs::create_dir_all(member_dir).map_err(|e| format!("{}: {e}", member_dir.display()))?;
    let store_path = member_dir.join("kv.redb");
    let io = |e: std::io::Error| format!("{}: {e}", store_path.display());
    fill(&store_path)?;
    MvccStore::reset_applied_index(&store_path, 0).map_err(|e| format!("{source}: not a usable Concord store: {e}"))?;
    let (revision, compact_revision) = {
        let store = MvccStore::open(&store_path).map_err(|e| format!("{}: {e}", store_path.display()))?;
        store.sync().map_err(|e| format!("{}: {e}", store_path.display()))?;
        (store.current_revision(), store.compact_revision())
    };
    let membership = Membership::bootstrap(member_dir, new.name, new.initial_cluster, new.token, new.client_urls)
        .map_err(|e| e.to_string())?;
    sync_parent(&store_path).map_err(io)?;
    if let Some(data_dir) = member_dir.parent() {
        sync_parent(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    }
    Ok(MadeMember {
        revision,
        compact_revision,
        member_id: membership.local_id(),
        cluster_id: membership.cluster_id(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trailer(content: &[u8]) -> Vec<u8> {
        let mut bytes = content.to_vec();
        bytes.extend_from_slice(&Sha256::digest(content));
        bytes
    }

    #[test]
    fn trailer_check_accepts_any_chunking() {
        let content: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let bytes = with_trailer(&content);
        for chunk in [1, 5, 31, 32, 33, 64, 500, 2000] {
            let mut check = TrailerCheck::new();
            for c in bytes.chunks(chunk) {
                check.update(c);
            }
            assert_eq!(check.total(), bytes.len() as u64);
            check.finish().unwrap_or_else(|e| panic!("chunks of {chunk}: {e}"));
        }
        // An empty store still has its trailer.
        let mut check = TrailerCheck::new();
        check.update(&with_trailer(b""));
        check.finish().unwrap();
    }

    #[test]
    fn trailer_check_refuses_damage_and_truncation() {
        let mut bytes = with_trailer(b"some store bytes");
        bytes[3] ^= 1;
        let mut check = TrailerCheck::new();
        check.update(&bytes);
        assert!(check.finish().unwrap_err().contains("does not match"));

        let mut check = TrailerCheck::new();
        check.update(&[0u8; 31]);
        assert!(check.finish().unwrap_err().contains("too short"));

        // Missing the trailer's last byte: the hash covers the wrong bytes.
        let bytes = with_trailer(b"some store bytes");
        let mut check = TrailerCheck::new();
        check.update(&bytes[..bytes.len() - 1]);
        assert!(check.finish().is_err());
    }

    #[test]
    fn inspect_finds_the_trailer_or_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            File::open(path).unwrap()
        };
        let content = vec![7u8; 8192];
        let mut good = write("good", &with_trailer(&content));
        assert_eq!(
            inspect(&mut good, false).unwrap(),
            SnapshotLayout {
                store_len: 8192,
                verified: true
            }
        );

        let mut bare = write("bare", &content);
        assert!(inspect(&mut bare, false).unwrap_err().contains("--skip-hash-check"));
        assert_eq!(
            inspect(&mut bare, true).unwrap(),
            SnapshotLayout {
                store_len: 8192,
                verified: false
            }
        );

        let mut damaged_bytes = with_trailer(&content);
        damaged_bytes[100] ^= 0xff;
        let mut damaged = write("damaged", &damaged_bytes);
        assert!(inspect(&mut damaged, false).unwrap_err().contains("does not match"));
        assert_eq!(
            inspect(&mut damaged, true).unwrap(),
            SnapshotLayout {
                store_len: 8192,
                verified: false
            }
        );

        let mut tiny = write("tiny", b"x");
        assert!(inspect(&mut tiny, false).unwrap_err().contains("too short"));
    }

    #[test]
    fn progress_reads_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn part_file_sits_next_to_the_file() {
        assert_eq!(part_path(Path::new("/a/b.db")), PathBuf::from("/a/b.db.part"));
        assert_eq!(part_path(Path::new("b")), PathBuf::from("b.part"));
    }
}
