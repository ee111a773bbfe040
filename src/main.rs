//! `chime-gateway`: parse config, size the runtime, start telemetry, bind, and call `server::run`.

use std::{num::NonZeroUsize, process::ExitCode};

use chime_gateway::{
    chime::{self, SdkUpstream},
    config::{self, Config, ListenAddr},
    emulator::{self, Emulator, EmulatorConfig},
    idempotency::{Journal, Recovered},
    listeners::{self, Bound},
    server::{self, ServeOptions},
    service::{Backoff, CallPolicy, ChimeGateway, RequestIds},
    telemetry,
};
use clap::Parser;

/// Exit status for invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// The default worker count never exceeds this: a sidecar shares its node with the app it serves.
const DEFAULT_MAX_WORKERS: usize = 2;
/// Threads for blocking work (DNS lookups of new upstream connections, credential files).
const MAX_BLOCKING_THREADS: usize = 16;

/// How the process ended, for the exit status.
enum Failure {
    /// Invalid configuration, found before anything was served: exit 64.
    Config(String),
    /// Anything else: exit 1.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return config_error(config::one_line(&e).trim_start_matches("error: ")),
    };
    // Reading the TLS files is part of checking the configuration: before any port is bound.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => match server::tls_config(cert, key, config.tls_client_ca.as_deref()) {
            Ok(tls) => Some(tls),
            Err(e) => return config_error(&format!("cannot read TLS files: {e}")),
        },
        _ => None,
    };
    // So is opening the request-id journal: an unusable --state-dir stops the start here.
    let journal = match &config.state_dir {
        Some(dir) => {
            let capacity = usize::try_from(config.idempotency_capacity).unwrap_or(usize::MAX);
            match Journal::open(dir, config.idempotency_ttl, capacity) {
                Ok(opened) => Some(opened),
                Err(e) => {
                    return config_error(&format!("--state-dir {}: {e}", dir.display()));
                }
            }
        }
        None => None,
    };
    let (workers, why) = worker_threads(config.worker_threads);
    let runtime = match runtime(workers) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chime-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Bound before the first log line, so a configuration error is the only line printed.
        let bound = listeners::bind(&config).map_err(Failure::Config)?;
        let telemetry = telemetry::init(config.log_format).map_err(anyhow::Error::from)?;
        tracing::info!(worker_threads = workers, why = %why, "runtime started");
        let served = serve(config, tls, bound, journal).await;
        telemetry.shutdown();
        served
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(line)) => config_error(&line),
        Err(Failure::Other(e)) => {
            eprintln!("chime-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(line: &str) -> ExitCode {
    eprintln!("chime-gateway: {line}");
    ExitCode::from(EXIT_CONFIG)
}

/// The worker count and why: the flag, or the CPUs this process may use (affinity and cgroup
/// quota, as the standard library reads them), capped for a sidecar.
fn worker_threads(flag: Option<NonZeroUsize>) -> (usize, String) {
    if let Some(n) = flag {
        return (n.get(), "set by --worker-threads".to_owned());
    }
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let workers = cpus.min(DEFAULT_MAX_WORKERS);
    (
        workers,
        format!("{cpus} CPUs available to this process, at most {DEFAULT_MAX_WORKERS}"),
    )
}

/// A single-threaded runtime for one worker (no cross-thread wake-ups), else a multi-threaded one.
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
}

