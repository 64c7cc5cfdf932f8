//! `xbackend-controller analyze`: golden-file tests over the bundles in
//! tests/analyze/<case>/, run through the built binary, plus one test that
//! holds analyze's verdict against the live controller's on a real apiserver.
//!
//! Golden files are `<run>.stdout` and `<run>.stderr` next to the bundle.
//! Timestamps written during the run (lastTransitionTime = now) read `<now>`
//! in them; older ones (from a bundle's stored status) stay as they are.
//! `UPDATE_GOLDEN=1 cargo test --test analyze` rewrites them; review the diff.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_xbackend-controller");
const DEFAULT_CONTROLLER: &str = "gateway.networking.x-k8s.io/xbackend-controller";

const OK: &str = "Accepted=True (Accepted)";
const INVALID: &str = "Accepted=False (Invalid)";
const NOT_ALLOWED: &str = "Accepted=False (HostnameNotAllowed)";
const TLS_REQUIRED: &str = "Accepted=False (TLSRequired)";
const REFS_OK: &str = "ResolvedRefs=True (ResolvedRefs)";
const BAD_CLIENT_CERT: &str = "ResolvedRefs=False (InvalidClientCertificateRef)";
const BAD_CA: &str = "ResolvedRefs=False (InvalidCACertificateRef)";
const BAD_KIND: &str = "ResolvedRefs=False (InvalidKind)";
const NOT_PERMITTED: &str = "ResolvedRefs=False (RefNotPermitted)";
const NO_PODS: &str = "ResolvedRefs=False (NoMatchingPods)";

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/analyze")
}

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
    /// The run's wall-clock window, for telling "now" timestamps apart.
    started: chrono::DateTime<chrono::Utc>,
    ended: chrono::DateTime<chrono::Utc>,
}

impl Output {
    /// The summary: stderr, or stdout with `-o table`.
    fn summary<'a>(&'a self, args: &[&str]) -> &'a str {
        if args.windows(2).any(|w| w == ["-o", "table"]) { &self.stdout } else { &self.stderr }
    }
}

/// Runs `analyze ARGS` with `dir` as working directory, optionally feeding a file on stdin.
fn analyze(dir: &Path, args: &[&str], stdin: Option<&Path>) -> Output {
    // Whole seconds: the binary writes second precision.
    let started = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).unwrap();
    let mut child = Command::new(BIN)
        .arg("analyze")
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start xbackend-controller analyze");
    if let Some(path) = stdin {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut pipe = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8(buf).expect("UTF-8 output")
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    // Offline analysis of a small bundle takes milliseconds; a hang is a bug.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for analyze") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("analyze {args:?} in {} did not finish within 60s", dir.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ended = chrono::Utc::now() + chrono::Duration::seconds(1);
    let code = status.code().unwrap_or_else(|| panic!("analyze killed by a signal: {status:?}"));
    Output { code, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap(), started, ended }
}

/// Replaces RFC 3339 timestamps (`YYYY-MM-DDTHH:MM:SSZ`) inside the run's
/// window with `<now>`; returns the text and how many were replaced.
fn normalize(text: &str, out: &Output) -> (String, usize) {
    const LEN: usize = "2006-01-02T15:04:05Z".len();
    let shape = |s: &[u8]| {
        s.len() == LEN
            && s.iter().enumerate().all(|(i, &c)| match i {
                4 | 7 => c == b'-',
                10 => c == b'T',
                13 | 16 => c == b':',
                19 => c == b'Z',
                _ => c.is_ascii_digit(),
            })
    };
    let bytes = text.as_bytes();
    let mut result = String::with_capacity(text.len());
    let mut replaced = 0;
    let mut i = 0;
    while i < bytes.len() {
        if i + LEN <= bytes.len() && shape(&bytes[i..i + LEN]) {
            let stamp = &text[i..i + LEN];
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(stamp) {
                let t = t.with_timezone(&chrono::Utc);
                if t >= out.started && t <= out.ended {
                    result.push_str("<now>");
                    replaced += 1;
                    i += LEN;
                    continue;
                }
            }
        }
        let c = text[i..].chars().next().unwrap();
        result.push(c);
        i += c.len_utf8();
    }
    (result, replaced)
}

/// Compares `actual` with the golden file, or rewrites it with UPDATE_GOLDEN=1.
fn golden(path: &Path, actual: &str) {
    if updating() {
        std::fs::write(path, actual).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it, then review it)", path.display()));
    similar_asserts::assert_eq!(expected: expected, actual: actual.to_string(), "golden file {}", path.display());
}

/// One run of analyze over a case folder, checked against golden files and
/// against verdicts spelled out here (so a blind golden update cannot hide a
/// wrong verdict).
struct Run {
    /// Golden file stem.
    name: &'static str,
    /// Folder under tests/analyze, the working directory of the run.
    dir: &'static str,
    args: &'static [&'static str],
    /// A file of `dir` piped to stdin.
    stdin: Option<&'static str>,
    exit: i32,
    /// Every XBackend of the bundle: (namespace/name, ancestors of this
    /// controller, Accepted, ResolvedRefs as the summary prints them).
    verdicts: &'static [(&'static str, usize, &'static str, &'static str)],
    /// Fragments the summary (or the error message) must contain.
    says: &'static [&'static str],
}

impl Run {
    fn check(&self) -> Output {
        let dir = cases_dir().join(self.dir);
        let out = analyze(&dir, self.args, self.stdin.map(|f| dir.join(f)).as_deref());
        let context =
            format!("run {} (exit {})\n--- stdout\n{}\n--- stderr\n{}", self.name, out.code, out.stdout, out.stderr);

        assert!(!out.stderr.contains("panicked"), "analyze panicked: {context}");
        assert_eq!(out.code, self.exit, "exit code; {context}");

        let (stdout, stamped) = normalize(&out.stdout, &out);
        let (stderr, _) = normalize(&out.stderr, &out);
        golden(&dir.join(format!("{}.stdout", self.name)), &stdout);
        golden(&dir.join(format!("{}.stderr", self.name)), &stderr);

        let summary = out.summary(self.args);
        for fragment in self.says {
            assert!(summary.contains(fragment), "expected {fragment:?} in the summary; {context}");
        }
        if self.exit == 2 {
            assert_eq!(out.stdout, "", "nothing on stdout for unreadable input; {context}");
            assert!(out.stderr.starts_with("error: "), "{context}");
            return out;
        }
        self.check_summary(summary, &context);
        if !self.args.contains(&"table") {
            let docs = output_documents(&out.stdout, self.args.contains(&"json"));
            self.check_documents(&docs, &context);
            // Every condition written now carries the run's time.
            let conditions: usize = docs
                .iter()
                .map(|d| {
                    our_entries(d, self.controller())
                        .map(|e| e["conditions"].as_array().map_or(0, Vec::len))
                        .sum::<usize>()
                })
                .sum();
            let old = self.dir == "existing-status";
            assert!(
                stamped == conditions || (old && stamped < conditions),
                "{stamped} timestamps of now for {conditions} conditions; {context}"
            );
        }
        out
    }

