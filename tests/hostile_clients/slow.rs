//! Connections that never begin: a slowloris preface, and connections that send nothing.

use super::*;

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

pub(crate) async fn a_slowloris_preface(listener: Listener) {
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

pub(crate) async fn idle_connections_that_never_send(listener: Listener) {
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
