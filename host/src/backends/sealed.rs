//! Encryption at rest for sensitive buckets: a [`BlobBackend`] that seals
//! the objects of the host's sensitive buckets before they reach the store
//! below (embedded files or S3) and opens them on the way back, and passes
//! every other bucket through untouched.
//!
//! An object is sealed with AES-256-GCM (aws-lc-rs) under the keyring's
//! current key, with a fresh random 96-bit nonce, and its bucket and key as
//! associated data, so a ciphertext copied to another key or bucket fails
//! to open. Stored as `FNHS1` ‖ key id (8 bytes) ‖ nonce (12) ‖ ciphertext
//! ‖ tag (16): 41 bytes more than the content, which sizes report without.
//!
//! Keys live in `<data-dir>/keys/` (the directory 0700, each key file 0600:
//! `<id>.key`, 32 random bytes; `current` names the one new objects use).
//! Every key in the directory opens what it sealed, so a new current key
//! (`fnhost keys rotate`) leaves older objects readable. Back the directory
//! up with the data: without it the sealed objects are lost.

use crate::blobs::{
    BlobBackend, BlobError, ChangeFeed, MAX_OBJECT_BYTES, Object, ObjectMeta, Stored,
};
use crate::task::BoxFuture;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8] = b"FNHS1";
const ID_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// What sealing adds to an object, in bytes.
pub const OVERHEAD: usize = MAGIC.len() + ID_LEN + NONCE_LEN + TAG_LEN;
/// The largest content of an object in a sensitive bucket.
pub const MAX_SEALED_BYTES: usize = MAX_OBJECT_BYTES - OVERHEAD;

/// The keys in a data dir's `keys/`, by id, and the current one.
pub struct Keyring {
    dir: PathBuf,
    keys: BTreeMap<[u8; ID_LEN], LessSafeKey>,
    current: [u8; ID_LEN],
}

fn key_error(what: &str, path: &Path, e: impl std::fmt::Display) -> BlobError {
    BlobError::backend(
        format!("the encryption keys: cannot {what} {path:?}: {e}"),
        None,
    )
}

fn random<const N: usize>() -> Result<[u8; N], BlobError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)
        .map_err(|e| BlobError::backend(format!("no randomness for encryption: {e}"), None))?;
    Ok(b)
}

fn parse_id(hex: &str) -> Option<[u8; ID_LEN]> {
    let hex = hex.trim();
    if hex.len() != ID_LEN * 2 {
        return None;
    }
    let mut id = [0u8; ID_LEN];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(id)
}

