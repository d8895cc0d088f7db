//! Scoped admin tokens: what a bearer of the admin API may do.
//!
//! A token is `fnh_<id>_<secret>`: the id finds its record, the secret is
//! stored only as its SHA-256 (secrets are 256 random bits, so a plain hash
//! is enough: nothing to guess) and compared in constant time. Records live
//! in the host's [`StateStore`] under `tokens/<id>`, so on a fleet a token
//! made on one host works on every host. The host's bootstrap token (the
//! file `token` in the data dir, or `FNHOST_TOKEN`) is an `admin` token
//! with the id `bootstrap`; it cannot be revoked, only replaced.
//!
//! Knows nothing of HTTP: the server asks [`Tokens::check`] who a bearer is
//! and [`Scope::allows`] whether that scope may make a request.

use crate::state::{StateError, StateStore, Write};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything, tokens included.
    Admin,
    /// Deploy, roll back and remove functions; read their status. No data.
    Deploy,
    /// Invoke functions, submit async jobs and read their records, send
    /// messages; read status.
    Invoke,
    /// Read status and data (jobs, messages, dead letters, objects, change
    /// feeds); change nothing.
    Read,
}

/// What a request does, for [`Scope::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read functions, versions and queue counts.
    Status,
    /// Deploy, roll back or remove a function.
    Deploy,
    /// Invoke a function, submit a job, send a message.
    Invoke,
    /// Read a job record.
    ReadJob,
    /// Read data: messages, dead letters, objects, change feeds.
    ReadData,
    /// Change data: purge, redrive, put or delete objects.
    WriteData,
    /// Create, list or revoke tokens.
    Tokens,
}

impl Scope {
    /// May a bearer of this scope do `action`?
    pub fn allows(self, action: Action) -> bool {
        match self {
            Scope::Admin => true,
            Scope::Deploy => matches!(action, Action::Status | Action::Deploy),
            Scope::Invoke => matches!(action, Action::Status | Action::Invoke | Action::ReadJob),
            Scope::Read => matches!(action, Action::Status | Action::ReadJob | Action::ReadData),
        }
    }

    /// Its name, as the CLI and the API write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
            Scope::Invoke => "invoke",
            Scope::Read => "read",
        }
    }
}

/// A token's record, as stored and listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id: the part of the token between `fnh_` and the secret.
    pub id: String,
    /// What it is for, as its creator said.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    /// When it was made (ms since the epoch).
    pub created_at_ms: u64,
    /// When it stops working (ms since the epoch), if ever.
    pub expires_at_ms: Option<u64>,
}

/// Who a bearer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    /// The token's id (`bootstrap` for the host's own).
    pub id: String,
    /// What it may do.
    pub scope: Scope,
}

/// Why a bearer was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a token of this host (or fleet), or revoked.
    Unknown,
    /// A token that expired at this time (ms since the epoch).
    Expired(u64),
}

/// The longest token name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// The most tokens a host (or fleet) keeps.
pub const MAX_TOKENS: usize = 1_000;
/// How long a checked token is trusted without reading its record again:
/// a revocation on another host of a fleet takes effect within this.
pub const CACHE_FOR: Duration = Duration::from_secs(10);
/// The id of the host's bootstrap token.
pub const BOOTSTRAP: &str = "bootstrap";

const PREFIX: &str = "tokens/";

/// The host's tokens.
pub struct Tokens {
    state: Arc<dyn StateStore>,
    bootstrap: String,
    /// Tokens checked lately, by the secret's hash.
    cache: Mutex<HashMap<String, Checked>>,
}

/// A token checked lately: who bears it, when it expires, when it was read.
type Checked = (Bearer, Option<u64>, Instant);

fn hash(secret: &str) -> String {
    crate::files::hex(&Sha256::digest(secret.as_bytes()))
}

/// Compare without an early exit, so timing does not reveal a prefix.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The mark every scoped token starts with.
pub const MARK: &str = "fnh_";

/// Does `haystack` hold `secret` anywhere? Every window is compared whole
/// ([`same`]), so the time taken depends on the lengths alone, never on
/// how much of the secret a guess got right.
fn holds_secret(haystack: &[u8], secret: &[u8]) -> bool {
    !secret.is_empty()
        && haystack.len() >= secret.len()
        && haystack
            .windows(secret.len())
            .fold(false, |found, w| found | same(w, secret))
}

