//! The TCP listener of the HTTP server. Every accepted socket is shared
//! ([`SharedTcp`]): HTTP reads and writes it as usual, and a connection
//! upgraded to WebSocket takes a second reference ([`Peer::socket`]) through
//! which the hub writes pre-framed events straight to the socket from the
//! task that delivers them (`hub/registry.rs`), without waking the
//! connection's task.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::hub::registry::DirectSocket;

/// Accepts connections with `TCP_NODELAY` set: real-time events go out at
/// once instead of Nagle holding a frame until the previous one is
/// acknowledged (up to the peer's delayed-ACK time, ~40 ms).
pub struct HubListener(pub TcpListener);

/// Who is on the other end of a request: its address (the REST rate limit
/// of anonymous callers) and the socket (for a WebSocket upgrade). Weak:
/// whatever keeps a request's extensions does not keep its socket open.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    pub socket: Weak<TcpStream>,
}

impl axum::serve::Listener for HubListener {
    type Io = SharedTcp;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "could not set TCP_NODELAY");
                    }
                    let socket = Arc::new(tcp);
                    let peer = Peer {
                        addr,
                        socket: Arc::downgrade(&socket),
                    };
                    return (SharedTcp(socket), peer);
                }
                // As axum's own listener: a connection that failed before
                // it was accepted is skipped; anything else (out of file
                // descriptors) is waited out.
                Err(e) if is_connection_error(&e) => {}
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Err(io::Error::other(
            "HubListener has no Peer for itself; ask its TcpListener",
        ))
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl Connected<IncomingStream<'_, HubListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, HubListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP socket several owners may read and write (tokio's `TcpStream`
/// I/O through `&self`); as an HTTP connection's I/O it behaves like the
/// stream itself.
pub struct SharedTcp(pub Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.0))
    }
}

/// Half-closes the socket (FIN), as `TcpStream`'s own `poll_shutdown`.
pub fn shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        done => done,
    }
}

impl DirectSocket for TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        TcpStream::try_write_vectored(self, bufs)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_write_ready(self, cx)
    }
}

/// The client's address: the peer's, or, when the peer is one of the
/// `TRUSTED_PROXIES`, the last hop its `X-Forwarded-For` names (the one the
/// proxy itself appended; earlier entries are the client's to forge).
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    limits: &crate::config::Limits,
) -> std::net::IpAddr {
    if !limits.is_trusted_proxy(peer) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .next_back()
        .unwrap_or(peer)
}
