//! `fnhost invoke --async` and `fnhost jobs`: submit a job, follow it.

use super::{Connection, check, payload};
use anyhow::{Context as _, bail};
use serde_json::Value;

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
