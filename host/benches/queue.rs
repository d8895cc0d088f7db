//! The queue benchmark (a bench binary, never a timed test): end-to-end
//! durable throughput and latency of queue-triggered jobs, in one process
//! with the real pieces (embedded queue store with fsync'd group commits,
//! dispatcher, queue worker, sandbox) and a trivial guest
//! (`tests/guests/empty`).
//!
//! 1. Throughput: enqueue N messages (batches of 1,000, each batch one
//!    durable step), let the binding process and ack them all; messages/s.
//! 2. Latency at half the 25,000 jobs/s target (12,500/s, or half the
//!    measured rate if that is lower): messages sent one by one at a steady
//!    pace, each with `reply_to`; the reply's enqueue time minus the send
//!    time is enqueue → completion.
//!
//! During the latency run, and during its peer's, a probe thread counts
//! the host's memory stalls (see [`StallProbe`]): this VM's cache misses
//! sometimes run several times slower for tens of ms, and the tail follows
//! them, so each run says whether it met one.
//!
//! With `--stalls` the bench runs only the probe, for 10 s, with nothing
//! else running.
//!
//! `BENCH_N` (messages in the throughput run) and `BENCH_LATENCY_RATE`
//! (sends/s in the latency run) override the defaults for experiments. The
//! bench also reports CPU time per job by thread (queue writer, async
//! workers), read from `/proc`: less noisy than jobs/s on a shared VM.
//!
//! Beside them, the bare invocation cost of the same guest, so the queue's
//! own overhead is visible. Run with `scripts/bench` or
//! `cargo bench -p fnhost --bench queue`.

use fnhost::host::{Host, HostConfig};
use fnhost::queue::{NewMessage, QueueBackend};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The latency run's pace: half the 25,000 jobs/s throughput target (or
/// half the measured throughput, when that is lower), so runs on different
/// days put the same load on the store.
const LATENCY_RATE: f64 = 12_500.0;

