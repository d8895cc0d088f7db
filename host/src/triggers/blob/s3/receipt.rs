//! A blob trigger's receipt for one object on S3: a document in the
//! fleet's state store (`blob-receipts/<fn>/<bucket>/<sha256 of the key>`)
//! that says which version of the object the trigger was handed, or which
//! notification is handing it a change now. Conditional writes, not
//! clocks, decide which of two notifications carrying the same change
//! (SQS delivering one twice, or a forged copy) hands it over: each
//! change reaches the trigger once, and a delete only for an object whose
//! version was seen.
//!
//! The document is the ETag of the version seen, or a claim (JSON): the
//! notification (SQS message id) handing over a change, since when, and
//! the change (the new ETag, none for a delete). A claim whose
//! notification comes back (its host died) is resumed by it; one older
//! than [`ABANDONED_AFTER`] (its notification was given up) is taken
//! over. Knows nothing of S3 or of triggers' queues.

use crate::state::{StateError, StateStore, Write};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a claim holds when its notification does not come back to
/// finish it: far longer than a notification stays hidden while handled.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(600);

/// What a receipt document says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Receipt {
    /// This version (ETag) was handed over, or seen.
    Seen(String),
    /// A notification is handing over a change.
    Claim(Claim),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    /// The notification's message id.
    message: String,
    /// When it claimed, ms since the epoch.
    at_ms: u64,
    /// The new version's ETag; none for a delete.
    etag: Option<String>,
}

impl Receipt {
    fn decode(bytes: &[u8]) -> Receipt {
        match serde_json::from_slice::<Claim>(bytes) {
            Ok(claim) => Receipt::Claim(claim),
            Err(_) => Receipt::Seen(String::from_utf8_lossy(bytes).into_owned()),
        }
    }
}

/// What a notification may do with a change to one object.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    /// Hand it over, then [`settle`] at this version of the receipt.
    Mine(String),
    /// Nothing to hand over (said why).
    Skip(&'static str),
    /// Another change to the object is being handed over: come back later.
    Later(String),
}

