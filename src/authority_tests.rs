//! The mender on bytes: what h2 reads for what a client sends.

use loona_hpack::Encoder;
use proptest::prelude::*;

use super::*;

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

fn request(authority: &[u8]) -> Headers {
    let mut headers = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), b"/chime.v1.ChimeService/CreateUser".to_vec()),
    ];
    headers.push((b":authority".to_vec(), authority.to_vec()));
    headers.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
    headers.push((b"te".to_vec(), b"trailers".to_vec()));
    headers.push((b"user-agent".to_vec(), b"grpc-python/1.60".to_vec()));
    headers
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame_header(payload.len(), kind, flags, stream, &mut out);
    out.extend_from_slice(payload);
    out.to_vec()
}

/// What a client writes: the preface, SETTINGS, and per stream a HEADERS frame (its block
/// encoded with the client's dynamic table, as gRPC clients do) and a DATA frame.
fn client(encoder: &mut Encoder<'static>, streams: &[(u32, Headers)]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    for (stream, headers) in streams {
        let block = encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
        bytes.extend(frame(HEADERS, END_HEADERS, *stream, &block));
        bytes.extend(frame(0x0, END_STREAM, *stream, b"\0\0\0\0\x02\x0a\x00"));
    }
    bytes
}

fn mend(bytes: &[u8]) -> Vec<u8> {
    let mut mender = Mender::default();
    let mut out = BytesMut::new();
    mender.feed(bytes, &mut out);
    mender.finish(&mut out);
    out.to_vec()
}

/// The frames of `bytes` after the preface: (kind, flags, stream, payload).
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    assert_eq!(&bytes[..24], PREFACE);
    let mut rest = &bytes[24..];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

/// The header blocks h2 would decode, in order, with a decoder of its own.
fn blocks(bytes: &[u8]) -> Vec<(u32, Headers)> {
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    let mut fragment = Vec::new();
    for (kind, flags, stream, payload) in frames(bytes) {
        if kind == HEADERS || kind == CONTINUATION {
            let mut p = &payload[..];
            if kind == HEADERS && flags & PRIORITY != 0 {
                p = &p[5..];
            }
            assert_eq!(flags & PADDED, 0, "no padding written");
            fragment.extend_from_slice(p);
            if flags & END_HEADERS != 0 {
                let headers = decoder.decode(&fragment).unwrap();
                out.push((stream, headers));
                fragment.clear();
            }
        }
    }
    out
}

fn without_authority(headers: &Headers) -> Headers {
    headers
        .iter()
        .filter(|(n, _)| n != b":authority")
        .cloned()
        .collect()
}

#[test]
fn a_host_authority_passes_through_untouched() {
    for authority in [&b"localhost"[..], b"127.0.0.1:50051", b"chime-gateway.svc"] {
        let bytes = client(
            &mut Encoder::new(),
            &[(1, request(authority)), (3, request(authority))],
        );
        assert_eq!(mend(&bytes), bytes);
    }
    let mut none = request(b"x");
    none.retain(|(n, _)| n != b":authority");
    let bytes = client(&mut Encoder::new(), &[(1, none)]);
    assert_eq!(mend(&bytes), bytes);
}

#[test]
fn a_socket_path_as_authority_is_dropped_and_the_rest_kept() {
    for authority in [
        &b"/var/run/chime-gateway/grpc.sock"[..],
        b"%2Fvar%2Frun%2Fchime-gateway%2Fgrpc.sock",
        b"",
        b"unix:/var/run/chime-gateway/grpc.sock",
    ] {
        let first = request(authority);
        let mut second = request(authority);
        second.push((b"x-chime-gateway-previous-attempts".to_vec(), b"1".to_vec()));
        let bytes = client(&mut Encoder::new(), &[(1, first.clone()), (3, second.clone())]);
        let mended = mend(&bytes);
        let got = blocks(&mended);
        assert_eq!(
            got,
            vec![(1, without_authority(&first)), (3, without_authority(&second))]
        );
        // DATA and SETTINGS frames are untouched.
        let kinds: Vec<_> = frames(&mended).iter().map(|f| (f.0, f.1, f.2)).collect();
        assert_eq!(kinds, [(4, 0, 0), (1, 4, 1), (0, 1, 1), (1, 4, 3), (0, 1, 3)]);
        let data: Vec<_> = frames(&mended).into_iter().filter(|f| f.0 == 0).collect();
        assert!(data.iter().all(|f| f.3 == b"\0\0\0\0\x02\x0a\x00"));
    }
}

