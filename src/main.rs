//! `chime-gateway`: parse config, start telemetry, bind, and call `server::run`.

use std::process::ExitCode;

use anyhow::Context;
use chime_gateway::{
    chime::{self, SdkUpstream},
    config::{self, Config},
    emulator::{self, Emulator, EmulatorConfig},
    server::{self, ServeOptions},
    service::{Backoff, CallPolicy, ChimeGateway},
    telemetry,
};
use clap::Parser;
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;

/// Exit status for invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!(
                "chime-gateway: {}",
                config::one_line(&e).trim_start_matches("error: ")
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Reading the TLS files is part of checking the configuration: before any port is bound.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => match server::tls_config(cert, key, config.tls_client_ca.as_deref()) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("chime-gateway: cannot read TLS files: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
    let result = runtime.map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let telemetry = telemetry::init(config.log_format)?;
            let served = serve(config, tls).await;
            telemetry.shutdown();
            served
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chime-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, tls: Option<ServerTlsConfig>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen = listener.local_addr()?;
    let metrics_listener = TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.metrics_listen))?;
    let metrics_addr = metrics_listener.local_addr()?;
    // Kept alive for as long as the gateway serves.
    let mut _emulator = None;
    let sdk_config = if config.emulate {
        let emu = Emulator::start(EmulatorConfig::default())
            .await
            .context("cannot start the emulator")?;
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
    let gateway = ChimeGateway::new(upstream, policy, config.max_concurrency.get())
        .with_upstream_connections(config.upstream_max_connections.get())
        .with_idempotency(config.idempotency_ttl, config.idempotency_capacity);
    let shutdown = server::shutdown_signal().context("cannot install the signal handlers")?;
    println!("chime-gateway: serving chime.v1.ChimeService on {listen}");
    println!("chime-gateway: metrics on http://{metrics_addr}/metrics");
    if config.emulate {
        println!("chime-gateway: try it:\n  {}", try_it_line(listen));
    }
    let options = ServeOptions {
        shutdown_grace: config.shutdown_grace,
        metrics_listener: Some(metrics_listener),
        http2_keepalive: Some((config.http2_keepalive_interval, config.http2_keepalive_timeout)),
        max_connection_age: config.max_connection_age,
        max_message_size: config.max_message_size as usize,
        tls,
    };
    server::run(listener, gateway, options, shutdown).await?;
    Ok(())
}

fn try_it_line(listen: std::net::SocketAddr) -> String {
    format!(
        "grpcurl -plaintext -d '{{\"account_id\":\"{}\",\"email\":\"jane@example.com\",\"user_type\":\"USER_TYPE_PRIVATE_USER\",\"request_id\":\"{}\"}}' {listen} chime.v1.ChimeService/CreateUser",
        emulator::DEMO_ACCOUNT_ID,
        uuid::Uuid::new_v4()
    )
}
