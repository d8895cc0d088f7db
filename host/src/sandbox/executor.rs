//! The executor of this process: runs executions in the [`Sandbox`], under
//! the host-wide cap on invocations at once, with the components it has
//! prepared (or, for one it has not, its [`Components`]' copy, compiled on
//! first use). Its granted calls go to the host's [`Stores`].

use super::{Loaded, Sandbox, Stores};
use crate::exec::{
    Busy, Components, Execution, Executor, Failure, LoadError, Outcome, Reporter, TrapReason, Wait,
};
use crate::task::{BoxFuture, blocking};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Runs executions in this process's sandbox.
pub struct LocalExecutor {
    sandbox: Arc<Sandbox>,
    components: Arc<dyn Components>,
    stores: Stores,
    /// Components by digest, compiled and checked.
    loaded: RwLock<HashMap<String, Loaded>>,
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    /// Callers waiting for a permit with [`Wait::AtMost`].
    waiting: AtomicUsize,
}

impl LocalExecutor {
    /// An executor running at most `max_concurrency` invocations at once,
    /// finding components it was not handed in `components`.
    pub fn new(
        sandbox: Arc<Sandbox>,
        components: Arc<dyn Components>,
        stores: Stores,
        max_concurrency: usize,
    ) -> LocalExecutor {
        LocalExecutor {
            sandbox,
            components,
            stores,
            loaded: RwLock::default(),
            permits: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            waiting: AtomicUsize::new(0),
        }
    }

    /// The sandbox it runs in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// A permit to run, as `wait` allows.
    async fn permit(&self, wait: Wait) -> Result<OwnedSemaphorePermit, Busy> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if let Wait::AtMost(max) = wait {
            if self.waiting.fetch_add(1, Ordering::SeqCst) >= max {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                return Err(Busy { waiting: max });
            }
            let permit = self.permits.clone().acquire_owned().await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Ok(permit.expect("the semaphore is never closed"));
        }
        Ok(self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed"))
    }

    /// The compiled component of `digest`: prepared, or the registry's copy
    /// compiled now.
    async fn loaded(&self, digest: &str) -> Result<Loaded, LoadError> {
        if let Some(l) = self.loaded.read().unwrap().get(digest) {
            return Ok(l.clone());
        }
        let wasm = self
            .components
            .component(digest)
            .await
            .map_err(LoadError::Store)?;
        let sandbox = self.sandbox.clone();
        let expected = digest.to_string();
        // What runs under a digest is what hashes to it, whoever handed the
        // bytes over (the trusted worker gets them from the host process).
        let loaded = blocking(move || {
            let actual = crate::files::sha256_hex(&wasm);
            if actual != expected {
                return Err(LoadError::Store(format!(
                    "the component's bytes hash to {actual}, not to its digest {expected}"
                )));
            }
            sandbox.load(&wasm)
        })
        .await?;
        self.loaded
            .write()
            .unwrap()
            .insert(digest.to_string(), loaded.clone());
        Ok(loaded)
    }
}

impl Executor for LocalExecutor {
    fn prepare(&self, wasm: Vec<u8>) -> BoxFuture<'_, Result<String, LoadError>> {
        Box::pin(async move {
            let sandbox = self.sandbox.clone();
            let (digest, loaded) = blocking(move || {
                let digest = crate::files::sha256_hex(&wasm);
                sandbox.load(&wasm).map(|l| (digest, l))
            })
            .await?;
            self.loaded.write().unwrap().insert(digest.clone(), loaded);
            Ok(digest)
        })
    }

    fn execute(
        &self,
        execution: Execution,
        reporter: Option<Arc<dyn Reporter>>,
        wait: Wait,
    ) -> BoxFuture<'_, Result<Outcome, Busy>> {
        Box::pin(async move {
            let _permit = self.permit(wait).await?;
            tracing::debug!("invocation started");
            let Execution {
                profile,
                invocation,
                event,
            } = execution;
            let loaded = match self.loaded(&profile.digest).await {
                Ok(l) => l,
                Err(e) => {
                    return Ok(Outcome {
                        result: Err(Failure::Trap(TrapReason::Host(e.to_string()))),
                        fuel_used: 0,
                        elapsed: std::time::Duration::ZERO,
                        progress: None,
                        logs: Default::default(),
                    });
                }
            };
            Ok(self
                .sandbox
                .invoke(
                    &loaded,
                    profile,
                    self.stores.clone(),
                    invocation,
                    event,
                    reporter,
                )
                .await)
        })
    }

    fn in_flight(&self) -> usize {
        self.max_concurrency
            .saturating_sub(self.permits.available_permits())
    }
}

/// The registry keeps the components this process runs.
impl Components for crate::registry::Registry {
    fn component(&self, digest: &str) -> BoxFuture<'_, Result<Vec<u8>, String>> {
        let path = self.component_path(digest);
        Box::pin(async move {
            tokio::fs::read(&path)
                .await
                .map_err(|e| format!("cannot read the component {path:?}: {e}"))
        })
    }
}
