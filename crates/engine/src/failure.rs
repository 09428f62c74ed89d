//! How a step fails: at run time ([`StepError`], retryable or not, with a hint for the
//! operator) or when its config does not fit its kind ([`ConfigError`]).

/// Why a step failed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub message: String,
    /// Transient (network, lock wait, throttling): the engine retries per the step's policy.
    pub retryable: bool,
    /// What the operator should do next, shown under the error.
    pub hint: Option<String>,
    /// The step failed but the run does not, as with `continue_on_error`, decided by the
    /// step (a notification that could not be sent after its retries).
    pub advisory: bool,
}

impl StepError {
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            hint: None,
            advisory: false,
        }
    }
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            hint: None,
            advisory: false,
        }
    }
    /// Marks the failure as not failing the run (see [`StepError::advisory`]).
    pub fn advisory(mut self) -> Self {
        self.advisory = true;
        self
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    pub fn cancelled() -> Self {
        Self::fatal("cancelled")
    }
}

/// A config that does not fit its step kind; `path` is relative to `with`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}
