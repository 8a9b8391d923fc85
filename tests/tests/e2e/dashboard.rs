//! The dashboard in a real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromedriver`, spoken to with the JSON wire protocol over the HTTP client the tests already use):
//! a g1 officer logs in through the page, a residual-current rise published over MQTT appears in the
//! incident list without a reload, is acknowledged from its page and shows acknowledged in the list;
//! g2's incident never reaches the page. Screenshots at 360×740 and 1366×768 are written under the
//! target directory (`tmp/dashboard/`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parkwatch_e2e::{free_port, wait_for_port, wait_until, Gateway, Mosquitto, Publisher};
use serde_json::{json, Value};

const LI_PASSWORD: &str = "li-Pa55word-dash";

/// The WebDriver name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn config(port: u16) -> String {
    let source = parkwatch_e2e::numbers_over_mqtt(port);
    // The demo park's plan, which the overview draws the cells on.
    let plan = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/demo-plan.svg");
    format!(
        r#"
[site]
id = "t"
timezone = "Asia/Shanghai"
[site.plan]
image = "{plan}"
width = 800
height = 500

[api]
listen = "{{api}}"

[[grids]]
id = "g1"
name = "一号网格"
outline = [[20, 20], [780, 20], [780, 160], [20, 160]]
[[grids]]
id = "g2"
name = "二号网格"
outline = [[500, 182], [780, 182], [780, 330], [500, 330]]

[[devices]]
id = "m1"
grid = "g1"
category = "electrical"
points = [{{ name = "residual_current", unit = "mA" }}]

[[devices]]
id = "m2"
grid = "g2"
category = "electrical"
points = [{{ name = "residual_current", unit = "mA" }}]

{source}
[rules]
builtin = true
"#
    )
}

/// The first of `names` found on the PATH or in /usr/bin and /usr/lib/chromium.
fn program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/bin".into(), "/usr/lib/chromium".into()]).collect::<Vec<_>>();
    names.iter().flat_map(|n| dirs.iter().map(move |d| d.join(n))).find(|p| p.is_file())
}

/// chromedriver on a free port, and one browser session of headless Chromium.
pub(crate) struct Browser {
    driver: Child,
    url: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) fn start() -> Self {
        const INSTALL: &str = "apt-get install -y chromium chromium-driver fonts-wqy-microhei";
        let chromium = program(&["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("the dashboard test needs Debian's chromium; install it with `{INSTALL}`"));
        let chromedriver = program(&["chromedriver"])
            .unwrap_or_else(|| panic!("the dashboard test needs chromedriver; install it with `{INSTALL}`"));
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        wait_for_port(port, "chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--user-data-dir={}", profile.path().display()), "--window-size=1366,768",
                         "--lang=zh-CN"],
            },
        } } });
        let mut b = Self { driver, url, session: String::new(), _profile: profile };
        let v = b.call("POST", "/session", Some(&caps));
        b.session = v["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_owned();
        b
    }

    /// One WebDriver command; its `value`. A WebDriver error fails the test with its message.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let req = ureq::request(method, &format!("{}{path}", self.url)).timeout(Duration::from_secs(60));
        let r = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => req.call(),
        };
        let text = match r {
            Ok(r) => r.into_string().unwrap(),
            Err(ureq::Error::Status(status, r)) => {
                panic!("WebDriver {method} {path}: {status}: {}", r.into_string().unwrap_or_default())
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        };
        let v: Value = serde_json::from_str(&text).unwrap();
        v["value"].clone()
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), Some(&body))
    }

    pub(crate) fn open(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its value.
    pub(crate) fn js(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", json!({ "script": script, "args": args }))
    }

    /// Waits for the element `css` and returns its reference.
    fn find(&self, css: &str) -> String {
        wait_until(Duration::from_secs(10), &format!("element {css}"), || {
            let found = self.js("return document.querySelector(arguments[0]) !== null;", json!([css]));
            found.as_bool().unwrap_or(false).then_some(())
        });
        let v = self.cmd("POST", "/element", json!({ "using": "css selector", "value": css }));
        v[ELEMENT].as_str().unwrap_or_else(|| panic!("element {css}: {v}")).to_owned()
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/value"), json!({ "text": text }));
    }

    /// Resizes the window and checks the page got that viewport.
    pub(crate) fn viewport(&self, width: u32, height: u32) {
        self.cmd("POST", "/window/rect", json!({ "width": width, "height": height }));
        let w = self.js("return window.innerWidth;", json!([]));
        let shown = w.as_u64().unwrap_or(0);
        if shown != u64::from(width) {
            // Headless windows may include a frame: grow the window by the difference once.
            let grown = u64::from(width) * 2 - shown;
            self.cmd("POST", "/window/rect", json!({ "width": grown, "height": height }));
        }
        assert_eq!(self.js("return window.innerWidth;", json!([])), json!(width), "viewport width");
    }

    /// Writes a PNG screenshot to `path` and checks it is one of the viewport's width.
    pub(crate) fn screenshot(&self, path: &Path, width: u32) {
        use base64::Engine as _;
        let v = self.call("GET", &format!("/session/{}/screenshot", self.session), None);
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let ratio = self.js("return window.devicePixelRatio;", json!([])).as_f64().unwrap_or(1.0);
        assert_eq!(f64::from(w), f64::from(width) * ratio, "screenshot width of {}", path.display());
        std::fs::write(path, &png).unwrap();
    }
}

