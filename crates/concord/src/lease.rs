//! `concord lease`: grant, revoke, inspect, list and keep alive leases, like
//! `etcdctl lease`, with etcdctl's lines and etcd's JSON shapes. Lease ids
//! are shown and taken in hex, as etcdctl does.

use std::time::Duration;

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use serde::Serialize;

use crate::client::{ClusterArgs, Session};
use crate::output::{base64, lossy, print_json, Align, Format, HeaderJson, HeaderOnly, OutputArgs, Table};

/// etcd's message for a lease that does not exist (what `keep-alive --once` reports, as etcdctl does).
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// Flags of `concord lease`.
#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: LeaseCommand,
}

/// What to do with leases.
#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grants a lease that lives TTL seconds unless kept alive.
    Grant {
        /// Time to live, in seconds.
        ttl: i64,
    },
    /// Revokes a lease, deleting every key attached to it.
    Revoke {
        /// The lease's id, in hex as `lease grant` prints it.
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Shows a lease's remaining time to live (and, with --keys, its keys).
    Timetolive {
        /// The lease's id, in hex.
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// List the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
    /// Lists every live lease.
    List,
    /// Keeps a lease alive, renewing it every third of its TTL until interrupted.
    KeepAlive {
        /// The lease's id, in hex.
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once, then exit.
        #[arg(long)]
        once: bool,
    },
}

/// Parses a lease id the way etcdctl does: hex digits of a signed 64-bit number; `0x` is allowed.
pub fn parse_lease_id(text: &str) -> Result<i64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "bad lease ID {text:?}, expecting ID in hex (as `lease grant` prints it)"
        ));
    }
    i64::from_str_radix(digits, 16).map_err(|_| format!("bad lease ID {text:?}: more than 63 bits"))
}

/// clientv3's `LeaseGrantResponse` in JSON: the header's fields inline, then the lease.
#[derive(Serialize)]
struct GrantJson {
    #[serde(flatten)]
    header: HeaderJson,
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "TTL")]
    ttl: i64,
    #[serde(rename = "Error")]
    error: String,
}

/// clientv3's `LeaseTimeToLiveResponse` in JSON.
#[derive(Serialize)]
struct TimeToLiveJson {
    #[serde(rename = "response-header")]
    header: HeaderJson,
    id: i64,
    ttl: i64,
    #[serde(rename = "granted-ttl")]
    granted_ttl: i64,
    keys: Vec<String>,
}

/// clientv3's `LeaseLeasesResponse` in JSON.
#[derive(Serialize)]
struct LeasesJson {
    #[serde(flatten)]
    header: HeaderJson,
    leases: Vec<LeaseIdJson>,
}

#[derive(Serialize)]
struct LeaseIdJson {
    id: i64,
}

/// clientv3's `LeaseKeepAliveResponse` in JSON.
#[derive(Serialize)]
struct KeepAliveJson {
    #[serde(flatten)]
    header: HeaderJson,
    #[serde(rename = "ID")]
    id: i64,
    #[serde(rename = "TTL")]
    ttl: i64,
}

/// Runs one `lease` subcommand.
pub async fn run(args: LeaseArgs) -> Result<(), String> {
    let session = Session::connect(&args.cluster).await?;
    let format = args.output.write_out;
    let mut lease = LeaseClient::new(session.channel.clone()).max_decoding_message_size(usize::MAX);
    match args.command {
        LeaseCommand::Grant { ttl } => {
            let resp = session
                .call(lease.lease_grant(session.request(LeaseGrantRequest { ttl, id: 0 })))
                .await?;
            if !resp.error.is_empty() {
                return Err(resp.error);
            }
            match format {
                Format::Json => print_json(&GrantJson {
                    header: HeaderJson::of(&resp.header),
                    id: resp.id,
                    ttl: resp.ttl,
                    error: resp.error,
                })?,
                Format::Simple | Format::Table => println!("lease {:016x} granted with TTL({}s)", resp.id, resp.ttl),
            }
        }
        LeaseCommand::Revoke { id } => {
            let resp = session
                .call(lease.lease_revoke(session.request(LeaseRevokeRequest { id })))
                .await?;
            match format {
                Format::Json => print_json(&HeaderOnly {
                    header: HeaderJson::of(&resp.header),
                })?,
                Format::Simple | Format::Table => println!("lease {id:016x} revoked"),
            }
        }
        LeaseCommand::Timetolive { id, keys } => {
            let resp = session
                .call(lease.lease_time_to_live(session.request(LeaseTimeToLiveRequest { id, keys })))
                .await?;
            print_time_to_live(&resp, keys, format)?;
        }
        LeaseCommand::List => {
            let resp = session
                .call(lease.lease_leases(session.request(LeaseLeasesRequest {})))
                .await?;
            match format {
                Format::Simple => {
                    println!("found {} leases", resp.leases.len());
                    for l in &resp.leases {
                        println!("{:016x}", l.id);
                    }
                }
                Format::Table => {
                    let mut table = Table::new(&["id"], Align::Right);
                    for l in &resp.leases {
                        table.row([format!("{:016x}", l.id)]);
                    }
                    print!("{}", table.render());
                }
                Format::Json => print_json(&LeasesJson {
                    header: HeaderJson::of(&resp.header),
                    leases: resp.leases.iter().map(|l| LeaseIdJson { id: l.id }).collect(),
                })?,
            }
        }
        LeaseCommand::KeepAlive { id, once } => keep_alive(&session, &mut lease, id, once, format).await?,
    }
    Ok(())
}

