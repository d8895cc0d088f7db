//! `gatekeeper`: the public face of customer records, in front of the
//! trusted `vault` (the Gatekeeper pattern).
//!
//! - `POST /customers` with `{"name", "email", "card", "note"?}`: checks
//!   every field (a malformed or oversized record is `400` with the
//!   reason), drops any other field, and hands the clean record to `vault`
//!   through the internal queue `vault-in`, the only channel between the
//!   two. Answers `202 {"id", "view"}`: the id (the invocation's, a UUIDv7:
//!   time-ordered with random bits) is the caller's handle on the redacted
//!   view. A real gatekeeper would hand out a random or signed token.
//! - `GET /customers/{id}`: the redacted view `vault` wrote (`404` until it
//!   has, or for an unknown id).
//!
//! It is granted the queue and read of `customer-views`, never the
//! sensitive `customers` bucket.

use fnhost_sdk::queue::SendOptions;
use fnhost_sdk::{Error, Event, Invocation, Output, Result, ResultExt, job};
use serde::{Deserialize, Serialize};

/// The largest record accepted, in bytes.
const MAX_RECORD_BYTES: usize = 16 * 1024;

/// A customer record as accepted: unknown fields are dropped.
#[derive(Deserialize, Serialize)]
struct Customer {
    name: String,
    email: String,
    card: String,
    #[serde(default)]
    note: String,
}

fn bad(why: impl Into<String>) -> Result<Output> {
    Output::json(&serde_json::json!({ "error": why.into() })).map(|o| o.with_status(400))
}

/// Why `c` cannot be accepted, if it cannot.
fn check(c: &Customer) -> Option<String> {
    let printable = |s: &str| !s.chars().any(char::is_control);
    if c.name.trim().is_empty() || c.name.len() > 100 || !printable(&c.name) {
        return Some("name: 1 to 100 bytes of printable text".into());
    }
    let at = c.email.find('@');
    if c.email.len() > 254
        || at.is_none_or(|i| i == 0 || i + 1 >= c.email.len())
        || c.email
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Some("email: an address like ada@example.com, at most 254 bytes".into());
    }
    if !(13..=19).contains(&c.card.len()) || !c.card.bytes().all(|b| b.is_ascii_digit()) {
        return Some("card: 13 to 19 digits, nothing else".into());
    }
    if c.note.len() > 500 || !printable(&c.note) {
        return Some("note: at most 500 bytes of printable text".into());
    }
    None
}

#[job]
fn gatekeeper(inv: Invocation, event: Event) -> Result<Output> {
    let Event::Http(req) = &event else {
        return Err(Error::fail("gatekeeper answers HTTP requests only"));
    };
    if req.method == "GET" {
        let id = req.param("id").unwrap_or_default();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        {
            return bad("id: the id POST /customers answered with");
        }
        return match fnhost_sdk::storage::get("customer-views", &format!("{id}.json"))
            .or_retry("cannot read the view")?
        {
            Some(view) => Ok(Output::bytes("application/json", view)),
            None => Output::json(&serde_json::json!({
                "error": "no view for this id (yet: the vault may still be storing it)"
            }))
            .map(|o| o.with_status(404)),
        };
    }
    if req.body.len() > MAX_RECORD_BYTES {
        return bad(format!(
            "the record is {} bytes; at most {MAX_RECORD_BYTES}",
            req.body.len()
        ));
    }
    let customer: Customer = match serde_json::from_slice(&req.body) {
        Ok(c) => c,
        Err(e) => return bad(format!("not a customer record: {e}")),
    };
    if let Some(why) = check(&customer) {
        return bad(why);
    }
    let record = serde_json::json!({ "id": inv.id, "customer": customer });
    let options = SendOptions {
        delay_ms: None,
        dedup_id: None,
        group: None,
        priority: None,
        correlation_id: Some(inv.id.clone()),
        reply_to: None,
        attributes: Vec::new(),
    };
    fnhost_sdk::queue::send("vault-in", &serde_json::to_vec(&record)?, &options)
        .or_retry("cannot hand the record to the vault")?;
    Output::json(&serde_json::json!({
        "id": inv.id,
        "view": format!("/customers/{}", inv.id),
    }))
    .map(|o| o.with_status(202))
}
