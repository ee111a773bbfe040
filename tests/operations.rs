//! What an SRE relies on: Prometheus metrics, the message size limit, TLS and mTLS, keepalive and
//! connection age, the upstream connection pool and its limit.

mod common;

use std::time::Duration;

use chime_gateway::{
    chime::{self, SdkUpstream, Upstream},
    emulator::{Emulator, Fault},
    error::GATEWAY_DOMAIN,
    pb::chime::v1::{UserType, chime_service_client::ChimeServiceClient},
    server::ServeOptions,
    service::ChimeGateway,
    translate,
};
use common::{Gateway, emulator, request};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tonic::{
    Code, IntoRequest,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_types::StatusExt;

async fn scrape(url: &str) -> (u16, String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, content_type, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_use_the_go_grpc_prometheus_names_and_count_upstream_attempts() {
    let emu = emulator().await;
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", metrics.local_addr().unwrap());
    let mut options = ServeOptions::with_grace(Duration::from_secs(1));
    options.metrics_listener = Some(metrics);
    let gw = Gateway::in_front_with(&emu, options).await;
    let mut client = gw.client().await;
    client
        .create_user(request(Some("m@example.com"), UserType::PrivateUser))
        .await
        .unwrap();
    let dup = client
        .create_user(request(Some("m@example.com"), UserType::PrivateUser))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let invalid = client
        .create_user(request(Some("nope"), UserType::PrivateUser))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    let (status, content_type, text) = scrape(&url).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let labels = r#"grpc_type="unary",grpc_service="chime.v1.ChimeService",grpc_method="CreateUser""#;
    for line in [
        format!("grpc_server_started_total{{{labels}}} 3"),
        format!("grpc_server_handled_total{{{labels},grpc_code=\"OK\"}} 1"),
        format!("grpc_server_handled_total{{{labels},grpc_code=\"AlreadyExists\"}} 1"),
        format!("grpc_server_handled_total{{{labels},grpc_code=\"InvalidArgument\"}} 1"),
        format!("grpc_server_handling_seconds_count{{{labels}}} 3"),
        "chime_upstream_requests_total{http_status=\"201\"} 1".to_owned(),
        "chime_upstream_requests_total{http_status=\"409\"} 1".to_owned(),
        "chime_upstream_request_seconds_count 2".to_owned(),
        "grpc_server_in_flight 0".to_owned(),
        "chime_upstream_in_flight 0".to_owned(),
        "chime_upstream_waiting 0".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert_eq!(scrape(&url.replace("/metrics", "/other")).await.0, 404);
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted_and_counted() {
    let emu = emulator().await;
    for (limit, field) in [(2048, "username"), (65536, "account_id")] {
        let mut options = ServeOptions::with_grace(Duration::from_secs(1));
        options.max_message_size = limit;
        let gateway = ChimeGateway::new(common::upstream_for(&emu).await, common::policy(), 64);
        let metrics = gateway.metrics();
        let gw = Gateway::serve(gateway, options).await;
        let mut req = request(None, UserType::Unspecified);
        match field {
            "username" => req.username = Some("x".repeat(4096)),
            _ => req.account_id = "a".repeat(70_000),
        }
        let status = gw.client().await.create_user(req).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("MESSAGE_TOO_LARGE", GATEWAY_DOMAIN)
        );
        assert_eq!(info.metadata["max_message_size"], limit.to_string());
        assert!(
            details.retry_info().is_none(),
            "retrying the same message cannot help"
        );
        let text = metrics.encode();
        assert!(
            text.contains("grpc_method=\"CreateUser\",grpc_code=\"ResourceExhausted\"} 1"),
            "{text}"
        );
        assert!(!text.contains("OutOfRange"), "{text}");
    }
    assert!(emu.requests().is_empty());
}

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca_cert.pem(),
        server: leaf("localhost"),
        client: leaf("caller.example"),
    }
}

async fn tls_gateway(pki: &Pki, dir: &std::path::Path) -> (Gateway, chime_gateway::emulator::Emulator) {
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let tls = chime_gateway::server::tls_config(
        &write("server.pem", &pki.server.0),
        &write("server.key", &pki.server.1),
        Some(&write("ca.pem", &pki.ca)),
    )
    .unwrap();
    let emu = emulator().await;
    let mut options = ServeOptions::with_grace(Duration::from_secs(1));
    options.tls = Some(tls);
    (Gateway::in_front_with(&emu, options).await, emu)
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    pki: &Pki,
    with_identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("chime-gateway-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn mtls_accepts_a_caller_with_a_client_certificate() {
    let pki = pki();
    let (gw, _emu) = tls_gateway(&pki, &temp_dir("mtls-ok")).await;
    let channel = tls_channel(gw.addr, &pki, true).await.unwrap();
    let mut client = chime_gateway::pb::chime::v1::chime_service_client::ChimeServiceClient::new(channel);
    client
        .create_user(request(Some("tls@example.com"), UserType::PrivateUser))
        .await
        .unwrap();
}

#[tokio::test]
async fn mtls_refuses_a_caller_without_a_client_certificate() {
    let pki = pki();
    let (gw, emu) = tls_gateway(&pki, &temp_dir("mtls-refused")).await;
    let refused = match tls_channel(gw.addr, &pki, false).await {
        Err(_) => true,
        Ok(channel) => {
            let mut client =
                chime_gateway::pb::chime::v1::chime_service_client::ChimeServiceClient::new(channel);
            client
                .create_user(request(None, UserType::Unspecified))
                .await
                .is_err()
        }
    };
    assert!(refused);
    assert!(emu.requests().is_empty());
}

#[tokio::test]
async fn a_plaintext_caller_is_refused_by_a_tls_port() {
    let pki = pki();
    let (gw, emu) = tls_gateway(&pki, &temp_dir("plaintext")).await;
    let plain = Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = chime_gateway::pb::chime::v1::chime_service_client::ChimeServiceClient::new(channel);
        client
            .create_user(request(None, UserType::Unspecified))
            .await
            .unwrap_err();
    }
    assert!(emu.requests().is_empty());
}

/// A raw HTTP/2 connection that sends the preface and empty SETTINGS, then never answers anything.
async fn silent_h2_peer(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    stream
}

/// The frame types the server sends within `within`, and whether it closed the connection.
async fn frames_within(stream: &mut tokio::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut types = Vec::new();
    let read = async {
        loop {
            let mut header = [0u8; 9];
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            types.push(header[3]);
            let mut payload = vec![0; u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
        }
    };
    let closed = tokio::time::timeout(within, read).await.is_ok();
    (types, closed)
}

const PING: u8 = 6;
const GOAWAY: u8 = 7;

#[tokio::test]
async fn keepalive_pings_and_closes_a_connection_whose_peer_went_silent() {
    let emu = emulator().await;
    let mut options = ServeOptions::with_grace(Duration::from_secs(1));
    options.http2_keepalive = Some((Duration::from_millis(200), Duration::from_millis(200)));
    let gw = Gateway::in_front_with(&emu, options).await;
    let mut peer = silent_h2_peer(gw.addr).await;
    let (frames, closed) = frames_within(&mut peer, Duration::from_secs(5)).await;
    assert!(closed, "the server closed the dead connection");
    assert!(frames.contains(&PING), "{frames:?}");
}

#[tokio::test]
async fn connections_are_closed_gracefully_past_the_max_age() {
    let emu = emulator().await;
    let mut options = ServeOptions::with_grace(Duration::from_secs(1));
    options.http2_keepalive = None;
    options.max_connection_age = Some(Duration::from_millis(300));
    let gw = Gateway::in_front_with(&emu, options).await;
    let mut peer = silent_h2_peer(gw.addr).await;
    // The graceful close: GOAWAY, then a PING to learn which streams the peer saw; a live peer
    // answers and the connection closes, a dead one is left to keepalive.
    let (frames, _) = frames_within(&mut peer, Duration::from_millis(1500)).await;
    assert!(frames.contains(&GOAWAY), "{frames:?}");
}

#[tokio::test]
async fn without_keepalive_or_max_age_a_quiet_connection_stays_open() {
    let emu = emulator().await;
    let mut options = ServeOptions::with_grace(Duration::from_secs(1));
    options.http2_keepalive = None;
    let gw = Gateway::in_front_with(&emu, options).await;
    let mut peer = silent_h2_peer(gw.addr).await;
    let (frames, closed) = frames_within(&mut peer, Duration::from_millis(800)).await;
    assert!(!closed);
    assert!(!frames.contains(&PING) && !frames.contains(&GOAWAY), "{frames:?}");
}

/// The SDK upstream on the gateway's HTTP client with these pool settings, as `main` builds it.
async fn pooled_upstream(emu: &Emulator, idle: Duration, max_connections: Option<usize>) -> SdkUpstream {
    let (key, secret) = emu.credentials();
    let sdk = chime::load_static_sdk_config(&emu.endpoint_url(), key, secret).await;
    let http = chime::http_client(idle, max_connections);
    SdkUpstream::from_builder(aws_sdk_chime::config::Builder::from(&sdk).http_client(http))
}

async fn gateway_with_pool_idle(emu: &Emulator, idle: Duration) -> Gateway {
    let upstream = pooled_upstream(emu, idle, None).await;
    let options = ServeOptions::with_grace(Duration::from_secs(1));
    Gateway::start_with(upstream, common::policy(), 8, options).await
}

/// A gateway allowed `max` upstream connections, with its metrics port.
async fn gateway_with_connections(emu: &Emulator, max: usize) -> (Gateway, String) {
    let upstream = pooled_upstream(emu, Duration::from_secs(90), Some(max)).await;
    let gateway = ChimeGateway::new(upstream, common::policy(), 64).with_upstream_connections(max);
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", metrics.local_addr().unwrap());
    let mut options = ServeOptions::with_grace(Duration::from_secs(1));
    options.metrics_listener = Some(metrics);
    (Gateway::serve(gateway, options).await, url)
}

/// Scrapes `url` until `line` appears (true) or two seconds pass (false).
async fn metric_appears(url: &str, line: &str) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        if scrape(url).await.2.lines().any(|l| l == line) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn calls_beyond_the_upstream_connection_limit_wait_for_one_then_succeed() {
    let emu = emulator().await;
    emu.inject(Fault::Latency { millis: 400 }, 6);
    let (gw, metrics) = gateway_with_connections(&emu, 2).await;
    let started = tokio::time::Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let gw_addr = gw.addr;
            tokio::spawn(async move {
                let channel = Channel::from_shared(format!("http://{gw_addr}")).unwrap();
                let mut client = ChimeServiceClient::new(channel.connect().await.unwrap());
                let email = format!("wait-{i}@example.com");
                client
                    .create_user(request(Some(&email), UserType::PrivateUser))
                    .await
            })
        })
        .collect();
    assert!(
        metric_appears(&metrics, "chime_upstream_waiting 4").await,
        "four calls wait while two are upstream"
    );
    assert!(metric_appears(&metrics, "chime_upstream_in_flight 2").await);
    for call in calls {
        call.await.unwrap().expect("every waiting call is served in turn");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "three rounds of two"
    );
    assert_eq!(emu.requests().len(), 6);
    assert_eq!(emu.connections(), 2, "no more connections than the limit");
    assert!(metric_appears(&metrics, "chime_upstream_waiting 0").await);
}