/// etcdctl's `timetolive` line: granted and remaining TTL, the keys with --keys; or that it expired.
pub fn time_to_live_line(resp: &LeaseTimeToLiveResponse, with_keys: bool) -> String {
    if resp.ttl == -1 {
        return format!("lease {:016x} already expired", resp.id);
    }
    let mut line = format!(
        "lease {:016x} granted with TTL({}s), remaining({}s)",
        resp.id, resp.granted_ttl, resp.ttl
    );
    if with_keys {
        let keys: Vec<String> = resp.keys.iter().map(|k| lossy(k)).collect();
        line.push_str(&format!(", attached keys([{}])", keys.join(" ")));
    }
    line
}

fn print_time_to_live(resp: &LeaseTimeToLiveResponse, with_keys: bool, format: Format) -> Result<(), String> {
    match format {
        Format::Simple => println!("{}", time_to_live_line(resp, with_keys)),
        Format::Table => {
            let mut table = Table::new(&["id", "ttl", "granted ttl", "keys"], Align::Right);
            let keys: Vec<String> = resp.keys.iter().map(|k| lossy(k)).collect();
            table.row([
                format!("{:016x}", resp.id),
                resp.ttl.to_string(),
                resp.granted_ttl.to_string(),
                keys.join(","),
            ]);
            print!("{}", table.render());
        }
        Format::Json => print_json(&TimeToLiveJson {
            header: HeaderJson::of(&resp.header),
            id: resp.id,
            ttl: resp.ttl,
            granted_ttl: resp.granted_ttl,
            keys: resp.keys.iter().map(|k| base64(k)).collect(),
        })?,
    }
    Ok(())
}

fn print_keep_alive(resp: &LeaseKeepAliveResponse, format: Format) -> Result<(), String> {
    match format {
        Format::Json => print_json(&KeepAliveJson {
            header: HeaderJson::of(&resp.header),
            id: resp.id,
            ttl: resp.ttl,
        }),
        Format::Simple | Format::Table => {
            println!("lease {:016x} keepalived with TTL({})", resp.id, resp.ttl);
            Ok(())
        }
    }
}

/// How long to wait before renewing a lease that has `ttl` seconds left: a third of it, as
/// etcd's client does, but at least half a second.
pub fn renew_after(ttl: i64) -> Duration {
    Duration::from_millis((ttl.max(0) as u64).saturating_mul(1000) / 3).max(Duration::from_millis(500))
}

/// Renews lease `id` on a keep-alive stream: once with `once`, otherwise until it expires,
/// is revoked, or the process is interrupted.
async fn keep_alive(
    session: &Session,
    lease: &mut LeaseClient<tonic::transport::Channel>,
    id: i64,
    once: bool,
    format: Format,
) -> Result<(), String> {
    let (requests, outbox) = tokio::sync::mpsc::channel(1);
    let closed = || format!("{}: the keep-alive stream closed", session.endpoint);
    requests
        .send(LeaseKeepAliveRequest { id })
        .await
        .map_err(|_| closed())?;
    let mut stream = session
        .call(lease.lease_keep_alive(session.request(tokio_stream::wrappers::ReceiverStream::new(outbox))))
        .await?;
    loop {
        let resp = tokio::select! {
            message = session.next(&mut stream) => message?.ok_or_else(closed)?,
            _ = crate::stop_signal() => return Ok(()),
        };
        if resp.ttl <= 0 {
            if once {
                return Err(LEASE_NOT_FOUND.into());
            }
            if format != Format::Json {
                println!("lease {id:016x} expired or revoked.");
            }
            return Ok(());
        }
        print_keep_alive(&resp, format)?;
        if once {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(renew_after(resp.ttl)) => {}
            _ = crate::stop_signal() => return Ok(()),
        }
        requests
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| closed())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_parse_as_hex() {
        assert_eq!(parse_lease_id("694d77aa9e38260f").unwrap(), 0x694d77aa9e38260f);
        assert_eq!(parse_lease_id("0x10").unwrap(), 16);
        assert!(parse_lease_id("").is_err());
        assert!(parse_lease_id("-1").is_err());
        assert!(parse_lease_id("xyz").is_err());
        assert!(parse_lease_id("ffffffffffffffff").is_err());
    }

    #[test]
    fn time_to_live_lines_match_etcdctl() {
        let resp = LeaseTimeToLiveResponse {
            id: 0x1f,
            ttl: 55,
            granted_ttl: 60,
            keys: vec![b"a".to_vec(), b"b".to_vec()],
            header: None,
        };
        assert_eq!(
            time_to_live_line(&resp, false),
            "lease 000000000000001f granted with TTL(60s), remaining(55s)"
        );
        assert_eq!(
            time_to_live_line(&resp, true),
            "lease 000000000000001f granted with TTL(60s), remaining(55s), attached keys([a b])"
        );
        let gone = LeaseTimeToLiveResponse {
            id: 0x1f,
            ttl: -1,
            ..Default::default()
        };
        assert_eq!(time_to_live_line(&gone, true), "lease 000000000000001f already expired");
    }

    #[test]
    fn renewals_come_every_third_of_the_ttl() {
        assert_eq!(renew_after(60), Duration::from_secs(20));
        assert_eq!(renew_after(1), Duration::from_millis(500));
        assert_eq!(renew_after(-5), Duration::from_millis(500));
    }

    #[test]
    fn grant_json_inlines_the_header() {
        let json = crate::output::to_json(&GrantJson {
            header: HeaderJson {
                cluster_id: 1,
                member_id: 2,
                revision: 3,
                raft_term: 4,
            },
            id: 5,
            ttl: 60,
            error: String::new(),
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"cluster_id":1,"member_id":2,"revision":3,"raft_term":4,"ID":5,"TTL":60,"Error":""}"#
        );
    }
}
