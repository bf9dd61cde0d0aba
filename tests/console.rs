//! The browser console in a real browser: headless Chromium from Debian's
//! packages, driven over WebDriver (chromedriver), against a real server.
//! It opens the console and checks that the graph shows the broker,
//! triggers and Service with a refused manifest first; that a CESQL error
//! shows as it is typed; that an event sent with `pilotlight send` appears
//! in the tail within a second; that the Service's instances go from 0 to
//! 1 when the event reaches it; that the event's deliveries show; and that
//! a replay from the page delivers it again. Screenshots of each step are
//! saved under the test's target folder (`console-screenshots/`).
//!
//! Needs `chromium` and `chromedriver` (`apt-get install chromium
//! chromium-driver`): skipped without them, failed under `CI=true`.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{Subscriber, TestServer, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_pilotlight");
const WAIT: Duration = Duration::from_secs(30);
/// The default broker's tail, as the page lists it.
const BROKER_TAIL: &str = "/api/v1/brokers/default/default/events";

/// Chromium and its driver, if installed.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|name| {
            let path = Path::new("/usr/bin").join(name);
            path.exists().then_some(path)
        })
    };
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find(&["chromedriver"]);
    if let (Some(chromium), Some(driver)) = (chromium, driver) {
        return Some((chromium, driver));
    }
    let message = "the console's browser test needs Chromium and ChromeDriver: `apt-get install chromium chromium-driver`";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{message}");
    }
    eprintln!("skipping: {message}");
    None
}

/// A running chromedriver, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(driver: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver listens", WAIT, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open_browser(driver: &Driver, chromium: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session")
}