    fn controller(&self) -> &'static str {
        self.args.windows(2).find(|w| w[0] == "--controller-name").map_or(DEFAULT_CONTROLLER, |w| w[1])
    }

    /// One summary line per XBackend and ancestor, with the verdicts we expect.
    fn check_summary(&self, summary: &str, context: &str) {
        let lines: Vec<&str> = summary.lines().filter(|l| l.starts_with("XBackend ")).collect();
        let keys: BTreeSet<&str> = lines.iter().filter_map(|l| l.split_whitespace().nth(1)).collect();
        let expected: BTreeSet<&str> = self.verdicts.iter().map(|v| v.0).collect();
        assert_eq!(keys, expected, "XBackends in the summary; {context}");
        let mut findings = 0;
        for (key, ancestors, accepted, resolved) in self.verdicts {
            let mine: Vec<&&str> = lines.iter().filter(|l| l.starts_with(&format!("XBackend {key}  "))).collect();
            assert_eq!(mine.len(), (*ancestors).max(1), "{key}: one line per ancestor; {context}");
            for line in &mine {
                assert!(
                    line.contains(&format!("{accepted} {resolved}")),
                    "{key}: want {accepted} {resolved} in {line:?}; {context}"
                );
                assert_eq!(
                    line.contains("(no ancestor Gateway of this controller)"),
                    *ancestors == 0,
                    "{key}: {line:?}"
                );
                assert_eq!(
                    line.contains("=False"),
                    line.contains("): "),
                    "{key}: a finding comes with its message: {line:?}"
                );
            }
            if *accepted != OK || *resolved != REFS_OK {
                findings += 1;
            }
        }
        let count =
            format!("{} XBackend(s): {} clean, {findings} with findings", expected.len(), expected.len() - findings);
        assert!(summary.contains(&count), "want {count:?}; {context}");
        // Beyond the XBackends' verdicts: the bundle's findings and refused destinations.
        let others = summary.lines().filter(|l| l.starts_with("finding: ") || l.starts_with("  refused: ")).count();
        assert_eq!(self.exit == 3, findings + others > 0, "exit 3 exactly when there are findings; {context}");
    }

    /// The printed XBackends carry exactly the entries and conditions of the summary.
    fn check_documents(&self, docs: &[Value], context: &str) {
        let printed: BTreeSet<String> = docs.iter().map(key_of).collect();
        let expected: BTreeSet<String> = self.verdicts.iter().map(|v| v.0.to_string()).collect();
        assert_eq!(printed, expected, "XBackends printed; {context}");
        for doc in docs {
            assert_eq!(
                (doc["apiVersion"].as_str(), doc["kind"].as_str()),
                (Some("gateway.networking.x-k8s.io/v1alpha1"), Some("XBackend")),
                "{context}"
            );
            let key = key_of(doc);
            let (_, ancestors, accepted, resolved) = self.verdicts.iter().find(|v| v.0 == key).unwrap();
            let entries: Vec<&Value> = our_entries(doc, self.controller()).collect();
            assert_eq!(entries.len(), *ancestors, "{key}: entries of this controller; {context}");
            let names: Vec<String> = entries.iter().map(|e| gateway_of(e)).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted, "{key}: entries sorted by Gateway");
            let want = [parse_verdict(accepted), parse_verdict(resolved)];
            for e in &entries {
                assert_eq!(conditions(e), want, "{key}: conditions of {}; {context}", gateway_of(e));
                for c in e["conditions"].as_array().unwrap() {
                    assert_eq!(
                        c["observedGeneration"],
                        doc["metadata"]["generation"].as_i64().unwrap_or(1),
                        "{key}: {c}"
                    );
                    assert!(c["message"].as_str().is_some_and(|m| m.len() > 10), "{key}: a message: {c}");
                }
            }
        }
    }
}

/// The XBackends printed: a YAML stream, or with `-o json` one List object.
fn output_documents(stdout: &str, json: bool) -> Vec<Value> {
    if json {
        let list: Value = serde_json::from_str(stdout).unwrap_or_else(|e| panic!("-o json is not JSON: {e}\n{stdout}"));
        assert_eq!(list["kind"], "List", "{stdout}");
        assert_eq!(list["apiVersion"], "v1", "{stdout}");
        return list["items"].as_array().expect("items").clone();
    }
    serde_yaml_ng::Deserializer::from_str(stdout)
        .map(|d| {
            <Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("output is not YAML: {e}\n{stdout}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn key_of(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["metadata"]["namespace"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

fn our_entries<'a>(doc: &'a Value, controller: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    doc["status"]["ancestors"].as_array().into_iter().flatten().filter(move |e| e["controllerName"] == controller)
}

fn gateway_of(entry: &Value) -> String {
    let r = &entry["ancestorRef"];
    assert_eq!(
        (r["group"].as_str(), r["kind"].as_str()),
        (Some("gateway.networking.k8s.io"), Some("Gateway")),
        "{entry}"
    );
    format!("{}/{}", r["namespace"].as_str().unwrap_or("?"), r["name"].as_str().unwrap_or("?"))
}

/// (type, status, reason) of an entry's conditions, in order.
fn conditions(entry: &Value) -> Vec<(String, String, String)> {
    entry["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or("").into(),
                c["status"].as_str().unwrap_or("").into(),
                c["reason"].as_str().unwrap_or("").into(),
            )
        })
        .collect()
}

/// "Accepted=False (Invalid)" -> (Accepted, False, Invalid).
fn parse_verdict(s: &str) -> (String, String, String) {
    let (type_, rest) = s.split_once('=').unwrap();
    let (status, reason) = rest.split_once(" (").unwrap();
    (type_.into(), status.into(), reason.trim_end_matches(')').into())
}

/// Only what cannot be checked offline is assumed: a reference of another
/// kind, or to a Secret no ReferenceGrant lets the XBackend use, is never
/// listed, because those fail whether or not the object exists.
#[test]
fn assume_refs_exist_assumes_only_permitted_refs_of_supported_kinds() {
    let out =
        analyze(&cases_dir().join("assume-refs"), &["-f", "checked.yaml", "--assume-refs-exist", "-o", "table"], None);
    let assumed: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("note: assumed ")).collect();
    assert_eq!(assumed.len(), 1, "{}", out.stdout);
    assert!(assumed[0].starts_with("note: assumed ConfigMap default/runtime-ca "), "{}", out.stdout);
    let plain = analyze(&cases_dir().join("assume-refs"), &["-f", "runtime.yaml", "-o", "table"], None);
    assert!(!plain.stdout.contains("assumed"), "nothing is assumed without the flag: {}", plain.stdout);
}

/// Guard mode: `--gateway-class` judges a Gateway of another
/// implementation's class, as `run` does.
#[test]
fn gateway_class_flag_judges_a_foreign_class() {
    let dir = support::tempdir("analyze-guard");
    let bundle = "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: istio}\nspec: {controllerName: istio.io/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: mesh}\nspec: {gatewayClassName: istio, listeners: [{name: http, protocol: HTTP, port: 80}]}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: mesh}]\n  rules: [{backendRefs: [{group: gateway.networking.x-k8s.io, kind: XBackend, name: b}]}]\n---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: b}\nspec:\n  type: ExternalHostname\n  port: {port: 443}\n  externalHostname: {hostname: api.example.com}\n  tls: {mode: ServerOnly, validation: {hostname: api.example.com}}\n";
    std::fs::write(dir.join("bundle.yaml"), bundle).unwrap();
    let entries = |extra: &[&str]| {
        let mut args = vec!["-f", "bundle.yaml", "-o", "json"];
        args.extend_from_slice(extra);
        let out = analyze(&dir, &args, None);
        assert_eq!(out.code, 0, "{}", out.stderr);
        let docs = output_documents(&out.stdout, true);
        our_entries(&docs[0], "gateway.networking.x-k8s.io/xbackend-controller").map(gateway_of).collect::<Vec<_>>()
    };
    assert!(entries(&[]).is_empty(), "not our class");
    assert_eq!(entries(&["--gateway-class", "istio"]), ["default/mesh"]);
}

macro_rules! golden_runs {
    ($($test:ident: $run:expr;)*) => {
        $(
            #[test]
            fn $test() {
                $run.check();
            }
        )*
    };
}

