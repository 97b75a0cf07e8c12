//! The KV workloads driven through the `etcd-client` crate, as applications use it: one
//! `Client` per connection (`--conns`), each given every endpoint, so that its balanced channel
//! spreads its calls over all members. Beside `concord bench`'s own h2 driver, which batches the
//! frames of many requests into one socket write, it shows what a standard client meets.

use concord_proto::etcdserverpb::{request_op, PutRequest, RangeRequest, TxnRequest};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse};

use super::{status_kind, BenchArgs, CONNECT_TIMEOUT};

/// Opens `--conns` clients, each over every endpoint.
pub async fn connect(args: &BenchArgs) -> Result<Vec<KvClient>, String> {
    let urls: Vec<String> = args.endpoints.iter().map(|e| args.tls.url(e)).collect();
    if urls.iter().any(|u| u.starts_with("https://")) {
        return Err("--client etcd-client: TLS endpoints are not supported by this driver yet".into());
    }
    let options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(args.request_timeout());
    let mut clients = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let client = Client::connect(&urls, Some(options.clone()))
            .await
            .map_err(|e| format!("cannot connect to {}: {}", urls.join(","), error_kind(&e)))?;
        clients.push(client.kv_client());
    }
    Ok(clients)
}

/// An `etcd-client` error as an error kind for the summary.
fn error_kind(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => status_kind(status),
        other => other.to_string(),
    }
}

/// Sends `put`.
pub async fn put(kv: &mut KvClient, put: PutRequest) -> Result<(), String> {
    kv.put(put.key, put.value, None)
        .await
        .map(|_| ())
        .map_err(|e| error_kind(&e))
}

/// Sends `range` (one key) and says whether it found the key.
pub async fn range(kv: &mut KvClient, range: RangeRequest) -> Result<bool, String> {
    let answer = kv
        .get(range.key, Some(get_options(range.serializable)))
        .await
        .map_err(|e| error_kind(&e))?;
    Ok(!answer.kvs().is_empty())
}

/// Sends `txn` (puts and single-key ranges, no compares) and says whether its first operation
/// was a range that found its key.
pub async fn txn(kv: &mut KvClient, txn: TxnRequest) -> Result<bool, String> {
    let ops: Vec<TxnOp> = txn
        .success
        .into_iter()
        .filter_map(|op| match op.request? {
            request_op::Request::RequestPut(p) => Some(TxnOp::put(p.key, p.value, None)),
            request_op::Request::RequestRange(r) => Some(TxnOp::get(r.key, Some(get_options(r.serializable)))),
            _ => None,
        })
        .collect();
    let answer = kv.txn(Txn::new().and_then(ops)).await.map_err(|e| error_kind(&e))?;
    Ok(matches!(answer.op_responses().first(), Some(TxnOpResponse::Get(got)) if !got.kvs().is_empty()))
}

fn get_options(serializable: bool) -> GetOptions {
    match serializable {
        true => GetOptions::new().with_serializable(),
        false => GetOptions::new(),
    }
}
