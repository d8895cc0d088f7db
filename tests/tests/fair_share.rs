//! A hostile client against the host's shared instances: a flood of
//! requests to one slow function takes at most its share of the instances
//! and of the line for one, and a neighbour function keeps answering (see
//! "Fair share" in the README).

use fnhost_tests::{Host, guests};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// The adversary under `name`, on `/<name>/{mode}`.
fn adversary(name: &str) -> String {
    format!("name = \"{name}\"\n[[triggers.http]]\npath = \"/{name}/{{mode}}\"\n")
}

/// Raised when dropped, so the flood stops however the test ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_flood_of_one_function_leaves_its_neighbour_answering() {
    let g = guests();
    let host = Host::start_with(&["--max-concurrency", "4", "--max-pending-requests", "8"]);
    host.deploy_ok(&adversary("flood"), &g.adversary);
    host.deploy_ok(&adversary("adv"), &g.adversary);
    let stop = AtomicBool::new(false);
    let (served, busy) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let busy_messages = Mutex::new(BTreeSet::new());
    let neighbour = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // 24 clients, each asking again as soon as it is answered: more
        // than the 4 instances and the line of 8 hold.
        for _ in 0..24 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let r = host.get("/flood/busy-300");
                    match r.status {
                        200 => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        503 => {
                            busy.fetch_add(1, Ordering::SeqCst);
                            let message = r.json()["error"]["message"].to_string();
                            busy_messages.lock().unwrap().insert(message);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        other => panic!("the flood got {other}: {}", r.text()),
                    }
                }
            });
        }
        host.wait_for(60, "the flood to fill its share of the line", |_| {
            (busy.load(Ordering::SeqCst) > 0).then_some(())
        });
        // While the flood goes on, the neighbour's requests are all served.
        let before = busy.load(Ordering::SeqCst);
        let answers: Vec<(u16, String)> = (0..10)
            .map(|_| {
                let r = host.get("/adv/ok");
                (r.status, r.text())
            })
            .collect();
        assert!(
            busy.load(Ordering::SeqCst) > before,
            "the flood went on meanwhile"
        );
        answers
    });
    assert_eq!(neighbour, vec![(200, "ok".to_string()); 10]);
    // The flood got its share: some of its requests were served, the rest
    // told the function's share of the line is full.
    assert!(served.load(Ordering::SeqCst) > 0);
    let messages = busy_messages.into_inner().unwrap();
    assert!(
        messages.iter().all(|m| m.contains(
            "this function's share of the line for one is full: 4 of its requests already wait (of 8 places"
        ) && m.contains("retry in a moment")),
        "{messages:?}"
    );
}
