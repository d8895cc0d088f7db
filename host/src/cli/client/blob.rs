//! `fnhost blob …`: put, get, list and remove objects.

use super::{Connection, Listing, Output, check, n};
use anyhow::Context as _;
use serde_json::Value;
use std::path::{Path, PathBuf};

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
        listing: Listing,
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
            listing,
            conn,
        } => {
            // Page through the whole listing.
            let mut after: Option<String> = None;
            let mut all = Vec::new();
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
                    if listing.output == Output::Json {
                        all.push(o.clone());
                        continue;
                    }
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
            listing.printed_json(&serde_json::json!({ "objects": all }))?;
        }
        BlobCommand::Rm { bucket, key, conn } => {
            let resp = conn.send(http.delete(object(&conn, &bucket, &key))).await?;
            check(&format!("removing {bucket}/{key}"), resp).await?;
            println!("removed {bucket}/{key}");
        }
    }
    Ok(())
}
