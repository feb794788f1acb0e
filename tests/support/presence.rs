//! The presence check shared by the standalone and the cluster suites:
//! many clients join (and later leave) one session at once, possibly on
//! several hubs, and every member must learn about every other member
//! exactly once — listed in its `registration_confirmed` or announced by a
//! later `client_joined`, never both, never neither — and about each
//! departure by exactly one `client_left`, never about one it did not know.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::{Endpoint, WsClient, assert_quiet, http_get_json, ids, wait_until_async};

/// One client and what it knows of the session's members.
struct Viewer {
    id: String,
    client: WsClient,
    view: BTreeSet<String>,
}

impl Viewer {
    fn new(client: WsClient, conf: &Value) -> Viewer {
        let id = conf["client_id"].as_str().unwrap_or_default().to_string();
        let view: BTreeSet<String> = ids(&conf["clients"]).into_iter().collect();
        assert_eq!(
            view.len(),
            ids(&conf["clients"]).len(),
            "{id}: a member listed twice in {conf}"
        );
        Viewer { id, client, view }
    }

    /// Applies presence frames until `marker`'s `client_joined` (logged
    /// after everything this check waits for, so delivered after it too);
    /// any other frame, a join of a known member or a departure of an
    /// unknown one fails.
    async fn read_until(&mut self, marker: &str) {
        loop {
            let frame = self.client.recv().await;
            let who = frame["client_id"].as_str().unwrap_or_default().to_string();
            match frame["type"].as_str() {
                Some("client_joined") if who == marker => return,
                Some("client_joined") => assert!(
                    self.view.insert(who.clone()),
                    "{} was told twice that {who} is a member (it knew {:?})",
                    self.id,
                    self.view
                ),
                Some("client_left") => assert!(
                    self.view.remove(&who),
                    "{} was told {who} left, which it did not know as a member ({:?})",
                    self.id,
                    self.view
                ),
                _ => panic!("{}: unexpected {frame}", self.id),
            }
        }
    }
}

/// Waits until the session's log holds `offset` events (REST, any hub of
/// the cluster: the log is shared).
async fn logged(hub: &impl Endpoint, session: &str, offset: u64) {
    wait_until_async(
        &format!("{offset} presence events logged in {session}"),
        Duration::from_secs(20),
        || async move {
            let (_, v) = http_get_json(hub, &format!("/api/v1/sessions/{session}/events")).await;
            v["offset"] == offset
        },
    )
    .await;
}

/// `count` clients with ids `{prefix}NNN` register at once, spread over
/// `urls` in turn.
async fn rush(urls: &[String], session: &str, prefix: &str, count: usize) -> Vec<Viewer> {
    let joins = (0..count).map(|i| {
        let url = urls[i % urls.len()].clone();
        let id = format!("{prefix}{i:03}");
        async move {
            let (client, conf) = WsClient::register(&url, session, &id).await;
            Viewer::new(client, &conf)
        }
    });
    futures_util::future::join_all(joins).await
}

/// The whole check on a fresh `session`: `members` clients join at once
/// (spread over `urls`), then half of them leave while as many new ones
/// join, all at once. `rest` is any hub, for the log's offset. The
/// session must see no other event meanwhile.
pub async fn check_presence_exactly_once(
    urls: &[String],
    rest: &impl Endpoint,
    session: &str,
    members: usize,
) {
    // 1. Concurrent joins.
    let mut first = rush(urls, session, "m", members).await;
    logged(rest, session, members as u64).await;
    let (_marker, _) = WsClient::register(&urls[0], session, "marker-1").await;
    let everyone: BTreeSet<String> = first.iter().map(|v| v.id.clone()).collect();
    for v in &mut first {
        v.read_until("marker-1").await;
        assert_eq!(v.view, everyone, "{} must know every member", v.id);
        v.view.insert("marker-1".into());
    }

    // 2. Concurrent leaves (every other member) and joins.
    let half = members / 2;
    let (mut staying, mut leaving) = (Vec::new(), Vec::new());
    for (i, v) in first.into_iter().enumerate() {
        if i % 2 == 0 {
            staying.push(v)
        } else {
            leaving.push(v)
        }
    }
    let gone: BTreeSet<String> = leaving.iter().map(|v| v.id.clone()).collect();
    let leaves = futures_util::future::join_all(leaving.into_iter().map(|v| v.client.close()));
    let (_, mut newcomers) = tokio::join!(leaves, rush(urls, session, "n", half));
    logged(rest, session, (members + 1 + gone.len() + half) as u64).await;
    let (_marker, _) = WsClient::register(&urls[0], session, "marker-2").await;
    let mut now: BTreeSet<String> = everyone.difference(&gone).cloned().collect();
    now.insert("marker-1".into());
    now.extend(newcomers.iter().map(|v| v.id.clone()));
    for v in staying.iter_mut().chain(newcomers.iter_mut()) {
        v.read_until("marker-2").await;
        assert_eq!(v.view, now, "{} must know exactly the members left", v.id);
        assert_quiet(&mut v.client, "nothing but presence").await;
    }
}
