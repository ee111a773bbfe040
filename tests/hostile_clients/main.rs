//! The known HTTP/2 attacks, each against a fresh `chime-gateway` process on each listener (TCP,
//! the Unix socket, TLS). Each test asserts three things: the gateway's peak RSS stays within its
//! idle RSS + 16 MiB, an honest call on another connection is served within 100 ms while the
//! attack is on, and the attacker's connection gets the HTTP/2 answer the protocol prescribes.
//!
//! On the Unix socket the attacker sends the socket's path as `:authority`, as grpcio and
//! grpc-java do, so its bytes go through the `:authority` mender before h2.
//!
//! Each test prints one line (`hostile: ...`) with the figures it measured; BENCHMARKS.md
//! collects them (`cargo test --release --test hostile_clients -- --nocapture --test-threads 1`).

#[path = "../common/mod.rs"]
mod common;
mod gateway;
mod wire;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use gateway::{Gateway, HANDSHAKE_TIMEOUT, Listener, honest_call};
use h2::Reason;
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
async fn send(target: Target, bytes: Vec<u8>, sent: oneshot::Sender<()>) -> Answer {
    send_for(target, bytes, sent, ANSWER_LIMIT).await
}

/// As [`send`], reading for no longer than `limit` (for a connection that stays open).
async fn send_for(target: Target, bytes: Vec<u8>, sent: oneshot::Sender<()>, limit: Duration) -> Answer {
    let (read, mut write) = split(connect(&target).await);
    let answer = tokio::spawn(answer(read, limit));
    let _ = write.write_all(&bytes).await;
    let _ = sent.send(());
    let answer = answer.await.unwrap();
    drop(write);
    answer
}

/// A request's block that adds a 4,000-byte entry to the decoder's table, then `references` to
/// it: each decodes to 4 KB.
fn bomb(authority: &[u8], references: usize) -> Vec<u8> {
    let mut block = plain_block(&request_fields(authority));
    block.push(0x40);
    literal(b"x-bomb", &mut block);
    literal(&[b'b'; 4000], &mut block);
    block.extend(std::iter::repeat_n(0x80 | 62, references));
    block
}

/// One frame of 16 KiB that decodes to 47 MiB: over TCP h2 counts it and closes the connection.
async fn an_hpack_bomb_in_one_block(listener: Listener) {
    let answer = under_attack(listener, "hpack bomb, one block", |target, authority, sent| {
        let block = bomb(&authority, 12_000);
        let mut bytes = opening();
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        send(target, bytes, sent)
    })
    .await;
    assert_eq!(answer.goaway, Some(Reason::ENHANCE_YOUR_CALM), "{answer:?}");
}

/// The table entry in the first request, then a hundred streams whose blocks are 100 one-byte
/// references each (400 KB decoded). h2 closes the connection at the first (over four times
/// the cap); on a socket connection whose `:authority` is mended, h2 refuses each (431).
async fn an_hpack_bomb_over_streams(listener: Listener) {
    let answer = under_attack(listener, "hpack bomb, over streams", |target, authority, sent| {
        let mut bytes = opening();
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &bomb(&authority, 0)));
        for stream in (3..203).step_by(2) {
            let mut block = plain_block(&request_fields(&authority));
            block.extend([0x80 | 62; 100]);
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        send_for(target, bytes, sent, Duration::from_secs(2))
    })
    .await;
    if listener == Listener::Unix {
        assert!(answer.http_statuses.iter().any(|(_, s)| *s == 431), "{answer:?}");
        assert!(
            answer.resets.iter().all(|(_, r)| *r == Reason::REFUSED_STREAM),
            "{answer:?}"
        );
    } else {
        assert_eq!(answer.goaway, Some(Reason::ENHANCE_YOUR_CALM), "{answer:?}");
    }
}

