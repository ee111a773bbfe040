//! Assembles the gRPC server on one port (ChimeService, `grpc.health.v1`, reflection v1 and
//! v1alpha) and owns its lifecycle: serve until the shutdown future resolves, then report
//! NOT_SERVING, stop accepting, and give in-flight calls the grace period.
//!
//! `run` takes an already-bound listener, so tests start exactly the server production runs.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    chime::Upstream,
    pb::{self, chime::v1::chime_service_server::ChimeServiceServer},
    service::ChimeGateway,
};

/// The gRPC name of the API, also its health-check service name.
pub use crate::pb::chime::v1::chime_service_server::SERVICE_NAME;

/// How long cancelled calls get to deliver their UNAVAILABLE once the grace is over.
const CANCEL_FLUSH: Duration = Duration::from_secs(1);

/// Settings of the server itself.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long in-flight calls may run once shutdown begins.
    pub shutdown_grace: Duration,
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error("gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection descriptors could not be loaded.
    #[error("reflection descriptors are invalid")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves the gateway on `listener` until `shutdown` resolves, then drains within the grace.
pub async fn run<U: Upstream>(
    listener: TcpListener,
    gateway: ChimeGateway<U>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_status(&health, ServingStatus::Serving).await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let canceller = gateway.canceller();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(ChimeServiceServer::new(gateway))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        () = shutdown => {}
    }
    set_status(&health, ServingStatus::NotServing).await;
    let _ = stop_tx.send(());
    tracing::info!(grace = ?options.shutdown_grace, "shutting down: draining in-flight calls");
    if let Ok(result) = tokio::time::timeout(options.shutdown_grace, &mut server).await {
        return Ok(result?);
    }
    tracing::warn!("shutdown grace elapsed: cancelling the calls still in flight");
    canceller.cancel();
    match tokio::time::timeout(CANCEL_FLUSH, server).await {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}

async fn set_status(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}
