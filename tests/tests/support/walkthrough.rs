//! Running a README walkthrough as written: the blocks a section marks
//! with `<!-- walkthrough: NAME -->` (the line before the block's fence),
//! a `bash` that runs the shell blocks one after another (a user's
//! terminal), services started from a block (a host's `fnhost serve`),
//! and the AWS CLI pointed at a moto server. Knows nothing of what the
//! blocks say.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A marked block: what its marker names, its language and its text.
#[derive(Debug, Clone)]
pub struct Block {
    /// The marker's name (`<!-- walkthrough: NAME -->`).
    pub marker: String,
    /// The fence's language (`sh`, `toml`, …).
    pub lang: String,
    /// The block's text, as written.
    pub text: String,
    /// The README line of the marker, for errors.
    pub line: usize,
}

/// The marked blocks of the section of `readme` whose heading begins with
/// `## {section}`, in order. A marker that is not followed by a fenced
/// block fails the test.
pub fn blocks(readme: &str, section: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let heading = format!("## {section}");
    let start = lines
        .iter()
        .position(|l| l.starts_with(&heading))
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out = Vec::new();
    let mut i = start;
    while i < end {
        let marker = lines[i]
            .trim()
            .strip_prefix("<!-- walkthrough:")
            .and_then(|rest| rest.strip_suffix("-->"));
        if let Some(marker) = marker {
            let line = i + 1;
            let lang = lines
                .get(i + 1)
                .and_then(|fence| fence.strip_prefix("```"))
                .unwrap_or_else(|| {
                    panic!("README.md line {line}: a walkthrough marker must be the line just before a fenced block")
                });
            let close = lines[i + 2..end]
                .iter()
                .position(|l| l.trim_end() == "```")
                .unwrap_or_else(|| panic!("README.md line {line}: the block is not closed"))
                + i
                + 2;
            out.push(Block {
                marker: marker.trim().to_string(),
                lang: lang.trim().to_string(),
                text: lines[i + 2..close].join("\n") + "\n",
                line,
            });
            i = close;
        }
        i += 1;
    }
    out
}

/// Every process descended from `pid` (its children, theirs, …), deepest
/// last, as /proc shows them now.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|pp| pp.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Kill `child` and everything it started (each by its own pid: this
/// machine's `kill` takes `-KILL -<group>` for every process there is),
/// and reap it.
fn stop(child: &mut Child) {
    let started = descendants(child.id());
    let _ = child.kill();
    for pid in started.iter().rev() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.wait();
}

/// A user's terminal: one `bash` (`set -euo pipefail`), in which blocks
/// run one after another, keeping what each exports or sets.
pub struct Shell {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    ran: usize,
    /// Everything it printed so far (stdout and stderr).
    pub transcript: String,
}

impl Shell {
    /// A shell in `cwd` with exactly the environment `env`.
    pub fn start(cwd: &Path, env: &[(String, String)]) -> Shell {
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .current_dir(cwd)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bash");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"exec 2>&1\nset -euo pipefail\n").unwrap();
        Shell {
            child,
            stdin,
            lines,
            ran: 0,
            transcript: String::new(),
        }
    }

    /// Set `name` in the shell's environment, as the user's machine has it.
    pub fn export(&mut self, name: &str, value: &str) {
        writeln!(self.stdin, "export {name}='{value}'").unwrap();
    }