/// `bytes` random bytes as hex: a token's id and secret, and the host's
/// bootstrap token.
pub fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b)?;
    Ok(crate::files::hex(&b))
}

fn no_randomness(e: getrandom::Error) -> StateError {
    StateError::backend(format!("no randomness for a token: {e}"), None)
}

impl Tokens {
    /// Tokens kept in `state`, with the host's `bootstrap` admin token.
    pub fn new(state: Arc<dyn StateStore>, bootstrap: String) -> Tokens {
        Tokens {
            state,
            bootstrap,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Does `text` carry an fnhost token: a scoped one (anything with
    /// [`MARK`] in it) or the host's bootstrap token? The bootstrap token
    /// is looked for without an early exit ([`holds_secret`]).
    pub fn carried_by(&self, text: &[u8]) -> bool {
        let marked = text.windows(MARK.len()).any(|w| w == MARK.as_bytes());
        marked | holds_secret(text, self.bootstrap.as_bytes())
    }

    /// Make a token; its record and the token itself (shown only now).
    pub async fn create(
        &self,
        name: &str,
        scope: Scope,
        expires_in: Option<Duration>,
    ) -> Result<(TokenRecord, String), StateError> {
        if name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(StateError::Invalid(format!(
                "a token's name is at most {MAX_NAME_BYTES} bytes of printable text"
            )));
        }
        // Counted by key: a page of the listing, no document read.
        let kept = self.state.list(PREFIX, None, MAX_TOKENS).await?.len();
        if kept >= MAX_TOKENS {
            return Err(StateError::Invalid(format!(
                "this host already has {MAX_TOKENS} tokens, the most it keeps; revoke some first"
            )));
        }
        let id = random_hex(8).map_err(no_randomness)?;
        let secret = random_hex(32).map_err(no_randomness)?;
        let created = crate::clock::now_ms();
        let record = TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            scope,
            hash: hash(&secret),
            created_at_ms: created,
            expires_at_ms: expires_in
                .map(|d| created.saturating_add(d.as_millis().min(u64::MAX as u128) as u64)),
        };
        let bytes = serde_json::to_vec(&record).expect("a token record serializes");
        self.state
            .put(&format!("{PREFIX}{id}"), bytes, Write::Create)
            .await?;
        Ok((record, format!("{MARK}{id}_{secret}")))
    }

    /// Every token's record, by id.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, StateError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.state.list(PREFIX, after.clone(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.key.clone());
            for listed in &page {
                if let Some(doc) = self.state.get(&listed.key).await?
                    && let Ok(record) = serde_json::from_slice::<TokenRecord>(&doc.bytes)
                {
                    out.push(record);
                }
            }
            if page.len() < 500 {
                break;
            }
        }
        Ok(out)
    }

    /// Revoke a token by id; false when there was none.
    pub async fn revoke(&self, id: &str) -> Result<bool, StateError> {
        if id == BOOTSTRAP {
            return Err(StateError::Invalid(
                "the bootstrap token cannot be revoked; replace it (FNHOST_TOKEN, or the data dir's `token` file) and restart".into(),
            ));
        }
        if !valid_id(id) {
            return Ok(false);
        }
        let gone = self.state.delete(&format!("{PREFIX}{id}")).await?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, (b, _, _)| b.id != id);
        Ok(gone)
    }

    /// Who bears `token`.
    pub async fn check(&self, token: &str) -> Result<Result<Bearer, Refused>, StateError> {
        if same(token.as_bytes(), self.bootstrap.as_bytes()) {
            return Ok(Ok(Bearer {
                id: BOOTSTRAP.into(),
                scope: Scope::Admin,
            }));
        }
        let Some((id, secret)) = token.strip_prefix(MARK).and_then(|t| t.split_once('_')) else {
            return Ok(Err(Refused::Unknown));
        };
        if !valid_id(id) {
            return Ok(Err(Refused::Unknown));
        }
        let hashed = hash(secret);
        let now = crate::clock::now_ms();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hashed)
            .filter(|(b, _, at)| b.id == id && at.elapsed() < CACHE_FOR)
            .map(|(b, exp, _)| (b.clone(), *exp));
        let (bearer, expires) = match cached {
            Some(hit) => hit,
            None => {
                let Some(doc) = self.state.get(&format!("{PREFIX}{id}")).await? else {
                    return Ok(Err(Refused::Unknown));
                };
                let Ok(record) = serde_json::from_slice::<TokenRecord>(&doc.bytes) else {
                    return Ok(Err(Refused::Unknown));
                };
                if !same(record.hash.as_bytes(), hashed.as_bytes()) {
                    return Ok(Err(Refused::Unknown));
                }
                let bearer = Bearer {
                    id: record.id,
                    scope: record.scope,
                };
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_TOKENS {
                    cache.clear();
                }
                cache.insert(
                    hashed,
                    (bearer.clone(), record.expires_at_ms, Instant::now()),
                );
                (bearer, record.expires_at_ms)
            }
        };
        match expires {
            Some(at) if at <= now => Ok(Err(Refused::Expired(at))),
            _ => Ok(Ok(bearer)),
        }
    }
}

