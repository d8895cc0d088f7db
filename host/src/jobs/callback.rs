//! Completion callbacks of async jobs: the finished record is POSTed to the
//! job's `callback_url` (up to four tries, backing off from 0.5 s), and the
//! record says when the callback is done, so one cut off by a crash is sent
//! after the restart ([`resume`]).
//!
//! A callback URL is the submitter's, but the POST comes from the host, from
//! inside its network: it must not become a way to reach the host's own
//! loopback services, a cloud metadata address (169.254.169.254) or the
//! private network. Unless the host config allows them
//! (`--callback-allow loopback,private,link-local`), a callback whose
//! address is one of those is refused: at submission when the URL names the
//! address, and at connect time (every address the name resolves to is
//! checked) when it names a host. Redirects are not followed, and no proxy
//! from the environment is used. Knows nothing of wasm.

use crate::jobs::{JobStore, JobUpdate};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Tries of a completion callback.
const ATTEMPTS: u32 = 4;
/// Completion callbacks in flight at once, host-wide; more wait their turn.
const IN_FLIGHT: usize = 64;
/// The longest callback URL accepted, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Kinds of address a callback may not reach unless the host config allows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reach {
    /// 127.0.0.0/8 and ::1: the host itself.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 and fc00::/7: the private network.
    Private,
    /// 169.254/16 and fe80::/10, where cloud metadata services answer.
    LinkLocal,
}

impl Reach {
    fn describe(self) -> &'static str {
        match self {
            Reach::Loopback => "a loopback address",
            Reach::Private => "a private-network address",
            Reach::LinkLocal => "a link-local address (cloud metadata lives there)",
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Reach::Loopback => "loopback",
            Reach::Private => "private",
            Reach::LinkLocal => "link-local",
        }
    }
}

/// What a callback may reach: public unicast addresses always; loopback,
/// private and link-local ones only when allowed.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    /// The kinds of non-public address the host config allows.
    pub allow: Vec<Reach>,
}

impl CallbackPolicy {
    /// Why a callback may not go to `ip`, if it may not.
    pub fn refuses(&self, ip: IpAddr) -> Option<String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let reach = match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || a == 0 {
                    return Some(format!("{ip} is not a unicast address"));
                }
                if v4.is_loopback() {
                    Some(Reach::Loopback)
                } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                    Some(Reach::Private)
                } else if v4.is_link_local() {
                    Some(Reach::LinkLocal)
                } else {
                    None
                }
            }
            IpAddr::V6(v6) => {
                let first = v6.segments()[0];
                if v6.is_unspecified() || v6.is_multicast() {
                    return Some(format!("{ip} is not a unicast address"));
                }
                if v6.is_loopback() {
                    Some(Reach::Loopback)
                } else if first & 0xfe00 == 0xfc00 {
                    Some(Reach::Private)
                } else if first & 0xffc0 == 0xfe80 {
                    Some(Reach::LinkLocal)
                } else {
                    None
                }
            }
        }?;
        (!self.allow.contains(&reach)).then(|| {
            format!(
                "{ip} is {}, which job callbacks may not reach unless the host is started with --callback-allow {}",
                reach.describe(),
                reach.flag()
            )
        })
    }

    /// Check a callback URL at submission: an http(s) URL of at most
    /// [`MAX_URL_BYTES`], and not naming a refused address.
    pub fn check_url(&self, url: &str) -> Result<(), BadCallbackUrl> {
        if url.len() > MAX_URL_BYTES {
            return Err(BadCallbackUrl(format!(
                "callback_url is {} bytes, over the limit of {MAX_URL_BYTES}",
                url.len()
            )));
        }
        let quoted = crate::text::quote(url);
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| BadCallbackUrl(format!("callback_url {quoted} is not a URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(BadCallbackUrl(format!(
                "callback_url {quoted} must be an http:// or https:// URL"
            )));
        }
        let Some(host) = parsed.host_str() else {
            return Err(BadCallbackUrl(format!("callback_url {quoted} has no host")));
        };
        // An address in the URL is checked now; a name when it is resolved.
        match host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => self
                .refuses(ip)
                .map_or(Ok(()), |why| Err(BadCallbackUrl(why))),
            Err(_) => Ok(()),
        }
    }
}

/// A callback URL refused at submission: what is wrong with it (its size,
/// its form, or an address the policy refuses). Resending it cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCallbackUrl(String);

