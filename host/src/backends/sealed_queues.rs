//! Messages of sensitive queues, sealed to the trusted worker: the host
//! process encrypts every message sent to one of the host config's
//! `[sensitive] queues` with the worker's public key, so what the queue
//! store holds (`queues.db`, SQS, a dead letter) is ciphertext that only
//! the worker, which holds the private key, can open. The host process
//! never can: it has only the public half.
//!
//! The scheme is the hybrid public-key encryption every sealed-box design
//! uses, built from aws-lc-rs primitives: a fresh X25519 key pair per
//! message, its Diffie-Hellman secret with the worker's key stretched by
//! HKDF-SHA256 (over both public keys) into an AES-256-GCM key, the queue's
//! name as associated data (a sealed body moved to another queue fails to
//! open). Stored as `FNHQ1` ‖ ephemeral public key (32) ‖ nonce (12) ‖
//! ciphertext ‖ tag (16): [`OVERHEAD`] bytes more than the body.
//!
//! The worker's key lives in `<trusted-dir>/keys/queue.x25519` (0600),
//! made at its first start. Attributes, groups and correlation ids are not
//! sealed: put nothing sensitive there.

use crate::queue::{
    DeadLetter, Delivery, Message, NewMessage, QueueBackend, QueueError, QueueFeatures, QueueStats,
    Receipt, Sent, Settlement,
};
use crate::queue::{QueueAdmin, QueueDelivery};
use crate::task::BoxFuture;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const MAGIC: &[u8] = b"FNHQ1";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const SALT: &[u8] = b"fnhost sealed queue message v1";
/// What sealing adds to a message body, in bytes.
pub const OVERHEAD: usize = MAGIC.len() + KEY_LEN + NONCE_LEN + TAG_LEN;
/// The largest body of a message to a sensitive queue: the queues' cap
/// less what sealing adds.
pub const MAX_SEALED_BODY_BYTES: usize = crate::queue::MAX_BODY_BYTES - OVERHEAD;

/// The AES key for one message: HKDF over the shared secret, bound to
/// both public keys.
fn message_key(shared: &[u8], ephemeral: &[u8], recipient: &[u8]) -> Option<LessSafeKey> {
    let info = [ephemeral, recipient];
    let prk = Salt::new(HKDF_SHA256, SALT).extract(shared);
    let okm = prk.expand(&info, &AES_256_GCM).ok()?;
    Some(LessSafeKey::new(UnboundKey::from(okm)))
}

/// Seals messages to the worker's public key (the host process's half).
/// Why the queue key or a sealed message could not be used. Retrying
/// cannot help, except for a file the operating system refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("cannot {what} {path:?}: {source}")]
    File {
        /// What was being done ("read", "create", "write").
        what: &'static str,
        /// The key file.
        path: std::path::PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Not a key of the right kind, or the crypto library refused it.
    #[error("{0}")]
    Invalid(String),
    /// A sealed message that does not open with this key.
    #[error(
        "a sealed message of {queue} does not open with this worker's key (sealed for another queue or key, or altered)"
    )]
    Refused {
        /// The queue it came from.
        queue: String,
    },
}

#[derive(Clone)]
pub struct Sealer {
    recipient: Vec<u8>,
}

impl Sealer {
    /// A sealer to `public_key` (32 bytes of X25519).
    pub fn new(public_key: Vec<u8>) -> Result<Sealer, KeyError> {
        if public_key.len() != KEY_LEN {
            return Err(KeyError::Invalid(format!(
                "the trusted worker's queue key is {} bytes, not {KEY_LEN}",
                public_key.len()
            )));
        }
        Ok(Sealer {
            recipient: public_key,
        })
    }

