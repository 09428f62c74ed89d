//! Connections: named resources owned by a run. Steps that name the same connection share
//! one open session (a server's backup locks belong to a session). The engine does not
//! know what a connection is; a [`ConnectionProvider`] from the step crate opens them.

use crate::failure::{ConfigError, StepError};
use async_trait::async_trait;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::Mutex;

pub type Handle = Arc<dyn Any + Send + Sync>;

#[async_trait]
pub trait ConnectionProvider: Send + Sync {
    /// JSON Schema of a connection's mapping.
    fn schema(&self) -> serde_json::Value;
    /// Checks a connection's config (templates already rendered with samples).
    fn check(&self, config: &serde_json::Value) -> Result<(), ConfigError>;
    /// One sentence for the dry-run.
    fn describe(&self, config: &serde_json::Value) -> String;
    async fn open(&self, name: &str, config: &serde_json::Value) -> Result<Handle, StepError>;
    async fn close(&self, handle: Handle);
}

struct Inner {
    provider: Option<Arc<dyn ConnectionProvider>>,
    configs: BTreeMap<String, serde_json::Value>,
    open: Mutex<HashMap<String, Handle>>,
}

/// The run's connections: opened lazily on first use, closed at the end of the run.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<Inner>,
}

impl Connections {
    pub fn new(
        provider: Option<Arc<dyn ConnectionProvider>>,
        configs: BTreeMap<String, serde_json::Value>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider,
                configs,
                open: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn empty() -> Self {
        Self::new(None, BTreeMap::new())
    }

    /// The (rendered) config of connection `name` and the provider that opens it.
    fn config_and_provider(
        &self,
        name: &str,
    ) -> Result<(&serde_json::Value, &Arc<dyn ConnectionProvider>), StepError> {
        let config =
            self.inner.configs.get(name).ok_or_else(|| {
                StepError::fatal(format!("no connection named `{name}` in the plan"))
            })?;
        let provider = self
            .inner
            .provider
            .as_ref()
            .ok_or_else(|| StepError::fatal("this run has no connection provider"))?;
        Ok((config, provider))
    }

    /// The shared session for `name`, opening it on first use.
    pub async fn get(&self, name: &str) -> Result<Handle, StepError> {
        let mut open = self.inner.open.lock().await;
        if let Some(h) = open.get(name) {
            return Ok(h.clone());
        }
        let (config, provider) = self.config_and_provider(name)?;
        let handle = provider.open(name, config).await?;
        open.insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    /// Like [`get`](Self::get), downcast to the provider's session type.
    pub async fn get_as<T: Any + Send + Sync>(&self, name: &str) -> Result<Arc<T>, StepError> {
        let handle = self.get(name).await?;
        handle.downcast::<T>().map_err(|_| {
            StepError::fatal(format!("connection `{name}` is not of the expected kind"))
        })
    }

    /// A new session of connection `name`, not shared with other steps: for a step that
    /// needs the server while the shared session is busy (holding or waiting for a
    /// lock). The caller closes it with [`close_private`](Self::close_private).
    pub async fn open_private(&self, name: &str) -> Result<Handle, StepError> {
        let (config, provider) = self.config_and_provider(name)?;
        provider.open(name, config).await
    }

    pub async fn close_private(&self, handle: Handle) {
        if let Some(p) = self.inner.provider.as_ref() {
            p.close(handle).await;
        }
    }

    /// Whether `name` has been opened in this run.
    pub async fn is_open(&self, name: &str) -> bool {
        self.inner.open.lock().await.contains_key(name)
    }

    /// Closes one session (for example after a cancelled statement left it in an unknown
    /// state); the next `get` opens a new one.
    pub async fn discard(&self, name: &str) {
        let handle = self.inner.open.lock().await.remove(name);
        if let (Some(h), Some(p)) = (handle, self.inner.provider.as_ref()) {
            p.close(h).await;
        }
    }

    /// Closes every open session (end of run; also releases any server locks they hold).
    pub async fn close_all(&self) {
        let handles: Vec<Handle> = self
            .inner
            .open
            .lock()
            .await
            .drain()
            .map(|(_, h)| h)
            .collect();
        if let Some(p) = self.inner.provider.as_ref() {
            for h in handles {
                p.close(h).await;
            }
        }
    }
}
