//! Sending lease calls that only the leader can answer (keep-alives, time
//! to live) to the leader's client URL, as etcd's followers do.

use std::collections::HashMap;
use std::sync::Mutex;

use concord_proto::etcdserverpb::lease_client::LeaseClient;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

/// Marks a request that one member already forwarded, so that a member that
/// is not leader either refuses it instead of forwarding it again.
pub const FORWARDED_HEADER: &str = "concord-forwarded";

/// Cached gRPC channels to other members' client URLs.
#[derive(Default)]
pub struct LeaderClients {
    clients: Mutex<HashMap<String, LeaseClient<Channel>>>,
}

impl LeaderClients {
    /// A Lease client for `url`, connecting lazily on first use.
    pub fn client(&self, url: &str) -> Result<LeaseClient<Channel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| Status::internal(format!("bad leader URL {url}: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = LeaseClient::new(channel);
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }
}

/// Marks `request` as forwarded.
pub fn mark_forwarded<T>(request: &mut tonic::Request<T>) {
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
}

/// Whether `request` came from another member.
pub fn was_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}
