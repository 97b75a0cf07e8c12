//! `concord member`: list and change the members of a running cluster.
//!
//! It exists so that an operator with only the `concord` binary can do what
//! `etcdctl member` does, and get the same output: etcdctl's "simple" lines
//! by default, so scripts written against etcdctl keep working, or its table
//! or etcd's JSON with `-w table|json`. It talks
//! to the cluster through etcd's public Cluster API only, so it works against
//! etcd as well. Member ids are shown and taken in hex, as etcdctl does.

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberListResponse, MemberPromoteRequest, MemberRemoveRequest,
    MemberUpdateRequest, ResponseHeader,
};
use serde::Serialize;

use crate::client::{ClusterArgs, Session};
use crate::output::{is_zero, print_json, to_json, Align, Format, HeaderJson, OutputArgs, Table};
use crate::text::json_string;

/// Flags of `concord member`; names and defaults follow etcdctl's.
#[derive(Args, Debug)]
pub struct MemberArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: MemberCommand,
}

/// What to do with the members.
#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// Lists every member: id, started|unstarted, name, peer URLs, client URLs, is learner.
    List,
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
        return Err(format!(
            "bad member ID {text:?}, expecting ID in hex (as `member list` prints it)"
        ));
    }
    u64::from_str_radix(digits, 16).map_err(|_| format!("bad member ID {text:?}: more than 64 bits"))
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

/// etcd's `Member` in JSON: the field names of etcd's Go struct, ids as (decimal) numbers.
#[derive(Serialize)]
pub struct MemberJson {
    #[serde(rename = "ID")]
    id: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    #[serde(rename = "peerURLs", skip_serializing_if = "Vec::is_empty")]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", skip_serializing_if = "Vec::is_empty")]
    client_urls: Vec<String>,
    #[serde(rename = "isLearner", skip_serializing_if = "is_zero")]
    is_learner: bool,
}

impl MemberJson {
    /// The JSON form of a member.
    pub fn of(m: &Member) -> MemberJson {
        MemberJson {
            id: m.id,
            name: m.name.clone(),
            peer_urls: m.peer_ur_ls.clone(),
            client_urls: m.client_ur_ls.clone(),
            is_learner: m.is_learner,
        }
    }
}

/// The answer of a membership change (or list) in JSON: the header, the member
/// added (for `add`), and the members after the change.
#[derive(Serialize)]
struct MembersJson {
    header: HeaderJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    member: Option<MemberJson>,
    members: Vec<MemberJson>,
}

impl MembersJson {
    fn of(header: &Option<ResponseHeader>, member: Option<&Member>, members: &[Member]) -> MembersJson {
        MembersJson {
            header: HeaderJson::of(header),
            member: member.map(MemberJson::of),
            members: members.iter().map(MemberJson::of).collect(),
        }
    }
}

/// A `member list` response as `etcdctl -w json member list` prints it.
pub fn member_list_json(resp: &MemberListResponse) -> String {
    to_json(&MembersJson::of(&resp.header, None, &resp.members)).unwrap_or_default()
}

