//! The WebSocket layer the hub owns (docs/performance.md, "wave 2, round
//! 3"): pre-framed frames written straight to the socket, tungstenite's
//! replies (pong, close echo) sent in order with them, and the reading
//! rules tungstenite enforces on our behalf. Frames the client library
//! would never send (unmasked, fragmented by hand) are written raw to the
//! client's TCP socket after a normal handshake.

use crate::support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A registered client on the raw library stream.
async fn open(url: &str, session: &str, id: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    register(ws, session, id).await
}

/// [`open`] with a 4 KiB socket receive buffer, so the hub's writes to it
/// fill its socket quickly.
async fn open_small(url: &str, session: &str, id: &str) -> Ws {
    let addr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("ws://ip:port/");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(addr).await.expect("connect");
    let (ws, _) = tokio::time::timeout(
        RECV_TIMEOUT,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    register(ws, session, id).await
}

async fn register(mut ws: Ws, session: &str, id: &str) -> Ws {
    let register = json!({"type": "register", "session": session, "client_id": id});
    ws.send(Message::text(register.to_string()))
        .await
        .expect("send");
    let confirmed = next_json(&mut ws).await;
    assert_eq!(confirmed["type"], "registration_confirmed", "{confirmed}");
    // Registration is followed by the contact list.
    next_of(&mut ws, "contact_list_broadcast").await;
    ws
}

/// The next message of any kind (bounded wait).
async fn next(ws: &mut Ws) -> Option<Message> {
    tokio::time::timeout(RECV_TIMEOUT, ws.next())
        .await
        .expect("a frame in time")
        .map(|m| m.expect("a well-formed frame"))
}

/// The next text message, as JSON (pings and pongs skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match next(ws).await {
            Some(Message::Text(t)) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Some(Message::Ping(_) | Message::Pong(_)) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next JSON message of type `ty`.
async fn next_of(ws: &mut Ws, ty: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
}

/// Writes raw bytes to the client's socket, bypassing its framing.
async fn write_raw(ws: &mut Ws, bytes: &[u8]) {
    match ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp.write_all(bytes).await.expect("raw write"),
        _ => panic!("plain TCP expected"),
    }
}

/// One client-to-server frame: `fin`, `opcode`, masked with `mask` (None:
/// unmasked, which a server must refuse).
fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(masked | n as u8),
        n if n <= 0xffff => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