    /// `body` sealed for `queue`.
    pub fn seal(&self, queue: &str, body: &[u8]) -> Result<Vec<u8>, QueueError> {
        let fail = || QueueError::backend("cannot seal a message for a sensitive queue");
        let ephemeral = PrivateKey::generate(&X25519).map_err(|_| fail())?;
        let public = ephemeral.compute_public_key().map_err(|_| fail())?;
        let public = public.as_ref().to_vec();
        let key = agreement::agree(
            &ephemeral,
            UnparsedPublicKey::new(&X25519, &self.recipient),
            (),
            |shared| message_key(shared, &public, &self.recipient).ok_or(()),
        )
        .map_err(|()| fail())?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| fail())?;
        let mut out = Vec::with_capacity(body.len() + OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&public);
        out.extend_from_slice(&nonce);
        let mut sealed = body.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(queue.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| fail())?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

/// Opens sealed messages (the worker's half: the private key).
pub struct Opener {
    private: PrivateKey,
    public: Vec<u8>,
}

impl Opener {
    /// The key in `dir/queue.x25519`, made (0600) when missing.
    pub fn open_or_create(dir: &Path) -> Result<Opener, KeyError> {
        let path = dir.join("queue.x25519");
        let file = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| KeyError::File { what, path, source }
        };
        let invalid = |what: &str| KeyError::Invalid(what.to_string());
        let private = match std::fs::read(&path) {
            Ok(bytes) => PrivateKey::from_private_key(&X25519, &bytes)
                .map_err(|_| KeyError::Invalid(format!("{path:?} is not an X25519 private key")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PrivateKey::generate(&X25519)
                    .map_err(|_| invalid("cannot make the queue key"))?;
                let seed: aws_lc_rs::encoding::Curve25519SeedBin<'static> = key
                    .as_be_bytes()
                    .map_err(|_| invalid("cannot serialise the queue key"))?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut out = options.open(&path).map_err(file("create", &path))?;
                std::io::Write::write_all(&mut out, seed.as_ref())
                    .and_then(|()| out.sync_all())
                    .map_err(file("write", &path))?;
                key
            }
            Err(e) => return Err(file("read", &path)(e)),
        };
        let public = private
            .compute_public_key()
            .map_err(|_| invalid("cannot derive the queue key's public half"))?
            .as_ref()
            .to_vec();
        Ok(Opener { private, public })
    }

    /// The public half, for [`Sealer::new`].
    pub fn public_key(&self) -> Vec<u8> {
        self.public.clone()
    }

    /// Is `body` sealed (by the format's mark)?
    pub fn is_sealed(body: &[u8]) -> bool {
        body.starts_with(MAGIC)
    }

    /// The body sealed for `queue`; an error when it was sealed to another
    /// key, for another queue, or altered.
    pub fn open(&self, queue: &str, body: &[u8]) -> Result<Vec<u8>, KeyError> {
        let refused = || KeyError::Refused {
            queue: queue.to_string(),
        };
        if body.len() < OVERHEAD || !Opener::is_sealed(body) {
            return Err(refused());
        }
        let (ephemeral, rest) = body[MAGIC.len()..].split_at(KEY_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = agreement::agree(
            &self.private,
            UnparsedPublicKey::new(&X25519, ephemeral),
            (),
            |shared| message_key(shared, ephemeral, &self.public).ok_or(()),
        )
        .map_err(|()| refused())?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut buf = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(queue.as_bytes()), &mut buf)
            .map_err(|_| refused())?;
        Ok(plain.to_vec())
    }
}

/// A queue backend whose sensitive queues get sealed messages: every send
/// (one, a batch, or the replies of a settlement) to one of `sensitive` is
/// sealed to the worker first; everything else passes through.
pub struct SealedQueues {
    inner: Arc<dyn QueueBackend>,
    sensitive: Arc<BTreeSet<String>>,
    sealer: Sealer,
}

impl SealedQueues {
    /// Seal sends to `sensitive` on `inner` with `sealer`.
    pub fn new(
        inner: Arc<dyn QueueBackend>,
        sensitive: Arc<BTreeSet<String>>,
        sealer: Sealer,
    ) -> SealedQueues {
        SealedQueues {
            inner,
            sensitive,
            sealer,
        }
    }

