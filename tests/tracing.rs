//! Traces: a call continues the caller's W3C `traceparent`, and its upstream attempt is a child
//! span; with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the binary exports them over OTLP.

mod common;

use std::{process::Stdio, sync::Mutex, time::Duration};

use chime_gateway::{
    emulator::DEMO_ACCOUNT_ID,
    pb::chime::v1::{CreateUserRequest, UserType},
};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{InMemorySpanExporter, SdkTracerProvider},
};
use tracing_subscriber::layer::SubscriberExt;

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_ID: &str = "b7ad6b7169203331";

fn traced_request() -> tonic::Request<CreateUserRequest> {
    let mut request = tonic::Request::new(common::request(Some("trace@example.com"), UserType::PrivateUser));
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test(flavor = "current_thread")]
async fn a_call_continues_the_callers_trace_into_the_upstream_attempt() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let (_emu, gw) = common::stack().await;
    gw.client().await.create_user(traced_request()).await.unwrap();
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let server = spans
        .iter()
        .find(|s| s.name == "chime.v1.ChimeService/CreateUser")
        .expect("server span");
    let client = spans
        .iter()
        .find(|s| s.name == "chime.upstream_attempt")
        .expect("upstream attempt span");
    let sdk = spans
        .iter()
        .find(|s| s.name == "Chime.CreateUser")
        .expect("the SDK's operation span");
    assert_eq!(
        sdk.parent_span_id,
        client.span_context.span_id(),
        "the SDK's spans nest inside"
    );
    assert_eq!(
        server.span_context.trace_id(),
        TraceId::from_hex(TRACE_ID).unwrap()
    );
    assert_eq!(server.parent_span_id, SpanId::from_hex(PARENT_ID).unwrap());
    assert_eq!(client.span_context.trace_id(), server.span_context.trace_id());
    assert_eq!(client.parent_span_id, server.span_context.span_id());
}

/// A minimal OTLP/gRPC collector that keeps the trace ids it receives.
#[derive(Default)]
struct Collector {
    trace_ids: std::sync::Arc<Mutex<Vec<Vec<u8>>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut ids = self.trace_ids.lock().unwrap();
        for resource in &request.get_ref().resource_spans {
            for scope in &resource.scope_spans {
                ids.extend(scope.spans.iter().map(|s| s.trace_id.clone()));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn the_binary_exports_spans_over_otlp_when_configured() {
    let collector = Collector::default();
    let ids = collector.trace_ids.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chime-gateway"))
        .args([
            "--emulate",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let listen = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the gateway printed its address");
        if let Some((_, addr)) = line.split_once("serving chime.v1.ChimeService on ") {
            break addr.trim().to_owned();
        }
    };
    let mut client = chime_gateway::pb::chime::v1::chime_service_client::ChimeServiceClient::connect(
        format!("http://{listen}"),
    )
    .await
    .unwrap();
    let mut request = traced_request();
    request.get_mut().account_id = DEMO_ACCOUNT_ID.into();
    client.create_user(request).await.unwrap();

    // SIGTERM flushes the batch exporter on the way out.
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let expected = hex::decode(TRACE_ID).unwrap();
    let ids = ids.lock().unwrap();
    assert!(
        ids.len() >= 2,
        "server and upstream spans exported: {}",
        ids.len()
    );
    assert!(
        ids.iter().all(|id| *id == expected),
        "every span continues the caller's trace"
    );
}
