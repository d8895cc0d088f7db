//! The end-to-end harness: builds the `fnhost` binary and the guest
//! components once per test run, starts real hosts on `127.0.0.1:0` with a
//! temp data dir, and talks to them over real HTTP and through the CLI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

/// The repository root.
pub fn repo_root() -> PathBuf {
    // Cargo names the crate's directory at run time too; the compile-time
    // one can be another checkout's when a target dir is shared (cargo
    // reuses this library across checkouts of the same commit).
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.parent().unwrap().to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The `fnhost` binary, built (or found fresh) once per test run; or the
/// one `FNHOST_TEST_BIN` names (to run the suite against another build,
/// e.g. a release binary, or the commit before a fix).
pub fn fnhost_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("FNHOST_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let out = cargo()
            .current_dir(repo_root())
            .args([
                "build",
                "-p",
                "fnhost",
                "--bin",
                "fnhost",
                "--message-format=json-render-diagnostics",
            ])
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(out.status.success(), "building fnhost failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"]["name"] == "fnhost" && v["executable"].is_string())
            .map(|v| PathBuf::from(v["executable"].as_str().unwrap()))
            .next_back()
            .expect("cargo reported no fnhost executable")
    })
}

/// Every regular file under `dirs` (but the harness's own log) holding
/// `needle`.
pub fn files_holding(dirs: &[&Path], needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file()
                && p.file_name().unwrap() != "host.log"
                && std::fs::read(&p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

/// Make the harness run the release `fnhost` (built now, unless
/// `FNHOST_TEST_BIN` already names one): for benches. Call it first, before
/// any other thread starts.
pub fn use_release_host() {
    if std::env::var_os("FNHOST_TEST_BIN").is_some() {
        return;
    }
    let root = repo_root();
    let status = cargo()
        .current_dir(&root)
        .args(["build", "--release", "-p", "fnhost", "--bin", "fnhost"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building the release host failed");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // SAFETY: the caller calls it before any other thread starts.
    unsafe { std::env::set_var("FNHOST_TEST_BIN", dir.join("release/fnhost")) };
}

/// The URL `fnhost serve` says it listens on (its stdout's `fnhost
/// listening on <url>` line), within 120 s; its stdout is read to the end
/// on a thread of its own, so the host never blocks on it.
pub fn listening_url(stdout: std::process::ChildStdout) -> Result<String, mpsc::RecvTimeoutError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("fnhost listening on ") {
                let _ = tx.send(url.to_string());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(120))
}

/// Paths of the guest components.
pub struct Guests {
    /// `functions/hello`.
    pub hello: PathBuf,
    /// `functions/thumbnail`.
    pub thumbnail: PathBuf,
    /// `functions/order-processor`.
    pub order_processor: PathBuf,
    /// `functions/cleanup`.
    pub cleanup: PathBuf,
    /// `functions/gatekeeper`.
    pub gatekeeper: PathBuf,
    /// `functions/vault`.
    pub vault: PathBuf,
    /// `tests/guests/adversary`.
    pub adversary: PathBuf,
    /// `tests/guests/empty`.
    pub empty: PathBuf,
    /// `tests/guests/not-a-job`: a wasi command, not a job.
    pub not_a_job: PathBuf,
}

/// Build the example functions and the test guests for wasm32-wasip2 once,
/// adding the target with rustup when it is missing.
pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo_root().join("scripts/ensure-wasm-target"))
            .status()
            .expect("run scripts/ensure-wasm-target");
        assert!(status.success(), "adding the wasm32-wasip2 target failed");
        for ws in ["functions", "tests/guests"] {
            // Each guest workspace keeps its own target dir, whatever
            // CARGO_TARGET_DIR says for the host.
            let status = cargo()
                .current_dir(repo_root().join(ws))
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--target-dir",
                    "target",
                ])
                .status()
                .expect("run cargo build for the guests");
            assert!(status.success(), "building the {ws} guests failed");
        }
        let f = repo_root().join("functions/target/wasm32-wasip2/release");
        let t = repo_root().join("tests/guests/target/wasm32-wasip2/release");
        Guests {
            hello: f.join("hello.wasm"),
            thumbnail: f.join("thumbnail.wasm"),
            order_processor: f.join("order_processor.wasm"),
            cleanup: f.join("cleanup.wasm"),
            gatekeeper: f.join("gatekeeper.wasm"),
            vault: f.join("vault.wasm"),
            adversary: t.join("adversary.wasm"),
            empty: t.join("empty.wasm"),
            not_a_job: t.join("not-a-job.wasm"),
        }
    })
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// A response: status, headers (lower-case names) and body.
pub struct Resp {
    /// The status code.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// A running `fnhost serve`.
pub struct Host {
    child: Option<Child>,
    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The admin token.
    pub token: String,
    /// The data dir.
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    client: reqwest::blocking::Client,
}

impl Host {
    /// A host on a fresh temp data dir.
    pub fn start() -> Host {
        let temp = tempfile::tempdir().unwrap();
        let mut host = Host::start_in(temp.path(), &[]);
        host._temp = Some(temp);
        host
    }