    fn sealed(&self, queue: &str, msg: NewMessage) -> Result<NewMessage, QueueError> {
        seal_message(&self.sealer, &self.sensitive, queue, msg).map(|(m, _)| m)
    }
}

/// `msg` with its body sealed when `queue` is one of `sensitive` (and true
/// then), refused when sealing would take it past the queues' cap.
pub fn seal_message(
    sealer: &Sealer,
    sensitive: &BTreeSet<String>,
    queue: &str,
    mut msg: NewMessage,
) -> Result<(NewMessage, bool), QueueError> {
    if !sensitive.contains(queue) {
        return Ok((msg, false));
    }
    if msg.body.len() > MAX_SEALED_BODY_BYTES {
        return Err(QueueError::Invalid(format!(
            "the message body is {} bytes, over the limit of {MAX_SEALED_BODY_BYTES} for the sensitive queue {} (sealing adds {OVERHEAD})",
            msg.body.len(),
            crate::text::quote(queue)
        )));
    }
    msg.body = sealer.seal(queue, &msg.body)?;
    Ok((msg, true))
}

fn err<'a, T: Send + 'a>(e: QueueError) -> BoxFuture<'a, Result<T, QueueError>> {
    Box::pin(async move { Err(e) })
}

#[deny(clippy::missing_trait_methods)]
impl QueueDelivery for SealedQueues {
    fn features(&self, queue: &str) -> QueueFeatures {
        self.inner.features(queue)
    }

    fn send(&self, queue: &str, msg: NewMessage) -> BoxFuture<'_, Result<Sent, QueueError>> {
        match self.sealed(queue, msg) {
            Ok(msg) => self.inner.send(queue, msg),
            Err(e) => err(e),
        }
    }

    fn send_batch(
        &self,
        queue: &str,
        msgs: Vec<NewMessage>,
    ) -> BoxFuture<'_, Result<Vec<Sent>, QueueError>> {
        match msgs.into_iter().map(|m| self.sealed(queue, m)).collect() {
            Ok(msgs) => self.inner.send_batch(queue, msgs),
            Err(e) => err(e),
        }
    }

    fn receive(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        self.inner.receive(queue, max, visibility)
    }

    fn receive_waiting(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, QueueError>> {
        self.inner.receive_waiting(queue, max, visibility, wait)
    }

    fn settle(
        &self,
        receipt: Receipt,
        how: Settlement,
        then: Vec<(String, NewMessage)>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        match then
            .into_iter()
            .map(|(q, m)| self.sealed(&q, m).map(|m| (q, m)))
            .collect()
        {
            Ok(then) => self.inner.settle(receipt, how, then),
            Err(e) => err(e),
        }
    }

    fn ack(&self, receipt: Receipt) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.inner.ack(receipt)
    }

    fn dead_letter(
        &self,
        receipt: Receipt,
        error: String,
        function: Option<String>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.inner.dead_letter(receipt, error, function)
    }

    fn retry(
        &self,
        receipt: Receipt,
        delay: Duration,
        error: String,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.inner.retry(receipt, delay, error)
    }

    fn release(&self, receipts: Vec<Receipt>) -> BoxFuture<'_, Result<(), QueueError>> {
        self.inner.release(receipts)
    }

    fn checkpoint(
        &self,
        receipt: Receipt,
        state: Vec<u8>,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.inner.checkpoint(receipt, state)
    }

    fn renew(
        &self,
        receipt: Receipt,
        visibility: Duration,
    ) -> BoxFuture<'_, Result<bool, QueueError>> {
        self.inner.renew(receipt, visibility)
    }

    fn bury(
        &self,
        queue: &str,
        msg: NewMessage,
        error: String,
    ) -> BoxFuture<'_, Result<String, QueueError>> {
        match self.sealed(queue, msg) {
            Ok(msg) => self.inner.bury(queue, msg, error),
            Err(e) => err(e),
        }
    }

    fn backlog(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.inner.backlog(queue, cap)
    }

    fn pending(&self, queue: &str, cap: u64) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.inner.pending(queue, cap)
    }
}