golden_runs! {
    clean_bundle_exits_0: Run {
        name: "clean", dir: "clean", args: &["-f", "bundle.yaml"], stdin: None, exit: 0,
        verdicts: &[("default/openai-api", 1, OK, REFS_OK)],
        says: &["XBackend default/openai-api  Gateway default/egress  Accepted=True (Accepted) ResolvedRefs=True (ResolvedRefs)"],
    };
    invalid_specs: Run {
        name: "invalid", dir: "invalid", args: &["-f", "bundle.yaml", "--cluster-domain", "corp.internal"], stdin: None, exit: 3,
        verdicts: &[
            ("default/bad-mode", 1, INVALID, REFS_OK),
            ("default/bad-port", 1, INVALID, REFS_OK),
            ("default/corp", 1, INVALID, REFS_OK),
            ("default/ip-literal", 1, INVALID, REFS_OK),
            ("default/uppercase", 1, INVALID, REFS_OK),
        ],
        says: &["spec.tls.mode", "spec.port.port", "corp.internal", "10.0.0.1", "API.Example.com"],
    };
    hostname_not_allowed_by_builtin_guardrails: Run {
        name: "hostname-builtin", dir: "hostname-builtin", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[
            ("default/loopback", 1, NOT_ALLOWED, REFS_OK),
            ("default/metadata", 1, NOT_ALLOWED, REFS_OK),
            ("default/service", 1, NOT_ALLOWED, REFS_OK),
            ("default/single-label", 1, NOT_ALLOWED, REFS_OK),
        ],
        says: &["metadata.google.internal", "localhost", "billing", ".svc"],
    };
    hostname_not_allowed_by_deny_flag: Run {
        name: "hostname-deny", dir: "hostname-deny", args: &["-f", "bundle.yaml", "--deny-hostname", "*.blocked.example.com"], stdin: None, exit: 3,
        verdicts: &[("default/blocked", 1, NOT_ALLOWED, REFS_OK), ("default/fine", 1, OK, REFS_OK)],
        says: &["--deny-hostname \"*.blocked.example.com\""],
    };
    hostname_not_allowed_by_allow_flag: Run {
        name: "hostname-allow", dir: "hostname-allow", args: &["-f", "bundle.yaml", "--allow-hostname", "*.example.com"], stdin: None, exit: 3,
        verdicts: &[("default/allowed", 1, OK, REFS_OK), ("default/apex", 1, NOT_ALLOWED, REFS_OK), ("default/elsewhere", 1, NOT_ALLOWED, REFS_OK)],
        says: &["--allow-hostname"],
    };
    tls_required_with_flag: Run {
        name: "tls-required", dir: "tls-required", args: &["-f", "bundle.yaml", "--require-tls"], stdin: None, exit: 3,
        verdicts: &[("default/mode-none", 1, TLS_REQUIRED, REFS_OK), ("default/no-tls", 1, TLS_REQUIRED, REFS_OK), ("default/with-tls", 1, OK, REFS_OK)],
        says: &["--require-tls"],
    };
    tls_optional_without_flag_warns: Run {
        name: "tls-optional", dir: "tls-required", args: &["-f", "bundle.yaml"], stdin: None, exit: 0,
        verdicts: &[("default/mode-none", 1, OK, REFS_OK), ("default/no-tls", 1, OK, REFS_OK), ("default/with-tls", 1, OK, REFS_OK)],
        says: &["  warning Insecure: Traffic to plain.example.com:443 is sent in clear text"],
    };
    invalid_client_certificate_refs: Run {
        name: "client-cert", dir: "client-cert", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[
            ("default/mtls-garbage", 1, OK, BAD_CLIENT_CERT),
            ("default/mtls-mismatch", 1, OK, BAD_CLIENT_CERT),
            ("default/mtls-missing", 1, OK, BAD_CLIENT_CERT),
            ("default/mtls-no-key", 1, OK, BAD_CLIENT_CERT),
            ("default/mtls-ok", 1, OK, REFS_OK),
            ("default/mtls-opaque", 1, OK, BAD_CLIENT_CERT),
        ],
        says: &["Secret default/nope, which does not exist", "kubernetes.io/tls", "tls.key"],
    };
    invalid_ca_certificate_refs: Run {
        name: "ca-cert", dir: "ca-cert", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[
            ("default/ca-garbage", 1, OK, BAD_CA),
            ("default/ca-missing", 1, OK, BAD_CA),
            ("default/ca-no-key", 1, OK, BAD_CA),
            ("default/ca-ok", 1, OK, REFS_OK),
            ("default/ca-second-bad", 1, OK, BAD_CA),
        ],
        says: &["ConfigMap default/nope, which does not exist", "caCertificateRefs[1] names ConfigMap default/garbage"],
    };
    invalid_kinds: Run {
        name: "invalid-kind", dir: "invalid-kind", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/ca-group", 1, OK, BAD_KIND), ("default/ca-kind", 1, OK, BAD_KIND), ("default/cert-kind", 1, OK, BAD_KIND)],
        says: &["ConfigMap.example.com", "only Secrets"],
    };
    ref_not_permitted_without_grant: Run {
        name: "ref-not-permitted", dir: "ref-not-permitted", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/mtls", 1, OK, NOT_PERMITTED)],
        says: &["no ReferenceGrant in namespace certs allows XBackends from namespace default"],
    };
    ref_permitted_by_grant: Run {
        name: "ref-granted", dir: "ref-granted", args: &["-f", "../ref-not-permitted/bundle.yaml", "-f", "grant.yaml"], stdin: None, exit: 0,
        verdicts: &[("default/mtls", 1, OK, REFS_OK)],
        says: &[],
    };
    refs_made_at_run_time_are_missing_by_default: Run {
        name: "runtime-default", dir: "assume-refs", args: &["-f", "runtime.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/partner", 1, OK, BAD_CLIENT_CERT), ("default/partner-eu", 1, OK, BAD_CLIENT_CERT), ("default/shared", 1, OK, BAD_CLIENT_CERT)],
        says: &["Secret default/mtls-client-cert, which does not exist", "Secret certs/shared-client, which does not exist"],
    };
    assume_refs_exist_accepts_refs_made_at_run_time_and_lists_them: Run {
        name: "runtime-assumed", dir: "assume-refs", args: &["-f", "runtime.yaml", "--assume-refs-exist"], stdin: None, exit: 0,
        verdicts: &[("default/partner", 1, OK, REFS_OK), ("default/partner-eu", 1, OK, REFS_OK), ("default/shared", 1, OK, REFS_OK)],
        says: &[
            "note: assumed Secret certs/shared-client exists and is valid (not in the input; --assume-refs-exist), referenced by XBackend default/shared\n",
            "note: assumed Secret default/mtls-client-cert exists and is valid (not in the input; --assume-refs-exist), referenced by XBackend default/partner, default/partner-eu\n",
            "note: assumed ConfigMap default/partner-ca exists and is valid (not in the input; --assume-refs-exist), referenced by XBackend default/partner, default/partner-eu",
        ],
    };
    assume_refs_exist_still_checks_bundle_objects_kinds_and_grants: Run {
        name: "checked", dir: "assume-refs", args: &["-f", "checked.yaml", "--assume-refs-exist", "-o", "table"], stdin: None, exit: 3,
        verdicts: &[
            ("default/ca-in-bundle-bad", 1, OK, BAD_CA),
            ("default/cert-foreign", 1, OK, NOT_PERMITTED),
            ("default/cert-in-bundle-opaque", 1, OK, BAD_CLIENT_CERT),
            ("default/cert-kind", 1, OK, BAD_KIND),
        ],
        says: &[
            "caCertificateRefs[1] names ConfigMap default/garbage-ca, which is not a usable CA bundle",
            "note: assumed ConfigMap default/runtime-ca exists and is valid (not in the input; --assume-refs-exist), referenced by XBackend default/ca-in-bundle-bad",
        ],
    };
    findings_without_ancestors_exit_3: Run {
        name: "no-ancestors", dir: "no-ancestors", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/foreign-bad", 0, NOT_ALLOWED, REFS_OK), ("default/orphan-bad", 0, NOT_ALLOWED, REFS_OK), ("default/orphan-ok", 0, OK, REFS_OK)],
        says: &["XBackend default/orphan-bad  (no ancestor Gateway of this controller)  Accepted=False (HostnameNotAllowed)"],
    };
    malformed_yaml_names_file_document_and_line: Run {
        name: "malformed", dir: "malformed", args: &["-f", "bundle.yaml"], stdin: None, exit: 2,
        verdicts: &[], says: &["error: bundle.yaml: document 3 line "],
    };
    malformed_yaml_with_tabs: Run {
        name: "malformed-tab", dir: "malformed", args: &["-f", "tab.yaml"], stdin: None, exit: 2,
        verdicts: &[], says: &["error: tab.yaml: document 1 line 4"],
    };
    malformed_file_after_a_good_one_prints_nothing: Run {
        name: "malformed-after-good", dir: "malformed", args: &["-f", "../clean/bundle.yaml", "-f", "bundle.yaml"], stdin: None, exit: 2,
        verdicts: &[], says: &["error: bundle.yaml: document 3"],
    };
    missing_file_exits_2: Run {
        name: "missing-file", dir: "malformed", args: &["-f", "no-such-file.yaml"], stdin: None, exit: 2,
        verdicts: &[], says: &["error: no-such-file.yaml: "],
    };
    non_object_document: Run {
        name: "non-object", dir: "non-object", args: &["-f", "bundle.yaml"], stdin: None, exit: 2,
        verdicts: &[], says: &["error: bundle.yaml: document 3 is not an object"],
    };
    scalar_document: Run {
        name: "scalar", dir: "non-object", args: &["-f", "scalar.yaml"], stdin: None, exit: 2,
        verdicts: &[], says: &["error: scalar.yaml: document 2 is not an object"],
    };
    non_object_list_item: Run {
        name: "list-item", dir: "non-object", args: &["-f", "list-item.yaml"], stdin: None, exit: 2,
        verdicts: &[], says: &["error: list-item.yaml (document 1): List item 2 is not an object"],
    };
    bad_glob_flag_exits_2: Run {
        name: "bad-flag", dir: "clean", args: &["-f", "bundle.yaml", "--allow-hostname", " "], stdin: None, exit: 2,
        verdicts: &[], says: &["--allow-hostname"],
    };
    unknown_kinds_are_ignored_with_a_note: Run {
        name: "unknown-kinds", dir: "unknown-kinds", args: &["-f", "bundle.yaml"], stdin: None, exit: 0,
        verdicts: &[("default/openai-api", 1, OK, REFS_OK)],
        says: &[
            "note: bundle.yaml (document 5): Deployment (apps/v1) default/app ignored",
            "note: bundle.yaml (document 7): Widget (example.com/v1) default/w ignored",
            "note: bundle.yaml (document 8): object without apiVersion/kind",
        ],
    };
    references_the_cluster_would_refuse_or_miss: Run {
        name: "findings", dir: "findings", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/api", 1, OK, REFS_OK)],
        says: &[
            "finding: HTTPRoute default/dangling references XBackend default/ghost, which the input does not hold",
            "finding: HTTPRoute default/dangling references XBackend default/phantom, which the input does not hold",
            "finding: HTTPRoute default/with-port: spec.rules[0].backendRefs[0]: Must not have port for Backend reference",
            "note: HTTPRoute default/legacy names Service default/metadata-alias, an ExternalName Service (to metadata.google.internal)",
            "note: HTTPRoute default/legacy names Service default/manual, a Service without a selector",
            "note: bundle.yaml (document 9): Backend default/eg-backend: Envoy Gateway's Backend names FQDN, IP or Unix-socket endpoints that no guardrail here checks",
            "note: bundle.yaml (document 10): ServiceEntry default/istio-entry: Istio's ServiceEntry adds hosts and addresses to the mesh that no guardrail here checks",
        ],
    };
    references_findings_in_json: Run {
        name: "findings-json", dir: "findings", args: &["-f", "bundle.yaml", "-o", "json"], stdin: None, exit: 3,
        verdicts: &[("default/api", 1, OK, REFS_OK)],
        says: &["finding: HTTPRoute default/dangling references XBackend default/ghost"],
    };
    references_findings_in_table: Run {
        name: "findings-table", dir: "findings", args: &["-f", "bundle.yaml", "-o", "table"], stdin: None, exit: 3,
        verdicts: &[("default/api", 1, OK, REFS_OK)],
        says: &["finding: HTTPRoute default/dangling references XBackend default/ghost"],
    };
    port_on_an_xbackend_reference_is_refused_by_v1_7_0: Run {
        name: "port-v17", dir: "findings", args: &["-f", "port-only.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/api", 1, OK, REFS_OK)],
        says: &["finding: HTTPRoute default/with-port: spec.rules[0].backendRefs[0]: Must not have port for Backend reference"],
    };
    port_on_an_xbackend_reference_passes_v1_6_3: Run {
        name: "port-v163", dir: "findings", args: &["-f", "port-only.yaml", "--gateway-api-version", "v1.6.3"], stdin: None, exit: 0,
        verdicts: &[("default/api", 1, OK, REFS_OK)],
        says: &[],
    };
    nothing_judged_says_which_flag_to_pass: Run {
        name: "istio", dir: "findings", args: &["-f", "istio.yaml"], stdin: None, exit: 0,
        verdicts: &[("default/api", 0, OK, REFS_OK)],
        says: &["note: no Gateway of the input is judged: none has a GatewayClass whose controllerName is gateway.networking.x-k8s.io/xbackend-controller; pass --controller-name, or --gateway-class NAME", "classes in the input: istio (istio.io/gateway-controller)"],
    };
    nothing_judged_without_xbackends: Run {
        name: "no-xbackends", dir: "findings", args: &["-f", "no-xbackends.yaml"], stdin: None, exit: 0,
        verdicts: &[],
        says: &["note: the input holds no XBackend: nothing to judge"],
    };
    flags_of_run_only_are_accepted_with_a_note: Run {
        name: "run-only-flags", dir: "findings", args: &["-f", "port-only.yaml", "--gateway-api-version", "v1.6.3", "--dns-min-ttl", "5", "--dns-max-ttl", "60", "--egress-address-hold", "10m"], stdin: None, exit: 0,
        verdicts: &[("default/api", 1, OK, REFS_OK)],
        says: &[
            "note: --dns-min-ttl has no effect on analyze: analyze asks DNS once per hostname (run uses it)",
            "note: --egress-address-hold has no effect on analyze",
        ],
    };
    duplicates_later_wins: Run {
        name: "duplicates", dir: "duplicates", args: &["-f", "a.yaml", "-f", "b.yaml"], stdin: None, exit: 0,
        verdicts: &[("default/api", 1, OK, REFS_OK)],
        says: &["note: XBackend default/api appears in a.yaml (document 1) and again in b.yaml (document 4); the later one wins"],
    };
    duplicates_later_wins_reversed: Run {
        name: "duplicates-reversed", dir: "duplicates", args: &["-f", "b.yaml", "-f", "a.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/api", 1, NOT_ALLOWED, REFS_OK)],
        says: &["note: XBackend default/api appears in b.yaml (document 4) and again in a.yaml (document 1); the later one wins"],
    };
    list_objects_yaml_and_json: Run {
        name: "list", dir: "list", args: &["-f", "list.yaml", "-f", "list.json"], stdin: None, exit: 0,
        verdicts: &[("default/from-json", 1, OK, REFS_OK), ("default/listed", 1, OK, REFS_OK)],
        says: &[],
    };
    folder_is_read_recursively: Run {
        name: "folder", dir: "folder", args: &["-f", "bundle"], stdin: None, exit: 3,
        verdicts: &[("default/nested-json", 1, NOT_ALLOWED, REFS_OK), ("default/nested-yaml", 1, OK, REFS_OK)],
        says: &[],
    };
    stdin_and_files_mix: Run {
        name: "stdin", dir: "stdin", args: &["-f", "-", "-f", "gateway.yaml"], stdin: Some("input.yaml"), exit: 0,
        verdicts: &[("default/piped", 1, OK, REFS_OK)],
        says: &[],
    };
    json_output_is_a_list: Run {
        name: "json", dir: "clean", args: &["-f", "bundle.yaml", "-o", "json"], stdin: None, exit: 0,
        verdicts: &[("default/openai-api", 1, OK, REFS_OK)],
        says: &[],
    };
    table_output_on_stdout: Run {
        name: "table", dir: "no-ancestors", args: &["-f", "bundle.yaml", "-o", "table"], stdin: None, exit: 3,
        verdicts: &[("default/foreign-bad", 0, NOT_ALLOWED, REFS_OK), ("default/orphan-bad", 0, NOT_ALLOWED, REFS_OK), ("default/orphan-ok", 0, OK, REFS_OK)],
        says: &[],
    };
    existing_status_is_merged: Run {
        name: "existing-status", dir: "existing-status", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[("default/exported", 2, OK, BAD_CA)],
        says: &[],
    };
    names_inside_the_cluster_or_a_private_network: Run {
        name: "cluster-names", dir: "cluster-names", args: &["-f", "bundle.yaml", "--allow-private-suffix", "corp"], stdin: None, exit: 3,
        verdicts: &[
            ("default/api-dev", 0, NOT_ALLOWED, REFS_OK),
            ("default/git", 0, OK, REFS_OK),
            ("default/kubernetes", 0, NOT_ALLOWED, REFS_OK),
            ("default/nas", 0, NOT_ALLOWED, REFS_OK),
            ("default/printer", 0, NOT_ALLOWED, REFS_OK),
            ("default/public", 0, OK, REFS_OK),
        ],
        says: &["the name of a Namespace in this cluster", "not a public suffix", "special-use"],
    };
    gateway_api_v1_7: Run {
        name: "v17", dir: "v17", args: &["-f", "bundle.yaml"], stdin: None, exit: 3,
        verdicts: &[
            ("default/batch", 1, OK, NO_PODS),
            ("default/h2c-with-tls", 1, INVALID, REFS_OK),
            ("default/ports-differ", 1, INVALID, REFS_OK),
            ("default/v16-port", 1, OK, REFS_OK),
            ("default/v17-number", 1, OK, REFS_OK),
            ("default/web", 1, OK, REFS_OK),
        ],
        says: &["keep only spec.port.number", "spec.protocol is H2C", "app=batch"],
    };
    live_bundle: Run {
        name: "live", dir: "live",
        args: &["-f", "bundle.yaml", "--controller-name", "example.com/xbackend-live", "--require-tls", "--cluster-domain", "corp.internal", "--deny-hostname", "*.blocked.example.com"],
        stdin: None, exit: 3,
        verdicts: &[
            ("ns-app/blocked", 2, NOT_ALLOWED, REFS_OK),
            ("ns-app/ca-garbage", 2, OK, BAD_CA),
            ("ns-app/ca-kind", 2, OK, BAD_KIND),
            ("ns-app/ca-missing", 2, OK, BAD_CA),
            ("ns-app/ca-ok", 2, OK, REFS_OK),
            ("ns-app/clear", 2, TLS_REQUIRED, REFS_OK),
            ("ns-app/corp", 2, INVALID, REFS_OK),
            ("ns-app/metadata", 2, NOT_ALLOWED, REFS_OK),
            ("ns-app/mtls-foreign", 2, OK, NOT_PERMITTED),
            ("ns-app/mtls-granted", 2, OK, REFS_OK),
            ("ns-app/mtls-missing", 2, OK, BAD_CLIENT_CERT),
            ("ns-app/mtls-mismatch", 2, OK, BAD_CLIENT_CERT),
            ("ns-app/mtls-ok", 2, OK, REFS_OK),
            ("ns-app/ok", 2, OK, REFS_OK),
            ("ns-app/orphan", 0, NOT_ALLOWED, REFS_OK),
            ("ns-app/pods-none", 2, OK, NO_PODS),
            ("ns-app/pods-ok", 2, OK, REFS_OK),
            ("ns-app/v17-number", 2, OK, REFS_OK),
        ],
        says: &[],
    };
}