#[tokio::test]
async fn a_call_whose_deadline_passes_waiting_for_a_connection_is_upstream_busy() {
    let emu = emulator().await;
    emu.inject(Fault::Latency { millis: 800 }, 1);
    let (gw, _) = gateway_with_connections(&emu, 1).await;
    let mut first = gw.client().await;
    let holder = tokio::spawn(async move {
        first
            .create_user(request(Some("first@example.com"), UserType::PrivateUser))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut late = request(Some("late@example.com"), UserType::PrivateUser).into_request();
    // The deadline as the header alone, with no client-side timer racing the gateway's answer: the
    // answer's reason is what this test reads, not its timing (which the_callers_deadline_bounds_the_call
    // checks), and on a loaded machine the 20 ms margin can lose that race.
    late.metadata_mut()
        .insert("grpc-timeout", "200m".parse().unwrap());
    let status = gw.client().await.create_user(late).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("every upstream connection was busy"),
        "{status:?}"
    );
    let info = status.get_error_details().error_info().cloned().unwrap();
    assert_eq!(info.reason, "UPSTREAM_BUSY");
    assert_eq!(info.domain, "chime-gateway");
    assert_eq!(info.metadata["attempts"], "0");
    holder
        .await
        .unwrap()
        .expect("the call holding the connection completes");
    assert_eq!(emu.requests().len(), 1, "the late call was never sent");
}

#[tokio::test]
async fn the_upstream_pool_opens_no_more_connections_than_its_limit() {
    let emu = emulator().await;
    emu.inject(Fault::Latency { millis: 100 }, 4);
    let upstream = std::sync::Arc::new(pooled_upstream(&emu, Duration::from_secs(90), Some(1)).await);
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let input = translate::to_input(request(
                    Some(&format!("pool-{i}@example.com")),
                    UserType::PrivateUser,
                ));
                upstream.create_user(input).await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().expect("queued in the pool, then served");
    }
    assert_eq!(emu.requests().len(), 4);
    assert_eq!(emu.connections(), 1);
}

#[tokio::test]
async fn upstream_connections_are_reused_then_dropped_after_the_idle_timeout() {
    let emu = emulator().await;
    let gw = gateway_with_pool_idle(&emu, Duration::from_millis(300)).await;
    let mut client = gw.client().await;
    for _ in 0..3 {
        client
            .create_user(request(None, UserType::Unspecified))
            .await
            .unwrap();
    }
    assert_eq!(
        emu.connections(),
        1,
        "back-to-back calls share one pooled connection"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .create_user(request(None, UserType::Unspecified))
        .await
        .unwrap();
    assert_eq!(
        emu.connections(),
        2,
        "the idle connection was closed, a new one opened"
    );
}

#[tokio::test]
async fn a_long_pool_idle_timeout_keeps_the_connection() {
    let emu = emulator().await;
    let gw = gateway_with_pool_idle(&emu, Duration::from_secs(90)).await;
    let mut client = gw.client().await;
    client
        .create_user(request(None, UserType::Unspecified))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .create_user(request(None, UserType::Unspecified))
        .await
        .unwrap();
    assert_eq!(emu.connections(), 1);
}