impl Keyring {
    /// The keys in `data_dir/keys`, made (with a first key) when missing.
    pub fn open(data_dir: &Path) -> Result<Keyring, BlobError> {
        let dir = data_dir.join("keys");
        if !dir.join("current").exists() {
            crate::files::private_dir(&dir).map_err(|e| key_error("create", &dir, e))?;
            Keyring::add_key(&dir)?;
        }
        let mut keys = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| key_error("read", &dir, e))? {
            let path = entry.map_err(|e| key_error("read", &dir, e))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(parse_id)
            else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|e| key_error("read", &path, e))?;
            let key = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| key_error("use", &path, "not a 32-byte key"))?;
            keys.insert(id, LessSafeKey::new(key));
        }
        let current_path = dir.join("current");
        let current = std::fs::read_to_string(&current_path)
            .ok()
            .and_then(|t| parse_id(&t))
            .filter(|id| keys.contains_key(id))
            .ok_or_else(|| key_error("use", &current_path, "it names no key in the directory"))?;
        Ok(Keyring { dir, keys, current })
    }

    /// Make a new key and make it current; its id, hex. Older keys stay
    /// and keep opening what they sealed.
    pub fn rotate(data_dir: &Path) -> Result<String, BlobError> {
        let dir = data_dir.join("keys");
        std::fs::create_dir_all(&dir).map_err(|e| key_error("create", &dir, e))?;
        Keyring::add_key(&dir)
    }

    fn add_key(dir: &Path) -> Result<String, BlobError> {
        let id = crate::files::hex(&random::<ID_LEN>()?);
        let path = dir.join(format!("{id}.key"));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&path)
            .map_err(|e| key_error("create", &path, e))?;
        std::io::Write::write_all(&mut file, &random::<32>()?)
            .and_then(|()| file.sync_all())
            .map_err(|e| key_error("write", &path, e))?;
        crate::files::write_atomic(&dir.join("current"), id.as_bytes())
            .map_err(|e| key_error("write", &dir.join("current"), e))?;
        Ok(id)
    }

    /// The current key's id, hex.
    pub fn current(&self) -> String {
        crate::files::hex(&self.current)
    }

    /// Keys in the ring (more than one after a rotation).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the ring holds no key (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Was `stored` sealed with the current key?
    pub fn sealed_with_current(&self, stored: &[u8]) -> bool {
        stored.starts_with(MAGIC)
            && stored.get(MAGIC.len()..MAGIC.len() + ID_LEN) == Some(&self.current[..])
    }

    /// Where the keys are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn aad(bucket: &str, key: &str) -> Vec<u8> {
        [bucket.as_bytes(), b"\0", key.as_bytes()].concat()
    }

    /// `body` sealed for `key` in `bucket`.
    pub fn seal(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<Vec<u8>, BlobError> {
        let nonce: [u8; NONCE_LEN] = random()?;
        let mut out = Vec::with_capacity(body.len() + OVERHEAD);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.current);
        out.extend_from_slice(&nonce);
        let mut sealed = body;
        self.keys[&self.current]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Keyring::aad(bucket, key)),
                &mut sealed,
            )
            .map_err(|_| BlobError::backend("sealing an object failed", None))?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The content of `stored`, sealed for `key` in `bucket`.
    pub fn open_object(
        &self,
        bucket: &str,
        key: &str,
        stored: Vec<u8>,
    ) -> Result<Vec<u8>, BlobError> {
        let refuse = |why: &str| {
            BlobError::backend(
                format!(
                    "the object {} in sensitive bucket {} cannot be opened: {why}",
                    crate::text::quote(key),
                    crate::text::quote(bucket)
                ),
                None,
            )
        };
        if stored.len() < OVERHEAD || !stored.starts_with(MAGIC) {
            return Err(refuse(
                "it is not sealed (written before the bucket was sensitive?)",
            ));
        }
        let id: [u8; ID_LEN] = stored[MAGIC.len()..MAGIC.len() + ID_LEN]
            .try_into()
            .expect("the length was checked");
        let nonce: [u8; NONCE_LEN] = stored[MAGIC.len() + ID_LEN..MAGIC.len() + ID_LEN + NONCE_LEN]
            .try_into()
            .expect("the length was checked");
        let Some(k) = self.keys.get(&id) else {
            return Err(refuse(&format!(
                "it was sealed with key {}, which is not in {:?}",
                crate::files::hex(&id),
                self.dir
            )));
        };
        let mut body = stored[MAGIC.len() + ID_LEN + NONCE_LEN..].to_vec();
        let len = k
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Keyring::aad(bucket, key)),
                &mut body,
            )
            .map_err(|_| refuse("it was altered, or sealed for another key or bucket"))?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

/// A blob backend whose sensitive buckets are sealed.
pub struct SealedBlobs {
    inner: Arc<dyn BlobBackend>,
    sensitive: Arc<BTreeSet<String>>,
    keys: Arc<Keyring>,
}

impl SealedBlobs {
    /// Seal `sensitive`'s objects in `inner` with `keys`.
    pub fn new(
        inner: Arc<dyn BlobBackend>,
        sensitive: Arc<BTreeSet<String>>,
        keys: Arc<Keyring>,
    ) -> SealedBlobs {
        SealedBlobs {
            inner,
            sensitive,
            keys,
        }
    }