async fn serve(
    config: Config,
    tls: Option<server::TlsConfig>,
    bound: Bound,
    journal: Option<(Journal, Recovered)>,
) -> Result<(), Failure> {
    let Bound {
        api,
        api_addr,
        socket,
        metrics,
        health,
    } = bound;
    let metrics_addr = metrics.local_addr().map_err(anyhow::Error::from)?;
    let health_addr = health.as_ref().and_then(|h| h.local_addr().ok());
    // Kept alive for as long as the gateway serves.
    let mut _emulator = None;
    let sdk_config = if config.emulate {
        let emu = Emulator::start(EmulatorConfig::default())
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the emulator: {e}"))?;
        let (key, secret) = emu.credentials();
        let sdk_config = chime::load_static_sdk_config(&emu.endpoint_url(), key, secret).await;
        println!(
            "chime-gateway: --emulate: Chime emulator listening on {}",
            emu.endpoint_url()
        );
        _emulator = Some(emu);
        sdk_config
    } else {
        chime::load_sdk_config().await
    };
    let max_attempts = chime::max_attempts(&sdk_config);
    let http_client = chime::http_client(
        config.upstream_pool_idle_timeout,
        Some(config.upstream_max_connections.get()),
    );
    let upstream =
        SdkUpstream::from_builder(aws_sdk_chime::config::Builder::from(&sdk_config).http_client(http_client));
    let policy = CallPolicy {
        upstream_timeout: config.upstream_timeout,
        default_deadline: config.default_deadline,
        max_attempts,
        backoff: Backoff::default(),
        reconcile: config.reconcile,
    };
    let (ttl, capacity) = (config.idempotency_ttl, config.idempotency_capacity);
    let (request_ids, damaged) = match journal {
        Some((journal, recovered)) => {
            log_recovered(&recovered);
            let damaged = recovered.damaged;
            (RequestIds::journaled(ttl, capacity, journal, recovered), damaged)
        }
        None => (RequestIds::in_memory(ttl, capacity), 0),
    };
    let gateway = ChimeGateway::new(upstream, policy, config.max_concurrency.get())
        .with_upstream_connections(config.upstream_max_connections.get())
        .with_request_ids(request_ids)
        .with_retry_budget(config.retry_budget())
        .with_send_rate(config.adaptive_throttle);
    gateway.metrics().journal_damaged(damaged);
    let shutdown =
        server::shutdown_signal().map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
    println!("chime-gateway: serving chime.v1.ChimeService on {api_addr}");
    println!("chime-gateway: metrics on http://{metrics_addr}/metrics");
    if let Some(addr) = health_addr {
        println!("chime-gateway: health (grpc.health.v1 only) on {addr}");
    }
    if config.emulate {
        println!("chime-gateway: try it:\n  {}", try_it_line(&api_addr));
    }
    let options = ServeOptions {
        shutdown_grace: config.shutdown_grace,
        metrics_listener: Some(metrics),
        health_listener: health,
        http2_keepalive: Some((config.http2_keepalive_interval, config.http2_keepalive_timeout)),
        max_connection_age: config.max_connection_age,
        max_message_size: config.max_message_size as usize,
        tls,
        limits: config.connection_limits(),
    };
    let served = server::run(api, gateway, options, shutdown).await;
    // The socket file goes with the server, before the process reports its exit.
    drop(socket);
    served.map_err(|e| Failure::Other(e.into()))
}

/// What the request-id journal gave back at start.
fn log_recovered(r: &Recovered) {
    let in_doubt = r.in_doubt.len();
    if r.unkeyed > 0 {
        tracing::warn!(
            unkeyed = r.unkeyed,
            "--state-dir: hash.key could not be read, so the request ids in doubt hashed under it are lost; a new one was drawn"
        );
    }
    if let Some(until) = r.digests_until {
        tracing::warn!(
            digests = r.digests,
            until = %humantime::format_rfc3339_seconds(until),
            "--state-dir: request ids in doubt hashed as SHA-256 digests by an earlier version are recognised so until one TTL after the newest of them"
        );
    }
    if r.damaged > 0 {
        tracing::warn!(
            in_doubt,
            records = r.records,
            damaged = r.damaged,
            "--state-dir: damaged records of the request-id journal were skipped (a write cut short?); the rest were read"
        );
    } else {
        tracing::info!(
            in_doubt,
            records = r.records,
            expired = r.expired,
            "--state-dir: request ids in doubt recovered"
        );
    }
}

/// A ready-to-paste grpcurl call for `--emulate`.
fn try_it_line(listen: &ListenAddr) -> String {
    let target = match listen {
        ListenAddr::Tcp(addr) => addr.to_string(),
        ListenAddr::Unix(path) => format!("-unix {}", path.display()),
    };
    format!(
        "grpcurl -plaintext -d '{{\"account_id\":\"{}\",\"email\":\"jane@example.com\",\"user_type\":\"USER_TYPE_PRIVATE_USER\",\"request_id\":\"{}\"}}' {target} chime.v1.ChimeService/CreateUser",
        emulator::DEMO_ACCOUNT_ID,
        uuid::Uuid::new_v4()
    )
}
