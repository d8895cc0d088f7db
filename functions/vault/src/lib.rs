//! `vault`: the trusted keeper of customer records (`isolation =
//! "trusted"`), fed only by `gatekeeper` through the queue `vault-in`.
//!
//! For each record it stores the whole of it in the sensitive bucket
//! `customers` (encrypted at rest by the host; no public function and no
//! admin token can read it), and a redacted view in `customer-views` that
//! the gatekeeper serves: the name's initial, the email's first letter and
//! domain, the card's last four digits.

use fnhost_sdk::{Error, Event, Output, Result, ResultExt, job};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Serialize)]
struct Customer {
    name: String,
    email: String,
    card: String,
    #[serde(default)]
    note: String,
}

#[derive(Deserialize)]
struct Record {
    id: String,
    customer: Customer,
}

fn redacted(c: &Customer) -> serde_json::Value {
    let initial: String = c.name.chars().take(1).collect();
    let (user, domain) = c.email.split_once('@').unwrap_or(("", ""));
    let first: String = user.chars().take(1).collect();
    let digits: Vec<char> = c.card.chars().collect();
    let last4: String = digits[digits.len().saturating_sub(4)..].iter().collect();
    serde_json::json!({
        "name": format!("{initial}."),
        "email": format!("{first}***@{domain}"),
        "card": format!("**** {last4}"),
    })
}

#[job]
fn vault(event: Event) -> Result<Output> {
    let Event::Queue(_) = &event else {
        return Err(Error::fail("vault takes records from its queue only"));
    };
    let record: Record = event.json()?;
    if record.id.is_empty()
        || record.id.len() > 64
        || !record
            .id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(Error::fail("the record has no usable id"));
    }
    let key = format!("{}.json", record.id);
    fnhost_sdk::storage::put(
        "customers",
        &key,
        &serde_json::to_vec(&record.customer)?,
        Some("application/json"),
    )
    .or_retry("cannot store the record")?;
    fnhost_sdk::storage::put(
        "customer-views",
        &key,
        &serde_json::to_vec(&redacted(&record.customer))?,
        Some("application/json"),
    )
    .or_retry("cannot store the view")?;
    Ok(Output::text(format!("stored {}", record.id)))
}