    /// `body` sealed for `key` in `bucket`, if it fits.
    fn sealed(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<Vec<u8>, BlobError> {
        if body.len() > MAX_SEALED_BYTES {
            return Err(BlobError::TooLarge(format!(
                "the object is {} bytes, over the limit of {MAX_SEALED_BYTES} for a sensitive bucket (encryption adds {OVERHEAD})",
                body.len()
            )));
        }
        crate::blobs::validate(bucket, key)?;
        self.keys.seal(bucket, key, body)
    }

    /// Seal `key` in `bucket` anew under the current key when an older key
    /// sealed it; true when it did. The new ciphertext replaces the old
    /// only if the object is unchanged since it was read (a compare and
    /// swap on its etag), so a write in between — by this process or a
    /// fleet's other hosts — is never undone; that write is sealed with a
    /// current key already.
    pub async fn reseal(&self, bucket: &str, key: &str) -> Result<bool, BlobError> {
        let Some((meta, stored)) = self.inner.get(bucket, key).await? else {
            return Ok(false);
        };
        if self.keys.sealed_with_current(&stored) {
            return Ok(false);
        }
        let body = self.keys.open_object(bucket, key, stored)?;
        let sealed = self.keys.seal(bucket, key, body)?;
        let replaced = self
            .inner
            .replace_if(bucket, key, sealed, meta.content_type, meta.etag)
            .await?;
        Ok(replaced.is_some())
    }
}

fn unsealed(mut meta: ObjectMeta) -> ObjectMeta {
    meta.size = meta.size.saturating_sub(OVERHEAD as u64);
    meta
}

impl BlobBackend for SealedBlobs {
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, BlobError>> {
        if !self.sensitive.contains(bucket) {
            return self.inner.put(bucket, key, body, content_type);
        }
        let (bucket, key) = (bucket.to_string(), key.to_string());
        Box::pin(async move {
            let sealed = self.sealed(&bucket, &key, body)?;
            let mut stored = self.inner.put(&bucket, &key, sealed, content_type).await?;
            stored.meta = unsealed(stored.meta);
            Ok(stored)
        })
    }

