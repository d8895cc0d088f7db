//! The CLI's side of the admin API: one function per command, each a single
//! HTTP request with the bearer token, printing what a person wants to see.

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};

mod blob;
mod invocations;
mod jobs;
mod queue;
mod tokens;

pub use blob::{BlobCommand, blob};
pub use invocations::{InvocationsArgs, LogsArgs, invocations, logs};
pub use jobs::{JobRequest, jobs, submit};
pub use queue::{QueueCommand, queue};
pub use tokens::{TokensCommand, audit, tokens};

/// How a listing is printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    #[default]
    Table,
    /// The API's JSON, as the host answered it.
    Json,
}

/// `--output` of a listing command.
#[derive(Args, Debug, Clone, Copy)]
pub struct Listing {
    /// table, or json: the API's answer as it is.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl Listing {
    /// Print `v` and say so when JSON was asked for.
    fn printed_json(self, v: &Value) -> anyhow::Result<bool> {
        if self.output != Output::Json {
            return Ok(false);
        }
        println!("{}", serde_json::to_string_pretty(v)?);
        Ok(true)
    }
}

/// Where the host is and how to authenticate.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// The host's base URL.
    #[arg(long, env = "FNHOST_HOST", default_value = "http://127.0.0.1:7070")]
    host: String,
    /// The admin token (default: the local host's token file).
    #[arg(long, env = "FNHOST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The local host's data dir, where its token is.
    #[arg(long, env = "FNHOST_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl Connection {
    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(t.clone());
        }
        let dir = self
            .data_dir
            .clone()
            .unwrap_or_else(super::default_data_dir);
        let path = crate::server::token_path(&dir);
        std::fs::read_to_string(&path).map(|t| t.trim().to_string()).map_err(|e| {
            anyhow!(
                "no admin token: --token and FNHOST_TOKEN are unset and {path:?} cannot be read ({e}); \
                 start the host with `fnhost serve` first, or pass the host's token"
            )
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.host.trim_end_matches('/'))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let req = req.bearer_auth(self.token()?);
        req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the fnhost host at {}: {e}; is `fnhost serve` running there?",
                self.host
            )
        })
    }
}

/// Turn a non-2xx response into an error carrying the host's message.
pub(super) async fn check(
    what: &str,
    resp: reqwest::Response,
) -> anyhow::Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    bail!("{what} failed ({status}): {message}")
}

/// The route paths of a function as the API describes it.
fn route_paths(function: &Value) -> Vec<String> {
    let routes = function["routes"].as_array().into_iter().flatten();
    routes
        .filter_map(|r| r["path"].as_str().map(str::to_string))
        .collect()
}

/// `fnhost deploy PATH`.
pub async fn deploy(conn: &Connection, path: &Path) -> anyhow::Result<()> {
    let (manifest_path, manifest_text, component_path) = super::project::locate(path)?;
    let wasm = std::fs::read(&component_path)
        .with_context(|| format!("failed to read the component {component_path:?}"))?;
    let form = reqwest::multipart::Form::new()
        .part(
            "manifest",
            reqwest::multipart::Part::text(manifest_text).file_name("fnhost.toml"),
        )
        .part(
            "component",
            reqwest::multipart::Part::bytes(wasm).file_name("component.wasm"),
        );
    let resp = conn
        .send(
            reqwest::Client::new()
                .post(conn.url("/functions"))
                .multipart(form),
        )
        .await?;
    let resp = check(&format!("deploying {manifest_path:?}"), resp).await?;
    let v: Value = resp.json().await?;
    let routes = route_paths(&v);
    println!(
        "deployed {} v{} ({} bytes, sha256 {}){}",
        v["name"].as_str().unwrap_or("?"),
        v["version"],
        v["size"],
        &v["digest"].as_str().unwrap_or("")[..12.min(v["digest"].as_str().unwrap_or("").len())],
        if routes.is_empty() {
            String::new()
        } else {
            format!("; routes: {}", routes.join(", "))
        }
    );
    Ok(())
}

