//! The WebSocket upgrade of a client connection. axum's `WebSocketUpgrade`
//! checks the request (and answers a bad one with its usual rejection); we
//! answer 101 ourselves and keep both halves of the upgraded connection:
//! hyper's upgraded I/O, which the WebSocket library reads (handshake
//! leftovers included), and the socket, which the connection's task writes
//! pre-framed events to ([`crate::transport::SocketWriter`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::listener::Peer;
use crate::transport::UpgradedSocket;

/// A checked upgrade request, answered by [`Upgrade::on_upgrade`].
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    socket: Arc<TcpStream>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        // axum's extractor takes the upgrade out of the request: keep a
        // handle on it (they share the one upgrade).
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let socket = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .and_then(|ConnectInfo(peer)| peer.socket.upgrade());
        // Only its checks are wanted: the answer is ours.
        let _checked = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        // axum also accepts HTTP/2's extended CONNECT (RFC 8441), but our
        // writes go to the TCP socket, which HTTP/2 multiplexes: HTTP/1.1
        // only, whatever headers an HTTP/2 request carries.
        let key = (parts.version == axum::http::Version::HTTP_11)
            .then(|| parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned())
            .flatten();
        match (key, on_upgrade, socket) {
            (Some(key), Some(on_upgrade), Some(socket)) => Ok(Upgrade {
                key,
                on_upgrade,
                socket,
            }),
            _ => Err((
                StatusCode::UPGRADE_REQUIRED,
                "WebSocket upgrade is only served over HTTP/1.1 by the hub's listener",
            )
                .into_response()),
        }
    }
}

impl Upgrade {
    /// Answers 101 and runs `callback` with the connection once hyper has
    /// handed it over.
    pub fn on_upgrade<C, Fut>(self, callback: C) -> Response
    where
        C: FnOnce(UpgradedSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Upgrade {
            key,
            on_upgrade,
            socket,
        } = self;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    callback(UpgradedSocket {
                        io: TokioIo::new(upgraded),
                        socket,
                    })
                    .await
                }
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
        let accept = derive_accept_key(key.as_bytes());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}
