//! Answers a message over `--max-message-size` with RESOURCE_EXHAUSTED, as gRPC's status code
//! table, grpc-go and grpc-java do and as polyglot callers expect, instead of tonic's OUT_OF_RANGE.
//!
//! tonic enforces the limit itself (and answers OUT_OF_RANGE) while decoding the request or
//! encoding the response; this layer, inside the metrics layer so the call is counted with the
//! code the caller gets, rewrites that status wherever it travels: in the headers of a
//! trailers-only answer, or in the trailers. Nothing else in the gateway answers OUT_OF_RANGE.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::error;

const OUT_OF_RANGE: &str = "11";

/// Tower layer rewriting tonic's message-size status; see the module docs.
#[derive(Debug, Clone, Copy)]
pub struct MessageSizeLayer {
    limit: usize,
}

impl MessageSizeLayer {
    /// A layer for a server whose message limit is `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower::Layer<S> for MessageSizeLayer {
    type Service = MessageSizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageSizeService {
            inner,
            limit: self.limit,
        }
    }
}

/// See [`MessageSizeLayer`].
#[derive(Debug, Clone)]
pub struct MessageSizeService<S> {
    inner: S,
    limit: usize,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MessageSizeService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<SizedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limit = self.limit;
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            rewrite(response.headers_mut(), limit);
            Ok(response.map(|inner| SizedBody { inner, limit }))
        })
    }
}

/// Replaces an OUT_OF_RANGE status in `headers` with [`error::message_too_large`].
fn rewrite(headers: &mut HeaderMap, limit: usize) {
    if headers.get("grpc-status").is_none_or(|v| v != OUT_OF_RANGE) {
        return;
    }
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if let Err(e) = error::message_too_large(limit).add_header(headers) {
        // Never expected: the status is ours and ASCII. Keep the caller's answer well formed.
        let _ = e.add_header(headers);
    }
}

pin_project_lite::pin_project! {
    /// A response body whose trailers get the same rewrite.
    #[derive(Debug)]
    pub struct SizedBody<B> {
        #[pin]
        inner: B,
        limit: usize,
    }
}

impl<B: Body> Body for SizedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            rewrite(trailers, *this.limit);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn out_of_range_becomes_resource_exhausted_with_the_limit() {
        let mut headers = HeaderMap::new();
        tonic::Status::out_of_range("Error, decoded message length too large")
            .add_header(&mut headers)
            .unwrap();
        rewrite(&mut headers, 65536);
        let status = tonic::Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("MESSAGE_TOO_LARGE", error::GATEWAY_DOMAIN)
        );
        assert_eq!(info.metadata["max_message_size"], "65536");
        assert!(details.retry_info().is_none());
    }

    #[test]
    fn other_statuses_pass_unchanged() {
        for status in [
            tonic::Status::not_found("x"),
            tonic::Status::resource_exhausted("y"),
        ] {
            let mut headers = HeaderMap::new();
            status.add_header(&mut headers).unwrap();
            let before = headers.clone();
            rewrite(&mut headers, 10);
            assert_eq!(headers, before);
        }
        let mut empty = HeaderMap::new();
        rewrite(&mut empty, 10);
        assert!(empty.is_empty());
    }
}
