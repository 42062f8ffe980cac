//! The request and response of `POST /api/inject/v1`, compatible with KumoMTA's inject v1
//! (`envelope_sender`, `recipients`, `substitutions`, `content` as a string or a builder
//! object), plus sluice's `campaign`, `tenant` and `meta`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    pub envelope_sender: String,
    pub recipients: Vec<RecipientSpec>,
    /// An RFC 5322 message (string) or a [`Builder`] object; decided in [`Content::from_value`].
    pub content: Value,
    /// Template variables for every recipient (a recipient's own win).
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    /// "Jinja" (the default) or "Static" (no templating), as KumoMTA.
    pub template_dialect: Option<String>,
    /// KumoMTA's asynchronous generation; sluice generates before it answers, so only `false`.
    pub deferred_generation: Option<bool>,
    pub campaign: Option<String>,
    pub tenant: Option<String>,
    /// Any JSON, kept with the message and written to the delivery log.
    pub meta: Option<Value>,
    /// The egress pool to send from (a `[[pool]]` name); absent: by tenant, route or default.
    pub pool: Option<String>,
    /// `transactional` (ahead of bulk at each destination) or `bulk`; absent: the tenant's.
    pub priority: Option<String>,
    /// Add one-click `List-Unsubscribe` fields (when `[unsubscribe] enabled`; default true).
    pub list_unsubscribe: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipientSpec {
    pub email: String,
    pub name: Option<String>,
    #[serde(default)]
    pub substitutions: Map<String, Value>,
}

/// `content` as a builder object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    pub from: Option<Party>,
    pub subject: Option<String>,
    pub reply_to: Option<Party>,
    /// Extra header fields (templated), e.g. `List-Unsubscribe`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Party {
    pub email: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub data: String,
    /// `data` is base64 (otherwise it is the content as text).
    #[serde(default)]
    pub base64: bool,
    pub content_type: String,
    /// Makes it an inline part (`Content-ID`), referenced as `cid:` from the HTML.
    pub content_id: Option<String>,
    pub file_name: Option<String>,
}

/// The message content.
#[derive(Debug, Clone)]
pub enum Content {
    Raw(String),
    Builder(Builder),
}

impl Content {
    /// A string is a whole message; an object is built. Errors name the field.
    pub fn from_value(v: Value) -> Result<Content, String> {
        match v {
            Value::String(s) => Ok(Content::Raw(s)),
            Value::Object(_) => serde_path_to_error::deserialize(v)
                .map(Content::Builder)
                .map_err(|e| format!("content.{}: {}", e.path(), e.inner())),
            _ => Err("content: must be a string (a whole message) or an object (built)".into()),
        }
    }
}

/// The answer: KumoMTA's four fields, plus each stored message's queue id.
#[derive(Debug, Default, Serialize)]
pub struct InjectResponse {
    pub success_count: usize,
    pub fail_count: usize,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
    pub messages: Vec<Stored>,
}

#[derive(Debug, Serialize)]
pub struct Stored {
    pub recipient: String,
    pub id: String,
}
