//! The protocol between the host process and the trusted worker, on one
//! Unix socket: each message a postcard body of at most
//! [`MAX_MESSAGE_BYTES`] (as much as the host accepts from anyone, so any
//! request body or component the host takes can cross), sent in chunks of
//! at most [`MAX_CHUNK_BYTES`], each behind a 4-byte big-endian header: its
//! length, with the top bit set when more of the message follows. A
//! message is encoded whole before its first byte is written, so one that
//! cannot be sent fails before anything is on the socket, and the stream
//! stays in step. It carries exactly these messages and nothing else:
//!
//! - host → worker: [`ToWorker::Invoke`] (run a trusted function's
//!   execution) and [`ToWorker::Reply`] (the answer to a worker's call);
//! - worker → host: [`FromWorker::Hello`] (first, once: its pid and the
//!   public key that seals sensitive queues), [`FromWorker::Done`] (an
//!   execution's outcome), [`FromWorker::Call`] (what a trusted function
//!   asks of the host's stores: a component by digest, a queue send, the
//!   object calls on *non-sensitive* buckets, progress and checkpoints,
//!   and the audit lines that must be written before an access goes
//!   ahead) and [`FromWorker::Audit`] (an audit line for the host's log).
//!
//! The sensitive store itself never crosses: the worker holds it.

use crate::blobs::{BlobError, ObjectMeta, Stored};
use crate::exec::{Busy, Event, Invocation, Outcome};
use crate::queue::{NewMessage, QueueError, Sent};
use crate::task::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol's version: the worker says it in its hello, and a host
/// speaking another (a restarted worker from an upgraded binary) refuses
/// the connection.
pub const VERSION: u32 = 3;

/// The largest body a client may send the host, and the largest component
/// it may upload (`--max-body-bytes`, `--max-upload-bytes`): 1 GiB. The
/// host refuses to start with caps above it.
pub const MAX_ACCEPTED_BYTES: usize = 1 << 30;

/// The largest message either side sends or accepts: what the host
/// accepts, with room for what travels beside it (headers, an invocation,
/// a profile). A longer one closes the connection.
pub const MAX_MESSAGE_BYTES: usize = MAX_ACCEPTED_BYTES + (16 << 20);

/// The largest chunk of a message on the socket.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// The header bit that says more chunks of the message follow.
const MORE: u32 = 1 << 31;

/// Host → worker.
#[derive(Debug, Serialize, Deserialize)]
// An `Invoke` is built once and moved into the writer's channel; boxing it
// would cost an allocation per execution for nothing.
#[allow(clippy::large_enum_variant)]
pub enum ToWorker {
    /// Run one execution of a trusted function.
    Invoke {
        /// The host's number for it; [`FromWorker::Done`] answers it.
        call: u64,
        /// The host's number for the version's profile on this connection.
        profile_id: u64,
        /// The profile as JSON, the first time `profile_id` is sent on a
        /// connection (the worker keeps it for the connection's life).
        profile: Option<String>,
        /// Facts about the invocation.
        invocation: Invocation,
        /// What started it.
        event: Event,
        /// Wait for a free instance at most while fewer than this many
        /// others wait; none to wait as long as it takes.
        wait_at_most: Option<u32>,
        /// Whether progress and checkpoints have somewhere to go.
        reporter: bool,
    },
    /// The answer to the worker's [`FromWorker::Call`] `call`.
    Reply {
        /// The worker's number for the call.
        call: u64,
        /// The answer.
        reply: Reply,
    },
}

/// Worker → host.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// The first frame of a connection.
    Hello {
        /// The protocol version the worker speaks ([`VERSION`]).
        version: u32,
        /// The worker's process id.
        pid: u32,
        /// The X25519 public key sensitive queues' messages are sealed to.
        queue_key: Vec<u8>,
    },
    /// How the host's execution `call` ended; `Err` when every instance
    /// was busy and the line (or the function's share of it) was full.
    Done {
        /// The host's number for the execution.
        call: u64,
        /// Its outcome.
        outcome: Result<Outcome, Busy>,
    },
    /// A request of a running trusted function; answered by a
    /// [`ToWorker::Reply`].
    Call {
        /// The worker's number for the call.
        call: u64,
        /// What it asks.
        request: Request,
    },
    /// One line for the audit log (an [`crate::audit::Entry`] as JSON),
    /// written as well as the host can.
    Audit(String),
}

