//! The `unix_authority` target: the `:authority` mender, then h2 itself on what it wrote.

use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;

/// What a client sends over the Unix socket, through the `:authority` mender (`authority`), and
/// then through h2 itself: hyper's HTTP/2 server, with the gateway's limits, serving the mended
/// bytes from an in-memory stream.
///
/// The first byte picks the size of the chunks the rest is fed in. The output is the same for any
/// chunking; a connection whose header blocks were never re-encoded passes through byte for
/// byte; no block the mender writes is larger than the header list cap; and on a connection
/// mended to its end, h2 decodes every block written with no dynamic table of the client's,
/// takes no `:authority` it would refuse, and hands the service each request with exactly the
/// fields of a block the mender wrote.
pub fn unix_authority(data: &[u8]) {
    use crate::authority::Mender;
    let Some((&chunk, input)) = data.split_first() else {
        return;
    };
    let limits = crate::server::ConnectionLimits::default();
    let mend = |size: usize| {
        let mut mender = Mender::new(limits.header_limits());
        let mut out = bytes::BytesMut::new();
        for piece in input.chunks(size) {
            mender.feed(piece, &mut out);
        }
        let (mending, mended) = (mender.mending(), mender.mended());
        // What the mender wrote itself, before a block it still held passes through at the end.
        let written = out.len();
        mender.finish(&mut out);
        (out, written, mending, mended)
    };
    let (whole, written, mending, mended) = mend(input.len().max(1));
    let (chunked, ..) = mend(usize::from(chunk % 32) + 1);
    assert_eq!(whole, chunked, "the output depends on how the input was cut");
    if !mended {
        assert_eq!(&whole[..], input, "a connection not mended passes through");
    }
    if !mending {
        return;
    }
    let blocks = written_blocks(&whole[..written]);
    for (_, fragment) in &blocks {
        assert!(
            fragment.len() < limits.max_header_list_size as usize,
            "a block larger than the cap was written: {} bytes",
            fragment.len()
        );
    }
    // Each block written, alone on a stream of a connection that is otherwise clean: h2 decodes
    // every one with its own table (a block it cannot decode is a connection error), unless it
    // cannot decode the client's blocks either (a field it refuses, such as an empty name).
    let (_, reason) = served_by_h2(&clean_connection(&blocks), &limits);
    if reason.is_some() {
        let (_, as_sent) = served_by_h2(&clean_connection(&header_blocks(input)), &limits);
        assert!(
            as_sent.is_some(),
            "h2 could not decode a block written: {reason:?}"
        );
    }
    let (requests, _) = served_by_h2(&whole[..written], &limits);
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(0);
    let written_fields: Vec<Fields> = blocks
        .iter()
        .filter_map(|(_, fragment)| decoder.decode(fragment).ok())
        .collect();
    assert_eq!(
        written_fields.len(),
        blocks.len(),
        "a written block decodes on its own"
    );
    assert!(
        written_fields
            .iter()
            .flatten()
            .all(|(n, v)| n != b":authority" || crate::authority::acceptable(v)),
        "an :authority h2 refuses was written"
    );
    let sent_fields = client_fields(input);
    for request in requests {
        if let Some(authority) = request.uri.authority() {
            assert!(crate::authority::acceptable(authority.as_str().as_bytes()));
        }
        let mut got: Vec<(Vec<u8>, Vec<u8>)> = request
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        got.sort();
        // A block's regular fields (its pseudo-headers are the request's line), sorted as `got`.
        let is_got = |fields: &Fields| {
            let mut regular: Vec<_> = fields
                .iter()
                .filter(|(n, _)| !n.starts_with(b":"))
                .cloned()
                .collect();
            regular.sort();
            regular == got
        };
        let matches = written_fields.iter().any(is_got);
        assert!(
            matches,
            "h2 handed the service fields no written block has: {got:?}"
        );
        if let Some(sent) = &sent_fields {
            let as_sent = sent.iter().any(is_got);
            assert!(
                as_sent,
                "h2 handed the service fields the client did not send: {got:?}"
            );
        }
    }
}

/// The fields of each header block the client sent, decoded with its dynamic table as the
/// client encoded them; `None` when they do not decode.
fn client_fields(input: &[u8]) -> Option<Vec<Fields>> {
    let mut decoder = loona_hpack::Decoder::new();
    header_blocks(input)
        .iter()
        .map(|(_, fragment)| decoder.decode(fragment).ok())
        .collect()
}

