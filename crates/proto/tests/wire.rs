//! Pins a few etcd field numbers and service names on the wire, so a typo in
//! the `.proto` files cannot silently break etcd clients.

use concord_proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::SortOrder,
    Compare, RangeRequest,
};
use concord_proto::{etcdserverpb, v3electionpb, v3lockpb};
use prost::Message;

#[test]
fn range_request_field_numbers() {
    let req = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        revision: 5,
        sort_order: SortOrder::Descend as i32,
        ..Default::default()
    };
    let bytes = req.encode_to_vec();
    assert_eq!(
        bytes,
        [
            0x0a, 0x01, b'a', // field 1 (key), length-delimited
            0x12, 0x01, b'b', // field 2 (range_end), length-delimited
            0x20, 0x05, // field 4 (revision), varint 5
            0x28, 0x02, // field 5 (sort_order), varint DESCEND = 2
        ]
    );
    assert_eq!(RangeRequest::decode(bytes.as_slice()).unwrap(), req);
}

#[test]
fn compare_field_numbers() {
    let cmp = Compare {
        result: CompareResult::Greater as i32,
        target: CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        range_end: b"z".to_vec(),
        target_union: Some(TargetUnion::ModRevision(7)),
    };
    let bytes = cmp.encode_to_vec();
    assert_eq!(
        bytes,
        [
            0x08, 0x01, // field 1 (result), GREATER = 1
            0x10, 0x02, // field 2 (target), MOD = 2
            0x1a, 0x01, b'k', // field 3 (key)
            0x30, 0x07, // field 6 (mod_revision, in target_union), varint 7
            0x82, 0x04, 0x01, b'z', // field 64 (range_end): tag (64 << 3) | 2 = 514
        ]
    );
    assert_eq!(Compare::decode(bytes.as_slice()).unwrap(), cmp);
}

#[test]
fn grpc_service_names() {
    assert_eq!(etcdserverpb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(etcdserverpb::watch_server::SERVICE_NAME, "etcdserverpb.Watch");
    assert_eq!(etcdserverpb::lease_server::SERVICE_NAME, "etcdserverpb.Lease");
    assert_eq!(etcdserverpb::cluster_server::SERVICE_NAME, "etcdserverpb.Cluster");
    assert_eq!(
        etcdserverpb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(etcdserverpb::auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(v3electionpb::election_server::SERVICE_NAME, "v3electionpb.Election");
}
