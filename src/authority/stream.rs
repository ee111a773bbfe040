//! The mender on a connection: a Unix-socket stream whose client-to-server bytes pass through a
//! [`Mender`] before h2 reads them; the server's bytes go out untouched.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

use super::{Limits, Mender};

/// A Unix-socket connection whose client-to-server bytes pass through a [`Mender`].
#[derive(Debug)]
pub struct Mended<S> {
    inner: S,
    mender: Mender,
    ready: BytesMut,
    eof: bool,
}

impl<S> Mended<S> {
    /// Wraps an accepted connection to a server that gives h2 `limits`.
    pub fn new(inner: S, limits: Limits) -> Self {
        Self {
            inner,
            mender: Mender::new(limits),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Mended<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.mender.through() {
                // Nothing more to mend: the bytes go straight to h2's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.eof = true;
                    this.mender.finish(&mut this.ready);
                }
                Poll::Ready(Ok(())) => this.mender.feed(read.filled(), &mut this.ready),
            }
        }
    }
}

crate::listeners::write_through!(Mended);