/// The members as etcdctl's `member list -w table` draws them.
pub fn member_table(members: &[Member]) -> Table {
    let mut table = Table::new(
        &["id", "status", "name", "peer addrs", "client addrs", "is learner"],
        Align::Right,
    );
    for m in members {
        let status = if m.name.is_empty() { "unstarted" } else { "started" };
        table.row([
            format!("{:x}", m.id),
            status.to_string(),
            m.name.clone(),
            m.peer_ur_ls.join(","),
            m.client_ur_ls.join(","),
            m.is_learner.to_string(),
        ]);
    }
    table
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
    let session = Session::connect(&args.cluster).await?;
    let format = args.output.write_out;
    let mut client = ClusterClient::new(session.channel.clone());
    match args.command {
        MemberCommand::List => {
            let resp = session
                .call(client.member_list(session.request(MemberListRequest { linearizable: true })))
                .await?;
            match format {
                Format::Simple => {
                    for m in &resp.members {
                        println!("{}", member_line(m));
                    }
                }
                Format::Table => print!("{}", member_table(&resp.members).render()),
                Format::Json => println!("{}", member_list_json(&resp)),
            }
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let request = MemberAddRequest {
                peer_ur_ls: peer_urls.clone(),
                is_learner: learner,
            };
            let resp = session.call(client.member_add(session.request(request))).await?;
            let member = resp.member.clone().ok_or("the server's answer names no member")?;
            if format == Format::Json {
                return print_json(&MembersJson::of(&resp.header, Some(&member), &resp.members));
            }
            let as_learner = if member.is_learner { " as learner " } else { " " };
            println!(
                "Member {:16x} added{as_learner}to cluster {:16x}",
                member.id,
                cluster_id(&resp.header)
            );
            // The member that made the change answers with the list after it;
            // should it lack the new member, ask again through the leader.
            let members = if resp.members.iter().any(|m| m.id == member.id) {
                resp.members
            } else {
                session
                    .call(client.member_list(session.request(MemberListRequest { linearizable: true })))
                    .await?
                    .members
            };
            println!();
            print!("{}", join_settings(&name, member.id, &peer_urls, &members));
        }
        MemberCommand::Remove { id } => {
            let resp = session
                .call(client.member_remove(session.request(MemberRemoveRequest { id })))
                .await?;
            match format {
                Format::Json => print_json(&MembersJson::of(&resp.header, None, &resp.members))?,
                _ => println!("Member {id:16x} removed from cluster {:16x}", cluster_id(&resp.header)),
            }
        }
        MemberCommand::Update { id, peer_urls } => {
            let request = MemberUpdateRequest {
                id,
                peer_ur_ls: peer_urls,
            };
            let resp = session.call(client.member_update(session.request(request))).await?;
            match format {
                Format::Json => print_json(&MembersJson::of(&resp.header, None, &resp.members))?,
                _ => println!("Member {id:16x} updated in cluster {:16x}", cluster_id(&resp.header)),
            }
        }
        MemberCommand::Promote { id } => {
            let resp = session
                .call(client.member_promote(session.request(MemberPromoteRequest { id })))
                .await?;
            match format {
                Format::Json => print_json(&MembersJson::of(&resp.header, None, &resp.members))?,
                _ => println!("Member {id:16x} promoted in cluster {:16x}", cluster_id(&resp.header)),
            }
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
        let unstarted = Member {
            id: 0xab,
            peer_ur_ls: vec!["http://c:2380".into()],
            is_learner: true,
            ..Default::default()
        };
        assert_eq!(member_line(&unstarted), "ab, unstarted, , http://c:2380, , true");
    }

    #[test]
    fn json_escapes_and_omits_empty_fields() {
        let resp = MemberListResponse {
            header: Some(ResponseHeader {
                cluster_id: 7,
                member_id: 8,
                revision: 0,
                raft_term: 2,
            }),
            members: vec![
                Member {
                    id: 1,
                    name: "a\"b".into(),
                    peer_ur_ls: vec!["http://p".into()],
                    ..Default::default()
                },
                Member {
                    id: 2,
                    is_learner: true,
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            member_list_json(&resp),
            r#"{"header":{"cluster_id":7,"member_id":8,"raft_term":2},"members":[{"ID":1,"name":"a\"b","peerURLs":["http://p"]},{"ID":2,"isLearner":true}]}"#
        );
    }

    #[test]
    fn tables_match_etcdctl() {
        let members = vec![Member {
            id: 0x8e9e05c52164694d,
            name: "m1".into(),
            peer_ur_ls: vec!["http://a:2380".into()],
            client_ur_ls: vec!["http://a:2379".into()],
            is_learner: false,
        }];
        let text = member_table(&members).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert_eq!(
            lines[1],
            "|        ID        | STATUS  | NAME |  PEER ADDRS   | CLIENT ADDRS  | IS LEARNER |"
        );
        assert_eq!(
            lines[3],
            "| 8e9e05c52164694d | started |   m1 | http://a:2380 | http://a:2379 |      false |"
        );
    }

    #[test]
    fn join_settings_name_the_new_member() {
        let members = vec![
            Member {
                id: 1,
                name: "m1".into(),
                peer_ur_ls: vec!["http://a:2380".into()],
                ..Default::default()
            },
            Member {
                id: 2,
                peer_ur_ls: vec!["http://n:2380".into()],
                ..Default::default()
            },
        ];
        assert_eq!(
            join_settings("new", 2, &["http://n:2380".into()], &members),
            "ETCD_NAME=\"new\"\nETCD_INITIAL_CLUSTER=\"m1=http://a:2380,new=http://n:2380\"\n\
             ETCD_INITIAL_ADVERTISE_PEER_URLS=\"http://n:2380\"\nETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"
        );
    }
}
