//! One XBackend's verdict and the status list to store, from the index and the
//! objects its references point at. `run` and `analyze` share this step.

use crate::conditions::Verdict;
use crate::index::Index;
use crate::model::ObjectRef;
use crate::status::{self, EventNote, Fetched, MergeOutcome, Shape, Verdicts};
use crate::validate::Policy;

pub struct Judgement {
    pub ancestors: Vec<ObjectRef>,
    pub verdicts: Verdicts,
    pub merged: MergeOutcome,
    /// Events to record: rejections, insecure backends, truncation.
    pub notes: Vec<EventNote>,
}

/// Everything a caller passes in besides the index.
pub struct Inputs<'a> {
    pub policy: &'a Policy,
    pub controller_name: &'a str,
    pub shape: Shape,
    /// The stored status list (`status.<shape.list_field()>`), any JSON.
    pub current: &'a [serde_json::Value],
    /// RFC 3339 time for conditions that are new or flip.
    pub now: &'a str,
}

/// None when the index has no such XBackend.
pub fn judge(index: &Index, key: &ObjectRef, fetched: &Fetched, inputs: &Inputs<'_>) -> Option<Judgement> {
    let backend = index.backend(key)?;
    let ancestors = index.ancestors(key);
    let verdicts = status::evaluate(key, backend, index, fetched, inputs.policy);
    let merged = status::merge(
        inputs.current,
        inputs.shape,
        inputs.controller_name,
        backend.generation,
        &ancestors,
        &verdicts,
        inputs.now,
    );
    let mut notes = status::events(backend, &verdicts);
    if merged.truncated > 0 {
        notes.push(EventNote {
            warning: true,
            reason: status::ANCESTORS_TRUNCATED_REASON,
            message: format!(
                "status.{} is capped at {} entries shared by all controllers: {} of this controller's Gateway entries were left out.",
                inputs.shape.list_field(),
                crate::api::MAX_ANCESTORS,
                merged.truncated
            ),
        });
    }
    Some(Judgement { ancestors, verdicts, merged, notes })
}

impl Judgement {
    /// True when the XBackend passes validation and guardrails and resolves its references.
    pub fn is_clean(&self) -> bool {
        self.verdicts.accepted.status && self.verdicts.resolved_refs.status
    }

    pub fn conditions(&self) -> [&Verdict; 2] {
        [&self.verdicts.accepted, &self.verdicts.resolved_refs]
    }
}

/// Now as RFC 3339 with second precision, the form metav1.Time uses.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