/// Where screenshots go: beside the test binary's other files.
fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot folder");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// The text of the first element `css` selects, if any.
async fn text_of(browser: &Client, css: &str) -> Option<String> {
    let element = browser.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

/// Waits until `css` selects an element; fails naming it.
async fn wait_for(browser: &Client, css: &str, within: Duration) {
    wait_until(&format!("the page shows {css}"), within, async || {
        browser.find(Locator::Css(css)).await.is_ok()
    })
    .await;
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn select(browser: &Client, css: &str, value: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .select_by_value(value)
        .await
        .unwrap_or_else(|e| panic!("choosing {value} in {css}: {e}"));
}

async fn type_into(browser: &Client, css: &str, text: &str) {
    let input = browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

fn manifests(subscriber: &Subscriber) -> Vec<(&'static str, String)> {
    let broker = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n";
    let service = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: display\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n        pilotlight.dev/runtime: process\n    spec:\n      containers:\n        - command: [\"{BIN}\", event-display]\n"
    );
    let to_display = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: to-display\nspec:\n  broker: default\n  filter:\n    attributes:\n      type: com.example.order\n  subscriber:\n    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: display\n";
    let audit = format!(
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: audit\nspec:\n  broker: default\n  filters:\n    - cesql: \"source LIKE '/audit%'\"\n  subscriber:\n    uri: {}\n",
        subscriber.url("/")
    );
    let refused = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: broken\nspec:\n  broker: default\n  filters:\n    - cesql: \"type = (\"\n  subscriber:\n    uri: http://127.0.0.1:9/\n";
    vec![
        ("broker.yaml", broker.to_owned()),
        ("display.yaml", service),
        ("to-display.yaml", to_display.to_owned()),
        ("audit.yaml", audit),
        ("broken.yaml", refused.to_owned()),
    ]
}

/// The deliveries of one event, as the console's detail panel reads them.
async fn deliveries(s: &TestServer, event: &Value) -> Value {
    let reply = support::request(
        http::Method::POST,
        &s.admin_url("/api/v1/brokers/default/default/deliveries"),
        &[("content-type", "application/cloudevents+json")],
        event.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_mesh_tails_events_scales_and_replays() {
    let Some((chromium, driver)) = browser() else {
        return;
    };
    let subscriber = Subscriber::accepting().await;
    let files = manifests(&subscriber);
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let s = TestServer::start(&files).await;
    let driver = Driver::start(&driver).await;
    let browser = open_browser(&driver, &chromium).await;
    let console = s.admin_url("/");

    // The mesh: broker → triggers → Service and URI, the refused file first.
    browser.goto(&console).await.expect("open the console");
    for node in [
        "Broker/default/default",
        "Trigger/default/to-display",
        "Trigger/default/audit",
        "Service/default/display",
    ] {
        wait_for(&browser, &format!("g.node[data-id=\"{node}\"]"), WAIT).await;
    }
    let refused = text_of(&browser, "#refused").await.unwrap_or_default();
    assert!(
        refused.contains("broken.yaml") && refused.contains("spec.filters"),
        "{refused}"
    );
    wait_until("the Service shows 0 instances", WAIT, async || {
        text_of(&browser, "[data-service=\"default/display\"].instances")
            .await
            .is_some_and(|t| t.trim() == "0")
    })
    .await;
    screenshot(&browser, "mesh").await;

    // The tail: a CESQL error as it is typed, then a valid filter.
    browser
        .goto(&format!("{console}#tail"))
        .await
        .expect("tail tab");
    wait_for(&browser, "#tail-source", WAIT).await;
    wait_until("the broker is in the tail's list", WAIT, async || {
        browser
            .find(Locator::Css(&format!(
                "#tail-source option[value=\"{BROKER_TAIL}\"]"
            )))
            .await
            .is_ok()
    })
    .await;
    select(&browser, "#tail-source", BROKER_TAIL).await;
    type_into(&browser, "#tail-filter", "type LIKE 'com.example.%' AND (").await;
    wait_until("the filter's error shows", WAIT, async || {
        text_of(&browser, "#tail-filter-error")
            .await
            .is_some_and(|t| t.contains("column"))
    })
    .await;
    type_into(&browser, "#tail-filter", "type LIKE 'com.example.%'").await;
    wait_until("the filter's error clears", WAIT, async || {
        text_of(&browser, "#tail-filter-error")
            .await
            .is_some_and(|t| t.trim().is_empty())
    })
    .await;
    // The tail is open once the page says so; give its request a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // An event sent with `pilotlight send` shows within a second.
    let sent = Command::new(BIN)
        .args([
            "send",
            "--to",
            &s.broker_url("default", "default"),
            "--type",
            "com.example.order",
            "--source",
            "/shop",
            "--id",
            "order-1",
            "--data",
            "{\"order\": 1}",
        ])
        .output()
        .expect("pilotlight send runs");
    assert!(sent.status.success(), "{sent:?}");
    let shown_by = Instant::now() + Duration::from_secs(1);
    let row = "tr.tail-event[data-id=\"order-1\"]";
    while browser.find(Locator::Css(row)).await.is_err() {
        assert!(
            Instant::now() < shown_by,
            "the event did not appear in the tail within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    screenshot(&browser, "tail").await;

    // The event reaches the Service, which starts: 0 → 1 instance.
    browser
        .goto(&format!("{console}#services"))
        .await
        .expect("services tab");
    wait_until("the Service shows 1 instance", WAIT, async || {
        text_of(
            &browser,
            "section.service [data-service=\"default/display\"].instances",
        )
        .await
        .is_some_and(|t| t.trim() == "1")
    })
    .await;
    screenshot(&browser, "services").await;

    // The event's detail: which triggers matched, how delivery went.
    browser
        .goto(&format!("{console}#tail"))
        .await
        .expect("tail tab");
    let event = json!({"specversion": "1.0", "id": "order-1", "source": "/shop", "type": "com.example.order"});
    wait_until("the delivery is journalled", WAIT, async || {
        deliveries(&s, &event).await["triggers"]
            .as_array()
            .is_some_and(|t| {
                t.iter().any(|t| {
                    t["trigger"] == "default/to-display"
                        && t["deliveries"][0]["outcome"] == "delivered"
                })
            })
    })
    .await;
    let answer = deliveries(&s, &event).await;
    let triggers = answer["triggers"].as_array().cloned().unwrap_or_default();
    let of = |name: &str| {
        let found = triggers.iter().find(|t| t["trigger"] == name);
        found.cloned().unwrap_or_default()
    };
    // What the Service answered, which the page must show.
    let code = of("default/to-display")["deliveries"][0]["attempts"][0]["code"].to_string();
    let audit = of("default/audit");
    assert_eq!(audit["matched"], false, "{answer}");
    // The tail reopened with the tab: the event comes again with --since.
    wait_for(&browser, "#tail-since", WAIT).await;
    select(&browser, "#tail-since", "5m").await;
    select(&browser, "#tail-source", BROKER_TAIL).await;
    wait_for(&browser, row, WAIT).await;
    click(&browser, row).await;
    wait_until("the detail shows the delivery", WAIT, async || {
        text_of(&browser, "#event-detail").await.is_some_and(|t| {
            t.contains("default/to-display") && t.contains("delivered") && t.contains(&code)
        })
    })
    .await;
    screenshot(&browser, "event").await;

    // Replay from the page: counted first, then delivered again.
    browser.goto(&console).await.expect("mesh tab");
    wait_for(
        &browser,
        "g.node[data-id=\"Trigger/default/to-display\"]",
        WAIT,
    )
    .await;
    click(&browser, "g.node[data-id=\"Trigger/default/to-display\"]").await;
    wait_for(&browser, "#replay-dialog[open]", WAIT).await;
    type_into(&browser, "#replay-since", "10m").await;
    click(&browser, "#replay-dry-run").await;
    wait_until("the replay's count shows", WAIT, async || {
        text_of(&browser, "#replay-count")
            .await
            .is_some_and(|t| t.contains("1 event"))
    })
    .await;
    screenshot(&browser, "replay").await;
    click(&browser, "#replay-confirm").await;
    wait_until("the replay delivers the event again", WAIT, async || {
        deliveries(&s, &event).await["triggers"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["trigger"] == "default/to-display"))
            .and_then(|t| t["deliveries"].as_array().map(Vec::len))
            == Some(2)
    })
    .await;

    // A link to one broker's tail opens it.
    browser
        .goto(&format!("{console}#tail={BROKER_TAIL}"))
        .await
        .expect("a linked tail");
    wait_until("the linked tail is chosen", WAIT, async || {
        let Ok(source) = browser.find(Locator::Css("#tail-source")).await else {
            return false;
        };
        source.prop("value").await.ok().flatten().as_deref() == Some(BROKER_TAIL)
    })
    .await;

    browser.close().await.expect("close the browser");
}
