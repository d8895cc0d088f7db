//! `fnhost invocations` (what ran, how it went, what it cost) and
//! `fnhost logs` (what it wrote), from the host's invocation records
//! (`GET /v1/invocations`). Whatever a guest wrote is printed with its
//! control characters escaped, so it cannot move the terminal's cursor or
//! forge a line of its own.

use super::{Connection, Output, check};
use crate::records::{Page, Record};
use crate::text::LogSafe;
use clap::Args;
use std::time::Duration;

/// `fnhost invocations`' filters.
#[derive(Args, Debug)]
pub struct InvocationsArgs {
    /// Of this function.
    #[arg(long)]
    function: Option<String>,
    /// Of this version.
    #[arg(long)]
    version: Option<u32>,
    /// Set off by: http, queue, job, blob, timer, invoke.
    #[arg(long)]
    trigger: Option<String>,
    /// Ended so: succeeded, retry, failed, limit, trapped, or unsuccessful (all but succeeded).
    #[arg(long)]
    outcome: Option<String>,
    /// Ended in the last while (e.g. 10m, 2h) or since a time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Ended before a time (RFC 3339) or this long ago.
    #[arg(long)]
    until: Option<String>,
    /// Of this async job.
    #[arg(long)]
    job: Option<String>,
    /// From this queue message.
    #[arg(long)]
    message: Option<String>,
    /// With this correlation id.
    #[arg(long)]
    correlation: Option<String>,
    /// This invocation.
    #[arg(long)]
    id: Option<String>,
    /// How many, newest first (at most 1000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// table, or json: the API's page (`invocations`, `next`).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(flatten)]
    conn: Connection,
}

impl InvocationsArgs {
    fn params(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut add = |name, value: &Option<String>| {
            if let Some(v) = value {
                out.push((name, v.clone()));
            }
        };
        add("function", &self.function);
        add("trigger", &self.trigger);
        add("outcome", &self.outcome);
        add("since", &self.since);
        add("until", &self.until);
        add("job", &self.job);
        add("message", &self.message);
        add("correlation", &self.correlation);
        add("id", &self.id);
        add("version", &self.version.map(|v| v.to_string()));
        out.push(("limit", self.limit.to_string()));
        out
    }
}

async fn page(conn: &Connection, params: &[(&str, String)]) -> anyhow::Result<Page> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    let url = conn.url(&format!("/invocations?{}", query.finish()));
    let resp = conn.send(reqwest::Client::new().get(url)).await?;
    Ok(check("reading the invocation records", resp)
        .await?
        .json()
        .await?)
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn duration_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n}B"),
        1024..1_048_576 => format!("{:.0}KiB", n as f64 / 1024.0),
        _ => format!("{:.1}MiB", n as f64 / 1_048_576.0),
    }
}

/// `fnhost invocations …`.
pub async fn invocations(args: InvocationsArgs) -> anyhow::Result<()> {
    let page = page(&args.conn, &args.params()).await?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<22} {:<7} {:>3} {:<10} {:>8} {:>9} {:>10} {:>8}  {:<36}  REASON",
        "ENDED",
        "FUNCTION",
        "TRIGGER",
        "TRY",
        "OUTCOME",
        "QUEUED",
        "DURATION",
        "FUEL",
        "MEMORY",
        "ID"
    );
    for r in &page.invocations {
        let reason = r.reason.as_deref().unwrap_or("");
        println!(
            "{:<24} {:<22} {:<7} {:>3} {:<10} {:>8} {:>9} {:>10} {:>8}  {:<36}  {}",
            time(r.ended_at_ms),
            LogSafe(crate::text::cut(
                &format!("{}@v{}", r.function, r.version),
                22
            ))
            .to_string(),
            r.trigger,
            r.attempt,
            r.outcome,
            r.queued_ms
                .map(|q| duration_us(q * 1000))
                .unwrap_or_else(|| "-".into()),
            duration_us(r.duration_us),
            r.fuel,
            bytes(r.peak_memory_bytes),
            LogSafe(&r.id),
            LogSafe(crate::text::cut(reason, 100)),
        );
    }
    if page.invocations.is_empty() {
        eprintln!("no invocations recorded on this host match");
    } else if page.next.is_some() {
        eprintln!(
            "(the newest {} shown; narrow the filters, or ask for more with --limit, up to 1000)",
            page.invocations.len()
        );
    }
    Ok(())
}

/// `fnhost logs`' choices.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The function.
    function: String,
    /// Only this invocation.
    #[arg(long)]
    invocation: Option<String>,
    /// Ended in the last while (e.g. 10m) or since a time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Keep printing new invocations' logs as they end (Ctrl-C stops).
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    conn: Connection,
}

fn print_logs(r: &Record) {
    let head = format!(
        "{} {}@v{} {} attempt {} {}",
        time(r.ended_at_ms),
        LogSafe(&r.function),
        r.version,
        LogSafe(&r.id),
        r.attempt,
        r.outcome
    );
    println!("── {head}");
    match &r.logs {
        Some(logs) => {
            for line in logs.stdout.lines() {
                println!("   {}", LogSafe(line));
            }
            for line in logs.stderr.lines() {
                println!("!  {}", LogSafe(line));
            }
        }
        None if r.trusted => println!("   (a trusted function: its output is not kept)"),
        None if r.log_bytes > 0 => println!("   (its logs are past the retention)"),
        None => {}
    }
    if r.log_dropped_bytes > 0 {
        println!(
            "   ({} bytes past the function's log_bytes were dropped)",
            r.log_dropped_bytes
        );
    }
    if let Some(reason) = &r.reason {
        println!("   {}: {}", r.outcome, LogSafe(reason));
    }
}

/// `fnhost logs FUNCTION [--invocation ID] [--since 10m] [--follow]`:
/// each invocation's output, oldest first.
pub async fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let mut params: Vec<(&str, String)> = vec![
        ("function", args.function.clone()),
        ("logs", "true".into()),
        ("limit", crate::records::MAX_PAGE_WITH_LOGS.to_string()),
    ];
    if let Some(id) = &args.invocation {
        params.push(("id", id.clone()));
    }
    if let Some(since) = &args.since {
        params.push(("since", since.clone()));
    }
    // The newest page, printed oldest first.
    let newest = page(&args.conn, &params).await?;
    let mut last = newest.invocations.first().map(|r| r.seq).unwrap_or(0);
    for r in newest.invocations.iter().rev() {
        print_logs(r);
    }
    if !args.follow {
        if newest.invocations.is_empty() {
            eprintln!(
                "no invocations of {} recorded on this host match",
                LogSafe(&args.function)
            );
        }
        return Ok(());
    }
    // After the last seen, oldest first, until stopped.
    loop {
        let mut after = params.clone();
        after.push(("after", last.to_string()));
        let next = page(&args.conn, &after).await?;
        for r in &next.invocations {
            print_logs(r);
            last = r.seq;
        }
        if next.next.is_none() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
