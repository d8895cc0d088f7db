//! `fnhost queue …`: send messages, and look at queues and dead letters.

use super::{Connection, Listing, check, n};
use anyhow::Context as _;
use serde_json::Value;

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
        listing: Listing,
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
        QueueCommand::Stats {
            queue,
            listing,
            conn,
        } => {
            let path = queue
                .as_ref()
                .map(|q| format!("/queues/{q}"))
                .unwrap_or_else(|| "/queues".into());
            let resp = conn.send(http.get(conn.url(&path))).await?;
            let v: Value = check("reading queue stats", resp).await?.json().await?;
            if listing.printed_json(&v)? {
                return Ok(());
            }
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
