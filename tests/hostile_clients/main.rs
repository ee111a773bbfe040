//! The known HTTP/2 attacks, each against a fresh `chime-gateway` process on each listener (TCP,
//! the Unix socket, TLS). Each test asserts three things: the gateway's peak RSS stays within its
//! idle RSS + 16 MiB, an honest call on another connection is served within 100 ms while the
//! attack is on, and the attacker's connection gets the HTTP/2 answer the protocol prescribes.
//!
//! On the Unix socket the attacker sends the socket's path as `:authority`, as grpcio and
//! grpc-java do, so its bytes go through the `:authority` mender before h2.
//!
//! Each test prints one line (`hostile: ...`) with the figures it measured; BENCHMARKS.md
//! collects them (`cargo test --test hostile_clients -- --nocapture --test-threads 1`).
//!
//! This file holds the harness and the tests of the advertised limits; the attacks are in
//! `headers.rs` (header blocks and streams), `frames.rs` (resets, floods, messages) and `slow.rs`
//! (connections that never begin); `wire.rs` is the raw HTTP/2 client, `gateway.rs` the process.

#[path = "../common/mod.rs"]
mod common;
mod frames;
mod gateway;
mod headers;
mod slow;
mod wire;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use frames::*;
use gateway::{Gateway, HANDSHAKE_TIMEOUT, Listener, honest_call};
use h2::Reason;
use headers::*;
use slow::*;
use tokio::{
    io::{AsyncWriteExt, split},
    sync::oneshot,
};
use wire::*;

/// What one attack may add to the gateway's resident memory.
const MEMORY_GOAL_KIB: u64 = 16 * 1024;
/// How soon an honest call on another connection is served during an attack.
const HONEST_GOAL: Duration = Duration::from_millis(100);
/// How long an attacker waits for the gateway's answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);
/// The header list cap the gateway advertises by default.
const CAP: usize = 16 * 1024;

/// Starts a gateway on `listener`, makes honest calls, runs `attack` on a connection of its own
/// and honest calls again once the attack's bytes are out (`sent`), and checks the memory and
/// the honest calls. Returns what the attack saw.
async fn under_attack<A, F, T>(listener: Listener, name: &str, attack: A) -> T
where
    A: FnOnce(Target, Vec<u8>, oneshot::Sender<()>) -> F,
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let gw = Gateway::start(listener, name, &[]).await;
    let channel = gw.channel().await;
    for n in 0..5 {
        honest_call(&channel, n).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = gw.rss_kib();
    gw.reset_peak();
    let authority = match &gw.target {
        Target::Unix(path) | Target::UnixTls(path, _) => path.display().to_string().into_bytes(),
        _ => b"localhost".to_vec(),
    };
    let (sent, sent_rx) = oneshot::channel();
    let attacker = tokio::spawn(attack(gw.target.clone(), authority, sent));
    let _ = sent_rx.await;
    let mut honest = Vec::new();
    for n in 0..3 {
        honest.push(honest_call(&channel, 100 + n).await);
    }
    let seen = attacker.await.unwrap();
    honest.push(honest_call(&channel, 200).await);
    let peak = gw.peak_kib();
    let best = *honest.iter().min().unwrap();
    eprintln!(
        "hostile: {name:<36} {listener:<5?} idle {idle:>6} KiB  peak {peak:>6} KiB  (+{:>5} KiB)  honest call {:>5.1} ms",
        peak.saturating_sub(idle),
        best.as_secs_f64() * 1e3
    );
    assert!(
        peak <= idle + MEMORY_GOAL_KIB,
        "{name} on {listener:?}: peak RSS {peak} KiB over idle {idle} KiB + 16 MiB"
    );
    assert!(
        best < HONEST_GOAL,
        "{name} on {listener:?}: honest calls took {honest:?}"
    );
    seen
}

/// One test per listener for an attack: `$attack(listener)`.
macro_rules! on_every_listener {
    ($($attack:ident),* $(,)?) => {$(
        mod $attack {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$attack(Listener::Tcp).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unix() {
                super::$attack(Listener::Unix).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$attack(Listener::Tls).await;
            }
        }
    )*};
}

on_every_listener!(
    an_hpack_bomb_in_one_block,
    an_hpack_bomb_over_streams,
    a_continuation_flood,
    a_continuation_flood_of_one_byte_frames,
    a_rapid_reset,
    a_paced_rapid_reset,
    a_settings_flood,
    a_ping_flood,
    a_window_update_flood,
    thousands_of_open_streams,
    header_lists_just_under_the_cap,
    oversize_and_truncated_messages,
    a_slowloris_preface,
    idle_connections_that_never_send,
);

