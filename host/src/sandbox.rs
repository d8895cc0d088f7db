//! The sandbox: everything fnhost knows about wasmtime.
//!
//! One [`Sandbox`] per process owns the `Engine` (pooling allocator where the
//! platform allows, fuel metering), the `Linker` (WASI with nothing granted,
//! plus the fnhost imports) and the on-disk cache of compiled components.
//! [`Sandbox::load`] turns component bytes into a [`Loaded`] (`InstancePre`),
//! once per deployed version; [`Sandbox::invoke`] runs one invocation in a
//! fresh `Store` with the function's [`Limits`] and returns an [`Outcome`].
//! A trap, fuel exhaustion, memory-limit hit or timeout is an outcome, never
//! a host crash.
//!
//! The sandbox knows nothing of HTTP, queues or the registry: callers hand it
//! a WIT event and [`Capabilities`] and get an outcome back.

mod imports;
mod limits;
mod logs;

use crate::capabilities::Capabilities;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use limits::{
    Limits, MAX_FUEL, MAX_GUEST_ERROR_BYTES, MAX_HEADER_NAME_BYTES, MAX_HEADER_VALUE_BYTES,
    MAX_HOSTCALL_BYTES, MAX_LOG_BYTES, MAX_MEMORY_BYTES, MAX_OUTPUT_BYTES, MAX_OUTPUT_HEADERS,
    MAX_RESOURCES,
};
pub use logs::GuestLogs;

/// Host-side bindings of the `fnhost:job` world.
pub mod bindings {
    wasmtime::component::bindgen!({
        world: "job",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use bindings::fnhost::job::types::{
    BlobChange, ChangeKind, Event, HttpRequest, Invocation, JobError, Output, QueueMessage,
    TimerTick,
};

/// How the process-wide engine is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled components are cached (`<data-dir>/cache`).
    pub cache_dir: PathBuf,
    /// Instances that may exist at once (sizes the pooling allocator).
    pub max_instances: u32,
    /// The largest linear memory any function may be granted, in bytes.
    pub max_memory_bytes: usize,
    /// Use the pooling allocator (falls back to on-demand if it cannot be set up).
    pub pooling: bool,
    /// How often, in fuel units, a running guest yields to the async runtime so
    /// that wall-clock timeouts and other tasks get a turn.
    pub fuel_yield_interval: u64,
    /// How a running guest is made to yield so its wall-clock limit can be enforced.
    pub wall_clock: WallClock,
}

/// How the sandbox interrupts a running guest so that its wall-clock limit
/// (a tokio timeout around the call) can fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WallClock {
    /// Yield every `fuel_yield_interval` fuel units. Fuel is metered anyway
    /// for the fuel limit, so this adds only the yields (the default).
    FuelYield,
    /// Epoch interruption: a ticker thread bumps the engine's epoch every
    /// 10 ms and the guest yields at each tick. Adds epoch checks to the
    /// compiled code on top of fuel; kept to measure against (BENCHMARKS.md).
    Epoch,
}

impl SandboxConfig {
    /// Defaults for a host whose data lives under `data_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        SandboxConfig {
            cache_dir,
            max_instances: 256,
            max_memory_bytes: limits::MAX_MEMORY_BYTES,
            pooling: true,
            fuel_yield_interval: 100_000,
            wall_clock: WallClock::FuelYield,
        }
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component at all (a core module, or not wasm).
    #[error("the file is not a WebAssembly component: {0}")]
    NotAComponent(String),
    /// A component, but not one of the `fnhost:job` world.
    #[error(
        "the component does not implement the fnhost:job@0.1.0 world ({0}); build it with the fnhost guest SDK and `#[job]`"
    )]
    WrongWorld(String),
    /// The compiled-component cache could not be written.
    #[error("cannot write the compiled-component cache at {path}: {source}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A component ready to instantiate: compiled once per deployed version.
#[derive(Clone)]
pub struct Loaded {
    pre: bindings::JobPre<HostState>,
}

/// The per-invocation state the guest's imports see.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: limits::GuestLimiter,
    caps: Arc<Capabilities>,
    progress: Option<(u8, String)>,
    reporter: Option<Arc<dyn Reporter>>,
}