#[test]
fn odd_documents_do_not_crash() {
    let out = Run {
        name: "weird",
        dir: "weird",
        args: &["-f", "bundle.yaml"],
        stdin: None,
        exit: 3,
        verdicts: &[
            ("default/ancestors-not-a-list", 0, OK, REFS_OK),
            ("default/no-spec", 0, INVALID, REFS_OK),
            ("default/spec-is-a-number", 0, INVALID, REFS_OK),
            ("default/status-is-a-string", 0, OK, REFS_OK),
        ],
        says: &[
            "bundle.yaml (document 3): XBackend default/ ignored: object has no metadata.name",
            "bundle.yaml (document 4): XBackend",
        ],
    }
    .check();
    // Two nameless objects are two ignored objects, not one duplicated.
    assert!(!out.stderr.contains("appears in"), "{}", out.stderr);
}

#[test]
fn same_name_in_another_group_is_not_a_duplicate() {
    let out = Run {
        name: "same-name-other-group",
        dir: "same-name-other-group",
        args: &["-f", "bundle.yaml"],
        stdin: None,
        exit: 0,
        verdicts: &[("default/openai-api", 1, OK, REFS_OK)],
        says: &["note: bundle.yaml (document 5): Gateway (networking.istio.io/v1) default/egress ignored"],
    }
    .check();
    assert!(!out.stderr.contains("appears in"), "{}", out.stderr);
}

