//! Capabilities: what a function may reach outside its sandbox, checked in
//! one place.
//!
//! Grants come from the manifest and are validated at deploy time; every
//! guest call to `storage` or `queue` asks [`Grants`] first, and a denial is
//! an error value for the guest, never a trap. Deny by default: a function
//! with no grants reaches nothing.
//!
//! Plain data and checks: this module knows nothing of wasm, HTTP or
//! backends (the sandbox asks it, then calls the backend).

use serde::{Deserialize, Serialize};

/// What a storage grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// `get`, `head`, `list`.
    Read,
    /// `put`, `delete`.
    Write,
    /// Both.
    ReadWrite,
    /// `get` and `head` of only the object whose change this invocation
    /// runs for (a blob trigger's event): a leaked trigger cannot be used
    /// to read the rest of the bucket. No `list`.
    ReadEvent,
}

impl Access {
    fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || (self == wanted && self != Access::ReadEvent)
    }

    /// Does it allow writing?
    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// Access to one bucket, optionally only below a key prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageGrant {
    /// The bucket's name.
    pub bucket: String,
    /// What may be done there.
    pub access: Access,
    /// Only keys starting with this prefix (all keys when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Everything a function is granted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Buckets the function may read or write.
    #[serde(default)]
    pub storage: Vec<StorageGrant>,
    /// Queues the function may send to.
    #[serde(default)]
    pub queues: Vec<String>,
}

/// A call no grant allows: what was asked, and which grant in
/// `fnhost.toml` would allow it. Trying again cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(String);

impl Grants {
    /// May the function do `wanted` on `key` in `bucket`? The error names
    /// what was asked, for the guest to report.
    pub fn check_storage(&self, bucket: &str, key: &str, wanted: Access) -> Result<(), Denied> {
        let granted = self.storage.iter().any(|g| {
            g.bucket == bucket
                && g.access.allows(wanted)
                && g.prefix.as_deref().is_none_or(|p| key.starts_with(p))
        });
        if granted {
            Ok(())
        } else {
            let what = match wanted {
                Access::Read | Access::ReadEvent => "read",
                Access::Write | Access::ReadWrite => "write",
            };
            Err(Denied(format!(
                "no storage grant allows {what} of key {} in bucket {}; add one under [[grants.storage]] in fnhost.toml",
                crate::text::quote(key),
                crate::text::quote(bucket)
            )))
        }
    }

    /// May the function read `key` in `bucket` because it is the object
    /// `event` (bucket, key) this invocation runs for, under a
    /// `read-event` grant?
    pub fn check_event_read(&self, bucket: &str, key: &str, event: Option<(&str, &str)>) -> bool {
        event == Some((bucket, key))
            && self.storage.iter().any(|g| {
                g.bucket == bucket
                    && g.access == Access::ReadEvent
                    && g.prefix.as_deref().is_none_or(|p| key.starts_with(p))
            })
    }

    /// May the function send to `queue`?
    pub fn check_queue_send(&self, queue: &str) -> Result<(), Denied> {
        if self.queues.iter().any(|q| q == queue) {
            Ok(())
        } else {
            Err(Denied(format!(
                "no grant allows sending to queue {}; add it to grants.queues in fnhost.toml",
                crate::text::quote(queue)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants() -> Grants {
        Grants {
            storage: vec![
                StorageGrant {
                    bucket: "in".into(),
                    access: Access::Read,
                    prefix: None,
                },
                StorageGrant {
                    bucket: "out".into(),
                    access: Access::ReadWrite,
                    prefix: Some("thumbs/".into()),
                },
            ],
            queues: vec!["outbox".into()],
        }
    }

    #[test]
    fn storage_is_denied_unless_granted() {
        let g = grants();
        assert!(g.check_storage("in", "a.png", Access::Read).is_ok());
        assert!(g.check_storage("in", "a.png", Access::Write).is_err());
        assert!(
            g.check_storage("out", "thumbs/a.png", Access::Write)
                .is_ok()
        );
        assert!(g.check_storage("out", "a.png", Access::Read).is_err());
        let err = g
            .check_storage("secrets", "k", Access::Read)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"secrets\"") && err.contains("[[grants.storage]]"),
            "{err}"
        );
        assert!(
            Grants::default()
                .check_storage("in", "a", Access::Read)
                .is_err()
        );
    }

    #[test]
    fn a_read_event_grant_reads_only_the_triggering_object() {
        let g = Grants {
            storage: vec![StorageGrant {
                bucket: "in".into(),
                access: Access::ReadEvent,
                prefix: None,
            }],
            queues: Vec::new(),
        };
        let event = Some(("in", "a.png"));
        assert!(g.check_event_read("in", "a.png", event));
        assert!(!g.check_event_read("in", "b.png", event));
        assert!(!g.check_event_read("in", "a.png", None));
        assert!(!g.check_event_read("other", "a.png", Some(("other", "a.png"))));
        // Not a read grant: no get of another key, no list, no write.
        for wanted in [Access::Read, Access::Write] {
            assert!(g.check_storage("in", "a.png", wanted).is_err());
            assert!(g.check_storage("in", "", wanted).is_err());
        }
    }

    #[test]
    fn queues_are_denied_unless_granted() {
        assert!(grants().check_queue_send("outbox").is_ok());
        assert!(grants().check_queue_send("orders").is_err());
    }
}
