//! Binds everything the gateway listens on, before anything is served, so that a port in use or
//! a socket path that cannot be taken is a configuration error (exit 64, one line naming the
//! setting), never a half-started process.
//!
//! The API listens on TCP or on a Unix domain socket. A socket file left by a dead process is
//! replaced; one that a live process still serves is never taken over; the file gets
//! `--listen-mode` and is removed when the gateway stops.
//!
//! An accepted connection must begin within the handshake timeout: finish its TLS handshake
//! ([`tls_handshakes`]) and send the HTTP/2 preface ([`Preface`]). One that sends nothing, or its
//! first bytes one at a time, is closed instead of held for ever.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, UnixListener},
    time::{Instant, Sleep},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};

use crate::config::{Config, ListenAddr};

/// Where the API is served.
#[derive(Debug)]
pub enum Listener {
    /// A TCP port.
    Tcp(TcpListener),
    /// A Unix domain socket.
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl From<UnixListener> for Listener {
    fn from(listener: UnixListener) -> Self {
        Listener::Unix(listener)
    }
}

/// Removes the API's socket file when dropped: on a clean shutdown, and on any error after
/// binding.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl SocketFile {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every listener of the configuration, bound.
#[derive(Debug)]
pub struct Bound {
    /// The API (with health and reflection).
    pub api: Listener,
    /// What `api` is, for humans: `127.0.0.1:50051` or `unix:/path`.
    pub api_addr: ListenAddr,
    /// The API's socket file, when it is a Unix socket.
    pub socket: Option<SocketFile>,
    /// `/metrics`.
    pub metrics: TcpListener,
    /// `grpc.health.v1` alone, when `--health-listen` is set.
    pub health: Option<TcpListener>,
}

/// Binds the API, metrics and health listeners; the error is one line naming the setting.
/// Call inside the Tokio runtime.
pub fn bind(config: &Config) -> Result<Bound, String> {
    config.check_addresses()?;
    let (api, api_addr, socket) = match &config.listen {
        ListenAddr::Tcp(addr) => {
            let listener = tcp("--listen", *addr)?;
            let bound = ListenAddr::Tcp(listener.local_addr().unwrap_or(*addr));
            (Listener::Tcp(listener), bound, None)
        }
        ListenAddr::Unix(path) => {
            let (listener, file) = unix(path, config.listen_mode)?;
            (Listener::Unix(listener), config.listen.clone(), Some(file))
        }
    };
    let metrics = tcp("--metrics-listen", config.metrics_listen)?;
    let health = config
        .health_listen
        .map(|addr| tcp("--health-listen", addr))
        .transpose()?;
    Ok(Bound {
        api,
        api_addr,
        socket,
        metrics,
        health,
    })
}

/// A TCP listener on `addr`, for `setting`.
pub fn tcp(setting: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    let fail = |e: std::io::Error| format!("{setting} {addr}: cannot listen: {e}");
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    TcpListener::from_std(listener).map_err(fail)
}

/// A Unix socket at `path` with file mode `mode`, replacing a stale socket file.
pub fn unix(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), String> {
    let setting = format!("--listen unix:{}", path.display());
    let fail = |e: std::io::Error| format!("{setting}: cannot listen: {e}");
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(format!("{setting}: another process is serving on this socket"));
            }
            // Nobody answers: a socket file left by a process that is gone.
            std::fs::remove_file(path).map_err(fail)?;
        }
        Ok(_) => return Err(format!("{setting}: the path exists and is not a socket")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(fail)?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    let listener = UnixListener::from_std(listener).map_err(fail)?;
    Ok((listener, file))
}

/// Bytes a connection sends first: the HTTP/2 client preface (RFC 9113 section 3.4).
const PREFACE_LEN: usize = 24;

/// An accepted connection that must send the HTTP/2 preface (under TLS, after the handshake)
/// within a deadline. Until it has, a read past the deadline fails, so hyper drops the
/// connection: h2 itself waits for the preface for ever, and its keep-alive PINGs begin only
/// after it.
#[derive(Debug)]
pub struct Preface<S> {
    /// The accepted connection.
    inner: S,
    /// `None` once the preface has come.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes of the preface still to come.
    left: usize,
}

