//! The listener's own defences (issue 19): slowloris (silent, trickling,
//! oversized heads), idle keep-alive sockets, the pending-connection cap,
//! the per-address cap and descriptor exhaustion, each against a hub
//! exposed directly. See tests/abuse.rs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// A raw TCP connection to `addr` from the loopback address `from`.
async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let source: IpAddr = from.parse().expect("source address");
    socket.bind(SocketAddr::new(source, 0)).expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// Reads until the hub closes the connection; what it sent before. Panics
/// if it is still open after `bound`.
async fn read_until_closed(stream: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, read_all)
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {bound:?}"));
    received
}

/// Whether the hub has closed `stream` (EOF or reset) within a short wait.
async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A keep-alive GET /health over `stream`; the response's first line.
async fn health_over(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(RECV_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before answering");
        head.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_socket_is_closed_at_the_header_deadline() {
    let hub = TestHub::start(&["--header-read-timeout-ms", "500"]).await;
    let mut silent = TcpStream::connect(hub.addr).await.expect("connect");
    let sent = read_until_closed(&mut silent, RECV_TIMEOUT).await;
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));
    hub.wait_metric("hub_limit_shed_total{limit=\"header_timeout\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_closed_at_the_header_deadline_however_slowly_it_arrives() {
    let hub = TestHub::start(&["--header-read-timeout-ms", "1000"]).await;
    let mut trickle = TcpStream::connect(hub.addr).await.expect("connect");
    trickle
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    // A header line every 100 ms: each byte arrives well within the
    // deadline, the head never does. 100 lines would take 10 s.
    let mut lines_sent = 0;
    for i in 0..100 {
        if trickle
            .write_all(format!("X-Trickle-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
            || is_closed(&mut trickle).await
        {
            break;
        }
        lines_sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        lines_sent < 100,
        "the trickling head was still accepted after {lines_sent} lines"
    );
    hub.wait_metric("hub_limit_shed_total{limit=\"header_timeout\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_closed_at_the_header_deadline_after_its_head() {
    let hub = TestHub::start(&["--header-read-timeout-ms", "1000"]).await;
    let mut slow = TcpStream::connect(hub.addr).await.expect("connect");
    // The webhook reads its body before anything else: a complete head,
    // then a body of 100,000 bytes one byte every 100 ms.
    slow.write_all(
        b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .expect("write");
    let mut sent = 0;
    for _ in 0..100 {
        if slow.write_all(b"x").await.is_err() || is_closed(&mut slow).await {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sent < 100,
        "the trickling body was still read after {sent} bytes"
    );
    hub.wait_metric("hub_limit_shed_total{limit=\"body_timeout\"}", |v| v >= 1.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_max_header_bytes_gets_431_and_is_closed() {
    let hub = TestHub::start(&["--max-header-bytes", "8192"]).await;
    let mut big = TcpStream::connect(hub.addr).await.expect("connect");
    let filler = "a".repeat(4000);
    let mut head = String::from("GET /health HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..8 {
        head.push_str(&format!("X-Filler-{i}: {filler}\r\n"));
    }
    head.push_str("\r\n");
    // The hub may close before it has read all of it.
    let _ = big.write_all(head.as_bytes()).await;
    let answer = read_until_closed(&mut big, RECV_TIMEOUT).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    hub.wait_metric("hub_limit_shed_total{limit=\"header_too_large\"}", |v| {
        v == 1.0
    })
    .await;
    // A head within the cap is served.
    let mut normal = TcpStream::connect(hub.addr).await.expect("connect");
    assert_eq!(health_over(&mut normal).await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed() {
    let hub = TestHub::start(&["--keepalive-timeout-ms", "500"]).await;
    let mut keepalive = TcpStream::connect(hub.addr).await.expect("connect");
    assert_eq!(health_over(&mut keepalive).await, "HTTP/1.1 200 OK");
    // The body was small and read with the head; nothing else comes.
    let rest = read_until_closed(&mut keepalive, RECV_TIMEOUT).await;
    assert!(rest.len() < 1024, "{}", String::from_utf8_lossy(&rest));
    hub.wait_metric("hub_limit_shed_total{limit=\"keepalive_idle\"}", |v| {
        v >= 1.0
    })
    .await;
}

/// A hub holding at most `cap` connections not upgraded, with a header
/// deadline no test here waits for.
async fn pending_capped_hub(cap: &str) -> TestHub {
    TestHub::start(&[
        "--max-pending-connections",
        cap,
        "--header-read-timeout-ms",
        "60000",
    ])
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_pending_cap_the_oldest_idle_connection_makes_room() {
    let hub = pending_capped_hub("4").await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(hub.addr).await.expect("connect"));
    }
    // A fifth, well-behaved client is served: the oldest silent one goes.
    let mut client = TcpStream::connect(hub.addr).await.expect("connect");
    assert_eq!(health_over(&mut client).await, "HTTP/1.1 200 OK");
    let oldest = read_until_closed(&mut silent[0], RECV_TIMEOUT).await;
    assert!(oldest.is_empty());
    for younger in &mut silent[1..] {
        assert!(!is_closed(younger).await, "only the oldest is shed");
    }
    drop(client);
    hub.wait_metric("hub_limit_shed_total{limit=\"pending_connections\"}", |v| {
        v >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_pending_cap_a_kept_alive_connection_goes_before_a_fresh_one() {
    let hub = pending_capped_hub("3").await;
    // The oldest has sent nothing yet (a client about to ask); the second
    // was served and idles.
    let mut fresh = TcpStream::connect(hub.addr).await.expect("connect");
    let mut served = TcpStream::connect(hub.addr).await.expect("connect");
    assert_eq!(health_over(&mut served).await, "HTTP/1.1 200 OK");
    let _third = TcpStream::connect(hub.addr).await.expect("connect");
    let mut client = TcpStream::connect(hub.addr).await.expect("connect");
    assert_eq!(health_over(&mut client).await, "HTTP/1.1 200 OK");
    let rest = read_until_closed(&mut served, RECV_TIMEOUT).await;
    assert!(rest.len() < 1024);
    // The fresh one is still served.
    assert_eq!(health_over(&mut fresh).await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_pending_cap_the_crowded_address_makes_room_not_a_lone_client() {
    let hub = pending_capped_hub("4").await;
    // A client connects first, then a crowd from another address fills
    // the cap while the client's request is still on its way.
    let mut client = connect_from(hub.addr, "127.0.0.5").await;
    let mut crowd = Vec::new();
    for _ in 0..3 {
        crowd.push(connect_from(hub.addr, "127.0.0.6").await);
    }
    let _newcomer = connect_from(hub.addr, "127.0.0.6").await;
    let gone = read_until_closed(&mut crowd[0], RECV_TIMEOUT).await;
    assert!(gone.is_empty());
    assert_eq!(health_over(&mut client).await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_max_connections_per_ip() {
    let hub = TestHub::start(&["--max-connections-per-ip", "3"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from(hub.addr, "127.0.0.2").await;
        assert_eq!(health_over(&mut stream).await, "HTTP/1.1 200 OK");
        held.push(stream);
    }
    let mut fourth = connect_from(hub.addr, "127.0.0.2").await;
    let answer = read_until_closed(&mut fourth, RECV_TIMEOUT).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    hub.wait_metric("hub_limit_shed_total{limit=\"connections_per_ip\"}", |v| {
        v == 1.0
    })
    .await;
    // Another address is not affected; one given back is free again.
    let mut other = connect_from(hub.addr, "127.0.0.3").await;
    assert_eq!(health_over(&mut other).await, "HTTP/1.1 200 OK");
    held.pop();
    wait_until_async("a freed slot", RECV_TIMEOUT, || async {
        let mut again = connect_from(hub.addr, "127.0.0.2").await;
        let _ = again
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let mut buf = [0u8; 12];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), again.read_exact(&mut buf)).await,
            Ok(Ok(_)) if &buf == b"HTTP/1.1 200"
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_exempt_from_the_per_address_cap() {
    let hub = TestHub::start(&[
        "--max-connections-per-ip",
        "2",
        "--trusted-proxies",
        "127.0.0.4",
    ])
    .await;
    let mut through_proxy = Vec::new();
    for _ in 0..5 {
        let mut stream = connect_from(hub.addr, "127.0.0.4").await;
        assert_eq!(health_over(&mut stream).await, "HTTP/1.1 200 OK");
        through_proxy.push(stream);
    }
    assert_eq!(
        hub.metric("hub_limit_shed_total{limit=\"connections_per_ip\"}")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

/// Lowers a process's descriptor limit (soft and hard) to `max`.
fn limit_descriptors(pid: u32, max: u64) {
    let limit = libc::rlimit {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: prlimit(2) reads `limit` and writes nothing (old = null).
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_hub_backs_off_and_health_still_answers() {
    // The binary: the descriptor limit is the process's own.
    let hub = HubProcess::start(&["--header-read-timeout-ms", "60000"], &[]).await;
    limit_descriptors(hub.pid(), 128);
    // More silent sockets than the hub has descriptors for, spread over
    // addresses as a botnet's would be.
    let mut silent = Vec::new();
    for i in 0..200 {
        silent.push(connect_from(hub.addr, &format!("127.0.1.{}", 1 + i % 50)).await);
    }
    hub.wait_metric("hub_limit_shed_total{limit=\"accept_exhausted\"}", |v| {
        v >= 1.0
    })
    .await;
    // Every silent socket got in or is queued; a new client is still
    // answered (the oldest idle sockets make room for it).
    let (status, body) = hub.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        hub.log().contains("accept failed; backing off"),
        "{}",
        hub.log()
    );
}
