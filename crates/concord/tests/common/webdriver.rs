//! A small W3C WebDriver client that drives headless Chromium through chromedriver, for the
//! dashboard's end-to-end test: plain HTTP/1.1 over a loopback socket, JSON bodies.
//!
//! [`Browser::start`] starts chromedriver on a free port and opens a session; dropping the
//! browser ends the session, stops chromedriver and any Chromium left of it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The key W3C WebDriver names an element reference with.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// How long chromedriver may take to start listening.
const STARTUP: Duration = Duration::from_secs(30);

/// Where Chromium and chromedriver are.
#[derive(Clone, Debug)]
pub struct Tools {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

/// Chromium and chromedriver: from `CHROMIUM` and `CHROMEDRIVER` when set, else Debian's
/// (`chromium`, `chromium-driver`) or any on `PATH`. An error says what is missing.
pub fn tools() -> Result<Tools, String> {
    let find = |env: &str, names: &[&str]| -> Option<PathBuf> {
        if let Some(path) = std::env::var_os(env) {
            return Some(PathBuf::from(path)).filter(|p| p.is_file());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        names
            .iter()
            .flat_map(|name| {
                std::iter::once(Path::new("/usr/bin").join(name))
                    .chain(std::env::split_paths(&path).map(move |d| d.join(name)))
            })
            .find(|p| p.is_file())
    };
    let chromium = find("CHROMIUM", &["chromium", "chromium-browser", "google-chrome"]);
    let chromedriver = find("CHROMEDRIVER", &["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Ok(Tools { chromium, chromedriver }),
        (c, d) => {
            let missing: Vec<&str> = [(c.is_none(), "chromium"), (d.is_none(), "chromedriver")]
                .iter()
                .filter(|(gone, _)| *gone)
                .map(|(_, name)| *name)
                .collect();
            Err(format!(
                "{} not found (Debian: apt-get install chromium chromium-driver; or set CHROMIUM / CHROMEDRIVER)",
                missing.join(" and ")
            ))
        }
    }
}

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile and a `width`×`height`
    /// window.
    pub fn start(tools: &Tools, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("chromedriver log");
        let driver = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", tools.chromedriver.display()));
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            profile,
        };

        let deadline = Instant::now() + STARTUP;
        loop {
            match browser.command("GET", "/status", None) {
                Ok(status) if status["ready"].as_bool() == Some(true) => break,
                other => {
                    if let Ok(Some(exit)) = browser.driver.try_wait() {
                        panic!("chromedriver exited ({exit}):\n{}", browser.driver_log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "chromedriver not ready after {STARTUP:?}: {other:?}\n{}",
                        browser.driver_log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }

        let user_data_dir = browser.profile.path().join("profile");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--hide-scrollbars".to_string(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", user_data_dir.display()),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": tools.chromium.to_string_lossy(), "args": args },
            }}
        });
        let created = browser
            .command("POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| panic!("cannot open a Chromium session: {e}\n{}", browser.driver_log()));
        browser.session = created["sessionId"].as_str().expect("session id").to_string();
        browser.session_command("POST", "/timeouts", json!({ "pageLoad": 30_000, "script": 30_000 }));
        browser
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.session_command("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page, returning what it
    /// returns.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.session_command("POST", "/execute/sync", json!({ "script": script, "args": args }))
    }

    /// The first element `css` selects, or why there is none.
    pub fn find(&self, css: &str) -> Result<String, String> {
        let path = format!("/session/{}/element", self.session);
        let found = self.command("POST", &path, Some(&json!({ "using": "css selector", "value": css })))?;
        found[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("not an element: {found}"))
    }

    /// Clicks an element.
    pub fn click(&self, element: &str) {
        self.session_command("POST", &format!("/element/{element}/click"), json!({}));
    }

    /// Types `text` into an element.
    pub fn type_text(&self, element: &str, text: &str) {
        self.session_command("POST", &format!("/element/{element}/value"), json!({ "text": text }));
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session_command("GET", "/screenshot", Value::Null);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("screenshot is base64 text"))
            .expect("screenshot is base64")
    }

    /// Polls `check` until it gives a value, for at most `timeout`; fails naming `what` and the
    /// last thing `check` saw.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, check: impl FnMut(&Browser) -> Result<T, String>) -> T {
        self.poll(timeout, check)
            .unwrap_or_else(|seen| panic!("the page did not show {what} within {timeout:?}; last seen: {seen}"))
    }

    /// Polls `check` until it gives a value, for at most `timeout`; else what it last saw.
    pub fn poll<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Browser) -> Result<T, String>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match check(self) {
                Ok(value) => return Ok(value),
                Err(seen) if Instant::now() >= deadline => return Err(seen),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn session_command(&self, method: &str, path: &str, body: Value) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let body = (!body.is_null()).then_some(body);
        self.command(method, &full, body.as_ref())
            .unwrap_or_else(|e| panic!("WebDriver {method} {path} failed: {e}"))
    }

    /// One WebDriver call: its `value`, or the error chromedriver gave.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let (status, body) = http(self.port, method, path, body)?;
        let parsed: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("status {status}, not JSON ({e}): {}", String::from_utf8_lossy(&body)))?;
        if status != 200 {
            let value = &parsed["value"];
            return Err(format!("status {status}: {} {}", value["error"], value["message"]));
        }
        Ok(parsed["value"].clone())
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.command("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium normally goes with its session; kill any process still using this profile.
        let profile = self.profile.path().to_string_lossy().into_owned();
        for pid in processes_mentioning(&profile) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Ids of the processes whose command line mentions `text` (Linux).
fn processes_mentioning(text: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
        .collect()
}

/// One HTTP/1.1 request to the loopback `port`: the response's status and body. The body is
/// read by its `Content-Length` (or chunks): chromedriver may keep the connection open.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Vec<u8>), String> {
    let io = |e: std::io::Error| format!("{method} {path}: {e}");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(io)?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).map_err(io)?;
    let payload = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(request.as_bytes()).map_err(io)?;

    let mut response = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    // Reads more of the response; false at its end.
    let mut more = |response: &mut Vec<u8>| -> Result<bool, String> {
        let n = stream.read(&mut buf).map_err(io)?;
        response.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    };
    let split = loop {
        if let Some(at) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if !more(&mut response)? {
            return Err(format!("{method} {path}: connection closed before the headers ended"));
        }
    };
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let start = split + 4;
    if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while response.len() < start + length {
            if !more(&mut response)? {
                return Err(format!(
                    "{method} {path}: connection closed {} bytes short",
                    start + length - response.len()
                ));
            }
        }
        return Ok((status, response[start..start + length].to_vec()));
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            if let Some(body) = dechunk(&response[start..])? {
                return Ok((status, body));
            }
            if !more(&mut response)? {
                return Err(format!("{method} {path}: connection closed inside a chunked body"));
            }
        }
    }
    while more(&mut response)? {}
    Ok((status, response[start..].to_vec()))
}

/// The payload of a chunked body, or `None` while it is incomplete.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size: {e}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        let Some(chunk) = body.get(..size) else { return Ok(None) };
        out.extend_from_slice(chunk);
        let Some(rest) = body.get(size + 2..) else {
            return Ok(None);
        };
        body = rest;
    }
}
