//! `concord kv`: put, get, delete and watch keys on any etcd-v3 endpoint,
//! printing what etcdctl prints (`-w simple|table|json`).

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest,
    WatchResponse,
};
use concord_proto::mvccpb::event::EventType;
use serde::Serialize;

use crate::client::{ClusterArgs, Session};
use crate::lease::parse_lease_id;
use crate::output::{
    is_zero, lossy, print_json, Align, Format, HeaderJson, HeaderOnly, KeyValueJson, OutputArgs, Table,
};

/// Flags of `concord kv`.
#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: KvCommand,
}

/// What to do with keys.
#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Writes a value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Attach the key to this lease (its id in hex, as `lease grant` prints it).
        #[arg(long, value_parser = parse_lease_id)]
        lease: Option<i64>,
    },
    /// Reads a key, or every key under a prefix.
    Get {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Return at most this many keys (0: no limit).
        #[arg(long, default_value_t = 0)]
        limit: i64,
        /// Read at this revision (0: the latest).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
    /// Deletes a key, or every key under a prefix.
    Del {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
    },
    /// Prints every change to a key (or prefix) until interrupted.
    Watch {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Start from this revision (0: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

fn range_end(key: &str, prefix: bool) -> Vec<u8> {
    if prefix {
        concord_server::concurrency::prefix_end(key.as_bytes())
    } else {
        vec![]
    }
}

/// Runs one `kv` subcommand.
pub async fn run(args: KvArgs) -> Result<(), String> {
    let session = Session::connect(&args.cluster).await?;
    let format = args.output.write_out;
    let mut kv = KvClient::new(session.channel.clone()).max_decoding_message_size(usize::MAX);
    match args.command {
        KvCommand::Put { key, value, lease } => {
            let request = PutRequest {
                key: key.into_bytes(),
                value: value.into_bytes(),
                lease: lease.unwrap_or(0),
                ..Default::default()
            };
            let resp = session.call(kv.put(session.request(request))).await?;
            match format {
                Format::Json => print_json(&HeaderOnly {
                    header: HeaderJson::of(&resp.header),
                })?,
                Format::Simple | Format::Table => println!("OK"),
            }
        }
        KvCommand::Get {
            key,
            prefix,
            limit,
            rev,
        } => {
            let range_end = range_end(&key, prefix);
            let request = RangeRequest {
                key: key.into_bytes(),
                range_end,
                limit,
                revision: rev,
                ..Default::default()
            };
            let resp = session.call(kv.range(session.request(request))).await?;
            print_range(&resp, format)?;
        }
        KvCommand::Del { key, prefix } => {
            let range_end = range_end(&key, prefix);
            let request = DeleteRangeRequest {
                key: key.into_bytes(),
                range_end,
                ..Default::default()
            };
            let resp = session.call(kv.delete_range(session.request(request))).await?;
            print_delete(&resp, format)?;
        }
        KvCommand::Watch { key, prefix, rev } => watch(&session, key, prefix, rev, format).await?,
    }
    Ok(())
}

/// etcd's `RangeResponse` in JSON.
#[derive(Serialize)]
struct RangeJson {
    header: HeaderJson,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kvs: Vec<KeyValueJson>,
    #[serde(skip_serializing_if = "is_zero")]
    more: bool,
    #[serde(skip_serializing_if = "is_zero")]
    count: i64,
}

/// Prints a `get`: key and value lines, a table of keys, or etcd's JSON.
fn print_range(resp: &RangeResponse, format: Format) -> Result<(), String> {
    match format {
        Format::Simple => {
            for kv in &resp.kvs {
                println!("{}", lossy(&kv.key));
                println!("{}", lossy(&kv.value));
            }
        }
        Format::Table => {
            let mut table = Table::new(
                &["key", "value", "create revision", "mod revision", "version", "lease"],
                Align::Left,
            );
            for kv in &resp.kvs {
                let lease = if kv.lease == 0 {
                    String::new()
                } else {
                    format!("{:016x}", kv.lease)
                };
                table.row([
                    lossy(&kv.key),
                    lossy(&kv.value),
                    kv.create_revision.to_string(),
                    kv.mod_revision.to_string(),
                    kv.version.to_string(),
                    lease,
                ]);
            }
            print!("{}", table.render());
        }
        Format::Json => print_json(&RangeJson {
            header: HeaderJson::of(&resp.header),
            kvs: resp.kvs.iter().map(KeyValueJson::of).collect(),
            more: resp.more,
            count: resp.count,
        })?,
    }
    Ok(())
}

/// etcd's `DeleteRangeResponse` in JSON.
#[derive(Serialize)]
struct DeleteJson {
    header: HeaderJson,
    #[serde(skip_serializing_if = "is_zero")]
    deleted: i64,
}

fn print_delete(resp: &DeleteRangeResponse, format: Format) -> Result<(), String> {
    match format {
        Format::Json => print_json(&DeleteJson {
            header: HeaderJson::of(&resp.header),
            deleted: resp.deleted,
        }),
        Format::Simple | Format::Table => {
            println!("{}", resp.deleted);
            Ok(())
        }
    }
}

/// One event of etcdctl's watch JSON (`mvccpb.Event`: a PUT's type, 0, is left out).
#[derive(Serialize)]
struct EventJson {
    #[serde(rename = "type", skip_serializing_if = "is_zero")]
    kind: i32,
    kv: KeyValueJson,
}

/// clientv3's `WatchResponse` as etcdctl prints it in JSON.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WatchJson {
    header: HeaderJson,
    events: Vec<EventJson>,
    compact_revision: i64,
    canceled: bool,
    created: bool,
}

/// Watches until interrupted, the watch is canceled, or the stream ends.
async fn watch(session: &Session, key: String, prefix: bool, rev: i64, format: Format) -> Result<(), String> {
    let range_end = range_end(&key, prefix);
    let create = WatchCreateRequest {
        key: key.into_bytes(),
        range_end,
        start_revision: rev,
        ..Default::default()
    };
    let (requests, outbox) = tokio::sync::mpsc::channel(1);
    requests
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| "the watch stream closed before it started".to_string())?;
    let mut client = WatchClient::new(session.channel.clone()).max_decoding_message_size(usize::MAX);
    let mut stream = session
        .call(client.watch(session.request(tokio_stream::wrappers::ReceiverStream::new(outbox))))
        .await?;
    loop {
        let message = tokio::select! {
            message = stream.message() => message.map_err(|s| session.describe(s))?,
            _ = crate::stop_signal() => return Ok(()),
        };
        let Some(resp) = message else {
            return Err(format!("{}: the watch stream ended", session.endpoint));
        };
        if resp.canceled {
            // As etcdctl: a watch canceled by compaction carries only compact_revision.
            let reason = if resp.compact_revision != 0 {
                "etcdserver: mvcc: required revision has been compacted"
            } else if resp.cancel_reason.is_empty() {
                "canceled by the server"
            } else {
                resp.cancel_reason.as_str()
            };
            return Err(format!("watch was canceled ({reason})"));
        }
        if !resp.events.is_empty() {
            print_watch(&resp, format)?;
        }
    }
}

fn print_watch(resp: &WatchResponse, format: Format) -> Result<(), String> {
    match format {
        Format::Json => print_json(&WatchJson {
            header: HeaderJson::of(&resp.header),
            events: resp
                .events
                .iter()
                .map(|e| EventJson {
                    kind: e.r#type,
                    kv: e.kv.as_ref().map(KeyValueJson::of).unwrap_or_default(),
                })
                .collect(),
            compact_revision: resp.compact_revision,
            canceled: resp.canceled,
            created: resp.created,
        }),
        Format::Simple | Format::Table => {
            for event in &resp.events {
                let kind = if event.r#type == EventType::Delete as i32 {
                    "DELETE"
                } else {
                    "PUT"
                };
                let kv = event.kv.clone().unwrap_or_default();
                println!("{kind}\n{}\n{}", lossy(&kv.key), lossy(&kv.value));
            }
            Ok(())
        }
    }
}
