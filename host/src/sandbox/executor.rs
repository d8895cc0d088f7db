//! The executor of this process: runs executions in the [`Sandbox`], under
//! the host-wide cap on invocations at once, shared fairly between
//! functions ([`Slots`]), with the components it has
//! prepared (or, for one it has not, its [`Components`]' copy, compiled on
//! first use). Its granted calls go to the host's [`Stores`].

use super::{Loaded, Sandbox, Stores};
use crate::exec::slots::Slots;
use crate::exec::{
    Busy, Components, Execution, Executor, Failure, LoadError, Outcome, Reporter, SeamError,
    TrapReason, Wait,
};
use crate::task::{BoxFuture, blocking};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Runs executions in this process's sandbox.
pub struct LocalExecutor {
    sandbox: Arc<Sandbox>,
    components: Arc<dyn Components>,
    stores: Stores,
    /// Components by digest, compiled and checked.
    loaded: RwLock<HashMap<String, Loaded>>,
    /// The instance slots, shared between functions.
    slots: Slots,
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
            slots: Slots::new(max_concurrency),
        }
    }

    /// The sandbox it runs in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
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
            .map_err(|e| LoadError::Store(e.to_string()))?;
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
            let _slot = self
                .slots
                .acquire(&execution.profile.function, wait)
                .await?;
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
                        peak_memory_bytes: 0,
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
        self.slots.in_use()
    }
}

/// The registry keeps the components this process runs.
impl Components for crate::registry::Registry {
    fn component(&self, digest: &str) -> BoxFuture<'_, Result<Vec<u8>, SeamError>> {
        let path = self.component_path(digest);
        Box::pin(async move {
            tokio::fs::read(&path).await.map_err(|e| {
                SeamError::caused_by(format_args!("cannot read the component {path:?}"), e)
            })
        })
    }
}
