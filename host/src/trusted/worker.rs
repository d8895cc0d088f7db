//! The trusted worker process (`fnhost trusted-worker`): the only process
//! that holds the sensitive store (`<trusted-dir>/blobs.db` and
//! `blobs/`, sealed with the keys in `<trusted-dir>/keys/`) and the
//! private key of sensitive queues. It confines itself to the trusted dir
//! before it starts a thread ([`prepare`]), then serves the public
//! process — and only it, by pid — on its socket ([`run`]).
//!
//! Trusted functions run here in a sandbox of their own. Their calls on
//! sensitive buckets are served from the sealed store here; everything
//! else they may reach (queue sends, other buckets) is asked of the public
//! process over the socket. Sealed queue messages and checkpoints are
//! opened here, just before the function sees them.

mod link;

use super::wire::{self, FromWorker, ToWorker};
use crate::audit::Audit;
use crate::backends::embedded::EmbeddedBlobs;
use crate::backends::sealed::{Keyring, SealedBlobs};
use crate::backends::sealed_queues::{Opener, Sealer};
use crate::blobs::BlobBackend;
use crate::exec::{Event, Execution, Executor, Failure, Profile, Reporter, Wait};
use crate::sandbox::{LocalExecutor, Sandbox, SandboxConfig, Stores};
use anyhow::Context as _;
use link::{Link, LinkAudit, Remote, RemoteReporter, SplitBlobs};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the supervisor starts the worker.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// The trusted dir: the sensitive store, its keys, the socket.
    #[arg(long)]
    pub trusted_dir: PathBuf,
    /// The only process allowed to connect: the public host.
    #[arg(long)]
    pub peer_pid: u32,
    /// The sensitive buckets.
    #[arg(long, value_delimiter = ',')]
    pub buckets: Vec<String>,
    /// The sensitive queues (a trusted function's sends to them are sealed
    /// in the worker).
    #[arg(long, value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Trusted invocations that may run at once.
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Use on-demand instance allocation instead of the pooling allocator.
    #[arg(long)]
    pub no_pooling: bool,
    /// Run even where Landlock cannot confine the worker.
    #[arg(long)]
    pub accept_without_landlock: bool,
    /// The host config, when its `[blobs]` are on S3 (the sensitive
    /// buckets are then kept there, sealed); read before the worker
    /// confines itself.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// What the worker set up before any thread started.
pub struct Prepared {
    listener: std::os::unix::net::UnixListener,
}

/// Bind the socket and confine this process to the trusted dir; call it
/// before the async runtime starts its threads.
pub fn prepare(args: &WorkerArgs) -> anyhow::Result<Prepared> {
    let dir = &args.trusted_dir;
    let socket = super::socket_path(dir);
    let run = socket.parent().expect("the socket is in run/");
    crate::files::private_dir(run)
        .with_context(|| format!("cannot create the trusted worker's socket dir {run:?}"))?;
    match std::fs::remove_file(&socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove the old socket {socket:?}"));
        }
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .with_context(|| format!("cannot listen on {socket:?}"))?;
    listener.set_nonblocking(true)?;
    let confinement = crate::confine::trusted_worker(dir)?;
    if confinement != crate::confine::Confinement::Full && !args.accept_without_landlock {
        anyhow::bail!(
            "the trusted worker cannot confine itself: Landlock is {confinement}; \
             set [sensitive] accept_without_landlock = true in the host config to run without it"
        );
    }
    tracing::info!(trusted_dir = ?dir, "trusted worker confined to its trusted dir by Landlock: {confinement}");
    Ok(Prepared { listener })
}

struct Worker {
    link: Arc<Link>,
    executor: LocalExecutor,
    opener: Opener,
    sealer: Sealer,
    allowed: super::allowed::Allowed,
    /// The sensitive queues: every message of theirs is sealed.
    queues: Arc<BTreeSet<String>>,
}