const KEY: Option<[u8; 4]> = Some([0x12, 0x34, 0x56, 0x78]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_fragmented_over_three_frames_is_one_message() {
    let hub = TestHub::start(&[]).await;
    let mut ws = open(&hub.ws_url(), "frag", "a").await;
    let text = br#"{"type":"ping","request_id":"fragmented"}"#;
    let mut raw = frame(false, 0x1, &text[..10], KEY);
    // A control frame may come between the fragments of a message.
    raw.extend(frame(true, 0x9, b"mid", KEY));
    raw.extend(frame(false, 0x0, &text[10..20], KEY));
    raw.extend(frame(true, 0x0, &text[20..], KEY));
    write_raw(&mut ws, &raw).await;
    let mut pong_frame = false;
    let answer = loop {
        match next(&mut ws).await {
            Some(Message::Pong(p)) => {
                assert_eq!(&p[..], b"mid");
                pong_frame = true;
            }
            Some(Message::Text(t)) => break serde_json::from_str::<Value>(t.as_str()).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(answer["type"], "pong", "{answer}");
    assert_eq!(answer["request_id"], "fragmented");
    assert!(
        pong_frame,
        "the ping between the fragments was answered first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_over_the_size_limit_closes_with_1009() {
    let hub = TestHub::start(&["--max-message-bytes", "1000"]).await;
    let mut ws = open(&hub.ws_url(), "frag", "big").await;
    // Each fragment is within the limit; the message is not.
    let part = vec![b' '; 600];
    let mut raw = frame(false, 0x1, &part, KEY);
    raw.extend(frame(true, 0x0, &part, KEY));
    write_raw(&mut ws, &raw).await;
    loop {
        match next(&mut ws).await {
            Some(Message::Close(Some(close))) => {
                assert_eq!(u16::from(close.code), 1009);
                break;
            }
            Some(Message::Close(None)) | None => panic!("closed without 1009"),
            Some(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_from_the_client_is_answered_with_its_payload() {
    let hub = TestHub::start(&[]).await;
    let mut ws = open(&hub.ws_url(), "pings", "a").await;
    for i in 0..20u8 {
        ws.send(Message::Ping(vec![i; 4].into()))
            .await
            .expect("ping");
    }
    for i in 0..20u8 {
        match next(&mut ws).await {
            Some(Message::Pong(p)) => assert_eq!(&p[..], &[i; 4]),
            other => panic!("expected pong {i}, got {other:?}"),
        }
    }
    // The connection still works.
    ws.send(Message::text(
        json!({"type": "ping", "request_id": "after"}).to_string(),
    ))
    .await
    .expect("send");
    assert_eq!(next_of(&mut ws, "pong").await["request_id"], "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_from_the_client_is_echoed_and_the_client_leaves() {
    let hub = TestHub::start(&[]).await;
    let url = hub.ws_url();
    let mut stay = open(&url, "bye", "stay").await;
    let mut ws = open(&url, "bye", "leaver").await;
    assert_eq!(
        next_of(&mut stay, "client_joined").await["client_id"],
        "leaver"
    );
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "done".into(),
    })))
    .await
    .expect("close");
    // The echo carries the client's code; then the connection ends.
    loop {
        match next(&mut ws).await {
            Some(Message::Close(Some(echo))) => {
                assert_eq!(echo.code, CloseCode::Away);
                break;
            }
            Some(Message::Close(None)) | None => panic!("no close echo"),
            Some(_) => continue,
        }
    }
    assert!(
        next(&mut ws).await.is_none(),
        "the connection ends after the echo"
    );
    assert_eq!(
        next_of(&mut stay, "client_left").await["client_id"],
        "leaver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmasked_frame_from_a_client_ends_the_connection() {
    let hub = TestHub::start(&[]).await;
    let mut ws = open(&hub.ws_url(), "mask", "a").await;
    let text = br#"{"type":"ping","request_id":"unmasked"}"#;
    write_raw(&mut ws, &frame(true, 0x1, text, None)).await;
    // Never answered: the connection is closed with 1002 instead.
    assert_eq!(close_code(&mut ws).await, CloseCode::Protocol);
    // The hub still serves others.
    let mut other = open(&hub.ws_url(), "mask", "b").await;
    other
        .send(Message::text(
            json!({"type": "ping", "request_id": "ok"}).to_string(),
        ))
        .await
        .expect("send");
    assert_eq!(next_of(&mut other, "pong").await["request_id"], "ok");
}

/// A text frame that is not UTF-8 closes the connection with 1007.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let hub = TestHub::start(&[]).await;
    let mut ws = open(&hub.ws_url(), "utf8", "a").await;
    write_raw(
        &mut ws,
        &frame(true, 0x1, b"{\"type\":\"\xff\"}", Some([1, 2, 3, 4])),
    )
    .await;
    assert_eq!(close_code(&mut ws).await, CloseCode::Invalid);
}

/// Reads past anything else until the hub's close frame; its code.
async fn close_code(ws: &mut Ws) -> CloseCode {
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(close)))) => return close.code,
            Some(Ok(Message::Text(t))) => {
                assert!(!t.as_str().contains("type\":\"pong"), "answered: {t}")
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// Large broadcasts to a client that pauses reading: the socket takes
/// part of a frame, the rest is queued and written by the connection's
/// task, while the client's pings are answered in between. Every frame
/// arrives whole (the client library would fail on a torn frame), in
/// order, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partly_written_frames_never_interleave_with_others() {
    let hub = TestHub::start(&[
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
        "--outbound-queue-bytes",
        "100000000",
        "--outbound-queue-len",
        "100000",
    ])
    .await;
    let url = hub.ws_url();
    let mut reader = open_small(&url, "torn", "reader").await;
    let (mut producer, _) = WsClient::register(&url, "torn", "producer").await;
    assert_eq!(
        next_of(&mut reader, "client_joined").await["client_id"],
        "producer"
    );
    const ROUNDS: usize = 150;
    let fill = "f".repeat(40_000);
    for round in 0..ROUNDS {
        producer
            .send_json(json!({"type": "broadcast", "payload": {"round": round, "fill": fill}}))
            .await;
        if round % 10 == 0 {
            // Pongs are queued behind (or between) the broadcasts.
            reader
                .send(Message::Ping(vec![round as u8].into()))
                .await
                .expect("ping");
        }
    }
    // 6 MB for the reader: far more than the socket buffers hold (the
    // reader's is 4 KiB), so the hub had to queue and write frames in
    // parts. Now read it all.
    let mut round = 0;
    let mut pongs = 0;
    while round < ROUNDS {
        match next(&mut reader).await {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("a whole JSON frame");
                if v["type"] != "broadcast" {
                    continue;
                }
                assert_eq!(v["payload"]["round"], round, "in order, exactly once");
                assert_eq!(v["payload"]["fill"].as_str().map(str::len), Some(40_000));
                round += 1;
            }
            Some(Message::Pong(p)) => {
                assert_eq!(p[0] as usize, pongs * 10, "pongs in order");
                pongs += 1;
            }
            Some(Message::Ping(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Every pong arrives, after or between the broadcasts.
    while pongs < ROUNDS / 10 {
        match next(&mut reader).await {
            Some(Message::Pong(p)) => {
                assert_eq!(p[0] as usize, pongs * 10);
                pongs += 1;
            }
            Some(Message::Text(_) | Message::Ping(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        hub.metric("hub_slow_consumer_disconnects_total").await,
        Some(0.0)
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), reader.close(None)).await;
}
