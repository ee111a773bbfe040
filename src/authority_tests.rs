//! The mender on bytes: what h2 reads for what a client sends.

use loona_hpack::{Encoder, encoder::encode_integer_into};
use proptest::prelude::*;

use super::{hpack::literal, *};

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// The limits the server gives h2 by default.
fn limits() -> Limits {
    crate::server::ConnectionLimits::default().header_limits()
}

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
    let mut mender = Mender::new(limits());
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
    let limits = Limits {
        max_header_list_size: 64 * 1024,
        ..limits()
    };
    let mut headers = request(b"/tmp/grpc.sock");
    headers.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
    let bytes = client(&mut Encoder::new(), &[(1, headers.clone())]);
    let mut mender = Mender::new(limits);
    let mut mended = BytesMut::new();
    mender.feed(&bytes, &mut mended);
    let f = frames(&mended);
    let kinds: Vec<_> = f.iter().map(|f| (f.0, f.1)).collect();
    assert_eq!(kinds, [(4, 0), (1, 0), (9, 0), (9, END_HEADERS), (0, END_STREAM)]);
    assert!(f.iter().all(|f| f.3.len() <= FRAME_MAX));
    assert_eq!(blocks(&mended), vec![(1, without_authority(&headers))]);
}

/// A client's block of `fields` written as HPACK literals by hand: `(never indexed, name, value)`.
fn literals(fields: &[(bool, &[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (never, name, value) in fields {
        block.push(if *never { 0x10 } else { 0 });
        literal(name, &mut block);
        literal(value, &mut block);
    }
    block
}

fn connection(blocks: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    for (stream, block) in blocks {
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, *stream, block));
    }
    bytes
}

/// Padding that brings `headers` to a header list of exactly `size` bytes, as HTTP/2 counts it.
fn padded_to(mut headers: Headers, size: usize) -> Headers {
    let counted: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    let pad = size - counted - (b"x-pad".len() + 32);
    headers.push((b"x-pad".to_vec(), vec![b'p'; pad]));
    headers
}

#[test]
fn a_first_block_at_the_cap_passes_through_for_h2_to_refuse() {
    let cap = limits().max_header_list_size;
    let just_under = padded_to(request(b"/tmp/grpc.sock"), cap - 1);
    let bytes = client(&mut Encoder::new(), &[(1, just_under.clone())]);
    assert_eq!(blocks(&mend(&bytes)), vec![(1, without_authority(&just_under))]);
    let at_cap = padded_to(request(b"/tmp/grpc.sock"), cap);
    let bytes = client(
        &mut Encoder::new(),
        &[(1, at_cap.clone()), (3, request(b"/tmp/grpc.sock"))],
    );
    assert_eq!(
        mend(&bytes),
        bytes,
        "h2 refuses a list of its cap (431), as over TCP"
    );
}

#[test]
fn a_later_block_at_the_cap_is_refused_by_h2_and_mending_goes_on() {
    let cap = limits().max_header_list_size;
    let mut encoder = Encoder::new();
    let first = request(b"/tmp/grpc.sock");
    let over = padded_to(request(b"/tmp/grpc.sock"), cap + 100);
    let third = request(b"/tmp/grpc.sock");
    let bytes = client(&mut encoder, &[(1, first.clone()), (3, over), (5, third.clone())]);
    let mended = blocks(&mend(&bytes));
    assert_eq!(mended[0], (1, without_authority(&first)));
    let counted: usize = mended[1].1.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
    assert!(counted >= cap, "h2 counts it at the cap: {counted}");
    assert!(counted < cap + 60);
    assert_eq!(mended[2], (5, without_authority(&third)));
}

/// One 4,000-byte entry in the client's table, then one-byte references to it: each decodes to
/// 4 KB. Over TCP h2 counts it and closes the connection.
fn hpack_bomb(references: usize) -> Vec<u8> {
    let mut block = Encoder::new().encode(request(b"/tmp/grpc.sock").iter().map(|(n, v)| (&n[..], &v[..])));
    block.push(0x40);
    literal(b"x-bomb", &mut block);
    literal(&[b'b'; 4000], &mut block);
    block.extend(std::iter::repeat_n(0x80 | 62, references));
    block
}

#[test]
fn an_hpack_bomb_is_refused_by_h2_at_the_cap() {
    let cap = limits().max_header_list_size;
    let bomb = hpack_bomb(10_000);
    assert!(bomb.len() < cap, "one frame of a 40 MB list");
    // The first block goes to h2 as it came.
    let bytes = connection(&[(1, bomb.clone())]);
    assert_eq!(mend(&bytes), bytes);
    // A later one on a mended connection: a block h2 counts at the cap, and no larger.
    let bytes = connection(&[
        (1, literals(&[(false, b":authority", b"/tmp/grpc.sock")])),
        (3, bomb),
    ]);
    let mended = mend(&bytes);
    let last = frames(&mended).pop().unwrap();
    assert!(last.3.len() < cap / 32, "{} bytes written", last.3.len());
    let counted: usize = blocks(&mended)[1]
        .1
        .iter()
        .map(|(n, v)| n.len() + v.len() + 32)
        .sum();
    assert!(counted >= cap);
}

#[test]
fn an_unfinished_block_is_held_only_up_to_the_cap() {
    let cap = limits().max_header_list_size;
    let block = Encoder::new().encode(request(b"/tmp/grpc.sock").iter().map(|(n, v)| (&n[..], &v[..])));
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(HEADERS, 0, 1, &block));
    let mut mender = Mender::new(limits());
    let mut out = BytesMut::new();
    mender.feed(&bytes, &mut out);
    assert_eq!(out.len(), PREFACE.len(), "the block is held for its END_HEADERS");
    // A CONTINUATION flood: as soon as the block would pass the cap, it goes to h2 as it came.
    let continuation = frame(CONTINUATION, 0, 1, &vec![0; FRAME_MAX / 2]);
    let mut sent = bytes.clone();
    while sent.len() - PREFACE.len() < cap {
        mender.feed(&continuation, &mut out);
        sent.extend_from_slice(&continuation);
    }
    assert_eq!(out.to_vec(), sent);
    mender.feed(&continuation, &mut out);
    assert!(mender.through());
}