/// HEADERS that start a value of a megabyte, then CONTINUATION frames of `size` bytes that never
/// end the block, on `connections` connections at once.
fn continuation_flood(authority: &[u8], size: usize, frames: usize) -> Vec<u8> {
    let mut block = plain_block(&request_fields(authority));
    block.push(0);
    literal(b"x-long", &mut block);
    loona_hpack::encoder::encode_integer_into(1 << 20, 7, 0, &mut block).unwrap();
    let mut bytes = opening();
    bytes.extend(frame(HEADERS, 0, 1, &block));
    let continuation = frame(CONTINUATION, 0, 1, &vec![b'a'; size]);
    for _ in 0..frames {
        bytes.extend_from_slice(&continuation);
    }
    bytes
}

/// 64 connections, each a header block of 16 KiB CONTINUATION frames that never ends: h2
/// closes each once it has more CONTINUATION frames than a block within the cap needs.
async fn a_continuation_flood(listener: Listener) {
    let answers = under_attack(
        listener,
        "continuation flood, 64 x 16 KiB",
        |target, authority, sent| async move {
            let bytes = continuation_flood(&authority, 16 * 1024, 16);
            let connections: Vec<_> = (0..64)
                .map(|_| {
                    let (target, bytes) = (target.clone(), bytes.clone());
                    let (tx, _) = oneshot::channel();
                    tokio::spawn(send(target, bytes, tx))
                })
                .collect();
            let _ = sent.send(());
            let mut answers = Vec::new();
            for c in connections {
                answers.push(c.await.unwrap());
            }
            answers
        },
    )
    .await;
    for answer in answers {
        assert_eq!(answer.goaway, Some(Reason::ENHANCE_YOUR_CALM), "{answer:?}");
        assert!(answer.closed.is_some());
    }
}

async fn a_continuation_flood_of_one_byte_frames(listener: Listener) {
    let answer = under_attack(
        listener,
        "continuation flood, 1-byte frames",
        |target, authority, sent| send(target, continuation_flood(&authority, 1, 100_000), sent),
    )
    .await;
    assert_eq!(answer.goaway, Some(Reason::ENHANCE_YOUR_CALM), "{answer:?}");
}

/// Streams opened and reset at once, 5,000 of them in one write (CVE-2023-44487).
async fn a_rapid_reset(listener: Listener) {
    let answer = under_attack(listener, "rapid reset", |target, authority, sent| {
        let mut bytes = opening();
        let block = plain_block(&request_fields(&authority));
        for stream in (1..10_000).step_by(2) {
            bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            bytes.extend(frame(
                RST_STREAM,
                0,
                stream,
                &u32::from(Reason::CANCEL).to_be_bytes(),
            ));
        }
        send(target, bytes, sent)
    })
    .await;
    assert_eq!(answer.goaway, Some(Reason::ENHANCE_YOUR_CALM), "{answer:?}");
}

