//! Generates the Rust message types and tonic client/server stubs for etcd's v3
//! API and for Concord's internal messages, from the `.proto` files under
//! `proto/` (which is also the protoc include root).

use std::io::Result;

const PROTO_ROOT: &str = "proto";

const PROTOS: &[&str] = &[
    "proto/etcd/mvccpb/kv.proto",
    "proto/etcd/authpb/auth.proto",
    "proto/etcd/etcdserverpb/rpc.proto",
    "proto/etcd/v3lockpb/v3lock.proto",
    "proto/etcd/v3electionpb/v3election.proto",
    // What etcd keeps in its WAL, read when `concord serve` migrates an etcd member.
    "proto/etcd/etcdserverpb/raft_internal.proto",
    "proto/etcd/raftpb/raft.proto",
    "proto/etcd/walpb/record.proto",
    "proto/concord/raft_cmd.proto",
    "proto/concord/shard.proto",
    "proto/concord/revisions.proto",
];

/// Messages whose derived `Debug` would print a secret.
const SECRET_MESSAGES: &[&str] = &[
    ".etcdserverpb.AuthenticateRequest",
    ".etcdserverpb.AuthenticateResponse",
    ".etcdserverpb.AuthUserAddRequest",
    ".etcdserverpb.AuthUserChangePasswordRequest",
    ".authpb.User",
    ".etcdserverpb.InternalAuthenticateRequest",
];

/// The etcd packages that get serde impls (protobuf's JSON mapping) for the JSON gateway.
/// (`.membershippb` only because etcdserverpb's `InternalRaftRequest` refers to it.)
const JSON_PACKAGES: &[&str] = &[
    ".mvccpb",
    ".authpb",
    ".etcdserverpb",
    ".membershippb",
    ".v3lockpb",
    ".v3electionpb",
];

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");

    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    let descriptors = out_dir.join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .build_client(true)
        .build_server(true)
        // Messages that carry a password, a password hash or a token get a
        // hand-written `Debug` that redacts it (see `src/lib.rs`), so no log
        // line or panic message can ever print one.
        .skip_debug(SECRET_MESSAGES)
        // Raft messages arrive as slices of the received frame, so decoding them shares the
        // entries' bytes instead of copying them.
        .bytes(".concordpb.RaftMessageBatch.messages")
        .codec_path("crate::codec::CompactCodec")
        .compile_protos(PROTOS, &[PROTO_ROOT])?;

    // etcd's gateway marshals with grpc-gateway's JSONPb{OrigName: true}: proto field names,
    // enums by name, 64-bit integers as strings, bytes in base64, default values left out.
    // pbjson generates exactly that mapping (`<package>.serde.rs`, included by `src/lib.rs`).
    let descriptor_set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(JSON_PACKAGES)
}
