//! `concord kv`: put, get and delete keys on any etcd-v3 endpoint.

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest};

/// Flags of `concord kv`.
#[derive(Args, Debug)]
pub struct KvArgs {
    /// Endpoints to try, in order (comma-separated).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    #[command(flatten)]
    pub tls: crate::client_tls::ClientTlsArgs,
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
    },
    /// Reads a key, or every key under a prefix.
    Get {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
    },
    /// Deletes a key, or every key under a prefix.
    Del {
        /// The key (or prefix).
        key: String,
        /// Treat the key as a prefix.
        #[arg(long)]
        prefix: bool,
    },
}

/// The end of the range that holds every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn connect(endpoints: &[String], tls: &crate::client_tls::ClientTlsArgs) -> Result<KvClient<tonic::transport::Channel>, String> {
    let mut last_error = String::from("no endpoints given");
    for endpoint in endpoints {
        match tls.endpoint(endpoint)?.connect().await {
            Ok(channel) => return Ok(KvClient::new(channel)),
            Err(e) => last_error = format!("{endpoint}: {e}"),
        }
    }
    Err(last_error)
}

/// Runs one `kv` subcommand.
pub async fn run(args: KvArgs) -> Result<(), String> {
    let mut client = connect(&args.endpoints, &args.tls).await?;
    let show = |s: tonic::Status| s.message().to_string();
    match args.command {
        KvCommand::Put { key, value } => {
            client
                .put(PutRequest { key: key.into_bytes(), value: value.into_bytes(), ..Default::default() })
                .await
                .map_err(show)?;
            println!("OK");
        }
        KvCommand::Get { key, prefix } => {
            let range_end = if prefix { prefix_end(key.as_bytes()) } else { vec![] };
            let resp = client
                .range(RangeRequest { key: key.into_bytes(), range_end, ..Default::default() })
                .await
                .map_err(show)?
                .into_inner();
            for kv in resp.kvs {
                println!("{}", String::from_utf8_lossy(&kv.key));
                println!("{}", String::from_utf8_lossy(&kv.value));
            }
        }
        KvCommand::Del { key, prefix } => {
            let range_end = if prefix { prefix_end(key.as_bytes()) } else { vec![] };
            let resp = client
                .delete_range(DeleteRangeRequest { key: key.into_bytes(), range_end, ..Default::default() })
                .await
                .map_err(show)?
                .into_inner();
            println!("{}", resp.deleted);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