/// Writes the protocol's forwarded calls from one list: for each call its
/// [`Request`] variant (the arguments), its [`Reply`] variant (what it
/// answers), the host's [`Answer`] method that answers it, and the
/// worker's [`Calls`] method that asks it. A new call is a line here, an
/// answer on the host and a use in the worker; the compiler asks for both.
macro_rules! protocol {
    ($(
        $(#[$doc:meta])*
        $Call:ident => fn $call:ident($($arg:ident: $ty:ty),* $(,)?) -> $Out:ty;
    )*) => {
        /// What the worker asks of the host.
        #[derive(Debug, Serialize, Deserialize)]
        pub enum Request {
            $( $(#[$doc])* $Call { $(#[allow(missing_docs)] $arg: $ty),* }, )*
        }

        /// The host's answer to a [`Request`]: the call's own answer, or
        /// why it failed.
        #[derive(Debug, Serialize, Deserialize)]
        pub enum Reply {
            $( #[allow(missing_docs)] $Call($Out), )*
            /// It failed.
            Failed(Fault),
        }

        /// The host's side: an answer for every call.
        pub trait Answer: Send + Sync {
            $( $(#[$doc])* fn $call(&self, $($arg: $ty),*) -> BoxFuture<'_, Result<$Out, Fault>>; )*
        }

        /// Answer `request` with `host`'s method for it.
        pub async fn answer(host: &(impl Answer + ?Sized), request: Request) -> Reply {
            match request {
                $( Request::$Call { $($arg),* } => match host.$call($($arg),*).await {
                    Ok(out) => Reply::$Call(out),
                    Err(fault) => Reply::Failed(fault),
                }, )*
            }
        }

        /// The worker's side: a way to send a request and wait for its reply.
        pub trait Ask: Send + Sync {
            /// Send `request`; its reply, or why there is none.
            fn ask(&self, request: Request) -> BoxFuture<'_, Result<Reply, Fault>>;
        }

        /// Every call, as a method that asks it over an [`Ask`] and takes
        /// its own reply (any other is a fault).
        pub struct Calls<'a, A: Ask + ?Sized>(pub &'a A);

        impl<A: Ask + ?Sized> Calls<'_, A> {
            $(
                $(#[$doc])*
                pub async fn $call(&self, $($arg: $ty),*) -> Result<$Out, Fault> {
                    match self.0.ask(Request::$Call { $($arg),* }).await? {
                        Reply::$Call(out) => Ok(out),
                        Reply::Failed(fault) => Err(fault),
                        other => Err(Fault::Backend(format!(
                            "the host answered out of turn: {other:?}"
                        ))),
                    }
                }
            )*
        }
    };
}

protocol! {
    /// A deployed component's bytes, by its SHA-256 (hex).
    Component => fn component(digest: String) -> Vec<u8>;
    /// Send a message (already checked against the function's grants),
    /// sharing a dedup window with `dedup_scope` (the sending function);
    /// `sealed` when the worker sealed its body already (for a sensitive
    /// queue): the host stores it as it is.
    Send => fn send(
        queue: String,
        message: NewMessage,
        dedup_scope: Option<String>,
        sealed: bool,
    ) -> Sent;
    /// Store an object in a non-sensitive bucket.
    Put => fn put(
        bucket: String,
        key: String,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> Stored;
    /// Read an object, if there is one.
    Get => fn get(bucket: String, key: String) -> Option<(ObjectMeta, Vec<u8>)>;
    /// Read an object's metadata, if there is one.
    Head => fn head(bucket: String, key: String) -> Option<ObjectMeta>;
    /// Delete an object; whether there was one.
    Delete => fn delete(bucket: String, key: String) -> bool;
    /// List at most `max` objects whose keys start with `prefix`, after
    /// `start_after`.
    List => fn list(
        bucket: String,
        prefix: String,
        start_after: Option<String>,
        max: u32,
    ) -> Vec<ObjectMeta>;
    /// Progress of the host's execution `invoke`.
    Progress => fn progress(invoke: u64, percent: u8, message: String) -> ();
    /// A checkpoint of the host's execution `invoke`.
    Checkpoint => fn checkpoint(invoke: u64, state: Vec<u8>) -> ();
    /// An audit line (an [`crate::audit::Entry`] as JSON) that must be
    /// written before the access it records goes ahead: answered once it
    /// is, failed when it cannot be.
    Audit => fn audit(line: String) -> ();
}

/// A failure as it crosses the socket: its kind and its message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Fault {
    /// The request is not acceptable.
    Invalid(String),
    /// Over a size limit.
    TooLarge(String),
    /// The store cannot do it.
    Unsupported(String),
    /// The store is busy; retry later.
    Throttled(String),
    /// The store failed; a retry may succeed.
    Backend(String),
}

impl From<&BlobError> for Fault {
    fn from(e: &BlobError) -> Fault {
        match e {
            BlobError::InvalidBucket(m)
            | BlobError::InvalidKey(m)
            | BlobError::InvalidContentType(m) => Fault::Invalid(m.clone()),
            BlobError::TooLarge(m) => Fault::TooLarge(m.clone()),
            BlobError::Throttled { message, .. } => Fault::Throttled(message.clone()),
            BlobError::Backend { message, .. } => Fault::Backend(message.clone()),
        }
    }
}

impl From<&crate::exec::SeamError> for Fault {
    fn from(e: &crate::exec::SeamError) -> Fault {
        match e {
            crate::exec::SeamError::Failed { .. } => Fault::Backend(e.to_string()),
            _ => Fault::Unsupported(e.to_string()),
        }
    }
}

impl From<Fault> for crate::exec::SeamError {
    fn from(f: Fault) -> crate::exec::SeamError {
        match f {
            Fault::Unsupported(m) | Fault::Invalid(m) | Fault::TooLarge(m) => {
                crate::exec::SeamError::Unsupported(m)
            }
            Fault::Throttled(m) | Fault::Backend(m) => crate::exec::SeamError::failed(m),
        }
    }
}

impl From<&QueueError> for Fault {
    fn from(e: &QueueError) -> Fault {
        match e {
            QueueError::Invalid(m) => Fault::Invalid(m.clone()),
            QueueError::Unsupported(m) => Fault::Unsupported(m.clone()),
            QueueError::Throttled { message, .. } => Fault::Throttled(message.clone()),
            QueueError::Backend { message, .. } => Fault::Backend(message.clone()),
        }
    }
}

impl Fault {
    /// As a blob store's error.
    pub fn into_blob(self) -> BlobError {
        match self {
            Fault::Invalid(m) | Fault::Unsupported(m) => BlobError::InvalidKey(m),
            Fault::TooLarge(m) => BlobError::TooLarge(m),
            Fault::Throttled(message) => BlobError::Throttled {
                message,
                source: None,
            },
            Fault::Backend(m) => BlobError::backend(m, None),
        }
    }

    /// As a queue store's error.
    pub fn into_queue(self) -> QueueError {
        match self {
            Fault::Invalid(m) | Fault::TooLarge(m) => QueueError::Invalid(m),
            Fault::Unsupported(m) => QueueError::Unsupported(m),
            Fault::Throttled(message) => QueueError::Throttled {
                message,
                source: None,
            },
            Fault::Backend(m) => QueueError::backend(m),
        }
    }
}

/// One side's writing half of the socket, shared by the tasks that send:
/// each frame is written whole under its lock, by the task that has it to
/// send (no writer task to wake in between).
pub type Writer = std::sync::Arc<tokio::sync::Mutex<tokio::net::unix::OwnedWriteHalf>>;

/// Send one message on `w`.
pub async fn send<T: Serialize>(w: &Writer, msg: &T) -> std::io::Result<()> {
    let encoded = encode(msg)?;
    let mut half = w.lock().await;
    let cut = CutOff::arm(&half);
    let sent = write_encoded(&mut *half, encoded).await;
    cut.disarm();
    sent
}

/// Shuts the socket down if dropped armed: a message whose sender was
/// dropped halfway through writing it would leave the stream out of step
/// (the next message read from the middle of this one), so the connection
/// ends instead, and both sides start afresh. Arm it before a write,
/// disarm it once the write returned.
pub struct CutOff(Option<std::os::fd::RawFd>);

impl CutOff {
    /// Armed, for the socket `half` writes to.
    pub fn arm(half: &tokio::net::unix::OwnedWriteHalf) -> CutOff {
        use std::os::fd::AsRawFd as _;
        let stream: &tokio::net::UnixStream = half.as_ref();
        CutOff(Some(stream.as_raw_fd()))
    }

    /// The write returned (done or failed whole): nothing to cut.
    pub fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CutOff {
    fn drop(&mut self) {
        if let Some(fd) = self.0 {
            // SAFETY: shutdown(2) on a socket the caller's write half still
            // owns (so the fd is open); it closes nothing.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
}

/// A message encoded for [`write_encoded`]: 4 bytes kept for the header
/// of its first chunk, then its body, so that a message of one chunk (all
/// but the largest) goes in one write.
pub struct Encoded(Vec<u8>);

impl Encoded {
    /// The body's length.
    pub fn len(&self) -> usize {
        self.0.len() - 4
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `msg` encoded for [`write_encoded`]; an error, before anything is
/// written, when it is over [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize>(msg: &T) -> std::io::Result<Encoded> {
    let encoded = Encoded(postcard::to_extend(msg, vec![0u8; 4]).map_err(std::io::Error::other)?);
    if encoded.len() > MAX_MESSAGE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "a message of {} bytes is over the protocol's {MAX_MESSAGE_BYTES}",
                encoded.len()
            ),
        ));
    }
    Ok(encoded)
}

/// Write one encoded message: its first chunk with its header in one
/// write, the rest (if any) chunk by chunk.
pub async fn write_encoded<W: AsyncWrite + Unpin>(
    w: &mut W,
    encoded: Encoded,
) -> std::io::Result<()> {
    let mut buf = encoded.0;
    let first = (buf.len() - 4).min(MAX_CHUNK_BYTES);
    let more = if buf.len() - 4 > first { MORE } else { 0 };
    buf[..4].copy_from_slice(&(first as u32 | more).to_be_bytes());
    w.write_all(&buf[..4 + first]).await?;
    let mut chunks = buf[4 + first..].chunks(MAX_CHUNK_BYTES).peekable();
    while let Some(chunk) = chunks.next() {
        let more = if chunks.peek().is_some() { MORE } else { 0 };
        w.write_all(&(chunk.len() as u32 | more).to_be_bytes())
            .await?;
        w.write_all(chunk).await?;
    }
    w.flush().await
}

/// Write one message.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> std::io::Result<()> {
    write_encoded(w, encode(msg)?).await
}

/// Read one message; `None` at a clean end of the stream.
pub async fn read<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> std::io::Result<Option<T>> {
    let mut body: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let mut head = [0u8; 4];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && first => return Ok(None),
            Err(e) => return Err(e),
        }
        first = false;
        let head = u32::from_be_bytes(head);
        let len = (head & !MORE) as usize;
        if len > MAX_CHUNK_BYTES {
            return Err(std::io::Error::other(format!(
                "a chunk of {len} bytes is over the protocol's {MAX_CHUNK_BYTES}"
            )));
        }
        if body.len() + len > MAX_MESSAGE_BYTES {
            return Err(std::io::Error::other(format!(
                "a message of more than {MAX_MESSAGE_BYTES} bytes is over the protocol's limit"
            )));
        }
        let start = body.len();
        body.resize(start + len, 0);
        r.read_exact(&mut body[start..]).await?;
        if head & MORE == 0 {
            break;
        }
    }
    match postcard::take_from_bytes(&body) {
        Ok((msg, [])) => Ok(Some(msg)),
        Ok((_, rest)) => Err(std::io::Error::other(format!(
            "a malformed message: {} bytes past its end",
            rest.len()
        ))),
        Err(e) => Err(std::io::Error::other(format!("a malformed message: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{HttpRequest, Output};

    fn invoke(body: Vec<u8>) -> ToWorker {
        ToWorker::Invoke {
            call: 7,
            profile_id: 1,
            profile: Some("{}".into()),
            invocation: Invocation {
                id: "i".into(),
                function: "f".into(),
                version: 1,
                attempt: 1,
                job_id: None,
                checkpoint: Some(vec![1, 2]),
                deadline_ms: 9,
            },
            event: Event::Http(HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                query: String::new(),
                params: vec![],
                headers: vec![("a".into(), "b".into())],
                body,
            }),
            wait_at_most: Some(3),
            reporter: false,
        }
    }

    #[tokio::test]
    async fn messages_round_trip_in_chunks_and_malformed_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write(&mut a, &invoke(vec![0; 1000])).await.unwrap();
        let back: ToWorker = read(&mut b).await.unwrap().unwrap();
        assert!(
            matches!(back, ToWorker::Invoke { call: 7, wait_at_most: Some(3), event: Event::Http(ref r), .. } if r.body.len() == 1000)
        );
        // A body of several chunks, with a message behind it: both whole.
        let big: Vec<u8> = (0..(5 * MAX_CHUNK_BYTES + 17)).map(|i| i as u8).collect();
        let writer = tokio::spawn(async move {
            write(&mut a, &invoke(big)).await.unwrap();
            write(&mut a, &FromWorker::Audit("{}".into()))
                .await
                .unwrap();
            a
        });
        let back: ToWorker = read(&mut b).await.unwrap().unwrap();
        let ToWorker::Invoke {
            event: Event::Http(r),
            ..
        } = back
        else {
            panic!("not an invoke")
        };
        assert_eq!(r.body.len(), 5 * MAX_CHUNK_BYTES + 17);
        assert!(r.body.iter().enumerate().all(|(i, b)| *b == i as u8));
        let next: FromWorker = read(&mut b).await.unwrap().unwrap();
        assert!(matches!(next, FromWorker::Audit(ref l) if l == "{}"));
        let mut a = writer.await.unwrap();
        let done = FromWorker::Done {
            call: 7,
            outcome: Ok(Outcome {
                result: Ok(Output {
                    status: 200,
                    headers: vec![],
                    body: b"ok".to_vec(),
                }),
                fuel_used: 1,
                peak_memory_bytes: 0,
                elapsed: std::time::Duration::from_millis(2),
                progress: None,
                logs: Default::default(),
            }),
        };
        write(&mut b, &done).await.unwrap();
        let back: FromWorker = read(&mut a).await.unwrap().unwrap();
        assert!(matches!(
            back,
            FromWorker::Done {
                call: 7,
                outcome: Ok(_)
            }
        ));
        // A chunk longer than the protocol allows closes the stream
        // instead of allocating it.
        a.write_all(&(!MORE).to_be_bytes()).await.unwrap();
        let err = read::<_, FromWorker>(&mut b).await.unwrap_err();
        assert!(err.to_string().contains("over the protocol"), "{err}");
        // A message with bytes past its end is refused, not half-read.
        let mut body = encode(&FromWorker::Audit("{}".into())).unwrap();
        body.0.extend_from_slice(b"junk");
        write_encoded(&mut a, body).await.unwrap();
        let err = read::<_, FromWorker>(&mut b).await.unwrap_err();
        assert!(err.to_string().contains("past its end"), "{err}");
        drop(a);
        assert!(read::<_, FromWorker>(&mut b).await.unwrap().is_none());
    }
}
