//! Cluster-level questions between members, served on the peer URLs:
//! today, the membership, for a member that joins a running cluster.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::cluster_peer_client::ClusterPeerClient;
use concord_proto::concordpb::cluster_peer_server::{ClusterPeer, ClusterPeerServer};
use concord_proto::concordpb::{ClusterState, MembershipRequest};
use concord_tls::Dialer;
use tonic::{Request, Response, Status};

use crate::membership::Membership;

/// Answers peers' membership questions.
pub struct ClusterPeerService {
    membership: Arc<Membership>,
}

impl ClusterPeerService {
    /// The service, ready to mount on the peer listener.
    pub fn server(membership: Arc<Membership>) -> ClusterPeerServer<Self> {
        ClusterPeerServer::new(ClusterPeerService { membership })
    }
}

#[tonic::async_trait]
impl ClusterPeer for ClusterPeerService {
    async fn membership(&self, _request: Request<MembershipRequest>) -> Result<Response<ClusterState>, Status> {
        let mut state = self.membership.state();
        state.local_member_id = 0;
        Ok(Response::new(state))
    }
}

/// Asks the members at `peer_urls`, in turn, for the cluster's membership, connecting through
/// `dialer` (peer TLS for `https://` URLs).
pub async fn fetch_membership(peer_urls: &[String], dialer: &Dialer) -> Result<ClusterState, String> {
    let mut last_error = "no peer URLs to ask".to_string();
    for url in peer_urls {
        let configure = |e: tonic::transport::Endpoint| {
            e.connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
        };
        match dialer.connect(url, configure).await {
            Ok(channel) => match ClusterPeerClient::new(channel).membership(MembershipRequest {}).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => last_error = format!("{url}: {}", status.message()),
            },
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}
