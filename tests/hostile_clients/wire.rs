//! A raw HTTP/2 client, for bytes no well-behaved client library would send: frames written by
//! hand on a TCP, Unix-socket or TLS connection, header blocks encoded with the HPACK encoder
//! (`loona-hpack`), and what the server answers read back frame by frame.

use std::{
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use h2::Reason;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls::{self, pki_types::ServerName};

pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// Where the gateway listens.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
    /// `HOST:PORT`, and the CA that signed the server's certificate (for `localhost`).
    Tls(String, String),
    /// TLS on a Unix socket, and the CA.
    UnixTls(PathBuf, String),
}

pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A connection: plaintext, or TLS with ALPN `h2`.
pub async fn connect(target: &Target) -> Pin<Box<dyn Io>> {
    match target {
        Target::Tcp(addr) => Box::pin(tokio::net::TcpStream::connect(addr).await.unwrap()),
        Target::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await.unwrap()),
        Target::Tls(addr, ca) => {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            Box::pin(tls(ca, tcp).await)
        }
        Target::UnixTls(path, ca) => {
            let unix = tokio::net::UnixStream::connect(path).await.unwrap();
            Box::pin(tls(ca, unix).await)
        }
    }
}

async fn tls<S: AsyncRead + AsyncWrite + Unpin>(ca: &str, stream: S) -> tokio_rustls::client::TlsStream<S> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client(ca)));
    let name = ServerName::try_from("localhost").unwrap();
    connector.connect(name, stream).await.unwrap()
}

/// A TLS client that trusts `ca` and offers `h2`.
pub fn tls_client(ca: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pemfile_der(ca);
    roots.add(der.into()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// The DER bytes of the one certificate in `pem`.
fn rustls_pemfile_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// The preface and an empty SETTINGS frame: what every client sends first.
pub fn opening() -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    bytes
}

/// The fields of a CreateUser request, with `authority` as `:authority`.
pub fn request_fields(authority: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/chime.v1.ChimeService/CreateUser"),
        (b":authority", authority),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.to_vec(), v.to_vec()))
    .collect()
}

/// A gRPC message frame (uncompressed) with `len` bytes of `byte`, announcing `announced` bytes.
pub fn grpc_message(announced: u32, len: usize) -> Vec<u8> {
    let mut bytes = vec![0];
    bytes.extend(announced.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0x0a, len));
    bytes
}

/// What the server did on a connection.
#[derive(Debug, Default)]
pub struct Answer {
    /// The error code of the GOAWAY it sent, if it sent one.
    pub goaway: Option<Reason>,
    /// The streams it reset, and why.
    pub resets: Vec<(u32, Reason)>,
    /// The `grpc-status` of each stream that got one.
    pub grpc_statuses: Vec<(u32, u32)>,
    /// The `:status` of each stream answered with headers.
    pub http_statuses: Vec<(u32, u16)>,
    /// The parameters of the SETTINGS frames it sent (not their acknowledgements).
    pub settings: Vec<(u16, u32)>,
    /// It closed the connection (end of stream or a reset), and when.
    pub closed: Option<Instant>,
}

/// Reads the server's frames until it closes the connection or `limit` passes.
pub async fn answer(mut read: impl AsyncRead + Unpin, limit: Duration) -> Answer {
    let mut answer = Answer::default();
    let mut decoder = loona_hpack::Decoder::new();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = match read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some((kind, flags, stream, payload)) = next_frame(&mut buf) {
                answer.read(&mut decoder, kind, flags, stream, &payload);
            }
        }
        answer.closed = Some(Instant::now());
    })
    .await;
    answer
}

fn next_frame(buf: &mut Vec<u8>) -> Option<(u8, u8, u32, Vec<u8>)> {
    if buf.len() < 9 {
        return None;
    }
    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
    if buf.len() < 9 + len {
        return None;
    }
    let frame: Vec<u8> = buf.drain(..9 + len).collect();
    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
    Some((frame[3], frame[4], stream, frame[9..].to_vec()))
}

impl Answer {
    fn read(
        &mut self,
        decoder: &mut loona_hpack::Decoder<'static>,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) {
        let code = |bytes: &[u8]| Reason::from(u32::from_be_bytes(bytes.try_into().unwrap()));
        match kind {
            GOAWAY if payload.len() >= 8 => self.goaway = Some(code(&payload[4..8])),
            RST_STREAM if payload.len() == 4 => self.resets.push((stream, code(payload))),
            SETTINGS if flags & 0x1 == 0 => {
                for p in payload.chunks_exact(6) {
                    let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                    self.settings.push((u16::from_be_bytes([p[0], p[1]]), value));
                }
            }
            // The gateway never sends a block over one frame, nor padding or priority.
            HEADERS if flags & END_HEADERS != 0 => {
                for (name, value) in decoder.decode(payload).unwrap() {
                    let number = || std::str::from_utf8(&value).unwrap().parse().unwrap();
                    match &name[..] {
                        b":status" => self.http_statuses.push((stream, number() as u16)),
                        b"grpc-status" => self.grpc_statuses.push((stream, number())),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// Writes `bytes` in pieces of `piece` bytes, `pause` apart.
pub async fn dribble(
    write: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    piece: usize,
    pause: Duration,
) -> std::io::Result<()> {
    for chunk in bytes.chunks(piece) {
        write.write_all(chunk).await?;
        write.flush().await?;
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 section 5.2).
pub fn literal(bytes: &[u8], out: &mut Vec<u8>) {
    loona_hpack::encoder::encode_integer_into(bytes.len(), 7, 0, out).unwrap();
    out.extend_from_slice(bytes);
}

/// `fields` as literals without indexing: a block that neither reads nor changes a table.
pub fn plain_block(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0);
        literal(name, &mut block);
        literal(value, &mut block);
    }
    block
}

/// A field of `size` bytes as HTTP/2 counts it (`x-pad`, its value, 32).
pub fn pad_field(size: usize) -> (Vec<u8>, Vec<u8>) {
    (b"x-pad".to_vec(), vec![b'p'; size - 5 - 32])
}

/// The size of `fields` as HTTP/2 counts it.
pub fn list_size(fields: &[(Vec<u8>, Vec<u8>)]) -> usize {
    fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum()
}