/// Opens a connection, writes `bytes`, says so, and reads the answer until the gateway closes
/// the connection.
pub(crate) async fn send(target: Target, bytes: Vec<u8>, sent: oneshot::Sender<()>) -> Answer {
    send_for(target, bytes, sent, ANSWER_LIMIT).await
}

/// As [`send`], reading for no longer than `limit` (for a connection that stays open).
pub(crate) async fn send_for(
    target: Target,
    bytes: Vec<u8>,
    sent: oneshot::Sender<()>,
    limit: Duration,
) -> Answer {
    let (read, mut write) = split(connect(&target).await);
    let answer = tokio::spawn(answer(read, limit));
    let _ = write.write_all(&bytes).await;
    let _ = sent.send(());
    let answer = answer.await.unwrap();
    drop(write);
    answer
}

/// SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_HEADER_LIST_SIZE.
const HEADER_TABLE_SIZE: u16 = 0x1;
const MAX_CONCURRENT_STREAMS: u16 = 0x3;
const MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The limits set by flags are the ones the gateway advertises, on every listener; it never
/// advertises a header table size, so clients keep the 4,096 bytes the mender decodes with.
#[tokio::test]
async fn the_gateway_advertises_the_limits_it_is_given() {
    for listener in [Listener::Tcp, Listener::Unix, Listener::Tls] {
        let args = [
            "--http2-max-concurrent-streams",
            "7",
            "--http2-max-header-list-size",
            "8192",
        ];
        let gw = Gateway::start(listener, "settings", &args).await;
        let (tx, _) = oneshot::channel();
        let answer = send_for(gw.target.clone(), opening(), tx, Duration::from_millis(300)).await;
        let settings = |id: u16| answer.settings.iter().find(|(i, _)| *i == id).map(|(_, v)| *v);
        assert_eq!(
            settings(MAX_CONCURRENT_STREAMS),
            Some(7),
            "{listener:?}: {answer:?}"
        );
        assert_eq!(
            settings(MAX_HEADER_LIST_SIZE),
            Some(8192),
            "{listener:?}: {answer:?}"
        );
        assert_eq!(settings(HEADER_TABLE_SIZE), None, "{listener:?}: {answer:?}");
        assert_eq!(
            chime_gateway::server::HEADER_TABLE_SIZE,
            4096,
            "the RFC 7541 default, which a server that advertises none leaves"
        );
    }
}

/// On the socket, the mender takes the cap from `--http2-max-header-list-size`: a request whose
/// `:authority` is the socket's path is served under the cap, and refused by h2 (431) at it.
#[tokio::test]
async fn the_mender_follows_the_header_list_size_setting() {
    let gw = Gateway::start(
        Listener::Unix,
        "mender-cap",
        &["--http2-max-header-list-size", "8192"],
    )
    .await;
    let Target::Unix(path) = &gw.target else {
        unreachable!()
    };
    let authority = path.display().to_string().into_bytes();
    for (size, status) in [(8191, 200), (8192, 431)] {
        let mut fields = request_fields(&authority);
        fields.push(pad_field(size - list_size(&fields)));
        let mut bytes = opening();
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &plain_block(&fields)));
        let (tx, _) = oneshot::channel();
        let answer = send_for(gw.target.clone(), bytes, tx, Duration::from_millis(500)).await;
        assert_eq!(answer.http_statuses, [(1, status)], "{size}: {answer:?}");
    }
}

/// With TLS on a socket the mender sits above TLS: a request whose `:authority` is the socket's
/// path is served, and an honest client over TLS on the socket is too.
#[tokio::test]
async fn tls_on_a_socket_mends_the_authority() {
    let gw = Gateway::start(Listener::UnixTls, "unix-tls", &[]).await;
    let Target::UnixTls(path, _) = &gw.target else {
        unreachable!()
    };
    let mut bytes = opening();
    let block = plain_block(&request_fields(path.display().to_string().as_bytes()));
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    let (tx, _) = oneshot::channel();
    let answer = send_for(gw.target.clone(), bytes, tx, Duration::from_millis(500)).await;
    assert_eq!(answer.http_statuses, [(1, 200)], "{answer:?}");
    assert!(answer.resets.is_empty(), "{answer:?}");
    honest_call(&gw.channel().await, 1).await;
}
