//! `--grpc-keepalive-min-time` on real members: a client that pings more often than allowed
//! while its calls are in progress (and the member has nothing to send) is sent away with
//! GOAWAY (ENHANCE_YOUR_CALM, `too_many_pings`), as etcd's gRPC server sends it away.

mod common;

use std::time::Duration;

use common::{Cluster, WAIT};
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{WatchCreateRequest, WatchRequest};
use tonic::transport::Endpoint;

/// Opens a watch on `address` over a connection that pings every 50 ms, and returns how the
/// stream ended (it must end: nothing is ever written to the watched key).
async fn watch_while_pinging(address: &str) -> tonic::Status {
    let address = address.trim_start_matches("http://");
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .http2_keep_alive_interval(Duration::from_millis(50))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .expect("connect");
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: b"never-written".to_vec(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(create).await.unwrap();
    let mut responses = WatchClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("watch")
        .into_inner();
    let created = responses.message().await.expect("created").expect("a response");
    assert!(created.created);
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::ok("the stream ended cleanly"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the member sends the pinging client away");
    drop(tx);
    ended
}

#[tokio::test]
async fn a_client_that_pings_too_often_is_sent_away_as_by_etcd() {
    let cluster = Cluster::start_with(1, &["--grpc-keepalive-min-time=1s"]).await;
    let ours = watch_while_pinging(&cluster.endpoints()[0]).await;
    assert!(
        cluster.log_contains(0, "too many pings"),
        "the member logs why: {}",
        cluster.logs()
    );
    let Some(etcd) = common::etcd::Etcd::start("http", &["--grpc-keepalive-min-time=1s".to_string()]) else {
        return;
    };
    // etcd may take a moment to serve.
    let theirs = common::eventually("etcd serves", || async {
        tokio::time::timeout(
            Duration::from_secs(2),
            Endpoint::from_shared(etcd.client_url.clone()).unwrap().connect(),
        )
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    })
    .await;
    drop(theirs);
    let theirs = watch_while_pinging(etcd.address()).await;
    assert_eq!(ours.code(), theirs.code(), "concord {ours:?}, etcd {theirs:?}");
    assert_eq!(ours.message(), theirs.message());
}