impl<S> Preface<S> {
    /// Wraps a connection accepted now, which gets `timeout` to send its preface.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self::until(inner, Instant::now() + timeout)
    }

    /// Wraps a connection that must have sent its preface by `deadline`.
    pub fn until(inner: S, deadline: Instant) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            left: PREFACE_LEN,
        }
    }
}

/// Accepted connections through the TLS handshake, each within `timeout` of its accept (a
/// connection that takes longer is closed), with the deadline its HTTP/2 preface must then
/// meet. Handshakes run side by side, so a slow one holds up no other; accepting stops when
/// the stream is dropped.
pub fn tls_handshakes<S, I>(
    accepted: I,
    acceptor: TlsAcceptor,
    timeout: Duration,
) -> ReceiverStream<io::Result<(TlsStream<S>, Instant)>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    I: Stream<Item = io::Result<S>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut accepted = std::pin::pin!(accepted);
        loop {
            let next = tokio::select! {
                next = accepted.next() => next,
                () = tx.closed() => break,
            };
            let stream = match next {
                None => break,
                Some(Err(e)) => {
                    if tx.send(Err(e)).await.is_err() {
                        break;
                    }
                    continue;
                }
                Some(Ok(stream)) => stream,
            };
            let deadline = Instant::now() + timeout;
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok((stream, deadline))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

impl<S: AsyncRead + Unpin> AsyncRead for Preface<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(deadline) = this.deadline.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.left = this.left.saturating_sub(buf.filled().len() - before);
        if this.left == 0 {
            this.deadline = None;
        }
        polled
    }
}

/// Writes, flushes and shuts down `$wrapper`'s `inner` stream as they are, and gives its connect
/// info: for the wrappers that change only how a connection is read (the preface deadline here,
/// the `:authority` mender).
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }
        }

        impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for $wrapper<S> {
            type ConnectInfo = S::ConnectInfo;

            fn connect_info(&self) -> Self::ConnectInfo {
                self.inner.connect_info()
            }
        }
    };
}
pub(crate) use write_through;

write_through!(Preface);

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chime-gw-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("grpc.sock")
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_its_preface_by_the_deadline_fails_to_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut preface = Preface::new(server, Duration::from_secs(10));
        client.write_all(&[b'P'; PREFACE_LEN - 1]).await.unwrap();
        let mut buf = [0; 64];
        assert_eq!(preface.read(&mut buf).await.unwrap(), PREFACE_LEN - 1);
        let started = Instant::now();
        let error = preface.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sent_its_preface_is_timed_no_more() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(64);
        let mut preface = Preface::new(server, Duration::from_secs(10));
        client.write_all(&[b'P'; PREFACE_LEN]).await.unwrap();
        let mut buf = [0; 64];
        assert_eq!(preface.read(&mut buf).await.unwrap(), PREFACE_LEN);
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(preface.read(&mut buf).await.unwrap(), 5);
    }

    #[tokio::test]
    async fn a_socket_gets_its_mode_and_is_removed_when_dropped() {
        let path = temp_path("mode");
        let (listener, file) = unix(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        drop(listener);
        drop(file);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_replaced() {
        let path = temp_path("stale");
        // A socket file whose listener is gone, as a killed process leaves it.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (_listener, _file) = unix(&path, 0o600).unwrap();
        tokio::net::UnixStream::connect(&path)
            .await
            .expect("the new socket serves");
    }

    #[tokio::test]
    async fn a_live_socket_is_never_taken_over() {
        let path = temp_path("live");
        let (_listener, _file) = unix(&path, 0o660).unwrap();
        let line = unix(&path, 0o660).unwrap_err();
        assert!(line.contains("another process is serving"), "{line}");
        assert!(line.starts_with("--listen unix:"), "{line}");
        assert!(path.exists(), "the live socket's file stays");
    }

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_left_alone() {
        let path = temp_path("file");
        std::fs::write(&path, b"data").unwrap();
        let line = unix(&path, 0o660).unwrap_err();
        assert!(line.contains("not a socket"), "{line}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn a_port_in_use_names_its_setting() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let line = tcp("--health-listen", addr).unwrap_err();
        assert!(
            line.starts_with(&format!("--health-listen {addr}: cannot listen")),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