/// What to do with the change `etag` (none: a delete) carried by
/// notification `message`, given the receipt found.
enum Decision {
    Claim,
    Resume,
    Skip(&'static str),
    Later,
}

fn decide(found: Option<&Receipt>, message: &str, etag: Option<&str>, now_ms: u64) -> Decision {
    let fresh = |c: &Claim| now_ms < c.at_ms.saturating_add(ABANDONED_AFTER.as_millis() as u64);
    match (found, etag) {
        (Some(Receipt::Claim(c)), _) if fresh(c) => {
            if c.message == message {
                Decision::Resume
            } else if c.etag.as_deref() == etag {
                Decision::Skip("another notification is handing this change over")
            } else {
                Decision::Later
            }
        }
        (Some(Receipt::Claim(_)), _) => Decision::Claim,
        (Some(Receipt::Seen(seen)), Some(etag)) if seen == etag => {
            Decision::Skip("this version was handed over already")
        }
        (Some(Receipt::Seen(_)), _) => Decision::Claim,
        (None, Some(_)) => Decision::Claim,
        (None, None) => Decision::Skip(
            "no version of the object was seen (it never existed, or its delete was handed over already)",
        ),
    }
}

/// Decide, and claim the change when it is this notification's to hand
/// over.
pub async fn claim(
    store: &dyn StateStore,
    key: &str,
    message: &str,
    etag: Option<&str>,
) -> Result<Turn, StateError> {
    // Two notifications claiming at once: the loser reads the winner's
    // claim and decides again.
    for _ in 0..4 {
        let found = store.get(key).await?;
        let receipt = found.as_ref().map(|d| Receipt::decode(&d.bytes));
        let now_ms = crate::clock::now_ms();
        match decide(receipt.as_ref(), message, etag, now_ms) {
            Decision::Skip(why) => return Ok(Turn::Skip(why)),
            Decision::Later => {
                return Ok(Turn::Later(
                    "another change to the object is being handed over; this one comes back after it"
                        .into(),
                ));
            }
            Decision::Resume => {
                return Ok(Turn::Mine(found.expect("a claim was found").version));
            }
            Decision::Claim => {
                let claim = Claim {
                    message: message.to_string(),
                    at_ms: now_ms,
                    etag: etag.map(str::to_string),
                };
                let condition = match &found {
                    Some(d) => Write::Replace(d.version.clone()),
                    None => Write::Create,
                };
                let bytes = serde_json::to_vec(&claim).expect("a claim serializes");
                match store.put(key, bytes, condition).await {
                    Ok(version) => return Ok(Turn::Mine(version)),
                    Err(StateError::Conflict(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(Turn::Later(
        "the object's receipt kept changing; this change comes back later".into(),
    ))
}

/// The change claimed at `version` was handed over: record the version
/// (or, for a delete, forget the object).
pub async fn settle(
    store: &dyn StateStore,
    key: &str,
    version: String,
    etag: Option<&str>,
) -> Result<(), StateError> {
    match etag {
        Some(etag) => {
            match store
                .put(key, etag.as_bytes().to_vec(), Write::Replace(version))
                .await
            {
                // Taken over as abandoned meanwhile: the taker records it.
                Ok(_) | Err(StateError::Conflict(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        None => store.delete(key).await.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(message: &str, at_ms: u64, etag: Option<&str>) -> Receipt {
        Receipt::Claim(Claim {
            message: message.into(),
            at_ms,
            etag: etag.map(str::to_string),
        })
    }

    fn decided(found: Option<Receipt>, etag: Option<&str>) -> &'static str {
        match decide(found.as_ref(), "m1", etag, 1_000_000) {
            Decision::Claim => "claim",
            Decision::Resume => "resume",
            Decision::Skip(_) => "skip",
            Decision::Later => "later",
        }
    }

    #[test]
    fn a_delete_needs_a_version_seen_and_runs_once() {
        assert_eq!(decided(None, None), "skip", "never seen");
        assert_eq!(decided(Some(Receipt::Seen("e1".into())), None), "claim");
        // Another notification carrying the same delete has it.
        assert_eq!(decided(Some(claim("m2", 999_000, None)), None), "skip");
        // Its own claim, from before its host died: finish it.
        assert_eq!(decided(Some(claim("m1", 999_000, None)), None), "resume");
    }

    #[test]
    fn a_version_runs_once_and_waits_for_another_change_in_flight() {
        assert_eq!(decided(None, Some("e1")), "claim");
        assert_eq!(
            decided(Some(Receipt::Seen("e1".into())), Some("e1")),
            "skip"
        );
        assert_eq!(
            decided(Some(Receipt::Seen("e1".into())), Some("e2")),
            "claim"
        );
        assert_eq!(
            decided(Some(claim("m2", 999_000, Some("e1"))), Some("e1")),
            "skip"
        );
        assert_eq!(
            decided(Some(claim("m2", 999_000, None)), Some("e2")),
            "later"
        );
        assert_eq!(
            decided(Some(claim("m2", 999_000, Some("e1"))), None),
            "later"
        );
    }

    #[test]
    fn an_abandoned_claim_is_taken_over() {
        let long_ago = 1_000_000 - ABANDONED_AFTER.as_millis() as u64;
        assert_eq!(decided(Some(claim("m2", long_ago, None)), None), "claim");
        assert_eq!(
            decided(Some(claim("m2", long_ago, Some("e1"))), Some("e1")),
            "claim"
        );
    }

    #[test]
    fn receipts_of_older_releases_read_as_seen_versions() {
        assert_eq!(Receipt::decode(b"abc123"), Receipt::Seen("abc123".into()));
        let c = claim("m", 5, Some("e"));
        let Receipt::Claim(inner) = &c else {
            unreachable!()
        };
        assert_eq!(Receipt::decode(&serde_json::to_vec(inner).unwrap()), c);
    }
}
