//! `fnhost tokens …`: make, list and revoke scoped admin tokens; and
//! `fnhost audit`: print (and follow) a local host's audit log.

use super::{Connection, Listing, check};
use crate::tokens::Scope;
use anyhow::Context as _;
use serde_json::{Value, json};
use std::io::{BufRead as _, Seek as _};
use std::path::PathBuf;
use std::time::Duration;

/// `fnhost tokens …`.
#[derive(clap::Subcommand, Debug)]
pub enum TokensCommand {
    /// Make a token; it is printed once, keep it.
    Create {
        /// What it may do: admin (everything), deploy (deploy, roll back,
        /// remove, status), invoke (invoke, jobs, send, status), read
        /// (status and data, no changes).
        #[arg(long, value_enum)]
        scope: Scope,
        /// What it is for (shown by `fnhost tokens list`).
        #[arg(long, default_value = "")]
        name: String,
        /// How long it works, e.g. 12h or 30d (forever when absent).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        conn: Connection,
    },
    /// List tokens (ids, names, scopes; never the secrets).
    List {
        #[command(flatten)]
        listing: Listing,
        #[command(flatten)]
        conn: Connection,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token's id (from `fnhost tokens list`).
        id: String,
        #[command(flatten)]
        conn: Connection,
    },
}

/// `fnhost tokens …`.
pub async fn tokens(command: TokensCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match command {
        TokensCommand::Create {
            scope,
            name,
            expires,
            conn,
        } => {
            let body = json!({ "scope": scope, "name": name, "expires_in": expires });
            let resp = conn
                .send(client.post(conn.url("/tokens")).json(&body))
                .await?;
            let v: Value = check("making a token", resp).await?.json().await?;
            eprintln!(
                "token {} (scope {}{}); shown only now, keep it:",
                v["id"].as_str().unwrap_or("?"),
                v["scope"].as_str().unwrap_or("?"),
                v["expires_at_ms"]
                    .as_u64()
                    .map(|ms| format!(", expires {}", time(ms)))
                    .unwrap_or_default()
            );
            println!("{}", v["token"].as_str().unwrap_or(""));
        }
        TokensCommand::List { listing, conn } => {
            let resp = conn.send(client.get(conn.url("/tokens"))).await?;
            let v: Value = check("listing tokens", resp).await?.json().await?;
            if listing.printed_json(&v)? {
                return Ok(());
            }
            println!("{:<18} {:<8} {:<26} NAME", "ID", "SCOPE", "EXPIRES");
            for t in v["tokens"].as_array().into_iter().flatten() {
                println!(
                    "{:<18} {:<8} {:<26} {}",
                    t["id"].as_str().unwrap_or("?"),
                    t["scope"].as_str().unwrap_or("?"),
                    t["expires_at_ms"]
                        .as_u64()
                        .map(time)
                        .unwrap_or_else(|| "never".into()),
                    t["name"].as_str().unwrap_or("")
                );
            }
        }
        TokensCommand::Revoke { id, conn } => {
            let resp = conn
                .send(client.delete(conn.url(&format!("/tokens/{id}"))))
                .await?;
            check(&format!("revoking token {id}"), resp).await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `fnhost audit`: the last `lines` entries of the audit log in `data_dir`
/// (its refusals with `denied`), then, with `follow`, each new one as it
/// is written (across rotations).
pub fn audit(
    data_dir: Option<PathBuf>,
    lines: usize,
    follow: bool,
    denied: bool,
) -> anyhow::Result<()> {
    let dir = data_dir.unwrap_or_else(crate::cli::default_data_dir);
    let path = if denied {
        crate::audit::denied_path(&dir)
    } else {
        crate::audit::path(&dir)
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow => String::new(),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot read the audit log {path:?}; pass the host's --data-dir")
            });
        }
    };
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("{line}");
    }
    if !follow {
        return Ok(());
    }
    let mut offset = text.len() as u64;
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let len = file.metadata()?.len();
        if len < offset {
            offset = 0; // rotated: the new file starts over
        }
        let mut reader = std::io::BufReader::new(file);
        reader.seek(std::io::SeekFrom::Start(offset))?;
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 && line.ends_with('\n') {
            print!("{line}");
            offset += line.len() as u64;
            line.clear();
        }
    }
}