/// Where a running invocation's progress and checkpoints go (the job record,
/// the queue message). Invocations without one (synchronous HTTP calls) keep
/// progress on the outcome and refuse checkpoints.
pub trait Reporter: Send + Sync {
    /// Record progress.
    fn progress(
        &self,
        percent: u8,
        message: String,
    ) -> crate::queue::BoxFuture<'_, Result<(), String>>;
    /// Save a checkpoint for the next attempt.
    fn checkpoint(&self, state: Vec<u8>) -> crate::queue::BoxFuture<'_, Result<(), String>>;
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// How an invocation ended.
#[derive(Debug)]
pub struct Outcome {
    /// The guest's result, or why it did not produce one.
    pub result: Result<Output, Failure>,
    /// Fuel the invocation consumed.
    pub fuel_used: u64,
    /// Wall-clock time spent in the sandbox.
    pub elapsed: Duration,
    /// The last progress the guest reported.
    pub progress: Option<(u8, String)>,
    /// What the guest wrote to stdout and stderr (capped).
    pub logs: GuestLogs,
}

/// Why an invocation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The guest returned `job-error::retry`.
    #[error("the job asked to be retried: {0}")]
    Retry(String),
    /// The guest returned `job-error::fail`.
    #[error("the job failed: {0}")]
    Fail(String),
    /// The guest handed the host more than a limit allows (an output over
    /// [`MAX_OUTPUT_BYTES`], say): its fault, and the same next time.
    #[error("the job broke a limit: {0}")]
    Limit(String),
    /// The guest was stopped by the sandbox.
    #[error("{0}")]
    Trap(TrapReason),
}

impl Failure {
    /// True when another attempt may succeed (a retry request, or a trap that
    /// may be transient such as a timeout).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Failure::Fail(_) | Failure::Limit(_))
    }
}

/// What stopped a guest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrapReason {
    /// The fuel budget ran out.
    #[error("fuel exhausted: the invocation used all {limit} units of its fuel limit")]
    FuelExhausted {
        /// The fuel limit.
        limit: u64,
    },
    /// The guest tried to grow its memory past the limit.
    #[error(
        "memory limit exceeded: the guest asked for {requested} bytes, over its limit of {limit} bytes"
    )]
    MemoryLimit {
        /// The memory limit in bytes.
        limit: usize,
        /// The size the guest asked for.
        requested: usize,
    },
    /// The wall-clock limit passed.
    #[error("timed out: the invocation ran longer than its limit of {limit:?}")]
    Timeout {
        /// The wall-clock limit.
        limit: Duration,
    },
    /// The wasm call stack ran out.
    #[error("stack overflow: the guest exhausted its call stack")]
    StackOverflow,
    /// The guest held more host resources (streams, pollables) than allowed.
    #[error(
        "too many resources: the guest held more than {limit} host resources (streams, pollables) at once"
    )]
    TooManyResources {
        /// The resource limit.
        limit: usize,
    },
    /// The guest panicked (Rust `panic!`), with the panic message when it printed one.
    #[error("the guest panicked: {0}")]
    Panic(String),
    /// Any other trap, with wasmtime's description.
    #[error("the guest trapped: {0}")]
    Other(String),
    /// The host itself could not run the invocation (e.g. no free instance slot).
    #[error("the host could not run the invocation: {0}")]
    Host(String),
}

/// The process-wide wasmtime state.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    config: SandboxConfig,
    pooling: bool,
    /// Stops the epoch ticker thread (with [`WallClock::Epoch`]) when dropped.
    _ticker: Option<EpochTicker>,
}

