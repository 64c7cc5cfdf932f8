//! Pure status computation: verdicts for an XBackend, the entries this
//! controller wants, and their merge into the stored (shared, atomic) list.

use serde_json::{Map, Value, json};

use crate::api::{GATEWAY_GROUP, MAX_ANCESTORS};
use crate::conditions::{Verdict, reason};
pub use crate::model::Shape;
use crate::model::{Backend, ObjectRef};
use crate::validate;
use crate::verdict::Verdicts;

/// Event reason for an XBackend whose traffic would be clear text.
pub const INSECURE_REASON: &str = "Insecure";
/// Event reason when the cap on ancestor entries leaves some of ours out.
pub const ANCESTORS_TRUNCATED_REASON: &str = "AncestorsTruncated";
/// The API's limit on a condition message, in bytes.
const MAX_MESSAGE_BYTES: usize = 32768;

/// A Warning or Normal Event to record on the XBackend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNote {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Events for rejections (Invalid, HostnameNotAllowed, TLSRequired) and for
/// insecure (no TLS) backends: a Warning with reason `Insecure`, left out when
/// TLSRequired already says the same.
pub fn events(backend: &Backend, verdicts: &Verdicts) -> Vec<EventNote> {
    let mut notes = Vec::new();
    let accepted = &verdicts.accepted;
    if !accepted.status {
        notes.push(EventNote { warning: true, reason: accepted.reason, message: accepted.message.clone() });
    }
    // In-cluster Pods (EndpointSelector) are the mesh's or the network's business.
    if let Ok(spec) = &backend.spec
        && let Some(external) = &spec.external_hostname
        && accepted.reason != reason::TLS_REQUIRED
        && validate::is_insecure(spec)
    {
        let port = spec.port.value().map(|p| p.to_string()).unwrap_or_default();
        let destination = format!("{}:{port}", external.hostname);
        notes.push(EventNote {
            warning: true,
            reason: INSECURE_REASON,
            message: format!(
                "Traffic to {destination} is sent in clear text because spec.tls is absent or its mode is None; set spec.tls.mode to ServerOnly or ClientAndServer."
            ),
        });
    }
    notes
}

/// The result of merging our desired entries into the stored list.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeOutcome {
    /// The full list to store (foreign entries untouched, in place).
    pub list: Vec<serde_json::Value>,
    /// False when `list` equals the stored one ignoring order and timestamps:
    /// nothing to write.
    pub changed: bool,
    /// How many of our entries the cap of 32 left out.
    pub truncated: usize,
}

/// Merges this controller's entries for `ancestors` (each Gateway with its
/// verdicts) into `current`
/// (the stored list, any JSON). `now` is an RFC 3339 timestamp used only for
/// conditions whose status flips or that are new.
///
/// Layout of the result: entries of other controllers (anything whose
/// `controllerName` is not ours, malformed ones included) byte-for-byte and in
/// their relative order, then ours sorted by namespace and name, one per
/// ancestor. Ours go last because the cap keeps foreign entries first; since
/// `changed` ignores order, a list whose only difference is order is never rewritten.
/// When foreign entries alone reach the cap, none of ours are written.
pub fn merge(
    current: &[serde_json::Value],
    shape: Shape,
    controller_name: &str,
    generation: i64,
    ancestors: &[(&ObjectRef, &Verdicts)],
    now: &str,
) -> MergeOutcome {
    let is_ours = |entry: &Value| entry.get("controllerName").and_then(Value::as_str) == Some(controller_name);
    let mut list: Vec<Value> = current.iter().filter(|entry| !is_ours(entry)).cloned().collect();
    let previous: Vec<&Value> = current.iter().filter(|entry| is_ours(entry)).collect();

    let mut wanted: Vec<(&ObjectRef, &Verdicts)> = ancestors.to_vec();
    wanted.sort_by_key(|(gateway, _)| *gateway);
    wanted.dedup_by_key(|(gateway, _)| *gateway);
    let kept = wanted.len().min(MAX_ANCESTORS.saturating_sub(list.len()));
    let truncated = wanted.len() - kept;

    for (gateway, verdicts) in wanted.into_iter().take(kept) {
        let before = previous.iter().copied().find(|entry| names_gateway(entry, shape, gateway));
        let conditions: Vec<Value> = [&verdicts.accepted, &verdicts.resolved_refs]
            .into_iter()
            .map(|verdict| condition(verdict, generation, before, now))
            .collect();
        let mut entry = Map::new();
        entry.insert(
            shape.ref_field().to_string(),
            json!({"group": GATEWAY_GROUP, "kind": "Gateway", "namespace": &*gateway.namespace, "name": &*gateway.name}),
        );
        entry.insert("controllerName".to_string(), Value::from(controller_name));
        entry.insert("conditions".to_string(), Value::Array(conditions));
        list.push(Value::Object(entry));
    }

    let changed = !same_multiset(current, &list, same_entry);
    MergeOutcome { list, changed, truncated }
}

