//! A TCP forwarder that puts a fault on one hub's link to Redis (or to
//! any TCP server): a partition, latency with loss, or a plain delay.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the link does to the bytes crossing it.
#[derive(Clone, Copy, PartialEq)]
pub enum Link {
    Pass,
    /// A partition: nothing crosses (held, as TCP retransmits, until healed).
    Cut,
    /// 200 ms each way, and 5 % of the chunks a retransmission late
    /// (another 200-600 ms), in order, as TCP delivers over a lossy path.
    Lossy,
    /// This long each way, every chunk, in order.
    Delay(Duration),
}

/// A TCP forwarder from a port of its own to Redis: the path one hub takes,
/// so a fault can be put on that hub's link alone. (`tc netem` would do it
/// in the kernel; this box's kernel has no sch_netem, so the forwarder
/// does it to the byte streams.)
pub struct FaultyLink {
    pub port: u16,
    mode: Arc<std::sync::Mutex<Link>>,
}

impl FaultyLink {
    pub async fn to(redis_port: u16) -> FaultyLink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(std::sync::Mutex::new(Link::Pass));
        let shared = mode.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(carry(ri, wo, shared.clone()));
                tokio::spawn(carry(ro, wi, shared.clone()));
            }
        });
        FaultyLink { port, mode }
    }

    pub fn set(&self, mode: Link) {
        *self.mode.lock().unwrap() = mode;
    }
}

/// One direction of the link: chunks are stamped when read and written
/// when the link lets them through, in order.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<std::sync::Mutex<Link>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        let mut chunks = 0u64;
        while let Some((read_at, chunk)) = rx.recv().await {
            chunks += 1;
            loop {
                let now = *mode.lock().unwrap();
                match now {
                    Link::Pass => break,
                    Link::Cut => tokio::time::sleep(Duration::from_millis(20)).await,
                    Link::Lossy => {
                        // A deterministic 5 %: every twentieth chunk is a
                        // retransmission late.
                        let late = if chunks.is_multiple_of(20) { 400 } else { 0 };
                        let due = read_at + Duration::from_millis(200 + late);
                        tokio::time::sleep_until(due.into()).await;
                        break;
                    }
                    Link::Delay(by) => {
                        tokio::time::sleep_until((read_at + by).into()).await;
                        break;
                    }
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}