/// Resolves callback host names, keeping only the addresses the policy
/// allows: a name that resolves to 127.0.0.1 is refused like the address.
struct Guarded(Arc<CallbackPolicy>);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.refuses(a.ip()) {
                    Some(why) => {
                        refused = Some(why);
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| "it resolves to no address".into());
                return Err(format!("callback host {host:?} refused: {why}").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Sends completion callbacks under a [`CallbackPolicy`].
pub struct Callbacks {
    policy: Arc<CallbackPolicy>,
    client: reqwest::Client,
    slots: tokio::sync::Semaphore,
}

impl Callbacks {
    /// A sender with one HTTP client (and connection pool) for every callback.
    pub fn new(policy: CallbackPolicy) -> Callbacks {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(Guarded(policy.clone())))
            .build()
            .unwrap_or_default();
        Callbacks {
            policy,
            client,
            slots: tokio::sync::Semaphore::new(IN_FLIGHT),
        }
    }

    /// What callbacks may reach.
    pub fn policy(&self) -> &CallbackPolicy {
        &self.policy
    }

    /// POST the finished job's record to its callback URL, if it has one,
    /// retrying a few times with backoff; then record the callback as done
    /// (delivered or given up on). The record stays readable either way.
    pub async fn send(&self, jobs: &dyn JobStore, id: &str) {
        let Ok(Some(record)) = jobs.get(id.to_string()).await else {
            return;
        };
        let Some(url) = record.callback_url.clone() else {
            return;
        };
        // Instances are free again by now, so bound the callbacks in flight
        // host-wide: a dead callback URL must not pile up a task and a
        // connection per finished job.
        let Ok(_permit) = self.slots.acquire().await else {
            return;
        };
        let body = record.to_json();
        let mut delay = Duration::from_millis(500);
        for attempt in 1..=ATTEMPTS {
            if let Some(why) = self.refused_literal(&url) {
                tracing::error!(job = %id, url = %crate::text::LogSafe(&url), reason = %why, "the job callback is refused");
                break;
            }
            match self.client.post(&url).json(&body).send().await {
                Ok(resp) if resp.status().is_success() => break,
                Ok(resp) => {
                    tracing::warn!(job = %id, url = %crate::text::LogSafe(&url), status = %resp.status(), attempt, "the job callback was refused")
                }
                Err(e) => {
                    tracing::warn!(job = %id, url = %crate::text::LogSafe(&url), error = %error_chain(&e), attempt, "the job callback failed")
                }
            }
            if attempt == ATTEMPTS {
                tracing::error!(job = %id, url = %crate::text::LogSafe(&url), "giving up on the job callback; the record stays at its status URL");
            } else {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        if let Err(e) = jobs.update(id.to_string(), JobUpdate::CallbackDone).await {
            tracing::warn!(job = %id, error = %e, "cannot record the job callback as done; it may be sent again after a restart");
        }
    }

    /// A URL whose host is an address the policy refuses (names are
    /// checked by the resolver, at connect time).
    fn refused_literal(&self, url: &str) -> Option<String> {
        self.policy.check_url(url).err().map(|e| e.to_string())
    }
}

/// An error with its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Send the callbacks owed from before this start (a crash cut them off
/// between the job's end and the POST), oldest first.
pub async fn resume(jobs: Arc<dyn JobStore>, callbacks: Arc<Callbacks>) {
    let owed = match jobs.pending_callbacks(1000).await {
        Ok(owed) => owed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for job callbacks owed from before the start");
            return;
        }
    };
    if !owed.is_empty() {
        tracing::info!(
            n = owed.len(),
            "sending job callbacks owed from before the start"
        );
    }
    for record in owed {
        callbacks.send(jobs.as_ref(), &record.id).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_private_and_link_local_addresses_are_refused_unless_allowed() {
        let strict = CallbackPolicy::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
        ] {
            assert!(
                strict.refuses(ip.parse().unwrap()).is_some(),
                "{ip} should be refused"
            );
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "172.32.0.1"] {
            assert_eq!(strict.refuses(ip.parse().unwrap()), None, "{ip}");
        }
        let loopback = CallbackPolicy {
            allow: vec![Reach::Loopback],
        };
        assert_eq!(loopback.refuses("127.0.0.1".parse().unwrap()), None);
        let why = loopback
            .refuses("169.254.169.254".parse().unwrap())
            .unwrap();
        assert!(why.contains("--callback-allow link-local"), "{why}");
    }

    #[test]
    fn urls_are_checked_at_submission() {
        let p = CallbackPolicy::default();
        assert!(p.check_url("https://example.com/done").is_ok());
        assert!(
            p.check_url("http://localhost:9/x").is_ok(),
            "names are checked when resolved"
        );
        let e = p
            .check_url("http://169.254.169.254/latest/meta-data")
            .unwrap_err()
            .to_string();
        assert!(e.contains("link-local"), "{e}");
        assert!(p.check_url("http://[::1]:80/").is_err());
        assert!(
            p.check_url("ftp://example.com/")
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(
            p.check_url(&long)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
    }
}