    /// A host on a fresh temp data dir with extra `serve` arguments.
    pub fn start_with(args: &[&str]) -> Host {
        let temp = tempfile::tempdir().unwrap();
        let mut host = Host::start_in(temp.path(), args);
        host._temp = Some(temp);
        host
    }

    /// A host on `data_dir` (which outlives it) with extra `serve` arguments.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Host {
        Host::start_env(data_dir, args, &[])
    }

    /// [`Host::start_in`] with extra environment variables (AWS credentials
    /// for a local server, say).
    pub fn start_env(data_dir: &Path, args: &[&str], env: &[(String, String)]) -> Host {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("host.log"))
            .unwrap();
        let mut child = Command::new(fnhost_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env_remove("FNHOST_TOKEN")
            .env(
                "FNHOST_LOG",
                "info,fnhost::dispatcher=debug,fnhost::sandbox=debug,fnhost::triggers::timer=debug",
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start fnhost serve");
        let url = match listening_url(child.stdout.take().unwrap()) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "fnhost serve did not start; its log:\n{}",
                    std::fs::read_to_string(data_dir.join("host.log")).unwrap_or_default()
                );
            }
        };
        let token = std::fs::read_to_string(data_dir.join("token"))
            .unwrap()
            .trim()
            .to_string();
        Host {
            child: Some(child),
            url,
            token,
            data_dir: data_dir.to_path_buf(),
            _temp: None,
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    /// What the host has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("host.log")).unwrap_or_default()
    }

    /// Run the `fnhost` CLI against this host.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(fnhost_bin())
            .args(args)
            .env("FNHOST_HOST", &self.url)
            .env("FNHOST_DATA_DIR", &self.data_dir)
            .env_remove("FNHOST_TOKEN")
            .env("NO_COLOR", "1")
            .output()
            .expect("run the fnhost CLI")
    }

    /// Run the CLI and insist that it succeeds; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "fnhost {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Deploy `component` with `manifest` (the `component` field is added)
    /// through the CLI; returns the CLI's output.
    pub fn deploy(&self, manifest: &str, component: &Path) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "component = {:?}\n{manifest}",
            component.display().to_string()
        );
        std::fs::write(dir.path().join("fnhost.toml"), text).unwrap();
        self.cli(&["deploy", dir.path().to_str().unwrap()])
    }

    /// [`Host::deploy`] that must succeed.
    pub fn deploy_ok(&self, manifest: &str, component: &Path) -> String {
        let out = self.deploy(manifest, component);
        assert!(
            out.status.success(),
            "deploy failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A request with optional body and bearer token.
    pub fn request(&self, method: &str, path: &str, body: Vec<u8>, token: Option<&str>) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.url))
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("request to {path} failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Resp {
            status,
            headers,
            body: resp.bytes().unwrap().to_vec(),
        }
    }

    /// `GET path` without a token.
    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, Vec::new(), None)
    }

    /// `POST path` without a token.
    pub fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.request("POST", path, body.into(), None)
    }

    /// An admin request with this host's token.
    pub fn admin(&self, method: &str, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        self.request(method, path, body.into(), Some(&self.token.clone()))
    }

    /// Send SIGTERM and wait for the process to exit; returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        terminate(&child);
        child.wait().unwrap().success()
    }

    /// Kill the process with SIGKILL (no chance to clean up) and wait for it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let _ = child.wait();
    }

    /// Poll `f` every 50 ms until it returns `Some`, for at most `secs` seconds.
    pub fn wait_for<T>(&self, secs: u64, what: &str, mut f: impl FnMut(&Host) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting for {what}; host log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The host process's CPU time so far (user + system, from `/proc`).
    pub fn cpu(&self) -> Duration {
        let pid = self.child.as_ref().unwrap().id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces): utime and
        // stime are the 12th and 13th, in clock ticks of 10 ms.
        let rest = stat.rsplit(") ").next().unwrap_or_default();
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        Duration::from_millis((f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 10)
    }

    /// Send SIGTERM without waiting.
    pub fn term(&self) {
        terminate(self.child.as_ref().unwrap());
    }

    /// Wait for the process to exit; returns whether it exited 0.
    pub fn wait(&mut self) -> bool {
        self.child.take().unwrap().wait().unwrap().success()
    }
}