/// The binary's allocator (see `src/main.rs`), so the figures are the host's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if std::env::args().any(|a| a == "--stalls") {
        // The probe alone, on an otherwise idle process: how often the
        // platform stalls with nothing of fnhost's running.
        let probe = StallProbe::start(probe_cycle());
        std::thread::sleep(Duration::from_secs(10));
        println!("memory stalls in 10 s idle: {}", probe.stop());
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10_000 } else { 50_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let wasm_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/guests/target/wasm32-wasip2/release/empty.wasm");
    let wasm = std::fs::read(&wasm_path).unwrap_or_else(|e| {
        panic!("cannot read {wasm_path:?} ({e}); run scripts/bench, which builds it")
    });
    // Put together as `fnhost serve` does, on the embedded stores, with 128
    // instances host-wide.
    let config = HostConfig {
        max_concurrency: 128,
        job_retention: Duration::from_secs(3600),
        ..HostConfig::new(dir.path().to_path_buf(), "bench".into())
    };
    let host = Host::builder(config).build().await.unwrap();
    let dispatcher = host.dispatcher().clone();
    let backend: Arc<dyn QueueBackend> = host.services().queues().clone();
    let manifest = "name = \"sink\"\n[[triggers.queue]]\nqueue = \"bench\"\nbatch_size = 128\nmax_concurrency = 128\ntarget_backlog = 1\nmin_concurrency = 64\n";
    (dispatcher.deploy(manifest.into(), wasm, fnhost::dispatcher::Authority::Admin))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let _tracker = host.start_triggers(shutdown.clone());

    // Bare invocation cost of the same guest, for reference.
    let deployed = dispatcher.get("sink").unwrap();
    let bare_n = 5_000;
    let t = Instant::now();
    for _ in 0..bare_n {
        let (_, out) = dispatcher
            .invoke(
                deployed.clone(),
                fnhost::exec::Event::Invoke(Vec::new()),
                Default::default(),
            )
            .await;
        assert!(out.result.is_ok());
    }
    let bare = t.elapsed() / bare_n;

    let cycle = probe_cycle();

    // 1. Throughput.
    let body = |i: usize| NewMessage {
        body: i.to_string().into_bytes(),
        ..Default::default()
    };
    let cpu0 = thread_cpu();
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        backend
            .send_batch("bench", chunk.iter().map(|&i| body(i)).collect())
            .await
            .unwrap();
    }
    let enqueued = t.elapsed();
    // Poll with the cheap capped count (a full count scans every message and
    // would load the store under test), then make sure no retry is pending.
    loop {
        if backend.backlog("bench", 1).await.unwrap() == 0 {
            let s = backend.stats("bench").await.unwrap();
            if s.ready + s.in_flight + s.delayed == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = t.elapsed();
    let rate = n as f64 / total.as_secs_f64();
    let cpu = thread_cpu().since(&cpu0);

    // 2. Latency at half the target rate, one send per message.
    let target = std::env::var("BENCH_LATENCY_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((rate / 2.0).min(LATENCY_RATE));
    let m = (target as usize * 4).clamp(1_000, 20_000);
    let gap = Duration::from_secs_f64(1.0 / target);
    let mut sent_at = std::collections::HashMap::with_capacity(m);
    let lcpu0 = thread_cpu();
    let probe = StallProbe::start(cycle.clone());
    let start = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..m {
        let due = start + gap.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let backend = backend.clone();
        senders.spawn(async move {
            let msg = NewMessage {
                reply_to: Some("bench-done".into()),
                correlation_id: Some(i.to_string()),
                ..body(i)
            };
            let at = fnhost::clock::now_ms();
            backend.send("bench", msg).await.unwrap();
            (i, at)
        });
    }
    while let Some(r) = senders.join_next().await {
        let (i, at) = r.unwrap();
        sent_at.insert(i.to_string(), at);
    }
    // Wait with the cheap capped count on the work queue; the full count of
    // the replies (a scan of every one) only once the work is done, so it
    // cannot hold up the messages still being processed.
    while backend.backlog("bench", 1).await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // (The probe's thread has ended, so its CPU is not in the figures.)
    let stalls = probe.stop();
    let lcpu = thread_cpu().since(&lcpu0);
    let replies = loop {
        let s = backend.stats("bench-done").await.unwrap();
        if s.ready as usize >= m {
            break backend.peek("bench-done", m).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let achieved = m as f64 / start.elapsed().as_secs_f64();
    let mut lat: Vec<u64> = replies
        .iter()
        .map(|r| {
            r.enqueued_at_ms
                .saturating_sub(sent_at[r.correlation_id.as_ref().unwrap()])
        })
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    shutdown.cancel();
    let probe = StallProbe::start(cycle);
    let peer = durable_peer(dir.path(), target, m);
    let peer_stalls = probe.stop();

    println!(
        "## (d) queue-triggered jobs end to end (trivial guest, every enqueue fsync'd before it is acknowledged)\n"
    );
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!("| messages | {n} |");
    println!(
        "| enqueue time (batches of 1,000) | {:.0} ms ({:.0} messages/s) |",
        enqueued.as_secs_f64() * 1e3,
        n as f64 / enqueued.as_secs_f64()
    );
    println!(
        "| enqueue + process + ack, all | {:.0} ms |",
        total.as_secs_f64() * 1e3
    );
    println!("| **end-to-end throughput** | **{rate:.0} jobs/s** |");
    println!(
        "| bare invocation of the same guest through the dispatcher | {:.1} µs ({:.0}/s on one task) |",
        bare.as_secs_f64() * 1e6,
        1.0 / bare.as_secs_f64()
    );
    println!(
        "| end-to-end time per job ÷ bare invocation (same run, so CPU noise cancels) | {:.2}× |",
        (1.0 / rate) / bare.as_secs_f64()
    );
    println!(
        "| CPU per job: all threads / queue writer / async workers | {:.1} / {:.1} / {:.1} µs |",
        cpu.total() / n as f64 * 1e6,
        cpu.writer / n as f64 * 1e6,
        cpu.workers / n as f64 * 1e6
    );
    println!("| latency run: {m} single sends at {target:.0}/s (achieved {achieved:.0}/s) | |");
    println!(
        "| CPU per job in the latency run: all threads / queue writer / async workers | {:.1} / {:.1} / {:.1} µs |",
        lcpu.total() / m as f64 * 1e6,
        lcpu.writer / m as f64 * 1e6,
        lcpu.workers / m as f64 * 1e6
    );
    println!(
        "| peer, same pace right after: bare SQLite, two group commits per message, p50 / p99 / max | {} / {} / {} ms |",
        peer[peer.len() / 2],
        peer[(peer.len() - 1) * 99 / 100],
        peer[peer.len() - 1]
    );
    println!(
        "| enqueue → completion p50 / p99 / max | {} / {} / {} ms |",
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    println!(
        "| memory stalls during the latency run / the peer's run: 5 ms windows with loads {STALL}× slower than usual (longest stretch) | {stalls} / {peer_stalls} |"
    );
}

/// The peer for the latency run: the same pace of single messages through
/// the same two durable steps per message as a queue-triggered job whose
/// binding is waiting for work (enqueue and lease in one commit; delete plus
/// a reply row in the next), each step a group commit on SQLite with the
/// store's settings (WAL, `synchronous=FULL`), on one thread, with no wasm,
/// async runtime or queue logic. Its p99 is what the machine's CPU and disk
/// allow a durable pipeline at this pace; returns the sorted latencies
/// (send → the commit of the second step, one commit more than fnhost's
/// figure, which ends when the reply's batch starts), in ms.
fn durable_peer(dir: &std::path::Path, rate: f64, m: usize) -> Vec<u64> {
    let conn = rusqlite::Connection::open(dir.join("peer.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE m (seq INTEGER PRIMARY KEY, body BLOB NOT NULL, leased INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE replies (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);",
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(i64, Instant)>();
    let writer = std::thread::spawn(move || {
        let mut conn = conn;
        let mut latencies = Vec::with_capacity(m);
        // Messages stored and leased, waiting for their second step.
        let mut leased: Vec<(i64, Instant)> = Vec::new();
        while latencies.len() < m {
            let mut incoming = Vec::new();
            if leased.is_empty() {
                match rx.recv() {
                    Ok(x) => incoming.push(x),
                    Err(_) => break,
                }
            }
            incoming.extend(rx.try_iter().take(2048));
            let t = conn.transaction().unwrap();
            for (seq, _) in &incoming {
                t.execute(
                    "INSERT INTO m (seq, body, leased) VALUES (?1, x'00', 1)",
                    [seq],
                )
                .unwrap();
            }
            for (seq, _) in &leased {
                t.execute("DELETE FROM m WHERE seq = ?1", [seq]).unwrap();
                t.execute("INSERT INTO replies (seq, body) VALUES (?1, x'00')", [seq])
                    .unwrap();
            }
            t.commit().unwrap();
            for (_, sent) in leased.drain(..) {
                latencies.push(sent.elapsed().as_millis() as u64);
            }
            leased = incoming;
        }
        latencies
    });
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for i in 0..m {
        let due = start + gap.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        tx.send((i as i64, Instant::now())).unwrap();
    }
    drop(tx);
    let mut latencies = writer.join().unwrap();
    latencies.sort_unstable();
    latencies
}

/// How much slower than its run's median a probe window must be to count
/// as a memory stall.
const STALL: f64 = 2.5;

/// The probe's 64 MiB cycle (16 Mi slots of 4 bytes), far past the caches.
fn probe_cycle() -> Arc<Vec<u32>> {
    Arc::new(random_cycle(16 << 20))
}

/// A single random cycle through `n` slots (Sattolo's shuffle, xorshift
/// for the draws): following it misses the caches at every step.
fn random_cycle(n: usize) -> Vec<u32> {
    let mut next: Vec<u32> = (0..n as u32).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        next.swap(i, (x % i as u64) as usize);
    }
    next
}

/// A memory-latency probe on its own thread. This VM shares its host's
/// memory with other tenants, whose traffic now and then slows cache
/// misses several-fold for tens of ms while plain arithmetic runs at full
/// speed; SQLite's B-tree walks and the sandbox's instance set-up are made
/// of such misses. Every 5 ms the probe follows 256 steps of a 64 MiB
/// random cycle and times them by its own thread's CPU time (so waiting
/// for a CPU does not count), about 1% of one CPU; a window more than
/// [`STALL`] times slower than the run's median is a stall.
struct StallProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl StallProbe {
    fn start(cycle: Arc<Vec<u32>>) -> StallProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut per_step = Vec::new();
            let mut at = 0u32;
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let t = own_cpu_ns();
                for _ in 0..256 {
                    at = cycle[at as usize];
                }
                per_step.push((own_cpu_ns() - t) as f64 / 256.0);
                std::hint::black_box(at);
                std::thread::sleep(Duration::from_millis(5));
            }
            per_step
        });
        StallProbe { stop, thread }
    }

    /// Stop it; "N (longest M ms)": the stalled windows and the longest
    /// stretch of them in a row.
    fn stop(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let per_step = self.thread.join().unwrap();
        let mut sorted = per_step.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        let (mut stalled, mut run, mut longest) = (0, 0, 0);
        for &ns in &per_step {
            if ns > STALL * median {
                stalled += 1;
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
        format!("{stalled} (longest {} ms)", longest * 5)
    }
}

/// This thread's CPU time in ns.
fn own_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU seconds used by the process's threads, by kind (from `/proc`, Linux).
#[derive(Default)]
struct Cpu {
    writer: f64,
    workers: f64,
    other: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.writer + self.workers + self.other
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            writer: self.writer - before.writer,
            workers: self.workers - before.workers,
            other: self.other - before.other,
        }
    }
}

fn thread_cpu() -> Cpu {
    let mut cpu = Cpu::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ..." — comm may hold spaces; fields follow the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after comm and state.
        let ticks: f64 =
            fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
        let secs = ticks / 100.0; // USER_HZ
        if comm.starts_with("fnhost-queue") {
            cpu.writer += secs;
        } else if comm.starts_with("tokio-rt-worker") {
            cpu.workers += secs;
        } else {
            cpu.other += secs;
        }
    }
    cpu
}
