//! `concord shard`: list the shards the keyspace is split into, and place them.
//!
//! It talks to Concord's own `Shards` service (`proto/concord/shard.proto`), beside etcd's API,
//! so it works against Concord only. Shard ids are decimal; member ids are hex, as `member list`
//! prints them. `-w simple|table|json` as the other commands.

use clap::{Args, Subcommand};
use concord_proto::concordpb::shards_client::ShardsClient;
use concord_proto::concordpb::{
    Shard, ShardListRequest, ShardListResponse, ShardMoveRequest, ShardSplitRequest, ShardTransferLeaderRequest,
};
use serde::Serialize;

use crate::client::{ClusterArgs, Session};
use crate::member::parse_member_id;
use crate::output::{base64, lossy, print_json, si_bytes, Align, Format, HeaderJson, OutputArgs, Table};

/// Flags of `concord shard`.
#[derive(Args, Debug)]
pub struct ShardArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: ShardCommand,
}

/// What to do with the shards.
#[derive(Subcommand, Debug)]
pub enum ShardCommand {
    /// Lists every shard: id, key range, epoch, replicas, leader, size and applied index.
    List,
    /// Splits the shard holding KEY at KEY, online.
    Split {
        /// The first key of the new shard (`\xHH` for a byte that is not text, `\\` for `\`).
        key: String,
    },
    /// Adds replicas of a shard on members and removes others.
    Move {
        /// The shard's id, as `shard list` prints it.
        shard: u64,
        /// A member to hold a replica (hex id); may be repeated.
        #[arg(long, value_parser = parse_member_id)]
        add: Vec<u64>,
        /// A member to stop holding one (hex id); may be repeated.
        #[arg(long, value_parser = parse_member_id)]
        remove: Vec<u64>,
    },
    /// Hands a shard's leadership to one of its replicas.
    TransferLeader {
        /// The shard's id, as `shard list` prints it.
        shard: u64,
        /// The member to lead it (hex id).
        #[arg(value_parser = parse_member_id)]
        member: u64,
    },
}

/// A shard in JSON: keys in base64 (an empty end is the end of the keyspace), member ids in hex.
#[derive(Serialize, Debug, PartialEq)]
pub struct ShardJson {
    id: u64,
    start: String,
    end: String,
    epoch: EpochJson,
    replicas: Vec<String>,
    learners: Vec<String>,
    leader: String,
    db_size: i64,
    applied_index: u64,
}

#[derive(Serialize, Debug, PartialEq)]
struct EpochJson {
    version: u64,
    conf_ver: u64,
}

impl ShardJson {
    fn of(shard: &Shard) -> ShardJson {
        let epoch = shard.epoch.unwrap_or_default();
        ShardJson {
            id: shard.id,
            start: base64(&shard.start),
            end: base64(&shard.end),
            epoch: EpochJson {
                version: epoch.version,
                conf_ver: epoch.conf_ver,
            },
            replicas: shard.replicas.iter().map(|id| format!("{id:x}")).collect(),
            learners: shard.learners.iter().map(|id| format!("{id:x}")).collect(),
            leader: format!("{:x}", shard.leader),
            db_size: shard.db_size,
            applied_index: shard.applied_index,
        }
    }
}

#[derive(Serialize)]
struct ShardListJson {
    header: HeaderJson,
    shards: Vec<ShardJson>,
}

/// The shard list as `-w json` prints it.
fn shard_list_json(resp: &ShardListResponse) -> ShardListJson {
    ShardListJson {
        header: HeaderJson::of(&resp.header),
        shards: resp.shards.iter().map(ShardJson::of).collect(),
    }
}

/// A key as the simple and table forms print it; the empty end key is the end of the keyspace.
fn key_text(key: &[u8], is_end: bool) -> String {
    if is_end && key.is_empty() {
        "∞".to_string()
    } else {
        format!("{:?}", lossy(key))
    }
}

