//! The web dashboard in a real browser: three agent processes in two PoPs,
//! the first serving its API on TCP with a token; Debian's Chromium,
//! headless, driven through chromedriver (WebDriver), opens the dashboard
//! and reads what a person would see — both PoPs on the map and in the
//! table, the hosts of its PoP, live — then a VM created through the API
//! appears on the page without a reload. The page itself needs no token;
//! the API it reads still does. Saves a screenshot (`LOCUS_SCREENSHOT`
//! names where; `target/dashboard.png` otherwise).

mod common;

use common::{Agent, Cluster, PopSpec, wait_until};
use fantoccini::{Client, ClientBuilder};
use locus_core::node::VmStatus;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "dashboard-test-token-0123456789";
const API: &str = "127.134.0.1:7952";

/// chromedriver on a free port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver, installed by scripts/setup.sh)");
        let url = format!("http://127.0.0.1:{port}");
        wait_until(Duration::from_secs(20), "chromedriver listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1400", "--hide-scrollbars"]
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a headless Chromium session")
}

/// What the page shows, as text.
async fn shown(b: &Client) -> String {
    let text = b.execute("return document.body.innerText", vec![]).await.expect("innerText");
    text.as_str().unwrap_or_default().to_owned()
}

/// Waits until the page's text passes `cond`.
async fn until(b: &Client, what: &str, timeout: Duration, cond: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = shown(b).await;
        if cond(&text) {
            return text;
        }
        assert!(start.elapsed() < timeout, "the page never showed {what}; it shows:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn processes_dashboard_in_headless_chromium_shows_pops_hosts_and_a_vm_created_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let pops: [PopSpec; 2] = [("paris", "FR", 48.86, 2.35, 2), ("madrid", "ES", 40.42, -3.70, 1)];
    let token = token_file.display().to_string();
    let cluster = Cluster::start_with(
        134,
        &pops,
        |_, _| 0,
        |i| {
            if i == 0 {
                vec!["--listen".into(), API.into(), "--token-file".into(), token.clone()]
            } else {
                vec![]
            }
        },
    );
    let agent: &Agent = &cluster.agents[0];
    wait_until(Duration::from_secs(30), "both PoPs are known", || {
        let v: locus::api::cluster::ClusterView = agent.json(&["cluster", "status"]);
        v.cluster.pops.len() == 2 && v.cluster.hosts.len() == 2
    });
    let driver = Driver::start();
    let rt = common::rt();
    rt.block_on(async {
        // The page needs no token; the API it reads does.
        let anonymous = locus::client::Client::new(locus::client::Endpoint::Tcp {
            addr: API.into(),
            token: "not-the-token".into(),
        });
        let (page, _) = anonymous.raw(hyper::Method::GET, "/", None).await.expect("GET /");
        assert_eq!(page.as_u16(), 200);
        let (api, _) = anonymous.raw(hyper::Method::GET, "/v1/cluster", None).await.expect("GET /v1/cluster");
        assert_eq!(api.as_u16(), 401);

        let b = browser(&driver).await;
        b.goto(&format!("http://{API}/#token={TOKEN}")).await.expect("open the dashboard");
        let text = until(&b, "both PoPs and this PoP's hosts, live", Duration::from_secs(20), |t| {
            ["paris (this)", "madrid", "paris-0 (this)", "paris-1", "live ·", "best-fit@"]
                .iter()
                .all(|w| t.contains(w))
        })
        .await;
        assert!(
            !text.contains("401") && !text.contains("unauthorized"),
            "the token reached the API:\n{text}"
        );
        let markers =
            b.execute("return document.querySelectorAll('#pops .pop').length", vec![]).await.expect("js");
        assert_eq!(markers.as_u64(), Some(2), "one marker per PoP on the map");
        let land = b
            .execute("return document.querySelector('#map .land').getBBox().width", vec![])
            .await
            .expect("js");
        assert!(land.as_f64().unwrap_or(0.0) > 300.0, "the land outline is drawn: {land:?}");
        let address = b.current_url().await.expect("url");
        assert!(!address.as_str().contains(TOKEN), "the token is taken out of the address bar: {address}");

        // A VM created now appears without a reload.
        let spec: locus_core::VmRequest =
            toml::from_str("name = 'web-live'\nvcpus = 2\nmemory-mib = 512").expect("request");
        let placed: VmStatus = agent.client().post("/v1/vms", Some(&spec)).await.expect("create");
        until(&b, "the new VM and its placement", Duration::from_secs(10), |t| {
            t.contains("web-live") && t.contains(&placed.host)
        })
        .await;
        let png = b.screenshot().await.expect("screenshot");
        let out = std::env::var_os("LOCUS_SCREENSHOT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| common::repo_root().join("target/dashboard.png"));
        std::fs::write(&out, &png).expect("write the screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot ({} bytes)", png.len());
        b.close().await.expect("close the browser");
    });
}
