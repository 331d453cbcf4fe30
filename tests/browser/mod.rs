//! Browser fixture for `tests/dashboard.rs`: starts ChromeDriver on a free port (in its own
//! process group, killed with its Chromium when the test ends), opens a headless Chromium
//! session through WebDriver (fantoccini) with the browser log enabled, and offers the few
//! steps the tests need: go to a page, wait for a condition in the page, click, type, take a
//! screenshot, and check that the page made no request to another host and logged no error.
//!
//! Without `chromedriver` on the PATH the tests are skipped with a message saying how to
//! enable them — unless `CI=true`, where that is a failure (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long a test waits for a condition in the page.
const WAIT: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    /// Kills ChromeDriver and its Chromium when the test ends, even by a panic.
    _driver: DriverGuard,
    /// poold's origin, e.g. `http://127.0.0.1:41234`.
    origin: String,
    /// Where this test's screenshots go.
    pub shots: PathBuf,
    /// Width and height the window adds around the page.
    frame: (u32, u32),
}

/// The screenshots the README shows, one of each page (in `docs/dashboard/`).
const README_SHOTS: &[&str] = &[
    "overview",
    "overview-dark",
    "phone",
    "jobs",
    "job",
    "job-results",
    "confirm",
    "token",
];

/// The window size of every test but the phone-width check.
pub const DESKTOP: (u32, u32) = (1280, 800);

