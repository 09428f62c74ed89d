//! The plan model: what a plan file says, after parsing and before rendering.

use serde::Serialize;
use std::time::Duration;

/// Supported plan format versions.
pub const PLAN_VERSION: u64 = 1;

/// A parsed plan. Names keep their file order (params, secrets, connections, steps).
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: String,
    pub name: String,
    pub description: Option<String>,
    pub params: Vec<ParamSpec>,
    pub secrets: Vec<SecretSpec>,
    pub connections: Vec<ConnectionSpec>,
    pub defaults: StepDefaults,
    pub max_parallel: usize,
    pub fail_fast: bool,
    pub steps: Vec<StepSpec>,
}

impl Plan {
    pub fn step(&self, id: &str) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.id == id)
    }
    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
    pub fn secret(&self, name: &str) -> Option<&SecretSpec> {
        self.secrets.iter().find(|s| s.name == name)
    }
    pub fn connection(&self, name: &str) -> Option<&ConnectionSpec> {
        self.connections.iter().find(|c| c.name == name)
    }
}

/// The type of a plan parameter; `--set` values and defaults are checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Integer,
    Boolean,
    Path,
    Duration,
    Size,
}

impl ParamType {
    pub const ALL: [(&'static str, ParamType); 6] = [
        ("string", ParamType::String),
        ("integer", ParamType::Integer),
        ("boolean", ParamType::Boolean),
        ("path", ParamType::Path),
        ("duration", ParamType::Duration),
        ("size", ParamType::Size),
    ];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    pub fn with_article(self) -> String {
        match self {
            ParamType::Integer => "an integer".into(),
            other => format!("a {}", other.name()),
        }
    }

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .unwrap_or("string")
    }
}

#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    /// Already checked against `ty` (see `params::coerce`).
    pub default: Option<serde_json::Value>,
    pub required: bool,
    pub description: Option<String>,
    /// Path of this param in the file, for diagnostics.
    pub path: String,
}

/// Where a secret's value comes from. Only the source is ever printed, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    Env(String),
    File(String),
}

#[derive(Debug, Clone)]
pub struct SecretSpec {
    pub name: String,
    pub source: SecretSource,
    pub optional: bool,
    pub path: String,
}

/// A named resource owned by the run (a server session). Its fields are opaque to the
/// engine: the connection provider validates and opens them.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    pub name: String,
    pub config: serde_json::Value,
    pub path: String,
}

/// When a step runs, given how its needs ended and whether the run has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum When {
    #[default]
    Success,
    Failure,
    Always,
}

impl When {
    pub const ALL: [(&'static str, When); 3] = [
        ("success", When::Success),
        ("failure", When::Failure),
        ("always", When::Always),
    ];
}

/// Exponential backoff with optional full jitter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(with = "crate::model::duration_text")]
    pub backoff: Duration,
    #[serde(with = "crate::model::duration_text")]
    pub max_backoff: Duration,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            jitter: true,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StepDefaults {
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct StepSpec {
    pub id: String,
    pub uses: String,
    pub name: Option<String>,
    pub needs: Vec<String>,
    pub when: When,
    /// The step kind's config, still with templates in it.
    pub with: serde_json::Value,
    pub background: bool,
    pub until: Option<String>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    /// A failure of this step is reported but does not fail the run.
    pub continue_on_error: bool,
    /// `if`: a boolean or a template rendered when the step could start; false skips it.
    pub condition: Option<serde_json::Value>,
    /// Path of this step in the file (`steps[3]`), for diagnostics.
    pub path: String,
}

/// Durations as people write them ("2s", "1m 30s"), via humantime.
pub mod duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Optional durations for step configs (`timeout: 30s`).
pub mod opt_duration_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_text::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}