struct EpochTicker(Arc<std::sync::atomic::AtomicBool>);

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("fnhost-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker thread");
        EpochTicker(stop)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Sandbox {
    /// Build the engine and linker. Tries the pooling allocator first and falls
    /// back to on-demand allocation when the platform refuses the reservation.
    pub fn new(config: SandboxConfig) -> anyhow::Result<Self> {
        let (engine, pooling) = if config.pooling {
            match Engine::new(&engine_config(&config, true)) {
                Ok(engine) => (engine, true),
                Err(err) => {
                    tracing::warn!(error = %err, "pooling allocator unavailable; using on-demand allocation");
                    (build_engine(&config, false)?, false)
                }
            }
        } else {
            (build_engine(&config, false)?, false)
        };
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("failed to link WASI: {e}"))?;
        bindings::Job::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("failed to link the fnhost imports: {e}"))?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|e| {
            anyhow::anyhow!(
                "failed to create the cache directory {:?}: {e}",
                config.cache_dir
            )
        })?;
        let _ticker =
            (config.wall_clock == WallClock::Epoch).then(|| EpochTicker::start(engine.clone()));
        Ok(Sandbox {
            engine,
            linker,
            config,
            pooling,
            _ticker,
        })
    }

    /// True when the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// Compile (or load from the cache) a component and check that it is an
    /// fnhost job. Blocking: call it from a blocking thread.
    pub fn load(&self, wasm: &[u8]) -> Result<Loaded, LoadError> {
        if !wasmparser_is_component(wasm) {
            return Err(LoadError::NotAComponent(if wasm.starts_with(b"\0asm") {
                "it is a core WebAssembly module; fnhost runs components built for wasm32-wasip2"
                    .into()
            } else {
                "it does not start with the WebAssembly magic bytes".into()
            }));
        }
        let component = self.compile_cached(wasm)?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(error_chain(&e)))?;
        let pre = bindings::JobPre::new(pre).map_err(|e| LoadError::WrongWorld(error_chain(&e)))?;
        Ok(Loaded { pre })
    }

    fn compile_cached(&self, wasm: &[u8]) -> Result<Component, LoadError> {
        let digest = crate::files::sha256_hex(wasm);
        let engine_hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut h);
            h.finish()
        };
        let path = self
            .config
            .cache_dir
            .join(format!("{digest}-{engine_hash:016x}.cwasm"));
        if path.exists() {
            // SAFETY: the cache directory belongs to this host and is only
            // written by `compile_cached` below with this engine's output; the
            // file name carries the engine's compatibility hash.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(err) => tracing::warn!(?path, error = %err, "ignoring an unusable cache entry"),
            }
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| LoadError::NotAComponent(error_chain(&e)))?;
        let bytes = component
            .serialize()
            .map_err(|e| LoadError::NotAComponent(error_chain(&e)))?;
        crate::files::write_atomic(&path, &bytes)
            .map_err(|source| LoadError::Cache { path, source })?;
        Ok(component)
    }

    /// Run one invocation in a fresh store.
    pub async fn invoke(
        &self,
        loaded: &Loaded,
        limits: &Limits,
        caps: Arc<Capabilities>,
        inv: Invocation,
        event: Event,
        reporter: Option<Arc<dyn Reporter>>,
    ) -> Outcome {
        let logs = GuestLogs::new(limits.log_bytes);
        let wasi = WasiCtx::builder()
            .stdout(logs.stdout_pipe())
            .stderr(logs.stderr_pipe())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = HostState {
            wasi,
            table,
            limiter: limits::GuestLimiter::new(limits),
            caps,
            progress: None,
            reporter,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(MAX_HOSTCALL_BYTES);
        store.set_max_component_handles(MAX_RESOURCES);
        let started = Instant::now();
        let result = match self
            .configure_and_run(&mut store, loaded, limits, &inv, &event)
            .await
        {
            Ok(Ok(Ok(output))) => check_output(output),
            Ok(Ok(Err(JobError::Retry(m)))) => Err(Failure::Retry(guest_error(m))),
            Ok(Ok(Err(JobError::Fail(m)))) => Err(Failure::Fail(guest_error(m))),
            Ok(Err(err)) if is_hostcall_overflow(&err) => Err(Failure::Limit(format!(
                "it handed the host more than {MAX_HOSTCALL_BYTES} bytes in one call (its output, or a value passed to storage or a queue); outputs are limited to {MAX_OUTPUT_BYTES} bytes and objects to {} bytes",
                crate::blobs::MAX_OBJECT_BYTES
            ))),
            Ok(Err(err)) => Err(Failure::Trap(classify(&err, &store, limits, &logs))),
            Err(_elapsed) => Err(Failure::Trap(TrapReason::Timeout {
                limit: limits.timeout,
            })),
        };
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let progress = store.data_mut().progress.take();
        Outcome {
            result,
            fuel_used,
            elapsed: started.elapsed(),
            progress,
            logs,
        }
    }

    async fn configure_and_run(
        &self,
        store: &mut Store<HostState>,
        loaded: &Loaded,
        limits: &Limits,
        inv: &Invocation,
        event: &Event,
    ) -> Result<wasmtime::Result<Result<Output, JobError>>, tokio::time::error::Elapsed> {
        // All per-invocation limits are set here, in one place.
        if let Err(err) = store.set_fuel(limits.fuel) {
            return Ok(Err(err));
        }
        match self.config.wall_clock {
            WallClock::FuelYield => {
                if let Err(err) =
                    store.fuel_async_yield_interval(Some(self.config.fuel_yield_interval))
                {
                    return Ok(Err(err));
                }
            }
            WallClock::Epoch => store.epoch_deadline_async_yield_and_update(1),
        }
        tokio::time::timeout(limits.timeout, async {
            let job = loaded.pre.instantiate_async(&mut *store).await?;
            job.call_handle(&mut *store, inv, event).await
        })
        .await
    }
}