fn replicas_text(shard: &Shard) -> String {
    shard
        .replicas
        .iter()
        .map(|id| {
            let learner = if shard.learners.contains(id) { "(learner)" } else { "" };
            format!("{id:x}{learner}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One shard as a line of the simple form.
pub fn shard_line(shard: &Shard) -> String {
    let epoch = shard.epoch.unwrap_or_default();
    format!(
        "{}, {}, {}, {}.{}, {}, {:x}, {}, {}",
        shard.id,
        key_text(&shard.start, false),
        key_text(&shard.end, true),
        epoch.version,
        epoch.conf_ver,
        replicas_text(shard),
        shard.leader,
        shard.db_size,
        shard.applied_index
    )
}

/// The shards as a table.
pub fn shard_table(shards: &[Shard]) -> Table {
    let mut table = Table::new(
        &[
            "id",
            "start",
            "end",
            "epoch",
            "replicas",
            "leader",
            "db size",
            "applied index",
        ],
        Align::Right,
    );
    for shard in shards {
        let epoch = shard.epoch.unwrap_or_default();
        table.row([
            shard.id.to_string(),
            key_text(&shard.start, false),
            key_text(&shard.end, true),
            format!("{}.{}", epoch.version, epoch.conf_ver),
            replicas_text(shard),
            format!("{:x}", shard.leader),
            si_bytes(u64::try_from(shard.db_size).unwrap_or(0)),
            shard.applied_index.to_string(),
        ]);
    }
    table
}

fn print_shards(format: Format, resp: &ShardListResponse) -> Result<(), String> {
    match format {
        Format::Simple => resp.shards.iter().for_each(|s| println!("{}", shard_line(s))),
        Format::Table => print!("{}", shard_table(&resp.shards).render()),
        Format::Json => print_json(&shard_list_json(resp))?,
    }
    Ok(())
}

/// Runs one `shard` subcommand.
pub async fn run(args: ShardArgs) -> Result<(), String> {
    let session = Session::connect(&args.cluster).await?;
    let format = args.output.write_out;
    let mut client = ShardsClient::new(session.channel.clone());
    match args.command {
        ShardCommand::List => {
            let resp = session.call(client.list(session.request(ShardListRequest {}))).await?;
            print_shards(format, &resp)?;
        }
        ShardCommand::Split { key } => {
            let key = crate::serve::parse_escaped_key(&key)?;
            let request = ShardSplitRequest { key };
            let resp = session.call(client.split(session.request(request))).await?;
            let shards: Vec<Shard> = resp.left.into_iter().chain(resp.right).collect();
            let resp = ShardListResponse {
                header: resp.header,
                shards,
            };
            print_shards(format, &resp)?;
        }
        ShardCommand::Move { shard, add, remove } => {
            let request = ShardMoveRequest { shard, add, remove };
            let resp = session.call(client.r#move(session.request(request))).await?;
            let resp = ShardListResponse {
                header: resp.header,
                shards: resp.shard.into_iter().collect(),
            };
            print_shards(format, &resp)?;
        }
        ShardCommand::TransferLeader { shard, member } => {
            let request = ShardTransferLeaderRequest { shard, member };
            let resp = session.call(client.transfer_leader(session.request(request))).await?;
            if format == Format::Simple {
                println!("Leadership of shard {shard} transferred to member {member:x}");
            } else {
                let resp = ShardListResponse {
                    header: resp.header,
                    shards: resp.shard.into_iter().collect(),
                };
                print_shards(format, &resp)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::concordpb::ShardEpoch;

    fn shard() -> Shard {
        Shard {
            id: 1,
            start: Vec::new(),
            end: Vec::new(),
            epoch: Some(ShardEpoch {
                version: 1,
                conf_ver: 1,
            }),
            replicas: vec![0xa, 0xb, 0xc],
            leader: 0xb,
            db_size: 24576,
            applied_index: 45,
            learners: vec![0xc],
        }
    }

    #[test]
    fn shards_print_in_every_form() {
        assert_eq!(shard_line(&shard()), r#"1, "", ∞, 1.1, a,b,c(learner), b, 24576, 45"#);
        let json = serde_json::to_string(&ShardJson::of(&shard())).unwrap();
        assert_eq!(
            json,
            r#"{"id":1,"start":"","end":"","epoch":{"version":1,"conf_ver":1},"replicas":["a","b","c"],"learners":["c"],"leader":"b","db_size":24576,"applied_index":45}"#
        );
        let table = shard_table(&[shard()]).render();
        assert!(table.contains("| APPLIED INDEX |"), "{table}");
        assert!(table.contains("a,b,c(learner)"), "{table}");
    }
}