/// Links to ancestor folders do not make the walk loop (two of them made it
/// explode), and a file reachable through several links (a mounted
/// ConfigMap's `..data`) is read once.
#[cfg(unix)]
#[test]
fn folder_symlinks_do_not_loop_or_duplicate() {
    use std::os::unix::fs::symlink;
    let root = support::tempdir("analyze-links");
    let bundle = std::fs::read_to_string(cases_dir().join("clean/bundle.yaml")).unwrap();
    std::fs::create_dir_all(root.join("a")).unwrap();
    std::fs::write(root.join("a/bundle.yaml"), &bundle).unwrap();
    symlink("..", root.join("a/up")).unwrap();
    symlink("..", root.join("a/up-again")).unwrap();
    // The layout kubelet gives a ConfigMap volume.
    let mounted = root.join("mounted");
    std::fs::create_dir_all(mounted.join("..2026_01_01_00_00_00.1")).unwrap();
    std::fs::write(
        mounted.join("..2026_01_01_00_00_00.1/backend.yaml"),
        support::xbackend_yaml("mounted", "mounted.example.com"),
    )
    .unwrap();
    symlink("..2026_01_01_00_00_00.1", mounted.join("..data")).unwrap();
    symlink("..data/backend.yaml", mounted.join("backend.yaml")).unwrap();

    let out = analyze(&root, &["-f", "."], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("appears in"), "every file read once:\n{}", out.stderr);
    assert!(out.stderr.contains("2 XBackend(s): 2 clean, 0 with findings"), "{}", out.stderr);
    assert!(
        out.stderr.contains("XBackend default/mounted  (no ancestor Gateway of this controller)"),
        "{}",
        out.stderr
    );
}

#[test]
fn json_output_matches_yaml_output() {
    let dir = cases_dir().join("client-cert");
    let yaml = analyze(&dir, &["-f", "bundle.yaml"], None);
    let json = analyze(&dir, &["-f", "bundle.yaml", "-o", "json"], None);
    assert_eq!((yaml.code, json.code), (3, 3));
    let strip = |docs: Vec<Value>| -> Vec<Value> {
        docs.into_iter()
            .map(|mut d| {
                for e in d["status"]["ancestors"].as_array_mut().into_iter().flatten() {
                    for c in e["conditions"].as_array_mut().into_iter().flatten() {
                        c.as_object_mut().unwrap().remove("lastTransitionTime");
                    }
                }
                d
            })
            .collect()
    };
    let from_yaml = strip(output_documents(&yaml.stdout, false));
    assert_eq!(from_yaml.len(), 6);
    assert_eq!(from_yaml, strip(output_documents(&json.stdout, true)));
    assert_eq!(yaml.stderr, json.stderr, "same summary");
}

#[test]
fn table_prints_nothing_on_stderr() {
    let out = analyze(&cases_dir().join("client-cert"), &["-f", "bundle.yaml", "-o", "table"], None);
    assert_eq!(out.code, 3);
    assert_eq!(out.stderr, "");
    assert!(out.stdout.contains("6 XBackend(s): 1 clean, 5 with findings"), "{}", out.stdout);
    assert!(!out.stdout.contains("apiVersion"), "no manifests in table output: {}", out.stdout);
}

