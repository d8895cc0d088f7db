//! The sandbox: everything fnhost knows about wasmtime, and the local
//! side of the execution seam ([`LocalExecutor`]).
//!
//! One [`Sandbox`] per process owns the `Engine` (pooling allocator where the
//! platform allows, fuel metering), the `Linker` (WASI with nothing granted,
//! plus the fnhost imports) and the on-disk cache of compiled components.
//! [`Sandbox::load`] turns component bytes into a [`Loaded`] (`InstancePre`),
//! once per component; [`Sandbox::invoke`] runs one invocation in a fresh
//! `Store` with the version's [`Limits`] and returns an [`Outcome`]. A trap,
//! fuel exhaustion, memory-limit hit or timeout is an outcome, never a host
//! crash.
//!
//! The sandbox knows nothing of HTTP, triggers or deployments: callers hand
//! it an execution's plain data (`crate::exec`) and get an outcome back.

mod executor;
mod imports;
mod limits;
mod logs;
mod outcome;

use crate::blobs::BlobBackend;
use crate::exec::{
    Event, Failure, Invocation, Limits, LoadError, MAX_HOSTCALL_BYTES, MAX_OUTPUT_BYTES,
    MAX_RESOURCES, Outcome, Profile, Reporter, TrapReason,
};
use crate::queue::QueueSender;
use outcome::{check_output, classify, error_chain, guest_error, is_hostcall_overflow};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use executor::LocalExecutor;
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

use bindings::fnhost::job::types::{JobError, Output as WitOutput};

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
    /// compiled code on top of fuel; kept to measure against (BENCHMARKS.md),
    /// in the bench build only (feature `bench-epoch`).
    #[cfg(feature = "bench-epoch")]
    Epoch,
}

impl SandboxConfig {
    /// Defaults for a host whose data lives under `data_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        SandboxConfig {
            cache_dir,
            max_instances: 256,
            max_memory_bytes: crate::exec::MAX_MEMORY_BYTES,
            pooling: true,
            fuel_yield_interval: 100_000,
            wall_clock: WallClock::FuelYield,
        }
    }
}

/// A component ready to instantiate: compiled once per component.
#[derive(Clone)]
pub struct Loaded {
    pre: bindings::JobPre<HostState>,
}

/// Where a function's granted calls go: the backends behind its imports
/// (none means that kind of call answers `unavailable`).
#[derive(Clone, Default)]
pub struct Stores {
    /// Where granted queue sends go.
    pub queues: Option<Arc<dyn QueueSender>>,
    /// Where granted storage calls go.
    pub blobs: Option<Arc<dyn BlobBackend>>,
    /// Where denied calls are recorded (the first
    /// [`MAX_AUDITED_DENIALS`] of each invocation).
    pub audit: Option<Arc<crate::audit::Audit>>,
    /// Buckets whose every access is audited (only trusted functions are
    /// granted them).
    pub sensitive: Arc<std::collections::BTreeSet<String>>,
}

pub use crate::exec::MAX_AUDITED_DENIALS;

/// The per-invocation state the guest's imports see.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: limits::GuestLimiter,
    profile: Arc<Profile>,
    stores: Stores,
    /// The object a blob event is about (bucket, key), for `read-event`
    /// grants.
    event_object: Option<(String, String)>,
    /// The invocation's id, for the audit log.
    invocation_id: String,
    /// Denied calls so far.
    denials: std::cell::Cell<u32>,
    progress: Option<(u8, String)>,
    reporter: Option<Arc<dyn Reporter>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The process-wide wasmtime state.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    config: SandboxConfig,
    pooling: bool,
    /// Stops the epoch ticker thread (with `WallClock::Epoch`) when dropped.
    #[cfg(feature = "bench-epoch")]
    _ticker: Option<EpochTicker>,
}

#[cfg(feature = "bench-epoch")]
struct EpochTicker(Arc<std::sync::atomic::AtomicBool>);

#[cfg(feature = "bench-epoch")]
impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("fnhost-epoch".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker thread");
        EpochTicker(stop)
    }
}

