//! Attacks on header blocks and streams: HPACK bombs, CONTINUATION floods, streams that never
//! end, header lists at the cap.

use super::*;

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
pub(crate) async fn an_hpack_bomb_in_one_block(listener: Listener) {
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
pub(crate) async fn an_hpack_bomb_over_streams(listener: Listener) {
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
pub(crate) async fn a_continuation_flood(listener: Listener) {
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

pub(crate) async fn a_continuation_flood_of_one_byte_frames(listener: Listener) {
    let answer = under_attack(
        listener,
        "continuation flood, 1-byte frames",
        |target, authority, sent| send(target, continuation_flood(&authority, 1, 100_000), sent),
    )
    .await;
    assert_eq!(answer.goaway, Some(Reason::ENHANCE_YOUR_CALM), "{answer:?}");
}

/// 10,000 requests whose bodies never come: the streams past the gateway's limit are refused,
/// and past a thousand refusals the connection is closed.
pub(crate) async fn thousands_of_open_streams(listener: Listener) {
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
pub(crate) async fn header_lists_just_under_the_cap(listener: Listener) {
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
