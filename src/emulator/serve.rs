//! Accepts TCP connections and serves HTTP/1.1 and h2c on each, with one extra power AWS's front
//! door has and hyper lacks: resetting a connection (RST) mid-request, for the `Reset` fault.

use std::{convert::Infallible, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use socket2::SockRef;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};

use super::{Shared, routes};

/// Accepts connections until the task is aborted.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                shared
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(serve_connection(stream, shared.clone()));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "emulator accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // A second handle on the same socket, kept to set SO_LINGER=0 before the last close: that
    // close then sends RST instead of FIN.
    let Ok((stream, control)) = split_control(stream) else {
        return;
    };
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        service_fn(move |request| {
            let (shared, reset) = (shared.clone(), reset.clone());
            async move { Ok::<_, Infallible>(routes::handle(&shared, &reset, request).await) }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = connection => {}
        () = reset.notified() => {
            let _ = SockRef::from(&control).set_linger(Some(Duration::ZERO));
        }
    }
}

fn split_control(stream: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = stream.into_std()?;
    let control = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, control))
}