/// Ids are 16 lower-case hex digits.
fn valid_id(id: &str) -> bool {
    id.len() == 16
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::embedded::EmbeddedState;

    fn tokens(dir: &std::path::Path) -> Tokens {
        Tokens::new(Arc::new(EmbeddedState::open(dir).unwrap()), "boot".into())
    }

    #[tokio::test]
    async fn a_token_is_checked_by_its_hash_and_revoked_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let (record, token) = t.create("ci", Scope::Deploy, None).await.unwrap();
        assert!(token.starts_with(&format!("fnh_{}_", record.id)));
        assert!(!record.hash.is_empty() && !token.contains(&record.hash));
        let bearer = t.check(&token).await.unwrap().unwrap();
        assert_eq!(bearer.scope, Scope::Deploy);
        // One character off, another id, the bare secret: unknown.
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push('x');
        for bad in [wrong.as_str(), "fnh_0000000000000000_00", "nonsense", ""] {
            assert_eq!(t.check(bad).await.unwrap(), Err(Refused::Unknown), "{bad}");
        }
        assert_eq!(t.list().await.unwrap(), vec![record.clone()]);
        assert!(t.revoke(&record.id).await.unwrap());
        assert_eq!(t.check(&token).await.unwrap(), Err(Refused::Unknown));
        assert!(!t.revoke(&record.id).await.unwrap());
        assert!(t.revoke(BOOTSTRAP).await.is_err());
        assert_eq!(t.check("boot").await.unwrap().unwrap().scope, Scope::Admin);
    }

    #[test]
    fn a_text_carries_a_token_when_it_holds_the_mark_or_the_bootstrap_token() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        for carrying in [
            "Bearer fnh_0123456789abcdef_secret",
            "fnh_",
            "Token x=fnh_1",
            "Bearer boot",
            "boot",
            "Digest response=\"xbootx\"",
        ] {
            assert!(t.carried_by(carrying.as_bytes()), "{carrying}");
        }
        for clean in [
            "Bearer user-own-token",
            "Bearer bo0t",
            "fnh-1",
            "FNH",
            "",
            "bo",
        ] {
            assert!(!t.carried_by(clean.as_bytes()), "{clean}");
        }
        assert!(holds_secret(b"abc", b"abc") && !holds_secret(b"ab", b"abc"));
        assert!(!holds_secret(b"anything", b""));
    }

    #[tokio::test]
    async fn an_expired_token_is_refused_as_expired() {
        let dir = tempfile::tempdir().unwrap();
        let t = tokens(dir.path());
        let (_, token) = t
            .create("short", Scope::Read, Some(Duration::ZERO))
            .await
            .unwrap();
        assert!(matches!(
            t.check(&token).await.unwrap(),
            Err(Refused::Expired(_))
        ));
    }

    #[test]
    fn scopes_allow_what_their_names_say() {
        use Action::*;
        let all = [Status, Deploy, Invoke, ReadJob, ReadData, WriteData, Tokens];
        let allowed = |s: Scope| all.iter().filter(|a| s.allows(**a)).count();
        assert_eq!(allowed(Scope::Admin), all.len());
        assert!(Scope::Deploy.allows(Deploy) && !Scope::Deploy.allows(ReadData));
        assert!(!Scope::Deploy.allows(ReadJob) && !Scope::Deploy.allows(Invoke));
        assert!(Scope::Read.allows(ReadData) && !Scope::Read.allows(Deploy));
        assert!(!Scope::Read.allows(WriteData) && !Scope::Read.allows(Invoke));
        assert!(Scope::Invoke.allows(Invoke) && !Scope::Invoke.allows(ReadData));
        for s in [Scope::Deploy, Scope::Invoke, Scope::Read] {
            assert!(s.allows(Status) && !s.allows(Tokens) && !s.allows(WriteData));
        }
    }
}