impl Browser {
    /// Start ChromeDriver and a headless Chromium for `test`, against poold at `origin`.
    /// `None` (after printing why) when ChromeDriver is not installed and `CI` is not `true`.
    pub async fn start(test: &str, origin: &str) -> Option<Browser> {
        let Ok(chromedriver) = which::which("chromedriver") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but chromedriver is missing: .ci/run installs `chromium chromium-driver`"
            );
            eprintln!(
                "SKIPPED {test}: chromedriver is not installed. Run the browser tests with \
                 `apt-get install -y chromium chromium-driver` (Debian) and `cargo test --release \
                 --test dashboard`."
            );
            return None;
        };
        let port = free_port();
        let mut command = Command::new(chromedriver);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = DriverGuard(driver);
        let webdriver = format!("http://127.0.0.1:{port}");
        wait_driver_ready(&webdriver).await;

        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     format!("--window-size={},{}", DESKTOP.0, DESKTOP.1)],
        });
        if let Ok(chromium) = which::which("chromium") {
            options["binary"] = json!(chromium);
        }
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&webdriver)
            .await
            .expect("open a Chromium session through chromedriver");
        let shots = std::env::temp_dir().join("poold-dashboard").join(test);
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        // What the window adds around the page, measured at the start size (a window has a
        // minimum width, so this cannot be measured after a resize to phone width).
        let frame = client
            .execute(
                "return [outerWidth - innerWidth, outerHeight - innerHeight];",
                vec![],
            )
            .await
            .expect("measure the window");
        let extra = |i: usize| frame[i].as_u64().unwrap_or(0) as u32;
        let browser = Browser {
            client,
            _driver: driver,
            origin: origin.trim_end_matches('/').to_string(),
            shots,
            frame: (extra(0), extra(1)),
        };
        browser.set_size(DESKTOP).await;
        Some(browser)
    }

    /// Open `path` of poold (a full page load).
    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.origin))
            .await
            .expect("navigate");
        // Keep every resource entry for the host check (the default buffer holds 250).
        self.js("performance.setResourceTimingBufferSize(100000)")
            .await;
    }

    /// Evaluate a JavaScript expression in the page.
    pub async fn js(&self, expression: &str) -> Value {
        self.client
            .execute(&format!("return ({expression});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("script {expression:?} failed: {e}"))
    }

    /// Wait until a JavaScript expression is truthy; returns its value.
    pub async fn wait_js(&self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.js(expression).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!(0)
                && value != json!("");
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let shot = self.screenshot("timeout").await;
                panic!(
                    "waited {WAIT:?} for {what} ({expression}); last value {value}; screenshot {}",
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until `css` matches an element in the page.
    pub async fn wait_for(&self, css: &str) {
        let quoted = serde_json::to_string(css).expect("css");
        self.wait_js(css, &format!("document.querySelector({quoted}) !== null"))
            .await;
    }

    pub async fn click(&self, css: &str) {
        self.wait_for(css).await;
        let quoted = serde_json::to_string(css).expect("css");
        self.js(&format!(
            "document.querySelector({quoted}).scrollIntoView({{block: 'center'}})"
        ))
        .await;
        self.client
            .find(Locator::Css(css))
            .await
            .expect("find")
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replace the text of the input `css` with `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.wait_for(css).await;
        let input = self.client.find(Locator::Css(css)).await.expect("find");
        input.clear().await.expect("clear");
        input.send_keys(text).await.expect("type");
    }

    /// The text of the element `css` (empty when absent).
    pub async fn text(&self, css: &str) -> String {
        let quoted = serde_json::to_string(css).expect("css");
        self.js(&format!(
            "document.querySelector({quoted})?.innerText ?? ''"
        ))
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Make the page's viewport (not the window around it) `width` × `height` CSS pixels.
    pub async fn set_size(&self, (width, height): (u32, u32)) {
        let (frame_width, frame_height) = self.frame;
        self.client
            .set_window_size(width + frame_width, height + frame_height)
            .await
            .expect("resize");
    }

    /// Save a PNG of the window as `<name>.png` in this test's directory and print its path.
    /// With `UPDATE_SCREENSHOTS=1`, the README's pictures ([`README_SHOTS`]) are also copied
    /// to `docs/dashboard/`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        if std::env::var_os("UPDATE_SCREENSHOTS").is_some() && README_SHOTS.contains(&name) {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard");
            std::fs::create_dir_all(&docs).expect("docs/dashboard");
            std::fs::write(docs.join(format!("{name}.png")), &png).expect("write docs screenshot");
        }
        path
    }

    /// The page loaded nothing from another host, and the browser logged no error (a CSP
    /// violation is one) except those `allowed` says are expected.
    pub async fn assert_clean(&self, allowed: impl Fn(&str) -> bool) {
        let urls = self
            .js("[...performance.getEntriesByType('navigation'), \
                 ...performance.getEntriesByType('resource')].map(e => e.name)")
            .await;
        let urls: Vec<String> = serde_json::from_value(urls).expect("entry names");
        assert!(!urls.is_empty(), "no performance entries at all");
        let prefix = format!("{}/", self.origin);
        let foreign: Vec<&String> = urls.iter().filter(|u| !u.starts_with(&prefix)).collect();
        assert!(foreign.is_empty(), "requests to other hosts: {foreign:?}");

        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("read the browser log");
        let entries = log.as_array().expect("log entries");
        let errors: Vec<&Value> = entries
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .filter(|e| !allowed(e["message"].as_str().unwrap_or_default()))
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }

    /// End the WebDriver session; the guard then stops ChromeDriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    /// Save downloads into `dir` without asking.
    pub async fn allow_downloads(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).expect("download dir");
        let params = json!({"behavior": "allow", "downloadPath": dir});
        self.client
            .issue_cmd(Cdp("Browser.setDownloadBehavior", params))
            .await
            .expect("allow downloads");
    }

    /// Emulate the system's colour scheme (`light` or `dark`) for `prefers-color-scheme`.
    pub async fn color_scheme(&self, scheme: &str) {
        let params = json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]});
        self.client
            .issue_cmd(Cdp("Emulation.setEmulatedMedia", params))
            .await
            .expect("emulate the colour scheme");
    }
}

/// A Chrome DevTools Protocol command, through ChromeDriver's `goog/cdp/execute`.
#[derive(Debug)]
struct Cdp(&'static str, Value);

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"cmd": self.0, "params": self.1});
        (http::Method::POST, Some(body.to_string()))
    }
}

/// `POST /session/{id}/se/log` with `{"type": "browser"}`: ChromeDriver's browser console
/// log (not in W3C WebDriver, so not a fantoccini method). Reading it drains it.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// ChromeDriver, started in its own process group (the Chromium it starts runs in it too):
/// dropping the guard SIGKILLs the group and reaps ChromeDriver.
struct DriverGuard(Child);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

async fn wait_driver_ready(webdriver: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = reqwest::get(format!("{webdriver}/status")).await
            && let Ok(status) = response.json::<Value>().await
            && status["value"]["ready"] == true
        {
            return;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
