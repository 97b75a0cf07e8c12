//! `concord member`: list and change the members of a running cluster.
//!
//! It exists so that an operator with only the `concord` binary can do what
//! `etcdctl member` does, and get the same output: the lines are etcdctl's
//! "simple" format, so scripts written against etcdctl keep working. It talks
//! to the cluster through etcd's public Cluster API only, so it works against
//! etcd as well. Member ids are shown and taken in hex, as etcdctl does.

use crate::text::json_string;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberRemoveRequest, MemberUpdateRequest, ResponseHeader,
};
use tonic::transport::Channel;

use crate::serve::parse_duration;

/// Flags of `concord member`; names and defaults follow etcdctl's.
#[derive(Args, Debug)]
pub struct MemberArgs {
    /// Endpoints to try, in order, until one answers (comma-separated; host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    /// How long to wait for a connection to one endpoint (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration, global = true)]
    pub dial_timeout: Duration,
    /// How long to wait for the cluster to answer a request.
    #[arg(long, default_value = "5s", value_parser = parse_duration, global = true)]
    pub command_timeout: Duration,
    #[command(flatten)]
    pub tls: crate::client_tls::ClientTlsArgs,
    #[command(subcommand)]
    pub command: MemberCommand,
}

/// How `member list` prints the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// One line per member, as etcdctl's default output.
    Simple,
    /// The whole response as JSON, as `etcdctl -w json`.
    Json,
}

/// What to do with the members.
#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Lists every member: id, started|unstarted, name, peer URLs, client URLs, is learner.
    List {
        /// Output format: simple or json.
        #[arg(short = 'w', long, value_enum, default_value = "simple")]
        write_out: OutputFormat,
    },
    /// Adds a member, then prints the settings it must start with.
    Add {
        /// The new member's name (used for the ETCD_* lines printed; the member announces it itself).
        name: String,
        /// The new member's peer URLs (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner, which receives the log but does not vote until promoted.
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member.
    Remove {
        /// The member's id, in hex as `member list` prints it.
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Changes a member's peer URLs.
    Update {
        /// The member's id, in hex as `member list` prints it.
        #[arg(value_parser = parse_member_id)]
        id: u64,
        /// The member's new peer URLs (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
    /// Promotes a learner that has caught up to a voting member.
    Promote {
        /// The learner's id, in hex as `member list` prints it.
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
}

/// Parses a member id the way etcdctl does: hex digits, no sign; a `0x` prefix is allowed.
pub fn parse_member_id(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad member ID {text:?}, expecting ID in hex (as `member list` prints it)"));
    }
    u64::from_str_radix(digits, 16).map_err(|_| format!("bad member ID {text:?}: more than 64 bits"))
}

/// Connects to the first endpoint that accepts a connection within `dial_timeout`;
/// requests on the channel time out after `request_timeout` when one is given.
/// Returns the channel and the endpoint it reached.
pub async fn connect_first(
    endpoints: &[String],
    tls: &crate::client_tls::ClientTlsArgs,
    dial_timeout: Duration,
    request_timeout: Option<Duration>,
) -> Result<(Channel, String), String> {
    let mut errors = Vec::new();
    for endpoint in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let mut target = match tls.endpoint(endpoint) {
            Ok(t) => t.connect_timeout(dial_timeout).tcp_nodelay(true),
            Err(e) => {
                errors.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        if let Some(timeout) = request_timeout {
            target = target.timeout(timeout);
        }
        match tokio::time::timeout(dial_timeout, target.connect()).await {
            Ok(Ok(channel)) => return Ok((channel, endpoint.to_string())),
            Ok(Err(e)) => errors.push(format!("{endpoint}: {}", error_chain(&e))),
            Err(_) => errors.push(format!("{endpoint}: no connection within {dial_timeout:?}")),
        }
    }
    if errors.is_empty() {
        return Err("--endpoints: give at least one endpoint".into());
    }
    Err(format!("cannot reach any endpoint ({})", errors.join("; ")))
}

/// An error and its causes on one line (tonic's transport errors say little on
/// their own); a cause that the next one repeats is left out.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut texts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    let kept: Vec<&str> = texts
        .iter()
        .enumerate()
        .filter(|(i, t)| texts.get(i + 1).is_none_or(|next| !next.contains(t.as_str())))
        .map(|(_, t)| t.as_str())
        .collect();
    kept.join(": ")
}

/// A gRPC error as etcdctl shows it: the server's message (etcd's error strings).
pub fn status_message(status: tonic::Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_string()
    }
}

/// One member as a line of etcdctl's simple `member list` output.
pub fn member_line(m: &Member) -> String {
    let status = if m.name.is_empty() { "unstarted" } else { "started" };
    format!(
        "{:x}, {}, {}, {}, {}, {}",
        m.id,
        status,
        m.name,
        m.peer_ur_ls.join(","),
        m.client_ur_ls.join(","),
        m.is_learner
    )
}

fn json_strings(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|s| json_string(s)).collect::<Vec<_>>().join(","))
}