/// Run `fnhost serve` on `data_dir` with `args` and `env`, expecting it to
/// refuse to start: its error output. Fails the test if it starts serving
/// instead (it is stopped then), or exits 0.
pub fn serve_refused(data_dir: &Path, args: &[&str], env: &[(String, String)]) -> String {
    let mut child = Command::new(fnhost_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("FNHOST_TOKEN")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start fnhost serve");
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.starts_with("fnhost listening on ") {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fnhost serve {args:?} started instead of refusing; its log:\n{}",
                errors.join().unwrap()
            );
        }
    }
    let status = child.wait().unwrap();
    let errors = errors.join().unwrap();
    assert!(
        !status.success(),
        "fnhost serve {args:?} exited 0:\n{errors}"
    );
    errors
}

/// The permission bits of `path` (with the sticky, setuid and setgid bits).
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// Set the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Send SIGTERM to a child process.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// moto's server (SQS and S3 compatible, from PyPI) on a loopback port
/// chosen at run time: one per test process, installed into a virtualenv
/// by `scripts/ensure-moto` when missing. It stops within a second of the
/// test process ending. Tests never reach real AWS.
pub struct Moto {
    /// The endpoint, e.g. `http://127.0.0.1:41235`.
    pub endpoint: String,
    /// The watchdog shell that runs moto; it ends by itself with this process.
    _watchdog: std::sync::Mutex<Child>,
}

impl Moto {
    /// The environment an AWS client needs to use this server: dummy
    /// credentials, a region, the endpoint, and no instance metadata.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A host config file in `dir` that puts queues on this server, named
    /// with `prefix` (so tests sharing the server do not meet), with
    /// `extra` lines under `[queues]`.
    pub fn host_config(&self, dir: &Path, prefix: &str, extra: &str) -> PathBuf {
        let path = dir.join("host.toml");
        let text = format!(
            "[queues]\nbackend = \"sqs\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\nprefix = \"{prefix}\"\ncreate = true\n{extra}\n",
            self.endpoint
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// Run an `ensure-*` script (installing what the tests need into the test
/// virtualenv, when missing) and return the path it prints; one at a
/// time, so two tests never install into it at once.
fn ensure(script: &str) -> PathBuf {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("bash")
        .arg(repo_root().join(script))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(out.status.success(), "{script} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The AWS CLI (v1, from PyPI) in the test virtualenv, installed by
/// `scripts/ensure-awscli` when missing: to drive moto as a user would.
pub fn aws_cli() -> &'static Path {
    static AWS: OnceLock<PathBuf> = OnceLock::new();
    AWS.get_or_init(|| ensure("scripts/ensure-awscli"))
}

/// The test process's moto server, started on first use.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

impl Moto {
    /// A moto server of the caller's own, for a test that must know
    /// everything on its server, or needs two (most share [`moto`]'s).
    /// It stops within a second of the test process ending.
    pub fn start() -> Moto {
        let server = ensure("scripts/ensure-moto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = tempfile::NamedTempFile::new().unwrap().into_temp_path();
        let log_path = log.keep().unwrap();
        // A watchdog shell: moto runs while this test process lives.
        let script = format!(
            "\"$0\" -H 127.0.0.1 -p {port} >>{log} 2>&1 & M=$!; while kill -0 {me} 2>/dev/null; do sleep 1; done; kill $M",
            log = log_path.display(),
            me = std::process::id()
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script, server.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::blocking::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if client
                .get(format!("{endpoint}/moto-api/"))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not answer on {endpoint} within 60 s; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            endpoint,
            _watchdog: std::sync::Mutex::new(watchdog),
        }
    }
}

/// Recorded runs (`start_ms`, `end_ms`), in order of start: each starts
/// after the one before it ended.
pub fn assert_never_overlapping(runs: &[serde_json::Value]) {
    for pair in runs.windows(2) {
        assert!(
            pair[1]["start_ms"].as_u64() >= pair[0]["end_ms"].as_u64(),
            "a run started before the previous one ended: {} then {}",
            pair[0],
            pair[1]
        );
    }
}
