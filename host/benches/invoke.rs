//! The sandbox benchmarks (a bench binary, never a timed test).
//!
//! (a) Per-invocation overhead: fnhost's `Sandbox::invoke` of an empty job
//!     (fresh store, limits, WASI context, log pipes, instantiate, call) beside
//!     the floor: raw wasmtime with the same tuned pooling allocator, a bare
//!     store and no fuel, instantiating and calling the same component. Both
//!     run in the same process, alternating, so the ratio is what counts.
//! (c) Wall-clock enforcement on a CPU-bound guest (`thumbnail`): fuel with
//!     async yields versus fuel plus epoch interruption.
//!
//! Run with `scripts/bench` (it builds the guest components first) or
//! `cargo bench -p fnhost --bench invoke`.

use fnhost::exec::{Event, Invocation, Limits, Profile};
use fnhost::sandbox::{Sandbox, SandboxConfig, Stores, WallClock};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod raw {
    //! The floor: wasmtime with nothing of fnhost's around the call.
    wasmtime::component::bindgen!({
        world: "job",
        path: "../wit",
        imports: { default: async },
        exports: { default: async },
    });
    use self::fnhost::job::{context, queue, storage, types};
    use wasmtime::component::ResourceTable;
    use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

    pub struct State {
        pub wasi: WasiCtx,
        pub table: ResourceTable,
    }
    impl WasiView for State {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }
    impl types::Host for State {}
    impl storage::Host for State {
        async fn get(
            &mut self,
            _: String,
            _: String,
        ) -> Result<Option<Vec<u8>>, storage::StorageError> {
            Ok(None)
        }
        async fn head(
            &mut self,
            _: String,
            _: String,
        ) -> Result<Option<storage::ObjectMeta>, storage::StorageError> {
            Ok(None)
        }
        async fn put(
            &mut self,
            _: String,
            _: String,
            _: Vec<u8>,
            _: Option<String>,
        ) -> Result<storage::ObjectMeta, storage::StorageError> {
            Err(storage::StorageError::Unavailable(String::new()))
        }
        async fn delete(&mut self, _: String, _: String) -> Result<bool, storage::StorageError> {
            Ok(false)
        }
        async fn list_objects(
            &mut self,
            _: String,
            _: String,
        ) -> Result<Vec<storage::ObjectMeta>, storage::StorageError> {
            Ok(Vec::new())
        }
        async fn list_page(
            &mut self,
            _: String,
            _: String,
            _: Option<String>,
            _: u32,
        ) -> Result<storage::ObjectPage, storage::StorageError> {
            Ok(storage::ObjectPage {
                objects: Vec::new(),
                next_start_after: None,
            })
        }
    }
    impl queue::Host for State {
        async fn send(
            &mut self,
            _: String,
            _: Vec<u8>,
            _: queue::SendOptions,
        ) -> Result<String, queue::QueueError> {
            Ok(String::new())
        }
    }
    impl context::Host for State {
        async fn progress(&mut self, _: u8, _: String) -> Result<(), context::ContextError> {
            Ok(())
        }
        async fn checkpoint(&mut self, _: Vec<u8>) -> Result<(), context::ContextError> {
            Ok(())
        }
        async fn config(&mut self, _: String) -> Option<String> {
            None
        }
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read_guest(rel: &str) -> Vec<u8> {
    let path = repo().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {path:?} ({e}); run scripts/bench, which builds the guest components first"
        )
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn inv() -> Invocation {
    Invocation {
        id: "bench".into(),
        function: "bench".into(),
        version: 1,
        attempt: 1,
        job_id: None,
        checkpoint: None,
        deadline_ms: 0,
    }
}

struct Floor {
    engine: wasmtime::Engine,
    pre: raw::JobPre<raw::State>,
}

impl Floor {
    fn new(wasm: &[u8]) -> Floor {
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_component_instances(512)
            .total_core_instances(4096)
            .max_core_instances_per_component(16)
            .total_memories(1024)
            .max_memories_per_component(4)
            .total_tables(2048)
            .max_tables_per_component(8)
            .total_stacks(512)
            .max_memory_size(1 << 30)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(2 << 20);
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = wasmtime::Engine::new(&config).unwrap();
        let mut linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        raw::Job::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s).unwrap();
        let component = wasmtime::component::Component::new(&engine, wasm).unwrap();
        let pre = raw::JobPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Floor { engine, pre }
    }

    async fn call(&self) {
        let state = raw::State {
            wasi: wasmtime_wasi::WasiCtx::builder().build(),
            table: Default::default(),
        };
        let mut store = wasmtime::Store::new(&self.engine, state);
        let job = self.pre.instantiate_async(&mut store).await.unwrap();
        let inv = raw::fnhost::job::types::Invocation {
            id: "bench".into(),
            function: "bench".into(),
            version: 1,
            attempt: 1,
            job_id: None,
            checkpoint: None,
            deadline_ms: 0,
        };
        let event = raw::fnhost::job::types::Event::Invoke(Vec::new());
        job.call_handle(&mut store, &inv, &event)
            .await
            .unwrap()
            .unwrap();
    }
}

/// A version with the default limits and no grants.
fn profile(limits: Limits) -> Arc<Profile> {
    Arc::new(Profile {
        function: "bench".into(),
        version: 1,
        digest: String::new(),
        limits,
        grants: Default::default(),
        config: Default::default(),
        trusted: false,
    })
}

async fn fnhost_call(sandbox: &Sandbox, loaded: &fnhost::sandbox::Loaded, caps: &Arc<Profile>) {
    let out = sandbox
        .invoke(
            loaded,
            caps.clone(),
            Stores::default(),
            inv(),
            Event::Invoke(Vec::new()),
            None,
        )
        .await;
    assert!(out.result.is_ok(), "{:?}", out.result);
}

/// The binary's allocator (see `src/main.rs`), so the figures are the host's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 2_000 } else { 20_000 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let empty = read_guest("tests/guests/target/wasm32-wasip2/release/empty.wasm");
    let thumb = read_guest("functions/target/wasm32-wasip2/release/thumbnail.wasm");
    let image = read_guest("tests/fixtures/landscape-300x200.png");

    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 512,
        ..SandboxConfig::new(cache.path().join("a"))
    })
    .unwrap();
    assert!(
        sandbox.pooling(),
        "the benchmark expects the pooling allocator"
    );
    let loaded = sandbox.load(&empty).unwrap();
    let caps = profile(Limits::default());
    let floor = Floor::new(&empty);

    println!(
        "## (a) per-invocation overhead, empty job, {n} calls each, alternating in one process\n"
    );
    let (mut ours, mut theirs) = (Vec::with_capacity(n), Vec::with_capacity(n));
    rt.block_on(async {
        for _ in 0..200 {
            fnhost_call(&sandbox, &loaded, &caps).await;
            floor.call().await;
        }
        for _ in 0..n {
            let t = Instant::now();
            fnhost_call(&sandbox, &loaded, &caps).await;
            ours.push(t.elapsed());
            let t = Instant::now();
            floor.call().await;
            theirs.push(t.elapsed());
        }
    });
    ours.sort();
    theirs.sort();
    println!("| path | p50 µs | p99 µs |");
    println!("| --- | ---: | ---: |");
    for (name, v) in [
        (
            "fnhost Sandbox::invoke (fuel, limiter, WASI ctx, log pipes, timeout)",
            &ours,
        ),
        ("raw wasmtime, tuned pooling, bare store", &theirs),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            us(percentile(v, 0.5)),
            us(percentile(v, 0.99))
        );
    }
    println!(
        "\nratio fnhost / raw: p50 {:.2}×, p99 {:.2}×\n",
        us(percentile(&ours, 0.5)) / us(percentile(&theirs, 0.5)),
        us(percentile(&ours, 0.99)) / us(percentile(&theirs, 0.99))
    );

    // Throughput on both cores: 2 tasks calling back to back.
    let per_task = n / 2;
    let sandbox = Arc::new(sandbox);
    let floor = Arc::new(floor);
    let run = |which: &'static str| {
        let (sandbox, floor, loaded, caps) =
            (sandbox.clone(), floor.clone(), loaded.clone(), caps.clone());
        rt.block_on(async move {
            let t = Instant::now();
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    let (sandbox, floor, loaded, caps) =
                        (sandbox.clone(), floor.clone(), loaded.clone(), caps.clone());
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            if which == "fnhost" {
                                fnhost_call(&sandbox, &loaded, &caps).await;
                            } else {
                                floor.call().await;
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            (2 * per_task) as f64 / t.elapsed().as_secs_f64()
        })
    };
    let (a, b) = (run("fnhost"), run("raw"));
    println!(
        "2 concurrent tasks: fnhost {a:.0} invocations/s, raw {b:.0}/s, ratio {:.2}×\n",
        a / b
    );

    println!("## (c) wall-clock enforcement on a CPU-bound guest (thumbnail of a 300×200 PNG)\n");
    let fuel = Sandbox::new(SandboxConfig {
        pooling: true,
        ..SandboxConfig::new(cache.path().join("f"))
    })
    .unwrap();
    let epoch = Sandbox::new(SandboxConfig {
        wall_clock: WallClock::Epoch,
        ..SandboxConfig::new(cache.path().join("e"))
    })
    .unwrap();
    let (lf, le) = (fuel.load(&thumb).unwrap(), epoch.load(&thumb).unwrap());
    let rounds = if quick { 10 } else { 40 };
    let (mut tf, mut te) = (Vec::new(), Vec::new());
    rt.block_on(async {
        let ev = || Event::Invoke(image.clone());
        for i in 0..rounds + 3 {
            let t = Instant::now();
            let out = fuel
                .invoke(&lf, caps.clone(), Stores::default(), inv(), ev(), None)
                .await;
            assert!(out.result.is_ok(), "{:?}", out.result);
            let df = t.elapsed();
            let t = Instant::now();
            let out = epoch
                .invoke(&le, caps.clone(), Stores::default(), inv(), ev(), None)
                .await;
            assert!(out.result.is_ok(), "{:?}", out.result);
            let de = t.elapsed();
            if i >= 3 {
                tf.push(df);
                te.push(de);
            }
        }
    });
    tf.sort();
    te.sort();
    println!("| wall clock via | median ms |");
    println!("| --- | ---: |");
    println!(
        "| fuel + async yield every 100k units (default) | {:.2} |",
        us(percentile(&tf, 0.5)) / 1e3
    );
    println!(
        "| fuel + epoch interruption (10 ms ticks) | {:.2} |",
        us(percentile(&te, 0.5)) / 1e3
    );
    println!(
        "\nratio epoch / fuel-yield: {:.2}×",
        us(percentile(&te, 0.5)) / us(percentile(&tf, 0.5))
    );
}