#[test]
fn existing_status_keeps_foreign_entries_and_unchanged_times() {
    let out = analyze(&cases_dir().join("existing-status"), &["-f", "bundle.yaml"], None);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let docs = output_documents(&out.stdout, false);
    let list = docs[0]["status"]["ancestors"].as_array().unwrap();
    let gateways: Vec<(String, String)> = list
        .iter()
        .map(|e| {
            (e["controllerName"].as_str().unwrap().to_string(), e["ancestorRef"]["name"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        gateways,
        [("example.com/other-controller", "theirs"), (DEFAULT_CONTROLLER, "egress"), (DEFAULT_CONTROLLER, "second")]
            .map(|(c, g)| (c.to_string(), g.to_string())),
        "foreign entry first and untouched, the stale one (gone) removed"
    );
    assert_eq!(list[0]["conditions"][0]["lastTransitionTime"], "2020-01-01T00:00:00Z");
    assert_eq!(list[0]["conditions"][0]["message"], "theirs");
    let egress = &list[1]["conditions"];
    assert_eq!(egress[0]["lastTransitionTime"], "2021-02-03T04:05:06Z", "Accepted did not flip: its time stays");
    assert_eq!(egress[0]["observedGeneration"], 3);
    assert_ne!(egress[1]["lastTransitionTime"], "2021-02-03T04:05:06Z", "ResolvedRefs flipped: new time");
    let (_, stamped) = normalize(&egress[1]["lastTransitionTime"].to_string(), &out);
    assert_eq!(stamped, 1, "ResolvedRefs time is now: {}", egress[1]);
}

#[test]
fn usage_errors_exit_2() {
    let dir = cases_dir().join("clean");
    for args in [&["-f", "bundle.yaml", "-o", "xml"][..], &[][..], &["-f", "bundle.yaml", "--no-such-flag"][..]] {
        let out = analyze(&dir, args, None);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
    }
}

#[test]
fn empty_input_is_clean() {
    let dir = support::tempdir("analyze-empty");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/empty.yaml"), "---\n# nothing\n---\n").unwrap();
    let out = analyze(&dir, &["-f", "."], None);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(out.stderr.contains("no XBackends found"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// analyze and the live controller agree.

type Verdicts = BTreeMap<String, Vec<(String, Vec<(String, String, String, String)>)>>;

/// name -> [(Gateway, [(type, status, reason, message)])] for `controller`'s entries.
fn verdicts_of<'a>(objects: impl IntoIterator<Item = &'a Value>, controller: &str) -> Verdicts {
    objects
        .into_iter()
        .map(|o| {
            let entries = our_entries(o, controller)
                .map(|e| {
                    let conditions = e["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let s = |f: &str| c[f].as_str().unwrap_or("").to_string();
                            (s("type"), s("status"), s("reason"), s("message"))
                        })
                        .collect();
                    (gateway_of(e), conditions)
                })
                .collect();
            (o["metadata"]["name"].as_str().unwrap_or("").to_string(), entries)
        })
        .collect()
}

#[tokio::test]
async fn analyze_and_controller_agree() {
    use support::{Channel, ControlPlane, Controller};
    let cp = ControlPlane::shared(Channel::Standard);
    let (client, app_ns) = cp.namespace("analyze-app").await;
    let (_, certs_ns) = cp.namespace("analyze-certs").await;
    support::install_crd(&client).await;
    let class = support::unique_name("xbackend-live");
    let controller_name = format!("example.com/{class}");

    // The same text for both: namespaces and the (cluster-scoped) classes made unique to this run.
    let template = std::fs::read_to_string(cases_dir().join("live/bundle.yaml")).unwrap();
    let bundle = template.replace("ns-certs", &certs_ns).replace("ns-app", &app_ns).replace("xbackend-live", &class);
    let dir = support::tempdir("analyze-live");
    std::fs::write(dir.join("bundle.yaml"), &bundle).unwrap();
    let flags = [
        "--controller-name",
        controller_name.as_str(),
        "--require-tls",
        "--cluster-domain",
        "corp.internal",
        "--deny-hostname",
        "*.blocked.example.com",
    ];

    let mut args = vec!["-f", "bundle.yaml"];
    args.extend_from_slice(&flags);
    let out = analyze(&dir, &args, None);
    assert_eq!(out.code, 3, "{}", out.stderr);
    let offline = verdicts_of(&output_documents(&out.stdout, false), &controller_name);

    // Not vacuous: every reason of docs/design.md §4 occurs, two Gateways each, none of the foreign class.
    let reasons: BTreeSet<&str> =
        offline.values().flatten().flat_map(|(_, cs)| cs.iter().map(|c| c.2.as_str())).collect();
    for reason in [
        "Accepted",
        "Invalid",
        "HostnameNotAllowed",
        "TLSRequired",
        "ResolvedRefs",
        "InvalidClientCertificateRef",
        "InvalidCACertificateRef",
        "InvalidKind",
        "RefNotPermitted",
        "NoMatchingPods",
    ] {
        assert!(reasons.contains(reason), "analyze output lacks {reason}: {offline:#?}");
    }
    assert_eq!(offline.len(), 18);
    assert_eq!(offline["orphan"], vec![]);
    for (name, entries) in offline.iter().filter(|(n, _)| *n != "orphan") {
        let gateways: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(gateways, [format!("{app_ns}/gw-a"), format!("{app_ns}/gw-b")], "{name}");
    }

    support::apply_yaml(&client, Some(&app_ns), &bundle).await;
    let ctl = Controller::start(&cp.kubeconfig, &flags);
    ctl.wait_ready().await;
    let api = support::xbackend_api(&client, &app_ns);
    let live = || async {
        let list = api.list(&Default::default()).await.ok()?;
        let objects: Vec<Value> = list.items.iter().map(|o| serde_json::to_value(o).unwrap()).collect();
        Some(verdicts_of(&objects, &controller_name))
    };
    let converged =
        support::eventually(Duration::from_secs(60), || async { live().await.filter(|l| *l == offline) }).await;
    if converged.is_none() {
        let now = live().await.unwrap_or_default();
        similar_asserts::assert_eq!(analyze: offline, controller: now, "controller log:\n{}", ctl.log_tail());
    }
    // Nothing else arrives later (e.g. for the orphan): a sentinel XBackend
    // created now gets its entry, and by then no other object has been written.
    let versions = || async {
        let list = api.list(&Default::default()).await.unwrap();
        list.items
            .into_iter()
            .filter(|o| o.metadata.name.as_deref() != Some("sentinel"))
            .map(|o| (o.metadata.name.unwrap_or_default(), o.metadata.resource_version.unwrap_or_default()))
            .collect::<BTreeMap<_, _>>()
    };
    let before = versions().await;
    let sentinel = "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {name: sentinel}\nspec:\n  type: ExternalHostname\n  port: {port: 443}\n  externalHostname: {hostname: sentinel.example.com}\n  tls: {mode: ServerOnly, validation: {hostname: sentinel.example.com, wellKnownCACertificates: System}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r-sentinel}\nspec:\n  parentRefs: [{name: gw-a}]\n  rules:\n  - backendRefs: [{group: gateway.networking.x-k8s.io, kind: XBackend, name: sentinel}]\n";
    support::apply_yaml(&client, Some(&app_ns), sentinel).await;
    let judged = support::eventually(Duration::from_secs(30), || async {
        let o = api.get("sentinel").await.ok()?;
        (our_entries(&serde_json::to_value(&o).unwrap(), &controller_name).count() == 1).then_some(())
    })
    .await;
    assert!(judged.is_some(), "sentinel judged; controller log:\n{}", ctl.log_tail());
    assert_eq!(versions().await, before, "no XBackend written after convergence");
    let mut now = live().await.unwrap();
    now.remove("sentinel");
    similar_asserts::assert_eq!(analyze: offline, controller: now);
}

/// `--dns-check` judges resolved addresses as `run` does, against a DNS server
/// of this test's own; without it, analyze never asks DNS.
#[test]
fn dns_check_judges_resolved_addresses_only_when_asked() {
    use support::dns::{Answer, DnsServer};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dns = runtime.block_on(DnsServer::start());
    dns.set("rebound.example.net", Answer::Addresses(vec!["169.254.169.254".parse().unwrap()], 30));
    dns.set("public.example.net", Answer::Addresses(vec!["93.184.215.14".parse().unwrap()], 30));
    let dir = support::tempdir("analyze-dns");
    let backend = |name: &str, host: &str| {
        format!(
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {{number: 443}}\n  externalHostname: {{hostname: {host}}}\n  tls:\n    mode: ServerOnly\n    validation: {{hostname: {host}}}\n"
        )
    };
    let bundle = format!("{}{}", backend("rebound", "rebound.example.net"), backend("public", "public.example.net"));
    std::fs::write(dir.join("bundle.yaml"), bundle).unwrap();
    let server = dns.flag();
    let verdict = |out: &Output, name: &str| -> String {
        let line = out.stderr.lines().find(|l| l.starts_with(&format!("XBackend default/{name} "))).unwrap_or_default();
        line.split("Accepted=").nth(1).unwrap_or_default().split(')').next().unwrap_or_default().to_string()
    };

    let names_only = analyze(&dir, &["-f", "bundle.yaml", "--dns-server", &server], None);
    assert_eq!(names_only.code, 0, "{}", names_only.stderr);
    assert_eq!(dns.queries("rebound.example.net"), 0, "no lookup without --dns-check");

    let checked = analyze(&dir, &["-f", "bundle.yaml", "--dns-check", "--dns-server", &server], None);
    assert_eq!(checked.code, 3, "{}", checked.stderr);
    assert_eq!(verdict(&checked, "rebound"), "False (AddressNotAllowed", "{}", checked.stderr);
    assert_eq!(verdict(&checked, "public"), "True (Accepted", "{}", checked.stderr);
    assert!(checked.stderr.contains("169.254.169.254") && checked.stderr.contains("metadata"), "{}", checked.stderr);
}

/// Issue 19, item 4: `--egress-policy networkpolicy --dns-check` prints the
/// NetworkPolicy `run` would write for each judged Gateway, and an
/// independent evaluator (nca) reads it as allowing exactly the vetted
/// addresses on their ports, the EndpointSelector's Pods and DNS.
#[test]
fn egress_policies_are_printed_for_review_and_nca_agrees() {
    use support::dns::{Answer, DnsServer};
    use support::nca::Connectivity;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dns = runtime.block_on(DnsServer::start());
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    dns.set("api.example.net", Answer::Addresses(vec![ip("93.184.215.14"), ip("2606:2800:21f:cb07::14")], 30));
    dns.set("stun.example.net", Answer::Addresses(vec![ip("93.184.215.16")], 30));
    dns.set("rebound.example.net", Answer::Addresses(vec![ip("169.254.169.254")], 30));
    let dir = support::tempdir("analyze-egress");
    let external = |name: &str, port: u16, tls: bool| {
        let tls = if tls {
            format!("  tls: {{mode: ServerOnly, validation: {{hostname: {name}.example.net}}}}\n")
        } else {
            String::new()
        };
        format!(
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  type: ExternalHostname\n  port: {{number: {port}}}\n  externalHostname: {{hostname: {name}.example.net}}\n{tls}"
        )
    };
    let xref = |name: &str| format!("{{group: gateway.networking.x-k8s.io, kind: XBackend, name: {name}}}");
    let bundle = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ours}}\nspec: {{controllerName: gateway.networking.x-k8s.io/xbackend-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw, namespace: app}}\nspec: {{gatewayClassName: ours, listeners: [{{name: http, protocol: HTTP, port: 80}}]}}\n{}{}{}---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: web, namespace: app}}\nspec:\n  type: EndpointSelector\n  port: {{number: 8080}}\n  endpointSelector: {{matchLabels: {{app: web}}}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: app}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{}, {}, {}]}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: UDPRoute\nmetadata: {{name: u, namespace: app}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{}]}}]\n",
        external("api", 443, true),
        external("stun", 3478, false),
        external("rebound", 443, true),
        xref("api"),
        xref("web"),
        xref("rebound"),
        xref("stun"),
    );
    std::fs::write(dir.join("bundle.yaml"), bundle).unwrap();
    let server = dns.flag();
    let args = ["-f", "bundle.yaml", "--dns-check", "--dns-server", &server, "--egress-policy", "networkpolicy"];

    let names_only = analyze(&dir, &["-f", "bundle.yaml", "--egress-policy", "networkpolicy"], None);
    assert_eq!(names_only.code, 2, "the policies need the addresses: {}", names_only.stderr);
    assert!(names_only.stderr.contains("needs --dns-check"), "{}", names_only.stderr);

    let mut closed = args.to_vec();
    closed.extend(["--egress-policy-allow-cluster", "false"]);
    let out = analyze(&dir, &closed, None);
    assert_eq!(out.code, 3, "rebound is rejected: {}", out.stderr);
    let policies: Vec<Value> =
        output_documents(&out.stdout, false).into_iter().filter(|d| d["kind"] == "NetworkPolicy").collect();
    assert_eq!(policies.len(), 1, "{}", out.stdout);
    assert_eq!(policies[0]["metadata"]["name"], "xbackend-egress-gw");
    assert_eq!(policies[0]["metadata"]["namespace"], "app");
    assert!(out.stderr.contains("NetworkPolicy app/xbackend-egress-gw  4 egress rule(s)"), "{}", out.stderr);
    let notes = policies[0]["metadata"]["annotations"]["gateway.networking.x-k8s.io/egress-rules"].as_str().unwrap();
    assert!(!notes.contains("rebound"), "a rejected XBackend gets nothing: {notes}");

    // nca reads the policy against a Gateway Pod, the web Pod and cluster DNS.
    // As multi-document YAML: nca reads a bare YAML list as no policy at all.
    let documents: String = policies.iter().map(|p| format!("---\n{}", serde_yaml_ng::to_string(p).unwrap())).collect();
    std::fs::write(dir.join("policies.yaml"), documents).unwrap();
    let pod = |ns: &str, name: &str, labels: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\nspec: {{containers: [{{name: c, image: x}}]}}\n"
        )
    };
    let topology = [
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n".to_string(),
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: kube-system}\n".to_string(),
        pod("app", "gw-pod", "{gateway.networking.k8s.io/gateway-name: gw}"),
        pod("app", "web-0", "{app: web}"),
        pod("app", "db-0", "{app: db}"),
        pod("kube-system", "kube-dns-0", "{k8s-app: kube-dns}"),
    ]
    .concat();
    std::fs::write(dir.join("topology.yaml"), topology).unwrap();
    let map = Connectivity::of("app/gw-pod", &dir.join("policies.yaml"), &dir.join("topology.yaml"));
    let checks = [
        (map.allows_address(ip("93.184.215.14"), "TCP", 443), true, "api over IPv4"),
        (map.allows_address(ip("2606:2800:21f:cb07::14"), "TCP", 443), true, "api over IPv6"),
        (map.allows_address(ip("93.184.215.14"), "TCP", 8443), false, "api on another port"),
        (map.allows_address(ip("93.184.215.15"), "TCP", 443), false, "an address never vetted"),
        (map.allows_address(ip("169.254.169.254"), "TCP", 443), false, "the rejected rebound"),
        (map.allows_address(ip("93.184.215.16"), "UDP", 3478), true, "stun over UDP (UDPRoute)"),
        (map.allows_pod("app/web-0", "TCP", 8080), true, "the EndpointSelector's Pod"),
        (map.allows_pod("app/web-0", "TCP", 9090), false, "that Pod on another port"),
        (map.allows_pod("app/db-0", "TCP", 8080), false, "another Pod (cluster rule off)"),
        (map.allows_pod("kube-system/kube-dns-0", "UDP", 53), true, "DNS"),
    ];
    for (got, want, what) in checks {
        assert_eq!(got, want, "{what}; nca map:\n{}", map.text);
    }

    // The default keeps the cluster open: every Pod, every port.
    let open = analyze(&dir, &args, None);
    let policies: Vec<Value> =
        output_documents(&open.stdout, false).into_iter().filter(|d| d["kind"] == "NetworkPolicy").collect();
    assert_eq!(policies[0]["spec"]["egress"][1], serde_json::json!({"to": [{"namespaceSelector": {}}]}));
}

