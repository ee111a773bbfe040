//! Attacks with frames that cost the server work: rapid reset, SETTINGS, PING and
//! WINDOW_UPDATE floods, and gRPC messages too large or cut short.

use super::*;

/// Streams opened and reset at once, 5,000 of them in one write (CVE-2023-44487).
pub(crate) async fn a_rapid_reset(listener: Listener) {
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
pub(crate) async fn a_paced_rapid_reset(listener: Listener) {
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
pub(crate) async fn a_settings_flood(listener: Listener) {
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
pub(crate) async fn a_ping_flood(listener: Listener) {
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
pub(crate) async fn a_window_update_flood(listener: Listener) {
    let (answer, _) = under_attack(listener, "window update flood", |target, _, sent| {
        let one = frame(WINDOW_UPDATE, 0, 0, &30_000u32.to_be_bytes());
        flood(target, repeated(&one, 100_000), sent)
    })
    .await;
    assert_eq!(answer.goaway, Some(Reason::FLOW_CONTROL_ERROR), "{answer:?}");
}

/// Ten messages announcing 10 MB each (6 KB sent, within the flow-control window a client may
/// use before it has read the gateway's SETTINGS), and ten announcing 100 bytes and cut after
/// ten: RESOURCE_EXHAUSTED for the first, INTERNAL for the others, the connection kept.
pub(crate) async fn oversize_and_truncated_messages(listener: Listener) {
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
