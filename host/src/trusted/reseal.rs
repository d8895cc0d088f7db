//! Re-sealing after a key rotation: when the worker starts with more than
//! one key (`fnhost keys rotate` added one), it walks the sensitive
//! buckets in the background and seals every object an older key sealed
//! anew under the current one. Reads go on meanwhile (every key in the
//! ring opens what it sealed), and an object written meanwhile — here or
//! by another host of a fleet on S3 — is left as written: the re-sealed
//! copy replaces the old one only if it is unchanged ([`SealedBlobs::reseal`],
//! a compare and swap on its etag).
//! Once the walk reports no object left under an old key, that key file
//! may be moved out of the ring.

use crate::backends::sealed::{Keyring, SealedBlobs};
use crate::blobs::BlobBackend;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Objects listed per page of the walk.
const PAGE: usize = 500;

/// Re-seal every object of `buckets` that an older key sealed.
pub async fn in_background(
    blobs: Arc<SealedBlobs>,
    buckets: Arc<BTreeSet<String>>,
    keys: Arc<Keyring>,
) {
    if keys.len() < 2 {
        return;
    }
    let (mut resealed, mut failed) = (0u64, 0u64);
    for bucket in buckets.iter() {
        let mut after: Option<String> = None;
        loop {
            let page = match blobs.list(bucket, "", after.clone(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(bucket = %bucket, error = %e, "cannot list a sensitive bucket to re-seal it");
                    failed += 1;
                    break;
                }
            };
            for meta in &page {
                match blobs.reseal(bucket, &meta.key).await {
                    Ok(true) => resealed += 1,
                    Ok(false) => {}
                    Err(e) => {
                        failed += 1;
                        tracing::error!(bucket = %bucket, key = %meta.key, error = %e, "cannot re-seal an object");
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => after = Some(last.key.clone()),
                _ => break,
            }
        }
    }
    tracing::info!(
        resealed,
        failed,
        current_key = %keys.current(),
        "re-sealing after a key rotation finished; keys older than the current one seal nothing more once failed is 0"
    );
}