/// `fnhost list`.
pub async fn list(conn: &Connection, listing: Listing) -> anyhow::Result<()> {
    let resp = check(
        "listing functions",
        conn.send(reqwest::Client::new().get(conn.url("/functions")))
            .await?,
    )
    .await?;
    let v: Value = resp.json().await?;
    if listing.printed_json(&v)? {
        return Ok(());
    }
    let functions = v["functions"].as_array().cloned().unwrap_or_default();
    if functions.is_empty() {
        println!("no functions deployed; deploy one with `fnhost deploy DIR`");
        return Ok(());
    }
    println!("{:<24} {:>7} {:>9}  ROUTES", "NAME", "ACTIVE", "VERSIONS");
    for f in functions {
        let routes = route_paths(&f);
        println!(
            "{:<24} {:>7} {:>9}  {}",
            f["name"].as_str().unwrap_or("?"),
            format!("v{}", f["active_version"]),
            f["versions"].as_array().map(|a| a.len()).unwrap_or(0),
            routes.join(", ")
        );
    }
    Ok(())
}

/// The payload of `--data`: the text, or the file named after `@`.
pub(super) fn payload(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    Ok(match data {
        Some(d) if d.starts_with('@') => std::fs::read(&d[1..])
            .with_context(|| format!("failed to read the payload file {:?}", &d[1..]))?,
        Some(d) => d.as_bytes().to_vec(),
        None => Vec::new(),
    })
}

/// `fnhost invoke NAME [--data JSON|@FILE]`: prints the output body.
pub async fn invoke(conn: &Connection, name: &str, data: Option<&str>) -> anyhow::Result<()> {
    let body = payload(data)?;
    let url = conn.url(&format!("/functions/{name}/invoke"));
    let resp = check(
        &format!("invoking {name:?}"),
        conn.send(reqwest::Client::new().post(url).body(body))
            .await?,
    )
    .await?;
    let bytes = resp.bytes().await?;
    use std::io::Write;
    let mut out = std::io::stdout();
    out.write_all(&bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// `fnhost rollback NAME [--to N]`.
pub async fn rollback(conn: &Connection, name: &str, to: Option<u32>) -> anyhow::Result<()> {
    let body = match to {
        Some(v) => serde_json::json!({ "version": v }).to_string(),
        None => String::new(),
    };
    let url = conn.url(&format!("/functions/{name}/rollback"));
    let resp = conn
        .send(reqwest::Client::new().post(url).body(body))
        .await?;
    let v: Value = check(&format!("rolling back {name:?}"), resp)
        .await?
        .json()
        .await?;
    println!("{name} is now at v{}", v["version"]);
    Ok(())
}

/// `fnhost remove NAME`.
pub async fn remove(conn: &Connection, name: &str) -> anyhow::Result<()> {
    let url = conn.url(&format!("/functions/{name}"));
    check(
        &format!("removing {name:?}"),
        conn.send(reqwest::Client::new().delete(url)).await?,
    )
    .await?;
    println!("removed {name}");
    Ok(())
}

/// A count from the API, for width-aligned printing.
pub(super) fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `fnhost status`: one line per (function, queue) binding.
pub async fn status(conn: &Connection, listing: Listing) -> anyhow::Result<()> {
    let resp = conn
        .send(reqwest::Client::new().get(conn.url("/queues")))
        .await?;
    let v: Value = check("reading the status", resp).await?.json().await?;
    if listing.printed_json(&v)? {
        return Ok(());
    }
    println!(
        "{:<20} {:<28} {:>8} {:>9} {:>7} {:>7} {:>8}",
        "FUNCTION", "QUEUE", "BACKLOG", "IN-FLIGHT", "RUNNING", "DESIRED", "MIN..MAX"
    );
    for q in v["queues"].as_array().into_iter().flatten() {
        for f in q["functions"].as_array().into_iter().flatten() {
            let backlog = q["ready"].as_u64().unwrap_or(0) + q["delayed"].as_u64().unwrap_or(0);
            println!(
                "{:<20} {:<28} {:>8} {:>9} {:>7} {:>7} {:>8}",
                f["function"].as_str().unwrap_or("?"),
                q["queue"].as_str().unwrap_or("?"),
                backlog,
                n(&q["in_flight"]),
                n(&f["running"]),
                n(&f["desired"]),
                format!("{}..{}", f["min_concurrency"], f["max_concurrency"]),
            );
        }
    }
    Ok(())
}