    fn replace_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
        etag: String,
    ) -> BoxFuture<'_, Result<Option<Stored>, BlobError>> {
        if !self.sensitive.contains(bucket) {
            return self.inner.replace_if(bucket, key, body, content_type, etag);
        }
        let (bucket, key) = (bucket.to_string(), key.to_string());
        Box::pin(async move {
            let sealed = self.sealed(&bucket, &key, body)?;
            let stored = (self.inner)
                .replace_if(&bucket, &key, sealed, content_type, etag)
                .await?;
            Ok(stored.map(|mut s| {
                s.meta = unsealed(s.meta);
                s
            }))
        })
    }

    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Object>, BlobError>> {
        if !self.sensitive.contains(bucket) {
            return self.inner.get(bucket, key);
        }
        let (bucket, key) = (bucket.to_string(), key.to_string());
        Box::pin(async move {
            match self.inner.get(&bucket, &key).await? {
                None => Ok(None),
                Some((meta, stored)) => {
                    let body = self.keys.open_object(&bucket, &key, stored)?;
                    Ok(Some((unsealed(meta), body)))
                }
            }
        })
    }

    fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<ObjectMeta>, BlobError>> {
        let sealed = self.sensitive.contains(bucket);
        let head = self.inner.head(bucket, key);
        Box::pin(async move { Ok(head.await?.map(|m| if sealed { unsealed(m) } else { m })) })
    }

    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<bool, BlobError>> {
        self.inner.delete(bucket, key)
    }

    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>> {
        let sealed = self.sensitive.contains(bucket);
        let list = self.inner.list(bucket, prefix, start_after, max);
        Box::pin(async move {
            let objects = list.await?;
            Ok(if sealed {
                objects.into_iter().map(unsealed).collect()
            } else {
                objects
            })
        })
    }

    fn feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        self.inner.feed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::embedded::EmbeddedBlobs;

    fn sealed(dir: &Path) -> (SealedBlobs, Arc<dyn BlobBackend>) {
        let inner: Arc<dyn BlobBackend> = Arc::new(EmbeddedBlobs::open(dir).unwrap());
        let keys = Arc::new(Keyring::open(dir).unwrap());
        let sensitive = Arc::new(BTreeSet::from(["vault".to_string()]));
        (SealedBlobs::new(inner.clone(), sensitive, keys), inner)
    }

    #[tokio::test]
    async fn sensitive_objects_are_ciphertext_below_and_content_above() {
        let dir = tempfile::tempdir().unwrap();
        let (blobs, inner) = sealed(dir.path());
        let stored = blobs
            .put("vault", "a", b"card 4111".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(stored.meta.size, 9);
        let (meta, body) = blobs.get("vault", "a").await.unwrap().unwrap();
        assert_eq!((meta.size, body.as_slice()), (9, b"card 4111".as_slice()));
        let (_, raw) = inner.get("vault", "a").await.unwrap().unwrap();
        assert_eq!(raw.len(), 9 + OVERHEAD);
        assert!(raw.starts_with(MAGIC) && !raw.windows(4).any(|w| w == b"4111"));
        assert_eq!(blobs.head("vault", "a").await.unwrap().unwrap().size, 9);
        assert_eq!(blobs.list("vault", "", None, 10).await.unwrap()[0].size, 9);
        // Other buckets pass through as they are.
        blobs
            .put("public", "a", b"plain".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(inner.get("public", "a").await.unwrap().unwrap().1, b"plain");
        // Two seals of one content differ (a fresh nonce each).
        blobs
            .put("vault", "b", b"card 4111".to_vec(), None)
            .await
            .unwrap();
        let (_, raw_b) = inner.get("vault", "b").await.unwrap().unwrap();
        assert_ne!(raw[MAGIC.len() + ID_LEN..], raw_b[MAGIC.len() + ID_LEN..]);
    }

    #[tokio::test]
    async fn a_moved_altered_or_unsealed_object_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        let (blobs, inner) = sealed(dir.path());
        blobs
            .put("vault", "a", b"secret".to_vec(), None)
            .await
            .unwrap();
        let (_, raw) = inner.get("vault", "a").await.unwrap().unwrap();
        // Moved to another key: the associated data no longer matches.
        inner.put("vault", "b", raw.clone(), None).await.unwrap();
        let err = blobs.get("vault", "b").await.unwrap_err().to_string();
        assert!(err.contains("altered, or sealed for another key"), "{err}");
        // One byte changed.
        let mut bad = raw.clone();
        *bad.last_mut().unwrap() ^= 1;
        inner.put("vault", "a", bad, None).await.unwrap();
        assert!(blobs.get("vault", "a").await.is_err());
        // Plain bytes put below the sealing layer.
        inner
            .put("vault", "c", b"plain".to_vec(), None)
            .await
            .unwrap();
        let err = blobs.get("vault", "c").await.unwrap_err().to_string();
        assert!(err.contains("not sealed"), "{err}");
    }

    #[tokio::test]
    async fn after_a_rotation_new_objects_use_the_new_key_and_old_ones_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let (blobs, inner) = sealed(dir.path());
        blobs
            .put("vault", "old", b"before".to_vec(), None)
            .await
            .unwrap();
        let first = Keyring::open(dir.path()).unwrap().current();
        let second = Keyring::rotate(dir.path()).unwrap();
        assert_ne!(first, second);
        let (blobs, _) = sealed(dir.path());
        blobs
            .put("vault", "new", b"after".to_vec(), None)
            .await
            .unwrap();
        let (_, raw) = inner.get("vault", "new").await.unwrap().unwrap();
        assert_eq!(
            crate::files::hex(&raw[MAGIC.len()..MAGIC.len() + ID_LEN]),
            second
        );
        assert_eq!(
            blobs.get("vault", "old").await.unwrap().unwrap().1,
            b"before"
        );
        // The key files are the owner's only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("keys")), 0o700);
            assert_eq!(mode(&dir.path().join(format!("keys/{second}.key"))), 0o600);
        }
    }
}
