//! Wire types and gRPC stubs for Concord.
//!
//! Concord speaks etcd's v3 gRPC API so that unmodified etcd clients (etcdctl,
//! the `etcd-client` crate, ...) work against it. That only holds if every
//! package, service, method, message, field number and enum value matches
//! etcd's exactly, so all of it is generated here, in one place, from
//! Concord's own `.proto` files under `proto/etcd/`. The crate also carries
//! Concord's internal messages (`proto/concord/`): what a Raft log entry holds
//! and how members ship Raft traffic to one another.
//!
//! Each module is a sibling at the crate root, named after its protobuf
//! package, so the `super::<package>::...` paths that prost generates for
//! cross-package references resolve.

/// etcd's `mvccpb` package: stored key-values and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's `authpb` package: users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's `etcdserverpb` package: the KV, Watch, Lease, Cluster, Maintenance and Auth services.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's `v3lockpb` package: the Lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's `v3electionpb` package: the Election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Concord's internal `concordpb` package: replicated commands and the Raft peer service.
pub mod concordpb {
    tonic::include_proto!("concordpb");
}
