//! gRPC's standard health service (`grpc.health.v1.Health`), as etcd serves it on the client port.
//!
//! The whole server (service name `""`) answers SERVING while the member runs. With etcd's
//! `--experimental-stop-grpc-service-on-defrag` it answers NOT_SERVING while the member
//! defragments, so clients that watch the health service (grpc-go's health checking, load
//! balancers) send their calls to other members until it is done.

use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// etcd's name for "every service on this port".
const ALL_SERVICES: &str = "";

/// The member's health service and what changes its answer.
#[derive(Clone)]
pub struct GrpcHealth {
    reporter: HealthReporter,
    stop_on_defrag: bool,
}

impl GrpcHealth {
    /// A health service answering SERVING, and the gRPC service that serves it; `stop_on_defrag`
    /// is etcd's `--experimental-stop-grpc-service-on-defrag`.
    pub fn new(stop_on_defrag: bool) -> (GrpcHealth, HealthServer<impl Health>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        // The reporter starts with "" SERVING.
        tracing::info!(
            service = ALL_SERVICES,
            status = "SERVING",
            "grpc service status changed"
        );
        let health = GrpcHealth {
            reporter,
            stop_on_defrag,
        };
        (health, service)
    }

    /// A defragmentation starts: NOT_SERVING, if the member was asked to stop serving then.
    pub async fn defrag_started(&self) {
        if self.stop_on_defrag {
            tracing::warn!(
                service = ALL_SERVICES,
                status = "NOT_SERVING",
                reason = "defrag is active",
                "grpc service status changed"
            );
            self.set(ServingStatus::NotServing).await;
        }
    }

    /// The defragmentation ended, whether or not it succeeded.
    pub async fn defrag_finished(&self) {
        if self.stop_on_defrag {
            tracing::info!(
                service = ALL_SERVICES,
                status = "SERVING",
                "grpc service status changed"
            );
            self.set(ServingStatus::Serving).await;
        }
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status(ALL_SERVICES, status).await;
    }
}
