//! Assembles the gRPC server on one port or Unix socket (ChimeService, `grpc.health.v1`, reflection
//! v1 and v1alpha), the Prometheus port and the optional health-only port beside it, and owns their
//! lifecycle: serve until the shutdown future resolves, then report NOT_SERVING (on both ports),
//! stop accepting, give in-flight calls the grace period, cancel what is left, and close the
//! health port last.
//!
//! What one caller connection may cost is set here, on purpose, for every listener (`limits`:
//! [`ConnectionLimits`] and the fixed limits beside it): the HTTP/2 limits h2 enforces and
//! advertises, and the time a connection gets to begin. The `:authority` mender reads the same.
//! `tls` reads the TLS files; the gateway runs the handshake itself (`listeners`).
//!
//! `run` takes already-bound listeners, so tests start exactly the server production runs.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::{StreamExt, wrappers::UnixListenerStream};
use tonic_health::{ServingStatus, server::HealthReporter};

pub use crate::listeners::Listener;
pub use limits::{ConnectionLimits, HEADER_TABLE_SIZE};
pub use tls::{TlsConfig, tls_config};

mod limits;
mod tls;

use crate::{
    authority::Mended,
    chime::Upstream,
    listeners::{Preface, tls_handshakes},
    message_size::MessageSizeLayer,
    metrics::{GrpcMetricsLayer, Metrics},
    pb::{self, wire::chime_service_server::ChimeServiceServer},
    service::ChimeGateway,
};

/// The gRPC name of the API, also its health-check service name.
pub use crate::pb::chime::v1::chime_service_server::SERVICE_NAME;

/// How long the health-only port gets to close its connections after the API has stopped.
const HEALTH_CLOSE: Duration = Duration::from_secs(1);

/// How long cancelled calls get to deliver their UNAVAILABLE once the grace is over.
const CANCEL_FLUSH: Duration = Duration::from_secs(1);

/// Settings of the server itself.
#[derive(Debug)]
pub struct ServeOptions {
    /// How long in-flight calls may run once shutdown begins.
    pub shutdown_grace: Duration,
    /// Where `/metrics` is served; `None` serves no metrics port.
    pub metrics_listener: Option<TcpListener>,
    /// Where `grpc.health.v1` alone is served too (for probes); `None`: the API port only.
    pub health_listener: Option<TcpListener>,
    /// HTTP/2 PING interval and timeout towards callers.
    pub http2_keepalive: Option<(Duration, Duration)>,
    /// Connections older than this are closed gracefully.
    pub max_connection_age: Option<Duration>,
    /// Largest request or response message, in bytes.
    pub max_message_size: usize,
    /// TLS (and mTLS) for the API port; plaintext when `None`.
    pub tls: Option<TlsConfig>,
    /// What one caller connection may cost.
    pub limits: ConnectionLimits,
}

impl ServeOptions {
    /// Plaintext, no metrics port, the default limits and the given grace.
    pub fn with_grace(shutdown_grace: Duration) -> Self {
        Self {
            shutdown_grace,
            metrics_listener: None,
            health_listener: None,
            http2_keepalive: Some((Duration::from_secs(30), Duration::from_secs(10))),
            max_connection_age: None,
            max_message_size: 64 * 1024,
            tls: None,
            limits: ConnectionLimits::default(),
        }
    }
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

/// Resolves on the first SIGTERM or SIGINT. The handlers are installed when this is called, not
/// when the future is first polled, so call it before announcing readiness: a signal that arrives
/// right after is then a shutdown, not a kill.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown signal received");
    })
}

type Serving = std::pin::Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>>;