/// docs/security.md, "Several resolvers": replicas of the cluster DNS can
/// answer differently and the data plane may ask any of them, so every
/// `--dns-server` is asked and the answers are joined, for the verdict and
/// for the egress policy alike.
#[test]
fn every_resolver_is_asked_and_their_answers_joined() {
    use support::dns::{Answer, DnsServer};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (one, two) = runtime.block_on(async { (DnsServer::start().await, DnsServer::start().await) });
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    one.set("api.example.net", Answer::Addresses(vec![ip("93.184.215.14")], 30));
    two.set("api.example.net", Answer::Addresses(vec![ip("93.184.215.15")], 30));
    one.set("split.example.net", Answer::Addresses(vec![ip("93.184.215.16")], 30));
    two.set("split.example.net", Answer::Addresses(vec![ip("169.254.169.254")], 30));
    let dir = support::tempdir("analyze-resolvers");
    let backend = |name: &str| {
        format!(
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {{number: 443}}\n  externalHostname: {{hostname: {name}.example.net}}\n  tls: {{mode: ServerOnly, validation: {{hostname: {name}.example.net}}}}\n"
        )
    };
    let bundle = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ours}}\nspec: {{controllerName: gateway.networking.x-k8s.io/xbackend-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec: {{gatewayClassName: ours, listeners: [{{name: http, protocol: HTTP, port: 80}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{{group: gateway.networking.x-k8s.io, kind: XBackend, name: api}}, {{group: gateway.networking.x-k8s.io, kind: XBackend, name: split}}]}}]\n{}{}",
        backend("api"),
        backend("split")
    );
    std::fs::write(dir.join("bundle.yaml"), bundle).unwrap();
    let (a, b) = (one.flag(), two.flag());
    let args = [
        "-f",
        "bundle.yaml",
        "-o",
        "json",
        "--dns-check",
        "--dns-server",
        &a,
        "--dns-server",
        &b,
        "--egress-policy",
        "networkpolicy",
    ];
    let out = analyze(&dir, &args, None);
    assert_eq!(out.code, 3, "split reaches the metadata address through one resolver: {}", out.stderr);
    assert!(one.queries("api.example.net") > 0 && two.queries("api.example.net") > 0, "both asked");
    let docs = output_documents(&out.stdout, true);
    let split = docs.iter().find(|d| d["metadata"]["name"] == "split").unwrap();
    let verdict = conditions(our_entries(split, "gateway.networking.x-k8s.io/xbackend-controller").next().unwrap());
    assert_eq!(verdict[0], ("Accepted".into(), "False".into(), "AddressNotAllowed".into()));
    let policy = docs.iter().find(|d| d["kind"] == "NetworkPolicy").unwrap();
    let cidrs: Vec<&str> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["to"].as_array().unwrap())
        .filter_map(|p| p["ipBlock"]["cidr"].as_str())
        .collect();
    assert_eq!(cidrs, ["93.184.215.14/32", "93.184.215.15/32"], "both answers for api, nothing of split");
}