fn engine_config(config: &SandboxConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.consume_fuel(true);
    c.epoch_interruption(config.wall_clock == WallClock::Epoch);
    c.parallel_compilation(true);
    if pooling {
        let n = config.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        // A wasm32-wasip2 component made by rustc holds a handful of core
        // instances (the program, the WASI adapter and shims).
        pool.total_component_instances(n)
            .total_core_instances(n * 8)
            .max_core_instances_per_component(16)
            .total_memories(n * 2)
            .max_memories_per_component(4)
            .total_tables(n * 4)
            .max_tables_per_component(8)
            .total_stacks(n)
            .max_memory_size(config.max_memory_bytes)
            // Measured in the brief: these three take instantiation from
            // 24–48 µs to 10–19 µs on this kind of VM.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(2 << 20);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

fn build_engine(config: &SandboxConfig, pooling: bool) -> anyhow::Result<Engine> {
    Engine::new(&engine_config(config, pooling))
        .map_err(|e| anyhow::anyhow!("failed to create the wasm engine: {}", error_chain(&e)))
}

/// A guest's error message, cut to [`MAX_GUEST_ERROR_BYTES`].
fn guest_error(message: String) -> String {
    crate::text::capped(message, MAX_GUEST_ERROR_BYTES)
}

/// An output within the limits, or why not.
fn check_output(output: Output) -> Result<Output, Failure> {
    if output.body.len() > MAX_OUTPUT_BYTES {
        return Err(Failure::Limit(format!(
            "its output is {} bytes, over the limit of {MAX_OUTPUT_BYTES}; return less, or put the result in a bucket and return its key",
            output.body.len()
        )));
    }
    if output.headers.len() > MAX_OUTPUT_HEADERS {
        return Err(Failure::Limit(format!(
            "its output has {} headers, over the limit of {MAX_OUTPUT_HEADERS}",
            output.headers.len()
        )));
    }
    for (name, value) in &output.headers {
        if name.len() > MAX_HEADER_NAME_BYTES || value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(Failure::Limit(format!(
                "its output header {} is over the limits of {MAX_HEADER_NAME_BYTES} bytes for a name and {MAX_HEADER_VALUE_BYTES} for a value",
                crate::text::quote(name)
            )));
        }
    }
    Ok(output)
}

/// True when wasmtime refused to copy more than the host-call budget
/// ([`MAX_HOSTCALL_BYTES`]) from the guest. (wasmtime has no public type
/// for it; its message is matched, and a test keeps the match honest.)
fn is_hostcall_overflow(err: &wasmtime::Error) -> bool {
    err.chain().any(|e| {
        e.to_string()
            .contains("fuel allocated for hostcalls has been exhausted")
    })
}

/// Turn a wasmtime error from a guest call into a precise reason.
fn classify(
    err: &wasmtime::Error,
    store: &Store<HostState>,
    limits: &Limits,
    logs: &GuestLogs,
) -> TrapReason {
    if let Some(requested) = store.data().limiter.memory_refused() {
        return TrapReason::MemoryLimit {
            limit: limits.memory_bytes,
            requested,
        };
    }
    let too_many_resources = err.chain().any(|e| {
        matches!(
            e.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        ) || e.to_string().contains("store handle limit exceeded")
    });
    if too_many_resources {
        return TrapReason::TooManyResources {
            limit: MAX_RESOURCES,
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => TrapReason::FuelExhausted { limit: limits.fuel },
        Some(Trap::StackOverflow) => TrapReason::StackOverflow,
        Some(Trap::UnreachableCodeReached) => match logs.panic_message() {
            Some(msg) => TrapReason::Panic(guest_error(msg)),
            None => TrapReason::Other(Trap::UnreachableCodeReached.to_string()),
        },
        Some(trap) => TrapReason::Other(trap.to_string()),
        None => TrapReason::Host(error_chain(err)),
    }
}

/// A wasmtime error with its causes, on one line.
pub(crate) fn error_chain(err: &wasmtime::Error) -> String {
    err.chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// True when the bytes carry the component-model layer (not a core module).
fn wasmparser_is_component(wasm: &[u8]) -> bool {
    // Preamble: magic, then a 2-byte version and 2-byte layer; layer 1 is a component.
    wasm.len() >= 8 && wasm.starts_with(b"\0asm") && wasm[6..8] == [1, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_preamble_is_recognised() {
        assert!(wasmparser_is_component(b"\0asm\x0d\0\x01\0"));
        assert!(!wasmparser_is_component(b"\0asm\x01\0\0\0"));
        assert!(!wasmparser_is_component(b"hello world"));
    }

    #[test]
    fn core_modules_and_garbage_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(SandboxConfig {
            pooling: false,
            ..SandboxConfig::new(dir.path().join("cache"))
        })
        .unwrap();
        let err = sandbox.load(b"\0asm\x01\0\0\0").err().unwrap();
        assert!(err.to_string().contains("core WebAssembly module"), "{err}");
        let err = sandbox.load(b"not wasm").err().unwrap();
        assert!(err.to_string().contains("magic bytes"), "{err}");
    }
}