/// Serves the gateway on `listener` (TCP or a Unix socket) until `shutdown` resolves, then drains
/// within the grace.
pub async fn run<U: Upstream>(
    listener: impl Into<Listener>,
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
    let metrics = gateway.metrics();
    let metrics_task = options
        .metrics_listener
        .map(|l| tokio::spawn(serve_metrics(l, metrics.clone())));
    let health_port = options.health_listener.map(|listener| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = options
            .limits
            .server()
            .layer(GrpcMetricsLayer::new(metrics.clone()))
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(incoming(listener, &options.limits), async move {
                let _ = stopped.await;
            });
        HealthPort {
            stop,
            task: tokio::spawn(server),
        }
    });
    let canceller = gateway.canceller();
    let api = ChimeServiceServer::new(gateway)
        .max_decoding_message_size(options.max_message_size)
        .max_encoding_message_size(options.max_message_size);
    let limits = options.limits;
    let mut builder = limits.server();
    let tls = options.tls.map(|config| TlsAcceptor::from(config.0));
    if let Some(age) = options.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let (interval, timeout) = options.http2_keepalive.unzip();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = builder
        .http2_keepalive_interval(interval)
        .http2_keepalive_timeout(timeout)
        // Counts every call, outermost so it sees the final code of each.
        .layer(GrpcMetricsLayer::new(metrics))
        .layer(MessageSizeLayer::new(options.max_message_size))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(api);
    let stop = async {
        let _ = stop_rx.await;
    };
    let handshake = limits.handshake_timeout;
    let header_limits = limits.header_limits();
    let server: Serving = match (listener.into(), tls) {
        (Listener::Tcp(l), None) => Box::pin(router.serve_with_incoming_shutdown(incoming(l, &limits), stop)),
        // The TLS handshake is the gateway's own, so that the preface after it is timed too, and
        // the mender on a socket reads what is under TLS.
        (Listener::Tcp(l), Some(tls)) => {
            let accepted = tonic::transport::server::TcpIncoming::from(l).with_nodelay(Some(true));
            let incoming = tls_handshakes(accepted, tls, handshake)
                .map(|h| h.map(|(stream, deadline)| Preface::until(stream, deadline)));
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
        // Clients that send the socket's path as :authority are served (crate::authority).
        (Listener::Unix(l), None) => {
            let incoming = UnixListenerStream::new(l)
                .map(move |a| a.map(|s| Preface::new(Mended::new(s, header_limits), handshake)));
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
        (Listener::Unix(l), Some(tls)) => {
            let incoming = tls_handshakes(UnixListenerStream::new(l), tls, handshake).map(move |h| {
                h.map(|(stream, deadline)| Preface::until(Mended::new(stream, header_limits), deadline))
            });
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop))
        }
    };
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result.map_err(ServeError::from),
        () = shutdown => drain(server, &health, stop_tx, options.shutdown_grace, || canceller.cancel()).await,
    };
    if let Some(port) = health_port {
        port.close().await;
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    result
}

/// The health-only port: `grpc.health.v1` and nothing else, with the API port's statuses.
struct HealthPort {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl HealthPort {
    /// Closes it once the API has stopped: probes saw NOT_SERVING throughout the drain.
    async fn close(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(HEALTH_CLOSE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn drain<F: Future<Output = Result<(), tonic::transport::Error>>>(
    mut server: std::pin::Pin<&mut F>,
    health: &HealthReporter,
    stop: tokio::sync::oneshot::Sender<()>,
    grace: Duration,
    cancel: impl FnOnce(),
) -> Result<(), ServeError> {
    set_status(health, ServingStatus::NotServing).await;
    let _ = stop.send(());
    tracing::info!(?grace, "shutting down: draining in-flight calls");
    if let Ok(result) = tokio::time::timeout(grace, &mut server).await {
        return Ok(result?);
    }
    tracing::warn!("shutdown grace elapsed: cancelling the calls still in flight");
    cancel();
    match tokio::time::timeout(CANCEL_FLUSH, server).await {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames go out at once instead of
/// waiting up to 40 ms for the caller's delayed ACK. (`Server::tcp_nodelay` does not apply to a
/// listener handed in by the caller.) Each must begin within the handshake timeout.
fn incoming(
    listener: TcpListener,
    limits: &ConnectionLimits,
) -> impl tokio_stream::Stream<Item = std::io::Result<Preface<tokio::net::TcpStream>>> + use<> {
    let timeout = limits.handshake_timeout;
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| accepted.map(|stream| Preface::new(stream, timeout)))
}

async fn set_status(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Serves `GET /metrics` (OpenMetrics text) until aborted.
async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let metrics = metrics.clone();
            async move { Ok::<_, Infallible>(metrics_response(request.uri().path(), &metrics)) }
        });
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn metrics_response(path: &str, metrics: &Metrics) -> http::Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            http::StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            http::StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".to_owned(),
        ),
    };
    let mut response = http::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}