/// The response header as etcdctl's JSON prints it (zero fields left out, as Go's `omitempty`).
fn header_json(h: &ResponseHeader) -> String {
    let mut fields = Vec::new();
    if h.cluster_id != 0 {
        fields.push(format!("\"cluster_id\":{}", h.cluster_id));
    }
    if h.member_id != 0 {
        fields.push(format!("\"member_id\":{}", h.member_id));
    }
    if h.revision != 0 {
        fields.push(format!("\"revision\":{}", h.revision));
    }
    if h.raft_term != 0 {
        fields.push(format!("\"raft_term\":{}", h.raft_term));
    }
    format!("{{{}}}", fields.join(","))
}

/// A `member list` response as `etcdctl -w json member list` prints it: the
/// field names of etcd's Go structs, ids as (decimal) numbers.
pub fn member_list_json(resp: &MemberListResponse) -> String {
    let members: Vec<String> = resp
        .members
        .iter()
        .map(|m| {
            let mut fields = vec![format!("\"ID\":{}", m.id)];
            if !m.name.is_empty() {
                fields.push(format!("\"name\":{}", json_string(&m.name)));
            }
            if !m.peer_ur_ls.is_empty() {
                fields.push(format!("\"peerURLs\":{}", json_strings(&m.peer_ur_ls)));
            }
            if !m.client_ur_ls.is_empty() {
                fields.push(format!("\"clientURLs\":{}", json_strings(&m.client_ur_ls)));
            }
            if m.is_learner {
                fields.push("\"isLearner\":true".to_string());
            }
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    let header = resp.header.as_ref().map(header_json).unwrap_or_else(|| "{}".into());
    format!("{{\"header\":{header},\"members\":[{}]}}", members.join(","))
}

/// The settings etcdctl prints after `member add`, for starting the new member:
/// its name, the whole cluster (the new member under `name`), its peer URLs,
/// and `existing` (it joins a running cluster).
pub fn join_settings(name: &str, new_id: u64, peer_urls: &[String], members: &[Member]) -> String {
    let cluster: Vec<String> = members
        .iter()
        .flat_map(|m| {
            let n = if m.id == new_id { name } else { m.name.as_str() };
            m.peer_ur_ls.iter().map(move |u| format!("{n}={u}"))
        })
        .collect();
    format!(
        "ETCD_NAME={}\nETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_ADVERTISE_PEER_URLS={}\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n",
        json_string(name),
        json_string(&cluster.join(",")),
        json_string(&peer_urls.join(",")),
    )
}

fn cluster_id(header: &Option<ResponseHeader>) -> u64 {
    header.as_ref().map_or(0, |h| h.cluster_id)
}

/// Runs one `member` subcommand.
pub async fn run(args: MemberArgs) -> Result<(), String> {
    let (channel, _) = connect_first(&args.endpoints, &args.tls, args.dial_timeout, Some(args.command_timeout)).await?;
    let mut client = ClusterClient::new(channel);
    match args.command {
        MemberCommand::List { write_out } => {
            let resp = client
                .member_list(MemberListRequest { linearizable: true })
                .await
                .map_err(status_message)?
                .into_inner();
            match write_out {
                OutputFormat::Simple => {
                    for m in &resp.members {
                        println!("{}", member_line(m));
                    }
                }
                OutputFormat::Json => println!("{}", member_list_json(&resp)),
            }
        }
        MemberCommand::Add { name, peer_urls, learner } => {
            let resp = client
                .member_add(MemberAddRequest { peer_ur_ls: peer_urls.clone(), is_learner: learner })
                .await
                .map_err(status_message)?
                .into_inner();
            let member = resp.member.ok_or("the server's answer names no member")?;
            let as_learner = if member.is_learner { " as learner " } else { " " };
            println!("Member {:16x} added{as_learner}to cluster {:16x}", member.id, cluster_id(&resp.header));
            // The member that made the change answers with the list after it;
            // should it lack the new member, ask again through the leader.
            let members = if resp.members.iter().any(|m| m.id == member.id) {
                resp.members
            } else {
                client
                    .member_list(MemberListRequest { linearizable: true })
                    .await
                    .map_err(status_message)?
                    .into_inner()
                    .members
            };
            println!();
            print!("{}", join_settings(&name, member.id, &peer_urls, &members));
        }
        MemberCommand::Remove { id } => {
            let resp = client
                .member_remove(MemberRemoveRequest { id })
                .await
                .map_err(status_message)?
                .into_inner();
            println!("Member {id:16x} removed from cluster {:16x}", cluster_id(&resp.header));
        }
        MemberCommand::Update { id, peer_urls } => {
            let resp = client
                .member_update(MemberUpdateRequest { id, peer_ur_ls: peer_urls })
                .await
                .map_err(status_message)?
                .into_inner();
            println!("Member {id:16x} updated in cluster {:16x}", cluster_id(&resp.header));
        }
        MemberCommand::Promote { id } => {
            let resp = client
                .member_promote(MemberPromoteRequest { id })
                .await
                .map_err(status_message)?
                .into_inner();
            println!("Member {id:16x} promoted in cluster {:16x}", cluster_id(&resp.header));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids_parse_as_hex() {
        assert_eq!(parse_member_id("8e9e05c52164694d").unwrap(), 0x8e9e05c52164694d);
        assert_eq!(parse_member_id("0x1F").unwrap(), 0x1f);
        assert_eq!(parse_member_id("ffffffffffffffff").unwrap(), u64::MAX);
        assert!(parse_member_id("").is_err());
        assert!(parse_member_id("0x").is_err());
        assert!(parse_member_id("zz").is_err());
        assert!(parse_member_id("-1").is_err());
        assert!(parse_member_id("+1").is_err());
        assert!(parse_member_id("10000000000000000").is_err());
    }

    #[test]
    fn list_lines_match_etcdctl() {
        let started = Member {
            id: 0x8e9e05c52164694d,
            name: "m1".into(),
            peer_ur_ls: vec!["http://a:2380".into(), "http://b:2380".into()],
            client_ur_ls: vec!["http://a:2379".into()],
            is_learner: false,
        };
        assert_eq!(
            member_line(&started),
            "8e9e05c52164694d, started, m1, http://a:2380,http://b:2380, http://a:2379, false"
        );
        let unstarted = Member { id: 0xab, peer_ur_ls: vec!["http://c:2380".into()], is_learner: true, ..Default::default() };
        assert_eq!(member_line(&unstarted), "ab, unstarted, , http://c:2380, , true");
    }

    #[test]
    fn json_escapes_and_omits_empty_fields() {
        let resp = MemberListResponse {
            header: Some(ResponseHeader { cluster_id: 7, member_id: 8, revision: 0, raft_term: 2 }),
            members: vec![
                Member { id: 1, name: "a\"b".into(), peer_ur_ls: vec!["http://p".into()], ..Default::default() },
                Member { id: 2, is_learner: true, ..Default::default() },
            ],
        };
        assert_eq!(
            member_list_json(&resp),
            r#"{"header":{"cluster_id":7,"member_id":8,"raft_term":2},"members":[{"ID":1,"name":"a\"b","peerURLs":["http://p"]},{"ID":2,"isLearner":true}]}"#
        );
    }

    #[test]
    fn join_settings_name_the_new_member() {
        let members = vec![
            Member { id: 1, name: "m1".into(), peer_ur_ls: vec!["http://a:2380".into()], ..Default::default() },
            Member { id: 2, peer_ur_ls: vec!["http://n:2380".into()], ..Default::default() },
        ];
        assert_eq!(
            join_settings("new", 2, &["http://n:2380".into()], &members),
            "ETCD_NAME=\"new\"\nETCD_INITIAL_CLUSTER=\"m1=http://a:2380,new=http://n:2380\"\n\
             ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://n:2380\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"
        );
    }
}