/// Whether a stored entry of ours is about `gateway` (group and kind defaulted as in a ParentReference).
fn names_gateway(entry: &Value, shape: Shape, gateway: &ObjectRef) -> bool {
    let Some(reference) = entry.get(shape.ref_field()) else {
        return false;
    };
    let field = |name: &str| reference.get(name).and_then(Value::as_str);
    field("group").unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && field("kind").unwrap_or("Gateway") == "Gateway"
        && field("namespace") == Some(&*gateway.namespace)
        && field("name") == Some(&*gateway.name)
}

/// One condition; keeps the stored lastTransitionTime while the status holds.
pub(crate) fn condition(verdict: &Verdict, generation: i64, before: Option<&Value>, now: &str) -> Value {
    let status = verdict.status_str();
    let last_transition = before
        .and_then(|entry| entry.get("conditions")?.as_array())
        .and_then(|conditions| conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(verdict.type_)))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime")?.as_str())
        .unwrap_or(now);
    json!({
        "type": verdict.type_,
        "status": status,
        "reason": verdict.reason,
        "message": clip(&verdict.message, MAX_MESSAGE_BYTES),
        "observedGeneration": generation,
        "lastTransitionTime": last_transition,
    })
}

/// The API rejects longer messages, which would block the whole status write.
fn clip(message: &str, max_bytes: usize) -> &str {
    if message.len() <= max_bytes {
        return message;
    }
    let mut end = max_bytes;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Equal as multisets under `same`, which must be an equivalence.
fn same_multiset(a: &[Value], b: &[Value], same: fn(&Value, &Value) -> bool) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let found = b.iter().enumerate().find(|(i, y)| !used[*i] && same(x, y)).map(|(i, _)| i);
        found.inspect(|i| used[*i] = true).is_some()
    })
}

/// Entry equality ignoring condition order and lastTransitionTime.
fn same_entry(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter().all(|(key, x)| match (key.as_str(), x, b.get(key)) {
                    ("conditions", Value::Array(x), Some(Value::Array(y))) => same_multiset(x, y, same_condition),
                    (_, x, Some(y)) => x == y,
                    (_, _, None) => false,
                })
        }
        _ => a == b,
    }
}