impl Browser {
    /// Prints the page to PDF (WebDriver's Print Page) and writes it to `path`; returns its size.
    pub(crate) fn print_pdf(&self, path: &Path) -> usize {
        use base64::Engine as _;
        let v = self.cmd("POST", "/print", json!({ "orientation": "portrait", "background": true }));
        let pdf = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
        assert!(pdf.starts_with(b"%PDF-"), "not a PDF");
        std::fs::write(path, &pdf).unwrap();
        pdf.len()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ =
                ureq::delete(&format!("{}/session/{}", self.url, self.session)).timeout(Duration::from_secs(10)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The incident of `device` among the open ones the admin sees.
fn incident_of(gw: &Gateway, device: &str) -> Option<i64> {
    let open = gw.json("/api/v1/incidents?state=open");
    open.as_array()?.iter().find(|i| i["device"] == device)?["id"].as_i64()
}

pub(crate) fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_officer_sees_an_incident_arrive_live_and_acknowledges_it_in_chromium() {
    let broker = Mosquitto::start("");
    let gw = Gateway::start(&config(broker.port));
    // The first user must be an admin.
    gw.add_user("root", "admin", &[], "root-Pa55word-dash");
    gw.add_user("li", "officer", &["g1"], LI_PASSWORD);
    let b = Browser::start();
    let base = format!("http://{}", gw.api);
    let artifacts = artifacts();

    // Log in through the page; the overview shows the officer's grid only.
    b.open(&format!("{base}/"));
    b.find("#user");
    assert_eq!(b.js("return location.hash;", json!([])), json!("#/login"));
    b.type_into("#user", "li");
    b.type_into("#password", LI_PASSWORD);
    b.click("#login-submit");
    b.find("#tiles a[data-grid='g1']");
    let tiles = b.js("return [...document.querySelectorAll('#tiles a')].map(a => a.dataset.grid);", json!([]));
    assert_eq!(tiles, json!(["g1"]));
    // The site plan, with the officer's cell outlined on it and no other.
    let cells = b.js("return [...document.querySelectorAll('#plan a.cell')].map(a => a.dataset.grid);", json!([]));
    assert_eq!(cells, json!(["g1"]));
    let plan = b.js(
        "const x = new XMLHttpRequest(); x.open('GET', document.querySelector('#plan image').getAttribute('href'), false); \
         x.send(); return [x.status, x.getResponseHeader('content-type')];",
        json!([]),
    );
    assert_eq!(plan, json!([200, "image/svg+xml"]));

    // The live list, empty, with its stream open.
    b.click("#nav a[href='#/incidents']");
    wait_until(Duration::from_secs(10), "the live stream and the list", || {
        let s = b.js(
            "return document.querySelector('#live.on') !== null && document.querySelector('#incident-list li') !== null;",
            json!([]),
        );
        s.as_bool().unwrap_or(false).then_some(())
    });
    // A reload would lose this mark.
    b.js("window.__noReload = true;", json!([]));

    let p = Publisher::connect(broker.port, "dashboard-test");
    wait_until(Duration::from_secs(10), "the subscription", || {
        p.publish("park/g1/m1/residual_current", 0, "100");
        p.publish("park/g2/m2/residual_current", 0, "100");
        std::thread::sleep(Duration::from_millis(100));
        gw.point("m1", "residual_current").and(gw.point("m2", "residual_current"))
    });
    p.publish("park/g2/m2/residual_current", 0, "350");
    p.publish("park/g1/m1/residual_current", 0, "350");
    let (g1, g2) = wait_until(Duration::from_secs(15), "an incident on each meter", || {
        Some((incident_of(&gw, "m1")?, incident_of(&gw, "m2")?))
    });
    let committed = Instant::now();
    let row = format!("#incident-list li[data-id='{g1}']");
    wait_until(Duration::from_secs(5), "the g1 incident in the list", || {
        b.js("return document.querySelector(arguments[0]) !== null;", json!([row]))
            .as_bool()
            .unwrap_or(false)
            .then_some(())
    });
    let seen = committed.elapsed();
    assert!(seen <= Duration::from_secs(2), "the incident reached the list {seen:?} after it was committed");
    assert_eq!(b.js("return window.__noReload === true;", json!([])), json!(true), "the page was reloaded");
    assert_eq!(
        b.js("return document.querySelector(arguments[0]).dataset.state;", json!([row])),
        json!("active_unacked")
    );
    b.screenshot(&artifacts.join("incidents-1366x768.png"), 1366);

    // Open it and acknowledge it.
    b.click(&format!("{row} a"));
    b.click("#ack");
    wait_until(Duration::from_secs(10), "the acknowledgement on the incident's page", || {
        let s = b.js("return document.querySelector('.state[data-state]')?.dataset.state ?? null;", json!([]));
        (s == json!("active_acked")).then_some(())
    });
    assert!(b.js("return document.querySelector('#ack') === null;", json!([])).as_bool().unwrap());
    let detail = gw.json(&format!("/api/v1/incidents/{g1}"));
    assert_eq!(detail["acked_by"], "li");
    b.find("#history tr");
    b.screenshot(&artifacts.join("incident-1366x768.png"), 1366);

    // The point's trend, the grid's supervisor page and the rules answer without an error, with data
    // or with the "no data" state for an endpoint not there (404).
    for (hash, part) in
        [("#/point/m1/residual_current?zoom=1h", "#chart"), ("#/grid/g1", "#kpis"), ("#/rules", "main table")]
    {
        b.open(&format!("{base}/{hash}"));
        let shown = format!("{part} svg, {part} .empty, {part} tr, .error");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !b.js("return document.querySelector(arguments[0]) !== null;", json!([shown])).as_bool().unwrap_or(false)
        {
            let text = b.js("return location.hash + '\\n' + document.body.innerText;", json!([]));
            assert!(Instant::now() < deadline, "{hash} shows nothing after 10 s:\n{}", text.as_str().unwrap_or(""));
            std::thread::sleep(Duration::from_millis(25));
        }
        let error = b.js("return document.querySelector('.error')?.textContent ?? null;", json!([]));
        assert_eq!(error, Value::Null, "{hash}");
    }
    b.screenshot(&artifacts.join("rules-1366x768.png"), 1366);

    // English on request, remembered by the browser.
    b.click("#lang");
    wait_until(Duration::from_secs(5), "the English page", || {
        let nav = b.js("return document.querySelector('#nav a[href=\"#/incidents\"]').textContent;", json!([]));
        (nav == json!("Incidents")).then_some(())
    });
    b.open(&format!("{base}/#/"));
    b.find("#tiles");
    assert_eq!(b.js("return document.querySelector('h2').textContent;", json!([])), json!("Device health"));
    b.click("#lang");

    // Back to the list: acknowledged; g2's incident is nowhere, although its change came first.
    b.click("#nav a[href='#/incidents']");
    wait_until(Duration::from_secs(10), "the acknowledged incident in the list", || {
        let s = b.js("return document.querySelector(arguments[0])?.dataset.state ?? null;", json!([row]));
        (s == json!("active_acked")).then_some(())
    });
    let text = b.js("return document.body.innerText;", json!([])).as_str().unwrap().to_owned();
    assert!(b
        .js("return document.querySelector(arguments[0]) === null;", json!([format!("li[data-id='{g2}']")]))
        .as_bool()
        .unwrap());
    assert!(!text.contains("m2") && !text.contains("g2"), "g2 shows on the page:\n{text}");
    // An officer who types g2's incident into the address bar is told nothing.
    b.open(&format!("{base}/#/incident/{g2}"));
    b.find(".empty");
    assert!(!b.js("return document.body.innerText;", json!([])).as_str().unwrap().contains("m2"));

    // The phone: overview and list at 360 px, nothing wider than the screen; then the desktop overview.
    b.viewport(360, 740);
    b.open(&format!("{base}/#/incidents"));
    b.find(&row);
    let overflow = b.js("return document.documentElement.scrollWidth - window.innerWidth;", json!([]));
    assert!(overflow.as_i64().unwrap() <= 0, "the list is wider than a 360 px phone by {overflow} px");
    b.screenshot(&artifacts.join("incidents-360x740.png"), 360);
    b.open(&format!("{base}/#/"));
    b.find("#tiles a.sev-critical[data-grid='g1']");
    b.screenshot(&artifacts.join("overview-360x740.png"), 360);
    b.viewport(1366, 768);
    b.open(&format!("{base}/#/"));
    b.find("#tiles a.sev-critical[data-grid='g1']");
    b.find("#plan a.cell.sev-critical[data-grid='g1']");
    b.screenshot(&artifacts.join("overview-1366x768.png"), 1366);
    println!("screenshots in {}; the incident reached the list {seen:?} after its commit", artifacts.display());
}