    /// Run `block` (its commands read nothing from the terminal) and
    /// return what it printed; a failing command, or a block still running
    /// after `limit`, fails the test, showing what it printed.
    pub fn run(&mut self, block: &Block, limit: Duration) -> String {
        self.ran += 1;
        let done = format!("--- walkthrough block {} done ---", self.ran);
        let script = format!("{{\n{}\n}} </dev/null\necho '{done}'\n", block.text);
        self.stdin.write_all(script.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + limit;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == done => break,
                Ok(line) => {
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "the walkthrough block at README.md line {} ran past {limit:?}; it printed:\n{out}\nthe block:\n{}",
                    block.line, block.text
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "the walkthrough block at README.md line {} failed (bash ended: {status:?}); it printed:\n{out}\nthe block:\n{}",
                        block.line, block.text
                    )
                }
            }
        }
        self.transcript.push_str(&out);
        out
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A service a block starts (a host's `fnhost serve`), in `dir`, its log
/// in `dir/host.log`; stopped (with all it started) when dropped.
pub struct Service {
    child: Child,
    /// The URL it printed (`fnhost listening on URL`).
    pub url: String,
    /// Where it runs.
    pub dir: PathBuf,
}

impl Service {
    /// Start `block` with bash in `dir` with exactly the environment `env`,
    /// and wait (at most 120 s) until it says where it listens.
    pub fn start(block: &Block, dir: &Path, env: &[(String, String)]) -> Service {
        let log = std::fs::File::create(dir.join("host.log")).unwrap();
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc", "-c", &block.text])
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start bash");
        match fnhost_tests::listening_url(child.stdout.take().unwrap()) {
            Ok(url) => Service {
                child,
                url,
                dir: dir.to_path_buf(),
            },
            Err(_) => {
                stop(&mut child);
                panic!(
                    "the walkthrough block at README.md line {} did not start a host; its log:\n{}",
                    block.line,
                    std::fs::read_to_string(dir.join("host.log")).unwrap_or_default()
                )
            }
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("host.log")).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The AWS CLI (from PyPI) on a moto server: `endpoint`, dummy
/// credentials, `region`, and no files or instance metadata of this machine.
pub struct Aws {
    /// The server.
    pub endpoint: String,
    /// The region.
    pub region: String,
    /// Where the CLI's config and credentials files would be (absent).
    pub home: PathBuf,
}

impl Aws {
    /// The environment an AWS user sets to reach the server (no region:
    /// a walkthrough sets its own).
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            (
                "AWS_CONFIG_FILE",
                self.home.join("config").display().to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                self.home.join("credentials").display().to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// A directory holding `aws`, which runs the CLI with `--endpoint-url`
    /// set to `AWS_ENDPOINT_URL`: the CLI v1 sends `aws sqs` to AWS itself
    /// whatever `AWS_ENDPOINT_URL` says (aws/aws-cli#8737), and a test must
    /// never reach AWS.
    pub fn bin_dir(dir: &Path) -> PathBuf {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let aws = bin.join("aws");
        std::fs::write(
            &aws,
            format!(
                "#!/bin/sh\nexec '{}' --endpoint-url \"$AWS_ENDPOINT_URL\" \"$@\"\n",
                fnhost_tests::aws_cli().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&aws, std::fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    /// Run `aws ARGS` and return what it printed; a failure fails the test.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new(fnhost_tests::aws_cli())
            .arg("--endpoint-url")
            .arg(&self.endpoint)
            .args(["--region", &self.region, "--output", "json"])
            .args(args)
            .env_clear()
            .envs(self.env())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("run the AWS CLI");
        assert!(
            out.status.success(),
            "aws {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `aws ARGS` and return its output as JSON (`null` when it prints
    /// nothing).
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        if out.trim().is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("aws {args:?} printed no JSON ({e}): {out}"))
    }
}

/// Does the IAM pattern `pattern` (`*` any characters, `?` one) match `s`?
pub fn iam_match(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    // The furthest `s` index each pattern prefix can reach, as a set.
    let mut reach = vec![false; s.len() + 1];
    reach[0] = true;
    for c in p {
        let mut next = vec![false; s.len() + 1];
        for i in 0..=s.len() {
            if !reach[i] {
                continue;
            }
            match c {
                '*' => next[i..].iter_mut().for_each(|n| *n = true),
                '?' if i < s.len() => next[i + 1] = true,
                c if i < s.len() && s[i] == c => next[i + 1] = true,
                _ => {}
            }
        }
        reach = next;
    }
    reach[s.len()]
}

/// Does the IAM policy `policy` allow `action` on `resource`?
pub fn allows(policy: &serde_json::Value, action: &str, resource: &str) -> bool {
    let list = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    list_statements(policy).iter().any(|s| {
        s["Effect"] == "Allow"
            && list(&s["Action"]).iter().any(|a| iam_match(a, action))
            && list(&s["Resource"]).iter().any(|r| iam_match(r, resource))
    })
}

fn list_statements(policy: &serde_json::Value) -> Vec<serde_json::Value> {
    match &policy["Statement"] {
        serde_json::Value::Array(all) => all.clone(),
        one => vec![one.clone()],
    }
}

#[test]
fn iam_patterns_match_as_iam_does() {
    assert!(iam_match(
        "arn:aws:s3:::acme-prod-*",
        "arn:aws:s3:::acme-prod-thumbs"
    ));
    assert!(!iam_match(
        "arn:aws:s3:::acme-prod-*",
        "arn:aws:s3:::acme-thumbs"
    ));
    assert!(iam_match("a*b*c", "abbbc") && iam_match("a?c", "abc"));
    assert!(!iam_match("a?c", "ac") && !iam_match("abc", "abcd"));
}
