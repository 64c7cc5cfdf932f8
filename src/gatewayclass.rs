//! The status of our own GatewayClasses (docs/design.md §6): `Accepted=True`
//! at the class's generation, written once and again only when it changes.
//! Pure: the runtime's class writer (`runtime/class_writer.rs`) calls it.

use serde_json::{Value, json};

use crate::conditions;
use crate::decode::Watched;
use crate::status::condition;

/// What the decision needs of one GatewayClass.
#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    pub generation: i64,
    pub resource_version: String,
    pub controller_name: String,
    /// The stored `status` (Null when absent).
    pub status: Value,
}

impl Class {
    pub fn from_watched(object: &Watched) -> Result<Class, String> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Spec {
            #[serde(default)]
            controller_name: String,
        }
        let spec: Spec = match object.spec.as_deref() {
            Some(spec) => serde_json::from_str(spec.get()).map_err(|e| format!("spec does not decode: {e}"))?,
            None => Spec { controller_name: String::new() },
        };
        let status = match object.status.as_deref() {
            Some(status) => serde_json::from_str(status.get()).map_err(|e| format!("status does not decode: {e}"))?,
            None => Value::Null,
        };
        Ok(Class {
            generation: object.metadata.generation.unwrap_or(0),
            resource_version: object.metadata.resource_version.clone().unwrap_or_default(),
            controller_name: spec.controller_name,
            status,
        })
    }
}

/// The merge patch that makes `class` Accepted, or None when it is not ours
/// or already says so at its generation (any lastTransitionTime). Other
/// condition types are kept; the resourceVersion precondition makes a
/// concurrent change a conflict instead of a lost write.
pub fn patch(class: &Class, controller_name: &str, now: &str) -> Option<Value> {
    if class.controller_name != controller_name {
        return None;
    }
    let verdict = conditions::class_accepted();
    let wanted = condition(&verdict, class.generation, Some(&class.status), now);
    let stored = class.status.get("conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let same = |c: &Value| {
        ["type", "status", "reason", "message", "observedGeneration"]
            .iter()
            .all(|field| c.get(field) == wanted.get(field))
    };
    if stored.iter().any(same) {
        return None;
    }
    let mut conditions: Vec<Value> =
        stored.into_iter().filter(|c| c.get("type").and_then(Value::as_str) != Some(verdict.type_)).collect();
    conditions.push(wanted);
    Some(json!({
        "metadata": {"resourceVersion": class.resource_version},
        "status": {"conditions": conditions},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "example.com/ours";

    fn class(controller: &str, generation: i64, status: Value) -> Class {
        Class { generation, resource_version: "7".into(), controller_name: controller.into(), status }
    }

    #[test]
    fn our_class_is_accepted_once_per_generation() {
        let fresh = class(OURS, 1, Value::Null);
        let patch = patch(&fresh, OURS, "2030-01-01T00:00:00Z").expect("a first write");
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let accepted = &patch["status"]["conditions"][0];
        assert_eq!(
            (&accepted["type"], &accepted["status"], &accepted["reason"]),
            (&json!("Accepted"), &json!("True"), &json!("Accepted"))
        );
        assert_eq!(accepted["observedGeneration"], 1);

        let written = class(OURS, 1, patch["status"].clone());
        assert_eq!(
            super::patch(&written, OURS, "2031-01-01T00:00:00Z"),
            None,
            "written: nothing to do, whatever the clock"
        );

        let newer = class(OURS, 2, patch["status"].clone());
        let again = super::patch(&newer, OURS, "2031-01-01T00:00:00Z").expect("a new generation");
        assert_eq!(again["status"]["conditions"][0]["observedGeneration"], 2);
        assert_eq!(
            again["status"]["conditions"][0]["lastTransitionTime"], "2030-01-01T00:00:00Z",
            "still True: same transition"
        );
    }

    #[test]
    fn other_controllers_classes_are_never_touched_and_other_conditions_are_kept() {
        assert_eq!(patch(&class("example.com/theirs", 1, Value::Null), OURS, "now"), None);
        let pending = json!({"conditions": [
            {"type": "Accepted", "status": "Unknown", "reason": "Pending", "message": "Waiting for controller", "observedGeneration": 1, "lastTransitionTime": "1970-01-01T00:00:00Z"},
            {"type": "SupportedVersion", "status": "True", "reason": "SupportedVersion", "message": "", "observedGeneration": 1, "lastTransitionTime": "1970-01-01T00:00:00Z"},
        ]});
        let patch = patch(&class(OURS, 1, pending), OURS, "2030-01-01T00:00:00Z").unwrap();
        let types: Vec<&Value> = patch["status"]["conditions"].as_array().unwrap().iter().map(|c| &c["type"]).collect();
        assert_eq!(types, [&json!("SupportedVersion"), &json!("Accepted")]);
        assert_eq!(
            patch["status"]["conditions"][1]["lastTransitionTime"], "2030-01-01T00:00:00Z",
            "Unknown -> True is a transition"
        );
    }
}
