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
    "proto/concord/raft_cmd.proto",
];

/// Messages whose derived `Debug` would print a secret.
const SECRET_MESSAGES: &[&str] = &[
    ".etcdserverpb.AuthenticateRequest",
    ".etcdserverpb.AuthenticateResponse",
    ".etcdserverpb.AuthUserAddRequest",
    ".etcdserverpb.AuthUserChangePasswordRequest",
    ".authpb.User",
];

fn main() -> Result<()> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PROTOC");

    tonic_prost_build::configure()
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
        .compile_protos(PROTOS, &[PROTO_ROOT])
}