/// A header block's fields, as (name, value).
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The header blocks a client sent in `bytes` (a preface, then frames, maybe padded).
fn header_blocks(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut rest = bytes.get(24..).unwrap_or_default();
    let (mut blocks, mut fragment) = (Vec::new(), Vec::new());
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let Some(mut payload) = rest.get(9..9 + len) else {
            break;
        };
        rest = &rest[9 + len..];
        if kind == 0x1 {
            let pad = if flags & 0x8 != 0 {
                let Some((&pad, after)) = payload.split_first() else {
                    break;
                };
                payload = after;
                usize::from(pad)
            } else {
                0
            };
            let skip = if flags & 0x20 != 0 { 5 } else { 0 };
            let Some(piece) = payload.get(skip..payload.len().saturating_sub(pad)) else {
                break;
            };
            payload = piece;
        }
        if kind == 0x1 || kind == 0x9 {
            fragment.extend_from_slice(payload);
            if flags & 0x4 != 0 {
                blocks.push((0, std::mem::take(&mut fragment)));
            }
        }
    }
    blocks
}

/// The header blocks the mender wrote in `bytes` (a preface, then frames): (stream, fragment).
fn written_blocks(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    let mut rest = bytes
        .get(24..)
        .expect("a mended connection began with the preface");
    let (mut blocks, mut fragment) = (Vec::new(), Vec::new());
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        let Some(payload) = rest.get(9..9 + len) else {
            break;
        };
        rest = &rest[9 + len..];
        if kind == 0x1 || kind == 0x9 {
            let skip = if kind == 0x1 && flags & 0x20 != 0 { 5 } else { 0 };
            assert_eq!(flags & 0x8, 0, "no padding is written");
            fragment.extend_from_slice(&payload[skip..]);
            if flags & 0x4 != 0 {
                blocks.push((stream, std::mem::take(&mut fragment)));
            }
        }
    }
    blocks
}

/// A connection of `blocks`, each a request of its own with no body.
pub(super) fn clean_connection(blocks: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    for (i, (_, fragment)) in (0u32..).zip(blocks) {
        let mut rest = &fragment[..];
        let (mut kind, mut flags) = (0x1, 0x1);
        loop {
            let (piece, after) = rest.split_at(rest.len().min(16_384));
            rest = after;
            if rest.is_empty() {
                flags |= 0x4;
            }
            bytes.extend_from_slice(&u32::try_from(piece.len()).expect("small").to_be_bytes()[1..]);
            bytes.extend_from_slice(&[kind, flags]);
            bytes.extend_from_slice(&(2 * i + 1).to_be_bytes());
            bytes.extend_from_slice(piece);
            if rest.is_empty() {
                break;
            }
            (kind, flags) = (0x9, 0);
        }
    }
    bytes
}

/// Serves `bytes` with hyper's HTTP/2 server, as the gateway configures it, from an in-memory
/// stream: the requests it hands the service, and the HTTP/2 error it ended with, if any.
pub(super) fn served_by_h2(
    bytes: &[u8],
    limits: &crate::server::ConnectionLimits,
) -> (Vec<Parts>, Option<h2::Reason>) {
    use std::sync::{Arc, Mutex};

    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let service = {
            let seen = seen.clone();
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                seen.lock().expect("not poisoned").push(request.into_parts().0);
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Empty::<Bytes>::new(),
                    ))
                }
            })
        };
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_list_size)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .serve_connection(TokioIo::new(server), service);
        let (mut read, mut write) = tokio::io::split(client);
        let bytes = bytes.to_vec();
        let client = async move {
            let _ = write.write_all(&bytes).await;
            // The clock is paused: this passes once h2 has done all it can with the bytes (an
            // end of stream at once would drop the streams it has not handed over yet).
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = write.shutdown().await;
            let mut sink = Vec::new();
            let _ = read.read_to_end(&mut sink).await;
        };
        let (served, ()) = tokio::join!(tokio::time::timeout(Duration::from_secs(5), connection), client);
        let reason = match served {
            Ok(Err(e)) => h2_reason(&e),
            _ => None,
        };
        let requests = std::mem::take(&mut *seen.lock().expect("not poisoned"));
        (requests, reason)
    })
}

/// The HTTP/2 error code under a hyper error, if it has one.
fn h2_reason(error: &hyper::Error) -> Option<h2::Reason> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = e.source();
    }
    None
}