#[cfg(feature = "bench-epoch")]
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
        #[cfg(feature = "bench-epoch")]
        let _ticker = epoch(&config).then(|| EpochTicker::start(engine.clone()));
        Ok(Sandbox {
            engine,
            linker,
            config,
            pooling,
            #[cfg(feature = "bench-epoch")]
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
        crate::files::write_atomic(&path, &bytes).map_err(|source| {
            LoadError::Store(format!(
                "cannot write the compiled-component cache at {path:?}: {source}"
            ))
        })?;
        Ok(component)
    }

    /// Run one invocation of `profile`'s component (`loaded`) in a fresh
    /// store, its granted calls going to `stores`.
    pub async fn invoke(
        &self,
        loaded: &Loaded,
        profile: Arc<Profile>,
        stores: Stores,
        inv: Invocation,
        event: Event,
        reporter: Option<Arc<dyn Reporter>>,
    ) -> Outcome {
        let limits = profile.limits.clone();
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
            limiter: limits::GuestLimiter::new(&limits),
            profile,
            stores,
            event_object: match &event {
                Event::Blob(change) => Some((change.bucket.clone(), change.key.clone())),
                _ => None,
            },
            invocation_id: inv.id.clone(),
            denials: std::cell::Cell::new(0),
            progress: None,
            reporter,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(MAX_HOSTCALL_BYTES);
        store.set_max_component_handles(MAX_RESOURCES);
        let started = Instant::now();
        let inv = outcome::wit_invocation(inv);
        let event = outcome::wit_event(event);
        let result = match self
            .configure_and_run(&mut store, loaded, &limits, &inv, &event)
            .await
        {
            Ok(Ok(Ok(output))) => check_output(outcome::output(output)),
            Ok(Ok(Err(JobError::Retry(m)))) => Err(Failure::Retry(guest_error(m))),
            Ok(Ok(Err(JobError::Fail(m)))) => Err(Failure::Fail(guest_error(m))),
            Ok(Err(err)) if is_hostcall_overflow(&err) => Err(Failure::Limit(format!(
                "it handed the host more than {MAX_HOSTCALL_BYTES} bytes in one call (its output, or a value passed to storage or a queue); outputs are limited to {MAX_OUTPUT_BYTES} bytes and objects to {} bytes",
                crate::blobs::MAX_OBJECT_BYTES
            ))),
            Ok(Err(err)) => Err(Failure::Trap(classify(&err, &store, &limits, &logs))),
            Err(_elapsed) => Err(Failure::Trap(TrapReason::Timeout {
                limit: limits.timeout,
            })),
        };
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let progress = store.data_mut().progress.take();
        let peak_memory_bytes = store.data().limiter.memory_peak() as u64;
        Outcome {
            result,
            fuel_used,
            peak_memory_bytes,
            elapsed: started.elapsed(),
            progress,
            logs: logs.into_logs(),
        }
    }

    async fn configure_and_run(
        &self,
        store: &mut Store<HostState>,
        loaded: &Loaded,
        limits: &Limits,
        inv: &bindings::fnhost::job::types::Invocation,
        event: &bindings::fnhost::job::types::Event,
    ) -> Result<wasmtime::Result<Result<WitOutput, JobError>>, tokio::time::error::Elapsed> {
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
            #[cfg(feature = "bench-epoch")]
            WallClock::Epoch => store.epoch_deadline_async_yield_and_update(1),
        }
        tokio::time::timeout(limits.timeout, async {
            let job = loaded.pre.instantiate_async(&mut *store).await?;
            job.call_handle(&mut *store, inv, event).await
        })
        .await
    }
}

/// Is the sandbox in the bench-only epoch mode? (Without the feature,
/// fuel yields are the only mode.)
fn epoch(config: &SandboxConfig) -> bool {
    config.wall_clock != WallClock::FuelYield
}

fn engine_config(config: &SandboxConfig, pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.consume_fuel(true);
    c.epoch_interruption(epoch(config));
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