#[test]
fn a_never_indexed_field_stays_never_indexed() {
    let block = literals(&[
        (false, b":method", b"POST"),
        (false, b":authority", b"/tmp/grpc.sock"),
        (true, b"authorization", b"Bearer secret"),
        (false, b"te", b"trailers"),
    ]);
    let mended = mend(&connection(&[(1, block)]));
    let written = &frames(&mended)[0].3;
    assert_eq!(
        written,
        &literals(&[
            (false, b":method", b"POST"),
            (true, b"authorization", b"Bearer secret"),
            (false, b"te", b"trailers"),
        ])
    );
}

#[test]
fn the_table_size_is_the_one_the_server_advertises() {
    // A client may set its table to what the server allows, and not beyond.
    let mut update = Vec::new();
    encode_integer_into(8192, 5, 0x20, &mut update).unwrap();
    update.extend(literals(&[(false, b":authority", b"/tmp/grpc.sock")]));
    let bytes = connection(&[(1, update)]);
    assert_eq!(
        mend(&bytes),
        bytes,
        "over the 4,096 the server allows: h2 refuses it"
    );
    let mut mender = Mender::new(Limits {
        header_table_size: 8192,
        ..limits()
    });
    let mut out = BytesMut::new();
    mender.feed(&bytes, &mut out);
    assert!(mender.mended(), "within a larger advertised table");
}

#[test]
fn a_table_size_update_after_a_field_passes_through_for_h2_to_refuse() {
    let mut block = literals(&[(false, b":authority", b"/tmp/grpc.sock")]);
    block.push(0x20);
    block.extend(literals(&[(false, b"te", b"trailers")]));
    let bytes = connection(&[(1, block)]);
    assert_eq!(mend(&bytes), bytes);
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
        let mut mender = Mender::new(limits());
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