#[deny(clippy::missing_trait_methods)]
impl QueueAdmin for SealedQueues {
    fn stats(&self, queue: &str) -> BoxFuture<'_, Result<QueueStats, QueueError>> {
        self.inner.stats(queue)
    }

    fn queues(&self) -> BoxFuture<'_, Result<Vec<String>, QueueError>> {
        self.inner.queues()
    }

    fn peek(&self, queue: &str, max: usize) -> BoxFuture<'_, Result<Vec<Message>, QueueError>> {
        self.inner.peek(queue, max)
    }

    fn dead_letters(
        &self,
        queue: &str,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<DeadLetter>, QueueError>> {
        self.inner.dead_letters(queue, max)
    }

    fn redrive(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.inner.redrive(queue, ids)
    }

    fn purge_dead_letters(
        &self,
        queue: &str,
        ids: Option<Vec<String>>,
    ) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.inner.purge_dead_letters(queue, ids)
    }

    fn purge(&self, queue: &str) -> BoxFuture<'_, Result<u64, QueueError>> {
        self.inner.purge(queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_worker_key_opens_and_only_for_the_same_queue() {
        let dir = tempfile::tempdir().unwrap();
        let opener = Opener::open_or_create(dir.path()).unwrap();
        let sealer = Sealer::new(opener.public_key()).unwrap();
        let sealed = sealer.seal("vault-in", b"alice@example.com").unwrap();
        assert!(Opener::is_sealed(&sealed));
        assert_eq!(sealed.len(), 17 + OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"alice"));
        assert_eq!(
            opener.open("vault-in", &sealed).unwrap(),
            b"alice@example.com"
        );
        // Another queue, an altered byte, another key: refused.
        assert!(opener.open("other", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(opener.open("vault-in", &altered).is_err());
        let other = tempfile::tempdir().unwrap();
        let stranger = Opener::open_or_create(other.path()).unwrap();
        assert!(stranger.open("vault-in", &sealed).is_err());
        // The key persists: a restarted worker opens what was sealed before.
        let again = Opener::open_or_create(dir.path()).unwrap();
        assert_eq!(again.public_key(), opener.public_key());
        assert!(again.open("vault-in", &sealed).is_ok());
        // Two seals of one body differ (fresh ephemeral key and nonce).
        assert_ne!(
            sealed,
            sealer.seal("vault-in", b"alice@example.com").unwrap()
        );
    }

    #[tokio::test]
    async fn sends_to_a_sensitive_queue_are_sealed_and_capped_below_the_queue_limit() {
        let dir = tempfile::tempdir().unwrap();
        let opener = Opener::open_or_create(dir.path()).unwrap();
        let store = crate::backends::embedded::EmbeddedQueues::open(
            dir.path(),
            Arc::new(crate::clock::SystemClock),
        )
        .unwrap();
        let queues = SealedQueues::new(
            Arc::new(store),
            Arc::new(["vault-in".to_string()].into()),
            Sealer::new(opener.public_key()).unwrap(),
        );
        let msg = |body: Vec<u8>| NewMessage {
            body,
            ..NewMessage::default()
        };
        queues
            .send("vault-in", msg(b"card".to_vec()))
            .await
            .unwrap();
        queues.send("public", msg(b"card".to_vec())).await.unwrap();
        let sealed = queues.peek("vault-in", 1).await.unwrap().remove(0).body;
        assert_eq!(opener.open("vault-in", &sealed).unwrap(), b"card");
        assert_eq!(queues.peek("public", 1).await.unwrap()[0].body, b"card");
        // A body that would pass the queues' cap only before sealing is
        // refused with the sensitive queue's own cap.
        let err = queues
            .send("vault-in", msg(vec![0; MAX_SEALED_BODY_BYTES + 1]))
            .await
            .unwrap_err();
        let cap = format!("over the limit of {MAX_SEALED_BODY_BYTES} for the sensitive queue");
        assert!(err.to_string().contains(&cap), "{err}");
        queues
            .send("vault-in", msg(vec![0; MAX_SEALED_BODY_BYTES]))
            .await
            .unwrap();
    }
}
