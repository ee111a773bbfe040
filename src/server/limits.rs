//! What one caller connection may cost: the HTTP/2 limits given to hyper and h2 (advertised in
//! the server's SETTINGS and enforced by h2) and the time a connection gets to begin, set here on
//! purpose for every listener. The `:authority` mender reads the same.

use std::time::Duration;

use tonic::transport::Server;

use crate::authority;

/// HPACK dynamic table size the server's decoder allows (SETTINGS_HEADER_TABLE_SIZE): h2's own,
/// which tonic leaves as it is, so the server never advertises it and clients keep the RFC 7541
/// default of 4,096 bytes (a test reads the server's SETTINGS to hold this).
pub const HEADER_TABLE_SIZE: usize = 4096;
/// Streams a client may reset before the server has accepted them, before the connection is
/// closed with ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487): h2's default, set on purpose.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset for a client's errors (a stream over the concurrency limit, a
/// malformed request) before the connection is closed with ENHANCE_YOUR_CALM: hyper's default,
/// which tonic otherwise turns into no limit.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Flow-control windows: the most request data a connection, and each stream of it, may have
/// sent that the gateway has not read yet (hyper's defaults, set on purpose: they are part of
/// what a connection may cost).
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
/// SETTINGS_MAX_FRAME_SIZE: the RFC's minimum, so no frame a client sends is larger.
const MAX_FRAME_SIZE: u32 = 16 * 1024;

/// What one caller connection may cost, on every listener: the HTTP/2 limits advertised to
/// callers and enforced by h2, and how long a new connection gets to begin. The `:authority`
/// mender on a Unix socket reads the same values ([`ConnectionLimits::header_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams a connection may have open at once; a stream
    /// over it is refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE, counted as HTTP/2 counts it (`name + value + 32` per
    /// field): a larger request is refused (431), one four times larger closes the connection.
    pub max_header_list_size: u32,
    /// How long a new connection gets for its TLS handshake (if any) and the HTTP/2 preface;
    /// after it, HTTP/2 keep-alive PINGs find dead connections.
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            max_header_list_size: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectionLimits {
    /// What the `:authority` mender must stay within: the values h2 is given here.
    pub fn header_limits(&self) -> authority::Limits {
        authority::Limits {
            max_header_list_size: self.max_header_list_size as usize,
            header_table_size: HEADER_TABLE_SIZE,
        }
    }

    /// A tonic server builder with these limits (and the fixed ones above) given to hyper and h2.
    pub(super) fn server(&self) -> Server {
        Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_max_header_list_size(self.max_header_list_size)
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
    }
}