/// Issue 30, items 3 and 4: under `--dns-check` a lookup that fails or
/// times out is a finding naming the hostname, and the printed policy says
/// which XBackend it leaves out and why; `--egress-cluster routes` refusals
/// are findings; `--egress-max-addresses-per-host` acts. With every answer
/// good and the cluster rule `all`, the same bundle is clean.
#[test]
fn dns_failures_and_refused_destinations_are_findings() {
    use support::dns::{Answer, DnsServer};
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dns = runtime.block_on(DnsServer::start());
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
    let three = vec![ip("93.184.215.14"), ip("93.184.215.15"), ip("93.184.215.16")];
    dns.set("ok.example.net", Answer::Addresses(three.clone(), 30));
    dns.set("servfail.example.net", Answer::ServFail);
    dns.set("gone.example.net", Answer::NxDomain);
    dns.set("slow.example.net", Answer::Silence);
    dns.set("meta.example.net", Answer::Addresses(vec![ip("169.254.169.254")], 30));
    dns.set("lost.example.net", Answer::NxDomain);
    let dir = support::tempdir("analyze-dns-findings");
    let backend = |name: &str| {
        format!(
            "---\napiVersion: gateway.networking.x-k8s.io/v1alpha1\nkind: XBackend\nmetadata: {{name: {name}}}\nspec:\n  type: ExternalHostname\n  port: {{number: 443}}\n  externalHostname: {{hostname: {name}.example.net}}\n  tls: {{mode: ServerOnly, validation: {{hostname: {name}.example.net}}}}\n"
        )
    };
    let names = ["ok", "servfail", "gone", "slow"];
    let refs: Vec<String> =
        names.iter().map(|n| format!("{{group: gateway.networking.x-k8s.io, kind: XBackend, name: {n}}}")).collect();
    let bundle = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: ours}}\nspec: {{controllerName: gateway.networking.x-k8s.io/xbackend-controller}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec: {{gatewayClassName: ours, listeners: [{{name: http, protocol: HTTP, port: 80}}]}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules: [{{backendRefs: [{}, {{name: meta, port: 80}}, {{name: lost, port: 443}}, {{name: google, port: 80}}]}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: meta}}\nspec: {{type: ExternalName, externalName: meta.example.net}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: lost}}\nspec: {{type: ExternalName, externalName: lost.example.net}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: google}}\nspec: {{type: ExternalName, externalName: metadata.google.internal}}\n{}",
        refs.join(", "),
        names.map(backend).concat()
    );
    std::fs::write(dir.join("bundle.yaml"), bundle).unwrap();
    let server = dns.flag();
    let base = ["-f", "bundle.yaml", "--dns-check", "--dns-server", &server, "--egress-policy", "networkpolicy"];
    let args = |extra: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(extra.iter().copied()).collect() };

    let out = analyze(&dir, &args(&["--egress-cluster", "routes", "--egress-max-addresses-per-host", "2"]), None);
    assert_eq!(out.code, 3, "{}", out.stderr);
    for host in ["servfail.example.net", "gone.example.net", "slow.example.net"] {
        let finding = out.stderr.lines().find(|l| l.starts_with(&format!("finding: the DNS lookup of {host} failed")));
        assert!(finding.is_some(), "a finding for {host}: {}", out.stderr);
    }
    assert!(!out.stderr.contains("lookup of ok.example.net"), "{}", out.stderr);
    let lost = "finding: the DNS lookup of lost.example.net failed (the name does not exist (NXDOMAIN)): its addresses are not judged, and ExternalName Service default/lost is absent";
    assert!(out.stderr.contains(lost), "{}", out.stderr);
    let refused: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("  refused: ")).collect();
    assert_eq!(refused.len(), 2, "{}", out.stderr);
    assert!(refused.iter().any(|r| r.contains("default/meta") && r.contains("169.254.169.254")), "{}", out.stderr);
    assert!(refused.iter().any(|r| r.contains("default/google") && r.contains("metadata")), "{}", out.stderr);
    assert_eq!(dns.queries("metadata.google.internal"), 0, "a name the name rules refuse is never asked for");

    let policies: Vec<Value> =
        output_documents(&out.stdout, false).into_iter().filter(|d| d["kind"] == "NetworkPolicy").collect();
    assert_eq!(policies.len(), 1, "{}", out.stdout);
    let absent = policies[0]["metadata"]["annotations"][ABSENT].as_str().unwrap_or_default();
    for name in ["servfail", "gone", "slow"] {
        assert!(
            absent.contains(&format!("XBackend default/{name} ({name}.example.net): its DNS lookup failed")),
            "{absent}"
        );
    }
    let text = policies[0]["spec"]["egress"].to_string();
    assert!(!text.contains("169.254.169.254"), "the refused ExternalName is not allowed: {text}");
    let vetted = three.iter().filter(|a| text.contains(&format!("{a}/32"))).count();
    assert_eq!(vetted, 2, "at most 2 addresses per hostname: {text}");

    // Every answer good and the cluster rule `all`: clean.
    dns.set("servfail.example.net", Answer::Addresses(vec![ip("93.184.215.17")], 30));
    dns.set("gone.example.net", Answer::Addresses(vec![ip("93.184.215.18")], 30));
    dns.set("slow.example.net", Answer::Addresses(vec![ip("93.184.215.19")], 30));
    dns.set("lost.example.net", Answer::Addresses(vec![ip("93.184.215.20")], 30));
    let clean = analyze(&dir, &args(&["--egress-cluster", "all"]), None);
    assert_eq!(clean.code, 0, "{}", clean.stderr);
    assert!(!clean.stderr.contains("finding:"), "{}", clean.stderr);
    let policies: Vec<Value> =
        output_documents(&clean.stdout, false).into_iter().filter(|d| d["kind"] == "NetworkPolicy").collect();
    assert!(policies[0]["metadata"]["annotations"].get(ABSENT).is_none(), "{}", clean.stdout);
    let vetted =
        three.iter().filter(|a| policies[0]["spec"]["egress"].to_string().contains(&format!("{a}/32"))).count();
    assert_eq!(vetted, 3, "the default cap keeps all three");
}

/// The annotation a printed policy carries for each XBackend it leaves out.
const ABSENT: &str = "gateway.networking.x-k8s.io/egress-absent";
