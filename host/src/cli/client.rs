//! The CLI's side of the admin API: one function per command, each a single
//! HTTP request with the bearer token, printing what a person wants to see.

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};

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
async fn check(what: &str, resp: reqwest::Response) -> anyhow::Result<reqwest::Response> {
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
pub async fn list(conn: &Connection) -> anyhow::Result<()> {
    let resp = check(
        "listing functions",
        conn.send(reqwest::Client::new().get(conn.url("/functions")))
            .await?,
    )
    .await?;
    let v: Value = resp.json().await?;
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
fn payload(data: Option<&str>) -> anyhow::Result<Vec<u8>> {
    Ok(match data {
        Some(d) if d.starts_with('@') => std::fs::read(&d[1..])
            .with_context(|| format!("failed to read the payload file {:?}", &d[1..]))?,
        Some(d) => d.as_bytes().to_vec(),
        None => Vec::new(),
    })
}

/// How an async job is submitted, besides its input.
#[derive(Debug, Default)]
pub struct JobRequest {
    /// Receives the finished record.
    pub callback_url: Option<String>,
    /// Receives the completion message.
    pub reply_to: Option<String>,
    /// Not before this time (RFC 3339).
    pub not_before: Option<String>,
    /// Not before this long from now.
    pub delay: Option<String>,
}

/// `fnhost invoke NAME --async | --at TIME | --in DURATION`: submit a job, print its id.
pub async fn submit(
    conn: &Connection,
    name: &str,
    data: Option<&str>,
    job: JobRequest,
) -> anyhow::Result<()> {
    let text =
        String::from_utf8(payload(data)?).context("an async job's payload must be text or JSON")?;
    let input = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
    let body = serde_json::json!({
        "input": input,
        "callback_url": job.callback_url,
        "reply_to": job.reply_to,
        "not_before": job.not_before,
        "delay": job.delay,
    });
    let url = conn.url(&format!("/functions/{name}/jobs"));
    let resp = conn
        .send(reqwest::Client::new().post(url).json(&body))
        .await?;
    let v: Value = check(&format!("submitting a job to {name:?}"), resp)
        .await?
        .json()
        .await?;
    let id = v["id"].as_str().unwrap_or("?");
    println!("{id}");
    let when = match v["not_before_ms"].as_u64() {
        Some(ms) => format!(
            "scheduled for {}",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
            )
        ),
        None => "queued".to_string(),
    };
    eprintln!(
        "job {id} {when}; status at {}/v1/jobs/{id}; follow it with `fnhost jobs {id} --wait`",
        conn.host.trim_end_matches('/')
    );
    Ok(())
}

/// `fnhost jobs ID [--wait]`.
pub async fn jobs(conn: &Connection, id: &str, wait: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let http = reqwest::Client::new();
    let mut shown = String::new();
    loop {
        let resp = conn
            .send(http.get(conn.url(&format!("/jobs/{id}"))))
            .await?;
        let v: Value = check(&format!("reading job {id}"), resp)
            .await?
            .json()
            .await?;
        let state = v["state"].as_str().unwrap_or("?").to_string();
        let done = matches!(state.as_str(), "succeeded" | "failed" | "dead");
        if !wait {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        let pct = v["progress"].as_u64().unwrap_or(0).min(100) as usize;
        let bar = format!(
            "\r[{}{}] {pct:>3}% {state:<9} attempt {} {}",
            "#".repeat(pct / 5),
            "-".repeat(20 - pct / 5),
            v["attempts"],
            v["progress_message"].as_str().unwrap_or("")
        );
        if bar != shown {
            eprint!("{bar}");
            std::io::stderr().flush()?;
            shown = bar;
        }
        if done {
            eprintln!();
            return match state.as_str() {
                "succeeded" => {
                    println!("{}", v["result"]["body"].as_str().unwrap_or(""));
                    Ok(())
                }
                _ => bail!(
                    "job {id} {state}: {}",
                    v["error"].as_str().unwrap_or("no error recorded")
                ),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
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
fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// `fnhost queue …`.
#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// Send one message.
    Send {
        /// The queue.
        queue: String,
        /// The body: JSON, plain text, or @FILE.
        #[arg(long, short)]
        data: String,
        /// Messages of one group run one at a time, in order.
        #[arg(long)]
        group: Option<String>,
        /// Sends with the same dedup id within five minutes enqueue once.
        #[arg(long)]
        dedup_id: Option<String>,
        /// Hide the message for this long, e.g. 30s.
        #[arg(long)]
        delay: Option<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: u8,
        /// Carried to the reply.
        #[arg(long)]
        correlation_id: Option<String>,
        /// Queue that receives the completion.
        #[arg(long)]
        reply_to: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Counts of one queue, or of all.
    Stats {
        /// The queue (all when absent).
        queue: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Show messages without leasing them.
    Peek {
        /// The queue.
        queue: String,
        /// How many.
        #[arg(long, default_value_t = 10)]
        max: usize,
        #[command(flatten)]
        conn: Connection,
    },
    /// List a queue's dead letters.
    DeadLetters {
        /// The queue.
        queue: String,
        /// How many.
        #[arg(long, default_value_t = 100)]
        max: usize,
        #[command(flatten)]
        conn: Connection,
    },
    /// Put dead letters back on their queue.
    Redrive {
        /// The queue.
        queue: String,
        /// Only these message ids (all when absent).
        #[arg(long = "id")]
        ids: Vec<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete a queue's messages, or with --dead-letters its dead letters.
    Purge {
        /// The queue.
        queue: String,
        /// Purge the dead letters instead of the messages.
        #[arg(long)]
        dead_letters: bool,
        #[command(flatten)]
        conn: Connection,
    },
}

/// Run a `fnhost queue` command.
pub async fn queue(command: QueueCommand) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    match command {
        QueueCommand::Send {
            queue,
            data,
            group,
            dedup_id,
            delay,
            priority,
            correlation_id,
            reply_to,
            conn,
        } => {
            let text = match data.strip_prefix('@') {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read the message file {path:?}"))?,
                None => data,
            };
            // JSON stays JSON; anything else is sent as text.
            let body = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
            let msg = serde_json::json!({
                "body": body, "group": group, "dedup_id": dedup_id, "delay": delay,
                "priority": priority, "correlation_id": correlation_id, "reply_to": reply_to,
            });
            let url = conn.url(&format!("/queues/{queue}/messages"));
            let resp = conn.send(http.post(url).json(&msg)).await?;
            let v: Value = check(&format!("sending to {queue:?}"), resp)
                .await?
                .json()
                .await?;
            let dup = if v["duplicate"] == true {
                " (duplicate: nothing added)"
            } else {
                ""
            };
            println!("{}{dup}", v["id"].as_str().unwrap_or("?"));
        }
        QueueCommand::Stats { queue, conn } => {
            let path = queue
                .as_ref()
                .map(|q| format!("/queues/{q}"))
                .unwrap_or_else(|| "/queues".into());
            let resp = conn.send(http.get(conn.url(&path))).await?;
            let v: Value = check("reading queue stats", resp).await?.json().await?;
            let rows = if queue.is_some() {
                vec![v]
            } else {
                v["queues"].as_array().cloned().unwrap_or_default()
            };
            println!(
                "{:<28} {:>8} {:>8} {:>9} {:>6}  FUNCTIONS (running/desired)",
                "QUEUE", "READY", "DELAYED", "IN-FLIGHT", "DEAD"
            );
            for q in rows {
                let functions: Vec<String> = q["functions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| {
                        format!(
                            "{} ({}/{})",
                            f["function"].as_str().unwrap_or("?"),
                            f["running"],
                            f["desired"]
                        )
                    })
                    .collect();
                println!(
                    "{:<28} {:>8} {:>8} {:>9} {:>6}  {}",
                    q["queue"].as_str().unwrap_or("?"),
                    n(&q["ready"]),
                    n(&q["delayed"]),
                    n(&q["in_flight"]),
                    n(&q["dead_letters"]),
                    functions.join(", ")
                );
            }
        }
        QueueCommand::Peek { queue, max, conn } => {
            let url = conn.url(&format!("/queues/{queue}/messages?max={max}"));
            let v: Value = check("peeking", conn.send(http.get(url)).await?)
                .await?
                .json()
                .await?;
            println!("{}", serde_json::to_string_pretty(&v["messages"])?);
        }
        QueueCommand::DeadLetters { queue, max, conn } => {
            let url = conn.url(&format!("/queues/{queue}/dead-letters?max={max}"));
            let v: Value = check("listing dead letters", conn.send(http.get(url)).await?)
                .await?
                .json()
                .await?;
            println!("{}", serde_json::to_string_pretty(&v["dead_letters"])?);
        }
        QueueCommand::Redrive { queue, ids, conn } => {
            let body = if ids.is_empty() {
                serde_json::json!({})
            } else {
                serde_json::json!({ "ids": ids })
            };
            let url = conn.url(&format!("/queues/{queue}/dead-letters/redrive"));
            let v: Value = check("redriving", conn.send(http.post(url).json(&body)).await?)
                .await?
                .json()
                .await?;
            println!("redrove {} message(s) to {queue}", v["redriven"]);
        }
        QueueCommand::Purge {
            queue,
            dead_letters,
            conn,
        } => {
            let what = if dead_letters {
                "dead-letters"
            } else {
                "messages"
            };
            let url = conn.url(&format!("/queues/{queue}/{what}"));
            let v: Value = check("purging", conn.send(http.delete(url)).await?)
                .await?
                .json()
                .await?;
            println!(
                "purged {} {} from {queue}",
                v["purged"],
                what.replace('-', " ")
            );
        }
    }
    Ok(())
}

/// `fnhost status`: one line per (function, queue) binding.
pub async fn status(conn: &Connection) -> anyhow::Result<()> {
    let resp = conn
        .send(reqwest::Client::new().get(conn.url("/queues")))
        .await?;
    let v: Value = check("reading the status", resp).await?.json().await?;
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

/// `fnhost blob …`.
#[derive(clap::Subcommand, Debug)]
pub enum BlobCommand {
    /// Upload a file as an object.
    Put {
        /// The bucket.
        bucket: String,
        /// The key, e.g. images/cat.png.
        key: String,
        /// The file to upload.
        file: PathBuf,
        /// The content type (default: from the file extension for common types).
        #[arg(long)]
        content_type: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// Download an object to stdout or a file.
    Get {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Write here instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[command(flatten)]
        conn: Connection,
    },
    /// List objects.
    Ls {
        /// The bucket.
        bucket: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        conn: Connection,
    },
    /// Delete an object.
    Rm {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        #[command(flatten)]
        conn: Connection,
    },
}

/// A content type for common file extensions, so uploads are served right.
fn guess_content_type(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "json" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "html" => "text/html; charset=utf-8",
        "csv" => "text/csv",
        "pdf" => "application/pdf",
        _ => return None,
    })
}

/// Run a `fnhost blob` command.
pub async fn blob(command: BlobCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let http = reqwest::Client::new();
    let object = |conn: &Connection, bucket: &str, key: &str| {
        conn.url(&format!("/buckets/{bucket}/objects/{key}"))
    };
    match command {
        BlobCommand::Put {
            bucket,
            key,
            file,
            content_type,
            conn,
        } => {
            let body = std::fs::read(&file).with_context(|| format!("failed to read {file:?}"))?;
            let ct = content_type.or_else(|| guess_content_type(&file).map(str::to_string));
            let mut req = http.put(object(&conn, &bucket, &key)).body(body);
            if let Some(ct) = ct {
                req = req.header(reqwest::header::CONTENT_TYPE, ct);
            }
            let v: Value = check(
                &format!("uploading to {bucket}/{key}"),
                conn.send(req).await?,
            )
            .await?
            .json()
            .await?;
            println!(
                "{bucket}/{key}: {} bytes, etag {}",
                v["size"],
                v["etag"].as_str().unwrap_or("?")
            );
        }
        BlobCommand::Get {
            bucket,
            key,
            out,
            conn,
        } => {
            let resp = conn.send(http.get(object(&conn, &bucket, &key))).await?;
            let bytes = check(&format!("downloading {bucket}/{key}"), resp)
                .await?
                .bytes()
                .await?;
            match out {
                Some(path) => {
                    std::fs::write(&path, &bytes)
                        .with_context(|| format!("failed to write {path:?}"))?;
                    eprintln!("wrote {} bytes to {}", bytes.len(), path.display());
                }
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
        BlobCommand::Ls {
            bucket,
            prefix,
            conn,
        } => {
            // Page through the whole listing.
            let mut after: Option<String> = None;
            loop {
                let mut params = vec![("prefix", prefix.clone())];
                if let Some(a) = after.take() {
                    params.push(("start_after", a));
                }
                let url = reqwest::Url::parse_with_params(
                    &conn.url(&format!("/buckets/{bucket}/objects")),
                    &params,
                )
                .with_context(|| format!("{:?} is not a usable host URL", conn.host))?;
                let req = http.get(url);
                let v: Value = check(&format!("listing {bucket}"), conn.send(req).await?)
                    .await?
                    .json()
                    .await?;
                for o in v["objects"].as_array().into_iter().flatten() {
                    println!(
                        "{:>10}  {}  {}",
                        n(&o["size"]),
                        &o["etag"].as_str().unwrap_or("")
                            [..12.min(o["etag"].as_str().unwrap_or("").len())],
                        o["key"].as_str().unwrap_or("?")
                    );
                }
                match v["next_start_after"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
        }
        BlobCommand::Rm { bucket, key, conn } => {
            let resp = conn.send(http.delete(object(&conn, &bucket, &key))).await?;
            check(&format!("removing {bucket}/{key}"), resp).await?;
            println!("removed {bucket}/{key}");
        }
    }
    Ok(())
}