#[test]
fn padding_priority_and_continuation_are_read_and_priority_kept() {
    let headers = request(b"/tmp/grpc.sock");
    let block = Encoder::new().encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
    let (a, b) = block.split_at(10);
    let mut payload = vec![3u8]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 1, 15]); // exclusive dependency on stream 1, weight 16
    payload.extend_from_slice(a);
    payload.extend_from_slice(&[0, 0, 0]);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload));
    bytes.extend(frame(CONTINUATION, END_HEADERS, 5, b));
    let mended = mend(&bytes);
    let f = frames(&mended);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].1, PRIORITY | END_STREAM | END_HEADERS);
    assert_eq!(&f[0].3[..5], &[0x80, 0, 0, 1, 15]);
    assert_eq!(blocks(&mended), vec![(5, without_authority(&headers))]);
}

#[test]
fn a_block_larger_than_a_frame_is_split_over_continuations() {
    let mut headers = request(b"/tmp/grpc.sock");
    headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let bytes = client(&mut Encoder::new(), &[(1, headers.clone())]);
    let mended = mend(&bytes);
    let f = frames(&mended);
    let kinds: Vec<_> = f.iter().map(|f| (f.0, f.1)).collect();
    assert_eq!(kinds, [(4, 0), (1, 0), (9, 0), (9, END_HEADERS), (0, END_STREAM)]);
    assert!(f.iter().all(|f| f.3.len() <= FRAME_MAX));
    assert_eq!(blocks(&mended), vec![(1, without_authority(&headers))]);
}

#[test]
fn broken_input_passes_through_as_it_came() {
    let headers = request(b"/tmp/grpc.sock");
    let block = Encoder::new().encode(headers.iter().map(|(n, v)| (&n[..], &v[..])));
    let mut cases = Vec::new();
    // No preface: not HTTP/2 with prior knowledge.
    cases.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    // A DATA frame inside a header block.
    let mut b = PREFACE.to_vec();
    b.extend(frame(HEADERS, 0, 1, &block[..5]));
    b.extend(frame(0x0, 0, 1, b"x"));
    b.extend(frame(CONTINUATION, END_HEADERS, 1, &block[5..]));
    cases.push(b);
    // A CONTINUATION with no HEADERS before it.
    let mut b = PREFACE.to_vec();
    b.extend(frame(CONTINUATION, END_HEADERS, 1, &block));
    cases.push(b);
    // A block that does not decode.
    let mut b = PREFACE.to_vec();
    b.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0x7f]));
    cases.push(b);
    // Padding longer than the frame.
    let mut b = PREFACE.to_vec();
    b.extend(frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 1, 2]));
    cases.push(b);
    for bytes in cases {
        assert_eq!(mend(&bytes), bytes);
    }
}

#[test]
fn the_authority_h2_takes_is_the_one_left() {
    assert!(acceptable(b"localhost"));
    assert!(acceptable(b"[::1]:50051"));
    assert!(!acceptable(b""));
    assert!(!acceptable(b"/var/run/x.sock"));
    assert!(!acceptable(b"%2Fvar%2Frun%2Fx.sock"));
}

proptest! {
    #[test]
    fn bytes_in_any_chunks_mend_the_same(cut in proptest::collection::vec(1usize..64, 1..40), path in "/[a-z/]{0,30}") {
        let mut big = request(path.as_bytes());
        big.push((b"x-pad".to_vec(), vec![b'p'; 300]));
        let bytes = client(&mut Encoder::new(), &[(1, request(path.as_bytes())), (3, big)]);
        let whole = mend(&bytes);
        let mut mender = Mender::default();
        let mut out = BytesMut::new();
        let mut rest = &bytes[..];
        for n in cut.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, after) = rest.split_at((*n).min(rest.len()));
            mender.feed(chunk, &mut out);
            rest = after;
        }
        mender.finish(&mut out);
        prop_assert_eq!(out.to_vec(), whole);
    }
}
