//! A KV or lease request refused for what it asks: etcd's request checks (`v3rpc/key.go`,
//! `lease.go`), its space quota and its request limits.

use concord_storage::KvError;
use tonic::Status;

/// etcd's `ErrGRPCEmptyKey`: a Range, Put or DeleteRange (alone or in a txn) with an empty key.
pub fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

/// etcd's `ErrGRPCValueProvided`: a Put with `ignore_value` that also carries a value.
pub fn value_provided() -> Status {
    Status::invalid_argument("etcdserver: value is provided")
}

/// etcd's `ErrGRPCLeaseProvided`: a Put with `ignore_lease` that also names a lease.
pub fn lease_provided() -> Status {
    Status::invalid_argument("etcdserver: lease is provided")
}

/// etcd's `ErrGRPCTooManyOps`: a txn whose compares, success or failure ops pass `--max-txn-ops`.
pub fn too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

/// etcd's `ErrGRPCDuplicateKey`: a txn branch that writes a key twice (two puts, or a put in a deleted range).
pub fn duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

/// A txn nested deeper than [`crate::validate::MAX_TXN_DEPTH`]; etcd has no such limit, so
/// no etcd string either.
pub fn txn_too_deep() -> Status {
    Status::invalid_argument(format!(
        "etcdserver: txn nested too deeply (at most {} levels)",
        crate::validate::MAX_TXN_DEPTH
    ))
}

/// etcd's `ErrGRPCRequestTooLarge`: a request whose replicated command passes
/// `--max-request-bytes`.
pub fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// etcd's `ErrGRPCInvalidSortOption`: a Range whose sort order or sort target is none of etcd's.
pub fn invalid_sort_option() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

/// etcd's `ErrGRPCLeaseTTLTooLarge`: a LeaseGrant whose TTL passes etcd's `MaxLeaseTTL`.
pub fn lease_ttl_too_large() -> Status {
    Status::out_of_range("etcdserver: too large lease TTL")
}

/// etcd's `ErrGRPCNoSpace`: a write refused because the store outgrew `--quota-backend-bytes`
/// (the store's [`KvError::NoSpace`], sent while the NOSPACE alarm is raised).
pub fn no_space() -> Status {
    crate::errors::from_kv(KvError::NoSpace)
}

/// etcd's `ErrGRPCRequestTooManyRequests`, exactly as clients match it: the member is
/// overloaded (apply trails commit by more than 5,000 entries, or too many proposal bytes are in
/// flight).
pub fn overloaded() -> Status {
    Status::resource_exhausted("etcdserver: too many requests")
}

/// etcd's `ErrGRPCRequestTooManyRequests` ("etcdserver: too many requests", ResourceExhausted)
/// followed by `": <detail>"`: a member refusing more of a costly kind of work at once (today,
/// snapshot downloads; etcd has no such bound).
pub fn too_many_requests(detail: impl std::fmt::Display) -> Status {
    Status::resource_exhausted(format!("etcdserver: too many requests: {detail}"))
}