impl Worker {
    /// Run one execution the host asked for and answer it.
    async fn invoke(
        &self,
        call: u64,
        profile: Result<Arc<Profile>, String>,
        mut invocation: crate::exec::Invocation,
        mut event: Event,
        wait_at_most: Option<u32>,
        reporter: bool,
    ) {
        let refused = |why: String| super::remote::ended(Failure::Fail(why));
        let outcome = match profile {
            Err(why) => Ok(refused(why)),
            Ok(p) if !p.trusted => Ok(refused(format!(
                "{} is not a trusted function: the trusted worker runs only those",
                p.who()
            ))),
            // A host error (details in the log, not to the caller), and
            // retried: an operator may allow it meanwhile.
            Ok(p) if let Err(why) = self.allowed.check(&p.digest) => {
                tracing::warn!(function = %p.who(), "{why}");
                Ok(super::remote::ended(Failure::Trap(
                    crate::exec::TrapReason::Host(format!(
                        "{}: its component is not allowed in the trusted worker",
                        p.who()
                    )),
                )))
            }
            Ok(profile) => match self.open_sealed(&profile, &mut invocation, &mut event) {
                Err(why) => Ok(refused(why)),
                Ok(()) => {
                    let reporter = reporter.then(|| {
                        Arc::new(RemoteReporter {
                            link: self.link.clone(),
                            invoke: call,
                            function: profile.function.clone(),
                            sealer: self.sealer.clone(),
                        }) as Arc<dyn Reporter>
                    });
                    let wait = wait_at_most.map_or(Wait::Always, |n| Wait::AtMost(n as usize));
                    let who = profile.who();
                    // Every wait of the execution (for an instance, its
                    // component, the host's answers) ends by its deadline
                    // and a grace: the host is never left waiting on it.
                    let left = invocation
                        .deadline_ms
                        .saturating_sub(crate::clock::now_ms());
                    let bound = Duration::from_millis(left) + super::DEADLINE_GRACE;
                    let execution = Execution {
                        profile,
                        invocation,
                        event,
                    };
                    match tokio::time::timeout(
                        bound,
                        self.executor.execute(execution, reporter, wait),
                    )
                    .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            let why = format!(
                                "{who} did not finish by its deadline and {:?} more in the trusted worker (waiting for an instance, its component or the host)",
                                super::DEADLINE_GRACE
                            );
                            tracing::warn!("{why}");
                            Ok(super::remote::ended(Failure::Trap(
                                crate::exec::TrapReason::Host(why),
                            )))
                        }
                    }
                }
            },
        };
        self.link
            .send(Some(FromWorker::Done { call, outcome }))
            .await;
    }

    /// Open a sealed queue message or job input, and a sealed checkpoint,
    /// in place. What is sealed is known from where it comes, never from
    /// what the bytes look like: every message of a sensitive queue, every
    /// job input of a trusted function (sealed when it was submitted) and
    /// every checkpoint of one (sealed here when it was saved, and handed
    /// back to this function only).
    fn open_sealed(
        &self,
        profile: &Profile,
        invocation: &mut crate::exec::Invocation,
        event: &mut Event,
    ) -> Result<(), String> {
        match event {
            Event::Queue(m) if self.queues.contains(&m.queue) => {
                m.body = self.opener.open(&m.queue, &m.body).map_err(|e| {
                    format!(
                        "message {} of the sensitive queue {} does not open in the trusted worker ({e}); every message of a sensitive queue is sealed by fnhost as it is sent, so this one was sent around fnhost or altered",
                        m.id, m.queue
                    )
                })?;
            }
            // A job's input (a direct invocation's payload, which has no
            // job, is never sealed).
            Event::Invoke(payload) if invocation.job_id.is_some() => {
                *payload = self
                    .opener
                    .open(&super::job_input_aad(&profile.function), payload)
                    .map_err(|e| {
                        format!(
                            "the input of this job of {} does not open in the trusted worker ({e}); a trusted function's job input is sealed when the job is submitted, so it was submitted before the function was trusted, or altered",
                            profile.function
                        )
                    })?;
            }
            _ => {}
        }
        if let Some(state) = &invocation.checkpoint {
            let opened = self
                .opener
                .open(&super::checkpoint_aad(&profile.function), state)
                .map_err(|e| {
                    format!(
                        "the checkpoint of {} does not open in the trusted worker ({e}); a trusted function's checkpoints are sealed as they are saved, so this one was saved while it ran outside the worker, or altered",
                        profile.function
                    )
                })?;
            invocation.checkpoint = Some(opened);
        }
        Ok(())
    }

    /// Serve one connection of the host until it ends.
    async fn serve(self: &Arc<Self>, stream: tokio::net::UnixStream) -> std::io::Result<()> {
        let (r, mut w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r);
        // The versions' profiles the host has sent on this connection.
        let mut profiles: HashMap<u64, Arc<Profile>> = HashMap::new();
        wire::write(
            &mut w,
            &FromWorker::Hello {
                version: wire::VERSION,
                pid: std::process::id(),
                queue_key: self.opener.public_key(),
            },
        )
        .await?;
        let writer: wire::Writer = Arc::new(tokio::sync::Mutex::new(w));
        // A new connection of the host: calls made on the old one will not
        // be answered (their callers see the connection lost).
        self.link.calls.lock().unwrap().clear();
        *self.link.tx.lock().unwrap() = Some(writer.clone());
        let result = loop {
            match wire::read::<_, ToWorker>(&mut r).await {
                Ok(Some(ToWorker::Invoke {
                    call,
                    profile_id,
                    profile,
                    invocation,
                    event,
                    wait_at_most,
                    reporter,
                })) => {
                    let profile = match profile {
                        Some(json) => serde_json::from_str::<Profile>(&json)
                            .map(|p| {
                                let p = Arc::new(p);
                                profiles.insert(profile_id, p.clone());
                                p
                            })
                            .map_err(|e| format!("the host sent a malformed profile: {e}")),
                        None => profiles.get(&profile_id).cloned().ok_or_else(|| {
                            format!("the host named profile {profile_id}, which it never sent")
                        }),
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.invoke(call, profile, invocation, event, wait_at_most, reporter)
                            .await
                    });
                }
                Ok(Some(ToWorker::Reply { call, reply })) => {
                    if let Some(waiting) = self.link.calls.lock().unwrap().remove(&call) {
                        let _ = waiting.send(reply);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // Unless a newer connection has taken over already.
        let mut tx = self.link.tx.lock().unwrap();
        if tx.as_ref().is_some_and(|t| Arc::ptr_eq(t, &writer)) {
            *tx = None;
            self.link.calls.lock().unwrap().clear();
        }
        result
    }
}

/// Open the sensitive store — `shared` when the sensitive buckets live in
/// a store the fleet shares (S3), else an embedded one in the trusted dir —
/// and serve the host until the supervisor says stop (SIGUSR1). SIGTERM
/// and SIGINT are ignored: a service manager's signal to every process of
/// the host reaches the host process, which drains and then has the
/// supervisor stop the worker.
pub async fn run(
    args: WorkerArgs,
    prepared: Prepared,
    shared: Option<Arc<dyn BlobBackend>>,
) -> anyhow::Result<()> {
    let dir = &args.trusted_dir;
    let keys = Keyring::open(dir).context("failed to open the encryption keys")?;
    let opener = Opener::open_or_create(&dir.join("keys")).map_err(anyhow::Error::msg)?;
    let sealer = Sealer::new(opener.public_key()).map_err(anyhow::Error::msg)?;
    let on_s3 = shared.is_some();
    let store: Arc<dyn BlobBackend> = match shared {
        Some(store) => store,
        None => Arc::new(
            EmbeddedBlobs::open(dir)
                .with_context(|| format!("failed to open the sensitive store in {dir:?}"))?,
        ),
    };
    let sensitive: Arc<BTreeSet<String>> = Arc::new(args.buckets.iter().cloned().collect());
    tracing::info!(current_key = %keys.current(), buckets = ?sensitive, on_s3, "the trusted worker holds the sensitive store's keys");
    let keys = Arc::new(keys);
    let sealed = Arc::new(SealedBlobs::new(store, sensitive.clone(), keys.clone()));
    let local: Arc<dyn BlobBackend> = sealed.clone();
    let link = Arc::new(Link {
        tx: Mutex::new(None),
        calls: Mutex::default(),
        next: AtomicU64::new(1),
        audit: Mutex::default(),
    });
    // Audit lines that no outcome or call carried out soon.
    let flushing = link.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !flushing.audit.lock().unwrap().is_empty() {
                flushing.send(None).await;
            }
        }
    });
    let queues: Arc<BTreeSet<String>> = Arc::new(args.queues.iter().cloned().collect());
    let remote = Arc::new(Remote {
        link: link.clone(),
        sealer: sealer.clone(),
        queues: queues.clone(),
    });
    let audit_link = link.clone();
    let stores = Stores {
        queues: Some(remote.clone()),
        blobs: Some(Arc::new(SplitBlobs {
            sensitive: sensitive.clone(),
            local: local.clone(),
            remote: remote.clone(),
        })),
        audit: Some(Arc::new(Audit::forwarding(LinkAudit(audit_link)))),
        sensitive: sensitive.clone(),
    };
    let sandbox = Arc::new(Sandbox::new(SandboxConfig {
        pooling: !args.no_pooling,
        max_instances: (args.max_concurrency as u32).max(1) * 2,
        ..SandboxConfig::new(dir.join("cache"))
    })?);
    let worker = Arc::new(Worker {
        link,
        executor: LocalExecutor::new(sandbox, remote, stores, args.max_concurrency.max(1)),
        opener,
        sealer,
        allowed: super::allowed::Allowed::new(dir),
        queues,
    });
    tokio::spawn(super::reseal::in_background(sealed, sensitive, keys));
    let listener = tokio::net::UnixListener::from_std(prepared.listener)?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::user_defined1())?;
    let _ignored = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    // Connections are accepted while the host's is served, so another
    // process's attempt is refused at once; a new connection of the host
    // (after it lost the old one) replaces the old.
    let mut serving: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                let peer = stream.peer_cred().ok().and_then(|c| c.pid());
                if peer != Some(args.peer_pid as i32) {
                    tracing::warn!(?peer, expected = args.peer_pid, "refused a connection from a process that is not the host");
                    continue;
                }
                if let Some(old) = serving.take() {
                    old.abort();
                }
                let worker = worker.clone();
                serving = Some(tokio::spawn(async move {
                    if let Err(e) = worker.serve(stream).await {
                        tracing::warn!(error = %e, "the host's connection failed");
                    }
                }));
            }
            _ = term.recv() => break,
        }
    }
    // The host drains before it stops the worker; give stragglers a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while worker.executor.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!("trusted worker stopped");
    Ok(())
}
