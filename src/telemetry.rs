//! Logs and traces. Logs: tracing-subscriber to stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`). Traces: when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans go over OTLP/gRPC, and each call continues
//! the caller's W3C `traceparent`.
//!
//! Owns only the subscriber and the propagation helpers; what is logged is decided at the call
//! sites, which never log sensitive fields.

use opentelemetry::{propagation::Extractor, trace::TracerProvider as _};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tonic::metadata::{KeyRef, MetadataMap};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::LogFormat;

/// What must outlive the server: flushes the spans still buffered on shutdown.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Flushes the log lines still queued for stderr when dropped.
    _logs: tracing_appender::non_blocking::WorkerGuard,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exports_traces(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// The OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter")]
pub struct TelemetryError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Installs the global subscriber; call once, from `main`, inside the Tokio runtime.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        let resource = Resource::builder().with_service_name("chime-gateway").build();
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    } else {
        None
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("chime-gateway")));
    // Log lines are written by a background thread, so a slow stderr never stalls a call; when
    // its queue is full, lines are dropped rather than blocking. The queue is allocated (and
    // touched) whole at start: 16,384 lines is 512 KiB, over a second of calls at saturation,
    // where the crate's default of 128,000 costs 4 MiB of resident memory.
    let (writer, logs) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(16_384)
        .finish(std::io::stderr());
    // Colours only for a person at a terminal: a pipe or a file (a container's log) gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Ok(Telemetry {
        provider,
        _logs: logs,
    })
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// The caller's trace context, read from gRPC metadata (`traceparent`, `tracestate`).
pub fn caller_context(metadata: &MetadataMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Metadata(metadata)))
}

struct Metadata<'a>(&'a MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}