fn same_condition(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let significant = |m: &Map<String, Value>| m.iter().filter(|(k, _)| *k != "lastTransitionTime").count();
            significant(a) == significant(b)
                && a.iter().filter(|(k, _)| *k != "lastTransitionTime").all(|(k, x)| b.get(k) == Some(x))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ExternalHostnameBackend;
    use crate::conditions;
    use crate::index::Index;
    use crate::policy::{Policy, PolicyConfig};
    use crate::refs::Fetched;
    use crate::testing::*;
    use crate::verdict::evaluate;
    use proptest::prelude::*;

    const OURS: &str = "example.com/xbackend-controller";
    const THEIRS: &str = "other.example/gateway";
    const NOW: &str = "2030-01-01T00:00:00Z";
    const EARLIER: &str = "2020-01-01T00:00:00Z";

    // --- evaluate and events (use validate/tls) --------------------------

    fn policy() -> Policy {
        Policy::new(PolicyConfig::default()).expect("default policy")
    }

    #[test]
    fn evaluate_valid_backend() {
        let backend = Backend::new(1, Ok(plain_spec()));
        let verdicts = evaluate(&key(), &backend, &Index::new(OURS), &Fetched::default(), &policy());
        assert!(verdicts.accepted.status, "{verdicts:?}");
        assert_eq!(verdicts.resolved_refs, conditions::resolved_refs());
    }

    #[test]
    fn evaluate_undecodable_spec() {
        let backend = Backend::new(1, Err("spec.tls.mode: unknown variant `Sometimes`".into()));
        let verdicts = evaluate(&key(), &backend, &Index::new(OURS), &Fetched::default(), &policy());
        assert_eq!((verdicts.accepted.status, verdicts.accepted.reason), (false, reason::INVALID));
        assert_eq!((verdicts.resolved_refs.status, verdicts.resolved_refs.reason), (true, reason::RESOLVED_REFS));
        assert!(verdicts.resolved_refs.message.contains("does not decode"));
        let notes = events(&backend, &verdicts);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].warning, notes[0].reason), (true, reason::INVALID));
    }

    #[test]
    fn evaluate_computes_both_conditions_independently() {
        let mut spec = tls_spec(Some(secret_ref(None, "client")), vec![]);
        spec.external_hostname = Some(ExternalHostnameBackend { hostname: "localhost".into() });
        let backend = Backend::new(1, Ok(spec));
        let verdicts = evaluate(&key(), &backend, &Index::new(OURS), &Fetched::default(), &policy());
        assert!(!verdicts.accepted.status);
        assert_eq!(verdicts.resolved_refs.reason, reason::INVALID_CLIENT_CERTIFICATE_REF);
    }

    #[test]
    fn events_for_insecure_and_rejected() {
        let insecure = Backend::new(1, Ok(plain_spec()));
        let verdicts = Verdicts { accepted: conditions::accepted(), resolved_refs: conditions::resolved_refs() };
        let notes = events(&insecure, &verdicts);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].warning, notes[0].reason), (true, INSECURE_REASON));
        assert!(notes[0].message.contains("api.example.com:443") && notes[0].message.contains("spec.tls"));

        let secure = Backend::new(1, Ok(tls_spec(None, vec![])));
        assert!(events(&secure, &verdicts).is_empty());

        let rejected = Verdicts {
            accepted: conditions::hostname_not_allowed("denied"),
            resolved_refs: conditions::resolved_refs(),
        };
        let notes = events(&secure, &rejected);
        assert_eq!(
            notes,
            vec![EventNote { warning: true, reason: reason::HOSTNAME_NOT_ALLOWED, message: "denied".into() }]
        );

        // TLSRequired already says it; no second warning.
        let required =
            Verdicts { accepted: conditions::tls_required("tls required"), resolved_refs: conditions::resolved_refs() };
        let notes = events(&insecure, &required);
        assert_eq!(notes.iter().map(|n| n.reason).collect::<Vec<_>>(), vec![reason::TLS_REQUIRED]);
    }

    // --- merge ------------------------------------------------------------

    fn ok() -> Verdicts {
        Verdicts { accepted: conditions::accepted(), resolved_refs: conditions::resolved_refs() }
    }

    /// Every ancestor with the same verdicts, as most cases here need.
    fn merge(
        current: &[Value],
        shape: Shape,
        controller_name: &str,
        generation: i64,
        ancestors: &[ObjectRef],
        verdicts: &Verdicts,
        now: &str,
    ) -> MergeOutcome {
        let each: Vec<(&ObjectRef, &Verdicts)> = ancestors.iter().map(|a| (a, verdicts)).collect();
        super::merge(current, shape, controller_name, generation, &each, now)
    }

    fn gateways(names: &[(&str, &str)]) -> Vec<ObjectRef> {
        names.iter().map(|(ns, name)| r(ns, name)).collect()
    }

    fn foreign(name: &str) -> Value {
        json!({
            "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": name, "sectionName": "x"},
            "controllerName": THEIRS,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Whatever", "message": "", "lastTransitionTime": EARLIER, "observedGeneration": 1}],
            "vendorExtension": {"nested": [1, 2, {"z": null}]}
        })
    }

    fn ours_in(list: &[Value]) -> Vec<&Value> {
        list.iter().filter(|e| e.get("controllerName").and_then(Value::as_str) == Some(OURS)).collect()
    }

    fn not_ours(list: &[Value]) -> Vec<&Value> {
        list.iter().filter(|e| e.get("controllerName").and_then(Value::as_str) != Some(OURS)).collect()
    }

    fn condition_of<'a>(entry: &'a Value, type_: &str) -> &'a Value {
        entry["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == type_)).expect("condition present")
    }

    #[test]
    fn merge_writes_one_entry_per_ancestor() {
        let out = merge(
            &[],
            Shape::Ancestors,
            OURS,
            4,
            &gateways(&[("infra", "b"), ("infra", "a"), ("infra", "a")]),
            &ok(),
            NOW,
        );
        assert!(out.changed);
        assert_eq!(out.truncated, 0);
        assert_eq!(out.list.len(), 2);
        assert_eq!(
            out.list[0],
            json!({
                "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": "a"},
                "controllerName": OURS,
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "XBackend is valid and allowed.", "observedGeneration": 4, "lastTransitionTime": NOW},
                    {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "All references resolved.", "observedGeneration": 4, "lastTransitionTime": NOW}
                ]
            })
        );
        assert_eq!(out.list[1]["ancestorRef"]["name"], "b");
        // Nothing wanted and nothing stored: nothing to write.
        assert!(!merge(&[], Shape::Ancestors, OURS, 4, &[], &ok(), NOW).changed);
    }

    #[test]
    fn merge_parents_shape() {
        let out = merge(&[], Shape::Parents, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(out.list[0].get("ancestorRef").is_none());
        assert_eq!(out.list[0]["parentRef"]["name"], "a");
        let again =
            merge(&out.list, Shape::Parents, OURS, 1, &gateways(&[("infra", "a")]), &ok(), "2031-01-01T00:00:00Z");
        assert!(!again.changed);
        assert_eq!(again.list, out.list);
        // An entry of ours in the other shape is stale.
        let switched = merge(&out.list, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(switched.changed);
        assert_eq!(switched.list.len(), 1);
        assert!(switched.list[0].get("ancestorRef").is_some());
    }

    #[test]
    fn merge_keeps_foreign_entries_in_place_and_byte_identical() {
        let current = vec![
            foreign("x"),
            json!({"controllerName": "gateway.example/other", "ancestorRef": {"name": "y"}}),
            foreign("z"),
        ];
        let before: Vec<String> = current.iter().map(Value::to_string).collect();
        let out = merge(&current, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(out.changed);
        let after: Vec<String> = out.list[..3].iter().map(Value::to_string).collect();
        assert_eq!(before, after);
        assert_eq!(ours_in(&out.list).len(), 1);
        assert_eq!(out.list[3]["controllerName"], OURS);
    }

    #[test]
    fn merge_keeps_malformed_foreign_entries() {
        let current = vec![
            json!("a string"),
            json!(null),
            json!(17),
            json!([{"controllerName": OURS}]),
            json!({"no": "controller"}),
            json!({"controllerName": 5}),
            json!({"controllerName": OURS.to_uppercase()}),
        ];
        let out = merge(&current, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert_eq!(&out.list[..current.len()], &current[..]);
        assert_eq!(out.list.len(), current.len() + 1);
        let again = merge(&out.list, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(!again.changed);
    }

    #[test]
    fn merge_removes_stale_duplicate_and_malformed_own_entries() {
        let first =
            merge(&[], Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a"), ("infra", "old")]), &ok(), EARLIER);
        let mut current = first.list.clone();
        current.push(current[0].clone()); // a duplicate of ours
        current.push(json!({"controllerName": OURS, "garbage": true}));
        current.insert(1, foreign("x"));
        let out = merge(&current, Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &ok(), NOW);
        assert!(out.changed);
        assert_eq!(out.list.len(), 2);
        assert_eq!(out.list[0], foreign("x"));
        assert_eq!(out.list[1], first.list[0], "the kept entry keeps its timestamps");
        // No ancestors left: all of ours go, foreign stays.
        let out = merge(&current, Shape::Ancestors, OURS, 1, &[], &ok(), NOW);
        assert_eq!(out.list, vec![foreign("x")]);
        assert!(out.changed);
    }

    #[test]
    fn merge_caps_at_32_keeping_foreign_first() {
        let foreign_entries: Vec<Value> = (0..30).map(|i| foreign(&format!("f{i:02}"))).collect();
        let wanted = gateways(&[("n", "e"), ("n", "d"), ("n", "c"), ("n", "b"), ("n", "a")]);
        let out = merge(&foreign_entries, Shape::Ancestors, OURS, 1, &wanted, &ok(), NOW);
        assert_eq!(out.list.len(), MAX_ANCESTORS);
        assert_eq!(out.truncated, 3);
        assert_eq!(&out.list[..30], &foreign_entries[..]);
        let kept: Vec<&Value> = ours_in(&out.list).into_iter().map(|e| &e["ancestorRef"]["name"]).collect();
        assert_eq!(kept, vec!["a", "b"]);
        let again = merge(&out.list, Shape::Ancestors, OURS, 1, &wanted, &ok(), NOW);
        assert!(!again.changed);
        assert_eq!(again.truncated, 3);

        // Foreign entries alone over the cap: all kept, none of ours.
        let crowded: Vec<Value> = (0..33).map(|i| foreign(&format!("f{i:02}"))).collect();
        let out = merge(&crowded, Shape::Ancestors, OURS, 1, &wanted, &ok(), NOW);
        assert_eq!(out.list, crowded);
        assert_eq!(out.truncated, 5);
        assert!(!out.changed);
    }

    #[test]
    fn merge_ignores_order_and_timestamps() {
        let wanted = gateways(&[("infra", "a"), ("infra", "b")]);
        let first = merge(&[foreign("x")], Shape::Ancestors, OURS, 2, &wanted, &ok(), EARLIER);
        let mut shuffled = first.list.clone();
        shuffled.reverse();
        for entry in &mut shuffled {
            if let Some(conditions) = entry.get_mut("conditions").and_then(Value::as_array_mut) {
                conditions.reverse();
            }
        }
        let out = merge(&shuffled, Shape::Ancestors, OURS, 2, &wanted, &ok(), NOW);
        assert!(!out.changed, "order alone is no change");
        assert_eq!(condition_of(&out.list[1], "Accepted")["lastTransitionTime"], EARLIER);

        // A stored timestamp that differs (or is missing) is not a change by itself.
        let mut retimed = first.list.clone();
        retimed[1]["conditions"][0]["lastTransitionTime"] = json!("2019-05-05T00:00:00Z");
        if let Some(condition) = retimed[2]["conditions"][1].as_object_mut() {
            condition.remove("lastTransitionTime");
        }
        let out = merge(&retimed, Shape::Ancestors, OURS, 2, &wanted, &ok(), NOW);
        assert!(!out.changed);
        assert_eq!(condition_of(&out.list[1], "Accepted")["lastTransitionTime"], "2019-05-05T00:00:00Z");
        assert_eq!(condition_of(&out.list[2], "ResolvedRefs")["lastTransitionTime"], NOW);
    }

    #[test]
    fn merge_keeps_transition_time_unless_status_flips() {
        let wanted = gateways(&[("infra", "a")]);
        let first = merge(&[], Shape::Ancestors, OURS, 1, &wanted, &ok(), EARLIER);
        // Accepted flips; ResolvedRefs changes reason and message only... it stays True here.
        let flipped = Verdicts {
            accepted: conditions::invalid("spec.port.port must be 1 to 65535."),
            resolved_refs: conditions::resolved_refs(),
        };
        let out = merge(&first.list, Shape::Ancestors, OURS, 1, &wanted, &flipped, NOW);
        assert!(out.changed);
        assert_eq!(condition_of(&out.list[0], "Accepted")["lastTransitionTime"], NOW);
        assert_eq!(condition_of(&out.list[0], "Accepted")["status"], "False");
        assert_eq!(condition_of(&out.list[0], "ResolvedRefs")["lastTransitionTime"], EARLIER);

        // Same status, another reason and message: a change, but the time stays.
        let first = merge(&[], Shape::Ancestors, OURS, 1, &wanted, &flipped, EARLIER);
        let other = Verdicts {
            accepted: conditions::hostname_not_allowed("denied"),
            resolved_refs: conditions::resolved_refs(),
        };
        let out = merge(&first.list, Shape::Ancestors, OURS, 1, &wanted, &other, NOW);
        assert!(out.changed);
        assert_eq!(condition_of(&out.list[0], "Accepted")["reason"], "HostnameNotAllowed");
        assert_eq!(condition_of(&out.list[0], "Accepted")["lastTransitionTime"], EARLIER);
    }

    #[test]
    fn merge_counts_observed_generation_as_change() {
        let wanted = gateways(&[("infra", "a")]);
        let first = merge(&[], Shape::Ancestors, OURS, 1, &wanted, &ok(), EARLIER);
        let out = merge(&first.list, Shape::Ancestors, OURS, 2, &wanted, &ok(), NOW);
        assert!(out.changed);
        assert_eq!(condition_of(&out.list[0], "Accepted")["observedGeneration"], 2);
        assert_eq!(condition_of(&out.list[0], "Accepted")["lastTransitionTime"], EARLIER);
    }

    #[test]
    fn merge_clips_huge_messages() {
        let huge =
            Verdicts { accepted: conditions::invalid("é".repeat(20_000)), resolved_refs: conditions::resolved_refs() };
        let out = merge(&[], Shape::Ancestors, OURS, 1, &gateways(&[("infra", "a")]), &huge, NOW);
        let message = condition_of(&out.list[0], "Accepted")["message"].as_str().map(str::len);
        assert!(message.is_some_and(|len| len <= MAX_MESSAGE_BYTES && len > 32_000));
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![Just(OURS.to_string()), Just(THEIRS.to_string()), "[a-zA-Z]{0,6}".prop_map(String::from)]
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("controllerName".to_string()),
                Just("ancestorRef".to_string()),
                Just("parentRef".to_string()),
                Just("conditions".to_string()),
                Just("type".to_string()),
                Just("status".to_string()),
                Just("lastTransitionTime".to_string()),
                Just("namespace".to_string()),
                Just("name".to_string()),
                "[a-z]{1,4}".prop_map(String::from),
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..6)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    /// Arbitrary entries mixed with well-formed ones (ours and foreign), so
    /// matching paths get exercised, not only the malformed ones.
    fn entry_list() -> impl Strategy<Value = Vec<Value>> {
        let gateway_names = prop::sample::select(vec!["a", "b", "c"]);
        let well_formed = (gateway_names, any::<bool>(), any::<bool>()).prop_map(|(name, ours, accepted)| {
            json!({
                "ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "infra", "name": name},
                "controllerName": if ours { OURS } else { THEIRS },
                "conditions": [{"type": "Accepted", "status": if accepted { "True" } else { "False" }, "reason": "Accepted", "message": "", "observedGeneration": 1, "lastTransitionTime": EARLIER}]
            })
        });
        prop::collection::vec(prop_oneof![arbitrary_json(), well_formed], 0..40)
    }

    fn verdicts_strategy() -> impl Strategy<Value = Verdicts> {
        (any::<bool>(), any::<bool>()).prop_map(|(accepted, resolved)| Verdicts {
            accepted: if accepted { conditions::accepted() } else { conditions::invalid("bad") },
            resolved_refs: if resolved { conditions::resolved_refs() } else { conditions::invalid_kind("kind") },
        })
    }

    /// The list as a sorted multiset of entries, each with its conditions
    /// sorted and stripped of lastTransitionTime: what "the stored status would
    /// change" means, written without the code under test.
    fn canonical(list: &[Value]) -> Vec<String> {
        let mut entries: Vec<String> = list
            .iter()
            .map(|entry| {
                let mut entry = entry.clone();
                if let Some(Value::Array(conditions)) = entry.get_mut("conditions") {
                    for c in conditions.iter_mut() {
                        if let Value::Object(c) = c {
                            c.remove("lastTransitionTime");
                        }
                    }
                    conditions.sort_by_key(|c| c.to_string());
                }
                entry.to_string()
            })
            .collect();
        entries.sort();
        entries
    }

    proptest! {
        #[test]
        fn merge_properties(
            current in entry_list(),
            names in prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..6),
            parents_shape in any::<bool>(),
            generation in 0i64..3,
            verdicts in verdicts_strategy(),
        ) {
            let shape = if parents_shape { Shape::Parents } else { Shape::Ancestors };
            let wanted: Vec<ObjectRef> = names.iter().map(|n| r("infra", n)).collect();
            let out = merge(&current, shape, OURS, generation, &wanted, &verdicts, NOW);

            // Foreign entries: all of them, unchanged, in their order, first.
            let foreign_before = not_ours(&current);
            prop_assert_eq!(&not_ours(&out.list), &foreign_before);
            prop_assert_eq!(&out.list[..foreign_before.len()].iter().collect::<Vec<_>>(), &foreign_before);

            // Ours: sorted, deduplicated, capped.
            let distinct: std::collections::BTreeSet<&str> = names.iter().copied().collect();
            let ours = ours_in(&out.list);
            prop_assert_eq!(ours.len() + out.truncated, distinct.len());
            prop_assert!(out.list.len() <= MAX_ANCESTORS.max(foreign_before.len()));
            let written: Vec<&str> = ours.iter().filter_map(|e| e[shape.ref_field()]["name"].as_str()).collect();
            prop_assert_eq!(written, distinct.iter().copied().take(ours.len()).collect::<Vec<_>>());

            // Idempotent, even at a later time.
            let again = merge(&out.list, shape, OURS, generation, &wanted, &verdicts, "2031-01-01T00:00:00Z");
            prop_assert!(!again.changed);
            prop_assert_eq!(&again.list, &out.list);

            // `changed` against an independent oracle: canonical forms (no
            // lastTransitionTime, conditions and entries sorted) differ.
            prop_assert_eq!(out.changed, canonical(&current) != canonical(&out.list));
        }
    }
}