/// 20,000 streams opened and reset, ten every millisecond: paced so that the gateway may accept
/// each before its reset comes. Each it accepts becomes a call cancelled at once; if resets
/// still find streams pending, it closes the connection as for the unpaced flood.
async fn a_paced_rapid_reset(listener: Listener) {
    let answer = under_attack(
        listener,
        "rapid reset, paced",
        |target, authority, sent| async move {
            let (read, mut write) = split(connect(&target).await);
            let answer = tokio::spawn(answer(read, Duration::from_secs(8)));
            let _ = sent.send(());
            let block = plain_block(&request_fields(&authority));
            write.write_all(&opening()).await.unwrap();
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            for first in (1..40_000).step_by(20) {
                interval.tick().await;
                let mut bytes = Vec::new();
                for stream in (first..first + 20).step_by(2) {
                    bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
                    bytes.extend(frame(
                        RST_STREAM,
                        0,
                        stream,
                        &u32::from(Reason::CANCEL).to_be_bytes(),
                    ));
                }
                if write.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            drop(write);
            answer.await.unwrap()
        },
    )
    .await;
    // Whether the gateway accepts each stream before its reset depends on its speed: a debug
    // build falls behind and closes the connection, a release build may take all 20,000.
    assert!(
        matches!(answer.goaway, None | Some(Reason::ENHANCE_YOUR_CALM)),
        "{answer:?}"
    );
}

/// What a flood got: the answer, and whether the gateway stopped reading before it was all
/// written (back-pressure: it reads no more until its own answers are read).
async fn flood(target: Target, bytes: Vec<u8>, sent: oneshot::Sender<()>) -> (Answer, bool) {
    let mut conn = connect(&target).await;
    let _ = sent.send(());
    let written = tokio::time::timeout(Duration::from_secs(2), conn.write_all(&bytes)).await;
    let blocked = written.is_err();
    (answer(conn, Duration::from_millis(500)).await, blocked)
}

fn repeated(one: &[u8], times: usize) -> Vec<u8> {
    let mut bytes = opening();
    for _ in 0..times {
        bytes.extend_from_slice(one);
    }
    bytes
}

/// A million SETTINGS frames, never reading the acknowledgements: the gateway reads no further
/// than it can answer, or closes with ENHANCE_YOUR_CALM.
async fn a_settings_flood(listener: Listener) {
    let (answer, blocked) = under_attack(listener, "settings flood", |target, _, sent| {
        let one = frame(SETTINGS, 0, 0, &[0, 0x3, 0, 0, 0, 100]);
        flood(target, repeated(&one, 1_000_000), sent)
    })
    .await;
    assert!(
        blocked || answer.goaway == Some(Reason::ENHANCE_YOUR_CALM),
        "{answer:?}"
    );
}

/// A million PINGs, never reading the answers: as for SETTINGS.
async fn a_ping_flood(listener: Listener) {
    let (answer, blocked) = under_attack(listener, "ping flood", |target, _, sent| {
        flood(target, repeated(&frame(PING, 0, 0, &[7; 8]), 1_000_000), sent)
    })
    .await;
    assert!(
        blocked || answer.goaway == Some(Reason::ENHANCE_YOUR_CALM),
        "{answer:?}"
    );
}

/// WINDOW_UPDATE frames, which need no answer, until the window passes 2^31 - 1: the gateway
/// closes with FLOW_CONTROL_ERROR.
async fn a_window_update_flood(listener: Listener) {
    let (answer, _) = under_attack(listener, "window update flood", |target, _, sent| {
        let one = frame(WINDOW_UPDATE, 0, 0, &30_000u32.to_be_bytes());
        flood(target, repeated(&one, 100_000), sent)
    })
    .await;
    assert_eq!(answer.goaway, Some(Reason::FLOW_CONTROL_ERROR), "{answer:?}");
}

/// 10,000 requests whose bodies never come: the streams past the gateway's limit are refused,
/// and past a thousand refusals the connection is closed.
async fn thousands_of_open_streams(listener: Listener) {
    let answer = under_attack(listener, "10,000 open streams", |target, authority, sent| {
        let block = plain_block(&request_fields(&authority));
        let mut bytes = opening();
        for stream in (1..20_000).step_by(2) {
            bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
        }
        send(target, bytes, sent)
    })
    .await;
    assert!(
        answer.resets.iter().any(|(_, r)| *r == Reason::REFUSED_STREAM),
        "{answer:?}"
    );
    assert_eq!(answer.goaway, Some(Reason::ENHANCE_YOUR_CALM), "{answer:?}");
}

/// 600 requests, each with a header list one byte under the cap and no body: as many as the
/// stream limit are held, the rest refused.
async fn header_lists_just_under_the_cap(listener: Listener) {
    let answer = under_attack(
        listener,
        "header lists just under the cap",
        |target, authority, sent| {
            let mut fields = request_fields(&authority);
            fields.push(pad_field(CAP - 1 - list_size(&fields)));
            let block = plain_block(&fields);
            let mut bytes = opening();
            for stream in (1..1200).step_by(2) {
                bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            send_for(target, bytes, sent, Duration::from_secs(2))
        },
    )
    .await;
    assert!(
        answer.resets.iter().any(|(_, r)| *r == Reason::REFUSED_STREAM),
        "{answer:?}"
    );
    assert!(answer.http_statuses.iter().all(|(_, s)| *s != 431), "{answer:?}");
}

/// Ten messages announcing 10 MB each (6 KB sent, within the flow-control window a client may
/// use before it has read the gateway's SETTINGS), and ten announcing 100 bytes and cut after
/// ten: RESOURCE_EXHAUSTED for the first, INTERNAL for the others, the connection kept.
async fn oversize_and_truncated_messages(listener: Listener) {
    let answer = under_attack(
        listener,
        "oversize and truncated messages",
        |target, authority, sent| {
            let block = plain_block(&request_fields(&authority));
            let mut bytes = opening();
            for stream in (1..40).step_by(2) {
                bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
                let message = if stream < 20 {
                    grpc_message(10_000_000, 6_000)
                } else {
                    grpc_message(100, 10)
                };
                let pieces: Vec<_> = message.chunks(16 * 1024).collect();
                for (i, piece) in pieces.iter().enumerate() {
                    let flags = if i + 1 == pieces.len() { END_STREAM } else { 0 };
                    bytes.extend(frame(DATA, flags, stream, piece));
                }
            }
            send_for(target, bytes, sent, Duration::from_secs(2))
        },
    )
    .await;
    let codes = |streams: std::ops::Range<u32>| -> Vec<u32> {
        let mut codes: Vec<_> = answer
            .grpc_statuses
            .iter()
            .filter(|(s, _)| streams.contains(s))
            .map(|(_, c)| *c)
            .collect();
        codes.dedup();
        codes
    };
    assert_eq!(
        codes(1..20),
        [tonic::Code::ResourceExhausted as u32],
        "{answer:?}"
    );
    assert_eq!(codes(21..40), [tonic::Code::Internal as u32], "{answer:?}");
    assert_eq!(answer.goaway, None, "{answer:?}");
}

/// What a client sends first: the HTTP/2 opening, or under TLS its ClientHello.
fn first_bytes(target: &Target) -> Vec<u8> {
    let Target::Tls(_, ca) = target else {
        return opening();
    };
    let config = std::sync::Arc::new(tls_client(ca));
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).unwrap();
    hello
}

/// A hundred connections whose first bytes come one every 100 ms, or never (under TLS, half of
/// them after a handshake done at once): each is closed when the handshake timeout passes, with
/// no answer but the end of the connection.
async fn slow_starts(target: Target, sent: oneshot::Sender<()>, pause: Option<Duration>) -> Vec<Duration> {
    let first = first_bytes(&target);
    let connections: Vec<_> = (0..100)
        .map(|i| {
            // Under TLS, half finish the handshake first: then the HTTP/2 preface is what is late.
            let handshaken = matches!(target, Target::Tls(..)) && i % 2 == 1;
            let bytes = if handshaken { opening() } else { first.clone() };
            let target = target.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let conn: std::pin::Pin<Box<dyn Io>> = match &target {
                    Target::Tls(addr, _) if !handshaken => {
                        Box::pin(tokio::net::TcpStream::connect(addr).await.unwrap())
                    }
                    other => connect(other).await,
                };
                let (read, mut write) = split(conn);
                let answer = tokio::spawn(answer(read, 3 * HANDSHAKE_TIMEOUT));
                match pause {
                    Some(pause) => {
                        let _ = dribble(&mut write, &bytes, 1, pause).await;
                    }
                    None => tokio::time::sleep(3 * HANDSHAKE_TIMEOUT).await,
                }
                let answer = answer.await.unwrap();
                assert_eq!(answer.goaway, None);
                answer.closed.expect("the gateway closed the connection") - started
            })
        })
        .collect();
    let _ = sent.send(());
    let mut closed = Vec::new();
    for c in connections {
        closed.push(c.await.unwrap());
    }
    closed
}

async fn a_slowloris_preface(listener: Listener) {
    let closed = under_attack(listener, "slowloris, 100 connections", |target, _, sent| {
        slow_starts(target, sent, Some(Duration::from_millis(100)))
    })
    .await;
    for after in closed {
        assert!(
            after >= HANDSHAKE_TIMEOUT && after < 2 * HANDSHAKE_TIMEOUT,
            "closed after {after:?}"
        );
    }
}

async fn idle_connections_that_never_send(listener: Listener) {
    let closed = under_attack(listener, "idle, 100 connections", |target, _, sent| {
        slow_starts(target, sent, None)
    })
    .await;
    for after in closed {
        assert!(
            after >= HANDSHAKE_TIMEOUT && after < 2 * HANDSHAKE_TIMEOUT,
            "closed after {after:?}"
        );
    }
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
