//! A real browser for page tests: Debian's `chromium` driven over
//! WebDriver by `chromedriver` (started on a free port, headless, with a
//! throw-away profile) through `fantoccini`. The driver runs in its own
//! process group (its id is the driver's PID), and the whole group — the
//! browser it launched included — is killed when [`Browser`] drops, also
//! when a test fails.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use super::{ChildGuard, TempDir, free_port, have};

/// Bound on the browser starting and on any awaited page condition.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    driver: ChildGuard,
    _profile: TempDir,
}

impl Browser {
    /// Whether `chromium` and `chromedriver` are installed (scripts/test
    /// installs them).
    pub fn available() -> bool {
        have("chromium") && have("chromedriver")
    }

    /// Starts chromedriver and a headless chromium session.
    pub async fn start() -> Browser {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let profile = TempDir::new();
        let driver = ChildGuard::spawn(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0),
        );
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let status = reqwest::get(format!("{url}/status")).await;
            if let Ok(r) = status
                && r.text().await.is_ok_and(|t| t.contains("\"ready\":true"))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver on {port} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("a chromium session through chromedriver: {e}"));
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Polls (every 50 ms, up to [`PAGE_TIMEOUT`]) until `css` matches at
    /// least one element whose text satisfies `ok`; returns that text.
    pub async fn wait_for(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        let mut last = Vec::new();
        loop {
            last.clear();
            if let Ok(found) = self.client.find_all(Locator::Css(css)).await {
                for e in found {
                    let text = e.text().await.unwrap_or_default();
                    if ok(&text) {
                        return text;
                    }
                    last.push(text);
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "no `{css}` satisfied the condition within {PAGE_TIMEOUT:?}; found {last:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until nothing matches `css`.
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            match self.client.find_all(Locator::Css(css)).await {
                Ok(found) if found.is_empty() => return,
                _ => {}
            }
            if Instant::now() > deadline {
                panic!("`{css}` still on the page after {PAGE_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the first element matching `css` (waiting for it).
    pub async fn click(&self, css: &str) {
        self.wait_for(css, |_| true).await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("`{css}`: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click `{css}`: {e}"));
    }

    /// Ends the session (the browser quits), then the driver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
        drop(self);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver and the browser it started: the group is the driver's
        // PID (process_group(0) above).
        unsafe {
            libc::kill(-(self.driver.pid() as i32), libc::SIGKILL);
        }
    }
}
