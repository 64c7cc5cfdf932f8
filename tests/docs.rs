//! The docs kept true (issue 30): flags against `--help`, metrics against the
//! registry, chart values against the schema, and deploy/README.md's commands
//! and recipe, and README's `analyze` of examples/, run as written.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use serde_json::Value;
use support::{Channel, ControlPlane};

const CHART: &str = "deploy/helm/xbackend-controller";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("run {shown}: {e}"))
}

/// The Markdown files whose claims these tests hold to the code.
fn doc_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string(), "deploy/README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

// ---- Markdown ----

/// A fenced code block: its language and its text.
struct Block {
    lang: String,
    text: String,
}

/// The prose of a Markdown file (fenced blocks left out) and its blocks.
fn split_markdown(md: &str) -> (String, Vec<Block>) {
    let mut prose = String::new();
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for line in md.lines() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(lang)) => open = Some(Block { lang: lang.trim().to_string(), text: String::new() }),
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(block), None) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {
                prose.push_str(line);
                prose.push('\n');
            }
        }
    }
    (prose, blocks)
}

/// The inline code spans of some prose, and the prose outside them.
fn code_spans(prose: &str) -> (Vec<String>, String) {
    let mut spans = Vec::new();
    let mut outside = String::new();
    for (i, part) in prose.split('`').enumerate() {
        if i % 2 == 1 {
            spans.push(part.split_whitespace().collect::<Vec<_>>().join(" "));
        } else {
            outside.push_str(part);
            outside.push(' ');
        }
    }
    (spans, outside)
}

/// The cells of a Markdown table row (no cell of these tables holds a `|`).
fn cells(row: &str) -> Vec<String> {
    row.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

/// The `--long-flag` names in a text.
fn flags_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("--") {
        let start = i + at;
        let name_start = start + 2;
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'-');
        let mut end = name_start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'-')
        {
            end += 1;
        }
        if before_ok && end > name_start && bytes[name_start].is_ascii_lowercase() {
            // `--egress-*` names a family of flags: kept with its star.
            let star = bytes.get(end) == Some(&b'*');
            out.push(if star {
                text[start..=end].to_string()
            } else {
                text[start..end].trim_end_matches('-').to_string()
            });
        }
        i = end.max(start + 2);
    }
    out
}

/// The shell commands of a code block: continuation lines joined (a trailing
/// `\`, or an indented line in a synopsis), comments set apart, pipelines and
/// lists split outside quotes and `[...]`.
fn commands(block: &str) -> (Vec<String>, Vec<String>) {
    let mut lines: Vec<String> = Vec::new();
    let mut comments = Vec::new();
    let mut continuing = false;
    for line in block.lines() {
        let (code, comment) = match line.find(" #").or_else(|| line.trim_start().starts_with('#').then_some(0)) {
            Some(at) => (&line[..at], Some(&line[at..])),
            None => (line, None),
        };
        comments.extend(comment.map(str::to_string));
        let code = code.trim_end();
        let (body, cont) = match code.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (code, false),
        };
        let indented = line.starts_with(char::is_whitespace);
        match lines.last_mut() {
            Some(last) if continuing || (indented && !body.trim().is_empty()) => {
                last.push(' ');
                last.push_str(body.trim());
            }
            _ if !body.trim().is_empty() => lines.push(body.trim().to_string()),
            _ => {}
        }
        continuing = cont;
    }
    let mut out = Vec::new();
    for line in lines {
        let (mut quote, mut depth, mut part) = (None, 0i32, String::new());
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '[') => depth += 1,
                (None, ']') => depth -= 1,
                (None, '|' | ';') if depth <= 0 => {
                    out.push(std::mem::take(&mut part));
                    i += 1;
                    continue;
                }
                (None, '&') if depth <= 0 && chars.get(i + 1) == Some(&'&') => {
                    out.push(std::mem::take(&mut part));
                    i += 2;
                    continue;
                }
                _ => {}
            }
            part.push(c);
            i += 1;
        }
        out.push(part);
    }
    let out = out.into_iter().map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect();
    (out, comments)
}

/// The program a command runs (after a `$ ` prompt and `VAR=value`s) and its words.
fn program(command: &str) -> (String, Vec<String>) {
    let command = command.trim_start_matches("$ ");
    let words: Vec<String> = command.split_whitespace().map(str::to_string).collect();
    let at = words.iter().position(|w| !w.contains('=') || w.starts_with('-')).unwrap_or(words.len());
    let words = words[at..].to_vec();
    (words.first().cloned().unwrap_or_default(), words)
}

/// Shell words of one command line (quotes and backslashes as sh reads them).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    w.push(c);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => w.push(chars.next().unwrap()),
                        c => w.push(c),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

// ---- The binary's flags ----

/// One flag of a subcommand's `--help`.
struct HelpFlag {
    long: String,
    text: String,
    default: Option<String>,
}

fn help(sub: &str) -> (Vec<HelpFlag>, String) {
    let out = run(Command::new(env!("CARGO_BIN_EXE_xbackend-controller")).args([sub, "--help"]));
    assert!(out.status.success(), "{sub} --help: {}", text(&out.stderr));
    let help = text(&out.stdout);
    let usage = help.lines().find(|l| l.starts_with("Usage:")).unwrap_or_default().to_string();
    let mut flags: Vec<HelpFlag> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_flag = (2..=6).contains(&indent) && trimmed.starts_with('-');
        if is_flag {
            let long =
                flags_in(trimmed).into_iter().next().unwrap_or_else(|| panic!("{sub}: no long flag in {line:?}"));
            flags.push(HelpFlag { long, text: String::new(), default: None });
        } else if let Some(flag) = flags.last_mut() {
            flag.text.push_str(trimmed);
            flag.text.push(' ');
        }
    }
    for flag in &mut flags {
        flag.default = flag.text.split("[default: ").nth(1).and_then(|rest| rest.split(']').next()).map(str::to_string);
    }
    flags.retain(|f| f.long != "--help");
    (flags, usage)
}

fn flag_names(flags: &[HelpFlag]) -> BTreeSet<String> {
    flags.iter().map(|f| f.long.clone()).collect()
}

/// Flags of other tools that the docs name outside a command of that tool,
/// each with the tool: a doc naming a flag that is in neither the binary nor
/// here fails.
const OTHER_TOOLS_FLAGS: &[(&str, &str)] = &[
    ("--set", "helm: chart values given one by one in prose"),
    ("--reuse-values", "helm upgrade, explained in prose"),
    ("--reset-then-reuse-values", "helm upgrade, explained in prose"),
    ("--dir", "the test control plane (tests/controlplane), described in design.md §9"),
    ("--exit-with-parent", "the test control plane"),
    ("--unsafe-no-fsync", "the test control plane"),
    ("--shutdown-send-retry-after", "kube-apiserver, as the test control plane sets it"),
    ("--admin-network-policy", "kube-network-policies, the enforcer of tests/enforce.rs"),
];

/// Programs whose flags are their own: skipped in commands.
const OTHER_PROGRAMS: &[&str] =
    &["helm", "kubectl", "docker", "cargo", "make", "go", "curl", "promtool", "git", "python3", "/tmp/cp", "BIN"];

/// Every flag the docs name: (flag, SUB when it is on an
/// `xbackend-controller SUB` command, where it was found). Commands of
/// OTHER_PROGRAMS are left out.
fn named_flags() -> Vec<(String, Option<String>, String)> {
    let mut out = Vec::new();
    for file in doc_files() {
        let md = read(&file);
        let (prose, blocks) = split_markdown(&md);
        let mut command_like: Vec<String> = Vec::new();
        let mut loose: Vec<String> = Vec::new();
        for block in &blocks {
            if block.lang == "yaml" || block.lang == "json" {
                loose.push(block.text.clone());
                continue;
            }
            let (cmds, comments) = commands(&block.text);
            command_like.extend(cmds);
            loose.extend(comments);
        }
        let (spans, outside) = code_spans(&prose);
        for span in spans {
            if flags_in(&span).is_empty() {
                continue;
            }
            let (prog, _) = program(&span);
            if prog.starts_with("--") {
                loose.push(span);
            } else {
                command_like.push(span);
            }
        }
        loose.push(outside);
        for command in command_like {
            let (prog, words) = program(&command);
            if OTHER_PROGRAMS.iter().any(|p| prog == *p || prog.starts_with("hack/") || prog.starts_with("target/")) {
                continue;
            }
            let sub = prog.ends_with("xbackend-controller").then(|| words.get(1).cloned().unwrap_or_default());
            for flag in flags_in(&command) {
                out.push((flag, sub.clone(), format!("{file}: `{command}`")));
            }
        }
        for text in loose {
            for flag in flags_in(&text) {
                let line = text.lines().find(|l| l.contains(&flag)).unwrap_or_default().trim();
                out.push((flag, None, format!("{file}: {line:?}")));
            }
        }
    }
    out
}

/// The entries of one `## ` section of docs/cli.md: (flags of the first
/// cell, default cell).
fn cli_entries(cli: &str, heading: &str) -> Vec<(Vec<String>, String)> {
    let start = cli.find(heading).unwrap_or_else(|| panic!("docs/cli.md has no section {heading:?}"));
    let rest = &cli[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section
        .lines()
        .filter(|l| l.starts_with("| `-"))
        .map(|l| {
            let cells = cells(l);
            (flags_in(&cells[0]), cells.get(1).cloned().unwrap_or_default())
        })
        .collect()
}

/// docs/cli.md has one entry per flag of `run` and `analyze`, in the section
/// of the commands that have it, with `--help`'s default; `--help` itself
/// says a default for every flag.
#[test]
fn every_flag_has_one_entry_in_docs_cli_md_with_the_default_of_help() {
    let cli = read("docs/cli.md");
    let (run_flags, run_usage) = help("run");
    let (analyze_flags, analyze_usage) = help("analyze");
    let both = cli_entries(&cli, "## Flags of both `run` and `analyze`");
    let run_only = cli_entries(&cli, "## Flags of `run` only");
    let analyze_only = cli_entries(&cli, "## Flags of `analyze` only");
    let mut wrong = Vec::new();
    for (sub, flags, usage, own) in
        [("run", &run_flags, &run_usage, &run_only), ("analyze", &analyze_flags, &analyze_usage, &analyze_only)]
    {
        let entries: Vec<&(Vec<String>, String)> = both.iter().chain(own.iter()).collect();
        for flag in flags.iter() {
            let found: Vec<&&(Vec<String>, String)> = entries.iter().filter(|(f, _)| f.contains(&flag.long)).collect();
            match found.as_slice() {
                [(_, default)] => {
                    if let Some(want) = &flag.default
                        && !default.contains(&format!("`{want}`"))
                    {
                        wrong.push(format!(
                            "{sub} {}: docs/cli.md says default {default:?}, --help {want:?}",
                            flag.long
                        ));
                    }
                }
                [] => wrong.push(format!("{sub} {} has no entry in docs/cli.md", flag.long)),
                _ => wrong.push(format!("{sub} {} has {} entries in docs/cli.md", flag.long, found.len())),
            }
            let says_default = flag.default.is_some()
                || flag.text.contains("Default:")
                || flag.text.contains("(default on)")
                || usage.contains(&format!("{} <", flag.long));
            if !says_default {
                wrong.push(format!("{sub} --help says no default for {}", flag.long));
            }
        }
        for (entry, _) in own.iter() {
            for f in entry {
                if !flag_names(flags).contains(f) {
                    wrong.push(format!("docs/cli.md lists {f} under `{sub}` only, and `{sub}` has no such flag"));
                }
            }
        }
    }
    for (entry, _) in &both {
        for f in entry {
            if !(flag_names(&run_flags).contains(f) && flag_names(&analyze_flags).contains(f)) {
                wrong.push(format!("docs/cli.md lists {f} for both commands, and one of them lacks it"));
            }
        }
    }
    none_wrong("docs/cli.md and --help disagree", wrong);
}

/// Every `--flag` the docs (and `--help` itself) name exists: on an
/// `xbackend-controller run|analyze` command, in that subcommand; anywhere
/// else, in either, unless it is another tool's (its command, or
/// OTHER_TOOLS_FLAGS).
#[test]
fn every_flag_the_docs_name_exists() {
    let (run_flags, _) = help("run");
    let (analyze_flags, _) = help("analyze");
    let subs: BTreeMap<&str, BTreeSet<String>> =
        BTreeMap::from([("run", flag_names(&run_flags)), ("analyze", flag_names(&analyze_flags))]);
    let ours: BTreeSet<String> = subs.values().flatten().cloned().chain(["--help".to_string()]).collect();
    let others: BTreeSet<&str> = OTHER_TOOLS_FLAGS.iter().map(|(f, _)| *f).collect();
    let mut wrong = BTreeSet::new();
    let mut named = named_flags();
    // --help text names flags too.
    for flag in run_flags.iter().chain(&analyze_flags) {
        for f in flags_in(&flag.text) {
            named.push((f, None, format!("--help of {}", flag.long)));
        }
    }
    for (flag, sub, context) in &named {
        if let Some(prefix) = flag.strip_suffix('*') {
            if !ours.iter().any(|f| f.starts_with(prefix)) {
                wrong.insert(format!("no flag matches {flag}: {context}"));
            }
            continue;
        }
        let known = match sub.as_deref() {
            Some("crd") => false,
            Some(sub) => subs.get(sub).is_some_and(|flags| flags.contains(flag) || flag == "--help"),
            None => ours.contains(flag) || others.contains(flag.as_str()),
        };
        if !known {
            let on = sub.as_deref().map(|s| format!(" (on `{s}`)")).unwrap_or_default();
            wrong.insert(format!("{flag}{on} does not exist: {context}"));
        }
    }
    assert!(named.len() > 100, "the scan found only {} flags: is it still reading the docs?", named.len());
    // The allowlist stays small: an entry no doc needs any more goes.
    for (flag, tool) in OTHER_TOOLS_FLAGS {
        if !named.iter().any(|(f, _, _)| f == flag) {
            wrong.insert(format!("OTHER_TOOLS_FLAGS lists {flag} ({tool}), which no doc names outside its command"));
        }
    }
    none_wrong("flags the docs name that the binary does not have", wrong);
}

/// Fails with every finding, one per line, under `what`.
fn none_wrong(what: &str, wrong: impl IntoIterator<Item = String>) {
    let wrong: Vec<String> = wrong.into_iter().collect();
    assert!(wrong.is_empty(), "{what}:\n{}", wrong.join("\n"));
}

// ---- Metrics ----

/// A metric the controller registers: its family name, type and label names.
#[derive(Debug)]
struct Registered {
    family: String,
    kind: &'static str,
    labels: Vec<String>,
}

impl Registered {
    /// The names a query may use.
    fn series(&self) -> Vec<String> {
        match self.kind {
            "counter" => vec![format!("{}_total", self.family)],
            "histogram" => ["", "_bucket", "_sum", "_count"].iter().map(|s| format!("{}{s}", self.family)).collect(),
            _ => vec![self.family.clone()],
        }
    }

    /// The name docs/metrics.md lists it under.
    fn doc_name(&self) -> String {
        self.series().remove(0)
    }
}

/// Every metric of src/runtime/metrics.rs: each `registry.register(name, help,
/// m.field.clone())`, its field's type, and its label struct's fields.
fn registered() -> Vec<Registered> {
    let src = read("src/runtime/metrics.rs");
    let prefix =
        src.split("Registry::with_prefix(\"").nth(1).and_then(|r| r.split('"').next()).expect("registry prefix");
    // Field types of `pub struct Metrics`.
    let body = src.split("pub struct Metrics {").nth(1).and_then(|r| r.split("\n}").next()).expect("struct Metrics");
    let fields: BTreeMap<String, String> = body
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub ")?.split_once(':'))
        .map(|(name, ty)| (name.trim().to_string(), ty.trim().trim_end_matches(',').to_string()))
        .collect();
    // Label structs: their String fields, in order.
    let mut label_structs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for chunk in src.split("pub struct ").skip(1) {
        let name: String = chunk.chars().take_while(|c| c.is_alphanumeric()).collect();
        let Some(body) = chunk.split_once('{').map(|(_, b)| b.split('}').next().unwrap_or_default()) else { continue };
        let labels: Vec<String> = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub ")?.strip_suffix(": String,"))
            .map(str::to_string)
            .collect();
        if name.ends_with("Label") {
            label_structs.insert(name, labels);
        }
    }
    let calls = src.split("registry.register(").skip(1).collect::<Vec<_>>();
    let mut out = Vec::new();
    for call in &calls {
        let name = call.split('"').nth(1).expect("a metric name");
        let field = call
            .split("m.")
            .nth(1)
            .and_then(|r| r.split(".clone()").next())
            .unwrap_or_else(|| panic!("metric {name}: no m.FIELD.clone()"));
        let ty = fields.get(field).unwrap_or_else(|| panic!("metric {name}: no field {field} in Metrics"));
        let (kind, labels) = match ty.as_str() {
            "Counter" => ("counter", Vec::new()),
            "Gauge" => ("gauge", Vec::new()),
            "Histogram" => ("histogram", Vec::new()),
            family => {
                let inner = family.strip_prefix("Family<").and_then(|r| r.strip_suffix('>')).expect("Family<L, M>");
                let (label, metric) = inner.split_once(", ").expect("Family<L, M>");
                let kind = if metric == "Counter" { "counter" } else { "gauge" };
                (kind, label_structs.get(label).cloned().unwrap_or_else(|| panic!("no label struct {label}")))
            }
        };
        out.push(Registered { family: format!("{prefix}_{name}"), kind, labels });
    }
    assert_eq!(out.len(), src.matches(".register(").count(), "every register call parsed");
    out
}

/// A row of docs/metrics.md's tables: name, type, labels cell, alert cell.
fn metric_rows() -> BTreeMap<String, (String, String, String)> {
    let md = read("docs/metrics.md");
    let mut rows = BTreeMap::new();
    for line in md.lines().filter(|l| l.starts_with("| `xbackend_")) {
        let cells = cells(line);
        let name = cells[0].trim_matches('`').to_string();
        let row = (cells[1].clone(), cells[2].clone(), cells.get(4).cloned().unwrap_or_default());
        assert!(rows.insert(name.clone(), row).is_none(), "docs/metrics.md lists {name} twice");
    }
    rows
}

/// The alerts of the chart's PrometheusRule: name and expression.
fn alerts() -> Vec<(String, String)> {
    let out = run(Command::new(support::tool("helm")).current_dir(repo()).args([
        "template",
        "x",
        CHART,
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ]));
    assert!(out.status.success(), "helm template: {}", text(&out.stderr));
    let rule: Value = serde_yaml_ng::from_str(&text(&out.stdout)).expect("PrometheusRule");
    let rules = rule["spec"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap());
    rules.map(|r| (r["alert"].as_str().unwrap().to_string(), r["expr"].as_str().unwrap().to_string())).collect()
}

/// `xbackend_*` names in a text, but the crate's own name (RUST_LOG filters)
/// and file names (`xbackend_types.go`).
fn metric_names_in(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("xbackend_") {
        if i > 0 && (text.as_bytes()[i - 1].is_ascii_alphanumeric() || text.as_bytes()[i - 1] == b'_') {
            continue;
        }
        let name: String = text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let after = text[i + name.len()..].chars().next();
        let file = after == Some('.') && text[i + name.len() + 1..].starts_with(|c: char| c.is_ascii_lowercase());
        // `xbackend_*` means all of them.
        let pattern = name.ends_with('_') && after == Some('*');
        if name != "xbackend_controller" && !file && !pattern {
            out.push(name);
        }
    }
    out
}

/// docs/metrics.md lists every metric the controller registers (name, type,
/// labels), names the alerts that use it, and every `xbackend_*` metric that
/// an alert or a doc names exists. The registry is read from its source and
/// checked against a live `/metrics`, so a parse that missed a family fails.
#[tokio::test]
async fn every_metric_is_documented_and_every_documented_metric_exists() {
    let registered = registered();
    assert!(registered.len() >= 30, "only {} metrics parsed", registered.len());

    // The parse against a running controller: every family it serves is one
    // parsed, with the same type and label names.
    let cp = ControlPlane::shared(Channel::Standard);
    let client = cp.client().await;
    support::install_crd(&client).await;
    let controller = support::Controller::start(&cp.kubeconfig, &[]);
    let body = support::eventually(Duration::from_secs(30), || async {
        controller.http_get("/metrics").filter(|(code, _)| *code == 200).map(|(_, body)| body)
    })
    .await
    .unwrap_or_else(|| panic!("no /metrics; log:\n{}", controller.log_tail()));
    let by_family: BTreeMap<&str, &Registered> = registered.iter().map(|r| (r.family.as_str(), r)).collect();
    let mut served = 0;
    for line in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (family, kind) = line.split_once(' ').unwrap();
        let parsed =
            by_family.get(family).unwrap_or_else(|| panic!("/metrics serves {family}, which the parse missed"));
        assert_eq!(parsed.kind, kind, "{family}");
        served += 1;
    }
    for sample in body.lines().filter(|l| !l.starts_with('#') && l.contains('{')) {
        let (name, rest) = sample.split_once('{').unwrap();
        let family = registered.iter().find(|r| r.series().iter().any(|s| s == name)).expect(name);
        for pair in rest.split('}').next().unwrap().split(',') {
            let label = pair.split('=').next().unwrap();
            assert!(label == "le" || family.labels.iter().any(|l| l == label), "{name}: label {label} not parsed");
        }
    }
    assert!(served >= 20, "only {served} families served:\n{body}");

    let rows = metric_rows();
    let alerts = alerts();
    let mut wrong = Vec::new();
    for metric in &registered {
        let name = metric.doc_name();
        let Some((kind, labels, alert_cell)) = rows.get(&name) else {
            wrong.push(format!("{name} ({}) is not in docs/metrics.md", metric.kind));
            continue;
        };
        if kind != metric.kind {
            wrong.push(format!("{name}: docs/metrics.md says {kind}, the registry {}", metric.kind));
        }
        for label in &metric.labels {
            if !labels.contains(&format!("`{label}`")) {
                wrong.push(format!("{name}: docs/metrics.md does not name its label {label}"));
            }
        }
        if metric.labels.is_empty() && !labels.is_empty() {
            wrong.push(format!("{name} has no labels, docs/metrics.md says {labels:?}"));
        }
        // Alerts: those that use it are named, and those named use it.
        for (alert, expr) in &alerts {
            let uses = metric.series().iter().any(|s| metric_names_in(expr).contains(s));
            let named = alert_cell.split(|c: char| !c.is_alphanumeric()).any(|w| w == alert);
            if uses != named {
                let what = if uses { "uses it but is not named" } else { "is named but does not use it" };
                wrong.push(format!("{name}: alert {alert} {what} in docs/metrics.md"));
            }
        }
    }
    let series: BTreeSet<String> = registered.iter().flat_map(Registered::series).collect();
    for name in rows.keys() {
        if !series.contains(name) {
            wrong.push(format!("docs/metrics.md lists {name}, which the controller does not register"));
        }
    }
    let mut named_in = doc_files();
    named_in
        .extend(["BENCHMARKS.md", "tests/alerts/rules.test.yaml", &format!("{CHART}/values.yaml")].map(String::from));
    for file in &named_in {
        for name in metric_names_in(&read(file)) {
            if !series.contains(&name) {
                wrong.push(format!("{file} names {name}, which the controller does not serve"));
            }
        }
    }
    for (alert, expr) in &alerts {
        for name in metric_names_in(expr) {
            if !series.contains(&name) {
                wrong.push(format!("alert {alert} uses {name}, which the controller does not serve"));
            }
        }
    }
    none_wrong("metrics and their docs disagree", wrong);
}

// ---- Chart values ----

/// Whether `path` (dot-separated) is a value values.schema.json allows:
/// each key a property, or under an object that takes any key.
fn schema_allows(schema: &Value, path: &str) -> bool {
    let mut node = schema;
    for key in path.split('.') {
        match node.get("properties").and_then(|p| p.get(key)) {
            Some(next) => node = next,
            // A map (dataPlanes, needs, labels) or an object the schema leaves open.
            None => {
                return node.get("properties").is_none()
                    || node.get("additionalProperties").is_some_and(Value::is_object);
            }
        }
    }
    true
}

/// Dotted paths in a text that start with a top-level chart value
/// (`controller.egress.cluster`, `rbac.create`), not file or package names.
fn value_paths_in(text: &str, top: &BTreeSet<String>) -> Vec<String> {
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_';
    let mut out = Vec::new();
    let mut rest = text;
    let mut previous: Option<char> = None;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic()) {
        let before = if start == 0 { previous } else { rest[..start].chars().last() };
        let token: String = rest[start..].chars().take_while(|c| is_part(*c)).collect();
        let after = rest[start + token.len()..].chars().next();
        let token = token.trim_end_matches('.').to_string();
        let first = token.split('.').next().unwrap_or_default();
        let standalone =
            !matches!(before, Some('/' | '-' | '.' | '$' | '{' | '_')) && !matches!(after, Some('/' | '-'));
        let file =
            [".rs", ".md", ".yaml", ".json", ".sh", ".go", ".tpl", ".txt", ".io"].iter().any(|e| token.ends_with(e));
        if standalone && token.contains('.') && top.contains(first) && !file {
            out.push(token.clone());
        }
        let consumed = start + token.len().max(1);
        previous = rest[..consumed].chars().last();
        rest = &rest[consumed..];
    }
    out
}

/// Every chart value the docs name (`controller.egress.cluster`,
/// `rbac.create`, in prose, tables and `--set` arguments) is in
/// values.schema.json.
#[test]
fn every_chart_value_the_docs_name_is_in_the_schema() {
    let schema: Value = serde_json::from_str(&read(&format!("{CHART}/values.schema.json"))).unwrap();
    let top: BTreeSet<String> = schema["properties"].as_object().unwrap().keys().cloned().collect();
    let mut wrong = BTreeSet::new();
    let mut seen = 0;
    for file in doc_files() {
        for path in value_paths_in(&read(&file), &top) {
            seen += 1;
            if !schema_allows(&schema, &path) {
                wrong.insert(format!("{file}: {path}"));
            }
        }
    }
    assert!(seen > 50, "only {seen} value paths found: is the scan still reading the docs?");
    none_wrong("chart values the docs name that values.schema.json lacks", wrong);
}

// ---- deploy/README.md's Helm commands ----

/// One `helm install` / `helm upgrade` of the docs, as `helm template` takes it.
#[derive(Debug)]
struct HelmCommand {
    line: String,
    release: String,
    namespace: String,
    /// `helm install` or `upgrade --install`: may be the first install, with nothing to reuse.
    installs: bool,
    reuse: bool,
    /// `--set`, `--set-string`, `-f` with their values, in order.
    values: Vec<String>,
}

/// Every `helm install` and `helm upgrade` of a file: in `sh` blocks and in
/// inline code (the Upgrade section's).
fn helm_commands(file: &str) -> Vec<HelmCommand> {
    let (prose, blocks) = split_markdown(&read(file));
    let mut lines: Vec<String> = blocks.iter().filter(|b| b.lang == "sh").flat_map(|b| commands(&b.text).0).collect();
    lines.extend(code_spans(&prose).0);
    let mut out = Vec::new();
    for command in lines {
        let words = shell_words(&command);
        if words.first().map(String::as_str) != Some("helm")
            || !matches!(words.get(1).map(String::as_str), Some("install" | "upgrade"))
        {
            continue;
        }
        let mut positional = Vec::new();
        let (mut namespace, mut reuse, mut values) = ("default".to_string(), false, Vec::new());
        let mut installs = words[1] == "install";
        let mut words = words[2..].iter();
        while let Some(word) = words.next() {
            match word.as_str() {
                "-n" | "--namespace" => namespace = words.next().expect("namespace").clone(),
                "--install" => installs = true,
                "--create-namespace" | "--wait" | "--atomic" => {}
                "--reuse-values" | "--reset-then-reuse-values" => reuse = true,
                "--set" | "--set-string" | "--set-file" | "-f" | "--values" => {
                    values.push(word.clone());
                    values.push(words.next().expect("a value").clone());
                }
                flag if flag.starts_with('-') => panic!("{file}: this test does not know helm's {flag}: {command}"),
                _ => positional.push(word.clone()),
            }
        }
        assert_eq!(positional.get(1).map(String::as_str), Some(CHART), "{file}: the chart of {command}");
        let release = positional[0].clone();
        out.push(HelmCommand { line: command.clone(), release, namespace, installs, reuse, values });
    }
    out
}

/// The `--set image.repository=...` value a list of helm value arguments ends with.
fn image_repository(values: &[String]) -> Option<String> {
    let sets = values.chunks(2).filter(|pair| pair[0].starts_with("--set"));
    sets.filter_map(|pair| pair[1].strip_prefix("image.repository=")).next_back().map(str::to_string)
}

/// deploy/README.md's (and README's) `helm install` and `helm upgrade`
/// commands render as written (`helm template` with the same values; an
/// upgrade with `--reuse-values` on top of the install's), set the image the
/// reader built (one that may install sets it itself), and what they render
/// passes a server-side dry run.
#[tokio::test]
async fn the_helm_commands_of_the_docs_render_with_the_image_and_apply() {
    let commands = helm_commands("deploy/README.md");
    let install = commands.iter().find(|c| c.line.starts_with("helm install")).expect("deploy/README.md installs");
    let mut all: Vec<&HelmCommand> = commands.iter().collect();
    let readme = helm_commands("README.md");
    all.extend(readme.iter());
    assert!(all.len() >= 6, "only {} helm commands found", all.len());
    let cp = ControlPlane::shared(Channel::Standard);
    let client = cp.client().await;
    let discovery = support::discover(&client).await;
    let home = support::tempdir("docs-helm");
    for command in all {
        let mut values = if command.reuse { install.values.clone() } else { Vec::new() };
        values.extend(command.values.iter().cloned());
        // A command that may install sets the image itself; an upgrade may reuse the install's.
        let own = image_repository(&command.values);
        let repository = (if command.installs { own } else { image_repository(&values) }).unwrap_or_else(|| {
            panic!(
                "no image.repository (the default image is not published; a first install reuses nothing): {}",
                command.line
            )
        });
        let out = run(Command::new(support::tool("helm"))
            .current_dir(repo())
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .args(["template", &command.release, CHART, "--namespace", &command.namespace])
            .args(&values));
        assert!(out.status.success(), "{}\nrendered as helm template {values:?}:\n{}", command.line, text(&out.stderr));
        let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text(&out.stdout))
            .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
        let image = deployment["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap();
        assert!(image.starts_with(&format!("{repository}:")), "{}: image {image}", command.line);
        // The binary takes the rendered arguments: clap parses (and checks the
        // value of) each before it reaches the trailing --help.
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(args.first(), Some(&"run"), "{}", command.line);
        let parsed = run(Command::new(env!("CARGO_BIN_EXE_xbackend-controller")).args(&args).arg("--help"));
        assert!(parsed.status.success(), "{}: run refuses {args:?}: {}", command.line, text(&parsed.stderr));

        // The rendered objects as the apiserver takes them, written nowhere.
        support::apply_yaml(
            &client,
            None,
            &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n", command.namespace),
        )
        .await;
        for doc in &docs {
            let object: kube::api::DynamicObject = serde_json::from_value(doc.clone()).unwrap();
            let (api, _) = support::dynamic_api(&client, &discovery, &object, Some(&command.namespace));
            let params = PatchParams::apply("docs-test").force().dry_run();
            let name = object.metadata.name.clone().unwrap();
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("{}: dry run of {} {name}: {e}", command.line, doc["kind"]));
        }
    }
}

// ---- deploy/README.md's Istio recipe, tried as a new user would ----

/// The text of the `### ` section of a Markdown file that starts with `heading`.
fn subsection<'a>(md: &'a str, heading: &str) -> &'a str {
    let start = md.find(heading).unwrap_or_else(|| panic!("no section {heading:?}"));
    let rest = &md[start + heading.len()..];
    &rest[..rest.find("\n### ").or_else(|| rest.find("\n## ")).unwrap_or(rest.len())]
}

/// `xbackend-controller analyze` with `args`, in `dir`.
fn analyze(dir: &Path, args: &[String]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_xbackend-controller")).current_dir(dir).arg("analyze").args(args))
}

/// Whether a NetworkPolicy peer is the Pods labelled `key: value` in namespace `ns`.
fn pods(peer: &Value, ns: &str, key: &str, value: &str) -> bool {
    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == ns
        && peer["podSelector"]["matchLabels"][key] == value
}

/// Ports of a NetworkPolicy rule, as "PROTOCOL PORT".
fn rule_ports(rule: &Value) -> BTreeSet<String> {
    let ports = rule["ports"].as_array().into_iter().flatten();
    ports.map(|p| format!("{} {}", p["protocol"].as_str().unwrap_or("TCP"), p["port"])).collect()
}

/// deploy/README.md, "Istio, with enforcement": its bundle and its `analyze`
/// command, run as written (plus a DNS server of the test's own), print the
/// table it shows, and the NetworkPolicy holds what the text after it says,
/// rule by rule, and no port the text does not name.
#[test]
fn the_istio_recipe_prints_what_deploy_readme_says() {
    use support::dns::{Answer, DnsServer};
    let md = read("deploy/README.md");
    let section = subsection(&md, "### Istio, with enforcement");
    let (prose, blocks) = split_markdown(section);
    let bundle = &blocks.iter().find(|b| b.lang == "yaml").expect("the recipe's bundle").text;
    let command = blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .flat_map(|b| commands(&b.text).0)
        .find(|c| c.starts_with("xbackend-controller analyze"))
        .expect("the recipe's analyze command");
    let shown = &blocks.iter().find(|b| b.lang == "text").expect("the recipe's output").text;
    let after = prose.split("followed by a note").nth(1).expect("the text after the output");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let dns = runtime.block_on(DnsServer::start());
    let public = "162.159.140.245";
    dns.set("api.openai.com", Answer::Addresses(vec![public.parse().unwrap()], 300));
    let dir = support::tempdir("docs-istio");
    let words = shell_words(&command);
    let file = words.iter().skip_while(|w| *w != "-f").nth(1).expect("-f FILE");
    std::fs::write(dir.join(file), bundle).unwrap();
    let mut args: Vec<String> = words[2..].to_vec();
    args.extend(["--dns-server".to_string(), dns.flag()]);

    let out = analyze(&dir, &args);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "deploy/README.md says exit 3:\n{stdout}{}", text(&out.stderr));
    let printed: Vec<&str> = stdout.lines().collect();
    let expected: Vec<&str> = shown.lines().collect();
    assert_eq!(printed[..expected.len().min(printed.len())], expected[..], "the table deploy/README.md shows");
    let rest = &printed[expected.len()..];
    assert!(
        rest.len() == 1
            && rest[0].starts_with("note: HTTPRoute apps/shop names Service apps/legacy, a Service without a selector"),
        "then one note about the selectorless Service: {rest:?}"
    );

    // The same with -o yaml: the NetworkPolicy the text describes.
    let yaml_args: Vec<String> =
        args.iter().map(|a| if a == "table" { "yaml".to_string() } else { a.clone() }).collect();
    let out = analyze(&dir, &yaml_args);
    let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text(&out.stdout))
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect();
    let policy = objects.iter().find(|o| o["kind"] == "NetworkPolicy").expect("a NetworkPolicy");
    assert_eq!(policy["metadata"]["name"], "xbackend-egress-edge");
    assert_eq!(policy["metadata"]["namespace"], "apps");
    assert_eq!(policy["spec"]["podSelector"]["matchLabels"]["gateway.networking.k8s.io/gateway-name"], "edge");
    let rules = policy["spec"]["egress"].as_array().unwrap();
    let to = |rule: &Value| rule["to"][0].clone();
    let find = |what: &str, ok: &dyn Fn(&Value) -> bool| {
        rules.iter().find(|r| ok(&to(r))).unwrap_or_else(|| panic!("no rule for {what}: {rules:?}"))
    };
    let dns_rule = find("DNS", &|peer| pods(peer, "kube-system", "k8s-app", "kube-dns"));
    let istiod = find("istiod", &|peer| pods(peer, "istio-system", "app", "istiod"));
    let web = find("web", &|peer| pods(peer, "apps", "app", "web"));
    let openai = find("api.openai.com", &|peer: &Value| peer["ipBlock"]["cidr"] == format!("{public}/32"));
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<String>>();
    assert_eq!(rule_ports(dns_rule), set(&["UDP 53", "TCP 53"]), "DNS, UDP and TCP 53");
    assert_eq!(rule_ports(istiod), set(&["TCP 15012", "TCP 15008"]), "istiod, TCP 15012 and 15008");
    assert_eq!(rule_ports(web), set(&["TCP 8080", "TCP 15008"]), "web's Pods, TCP 8080 and 15008");
    assert_eq!(rule_ports(openai), set(&["TCP 443"]), "api.openai.com's addresses, TCP 443");
    assert_eq!(rules.len(), 4, "nothing else, nothing for legacy: {rules:?}");
    assert!(!policy.to_string().contains("169.254.169.254"), "legacy's address is refused");
    for port in rules.iter().flat_map(rule_ports) {
        let number = port.split(' ').nth(1).unwrap();
        assert!(after.contains(number), "the policy allows {port}, which deploy/README.md does not say");
    }
    for said in ["kube-dns", "istiod", "app: web", "api.openai.com", "Nothing for `legacy`"] {
        assert!(after.contains(said), "deploy/README.md's text after the output says {said:?}");
    }
}

// ---- README: what `make demo`'s examples report ----

/// README's `analyze -f examples/ -o table` block is what the command prints,
/// exit 3 (the one deliberate rejection), on Gateway API v1.7.0 (the
/// default, newest) and v1.6.3.
#[test]
fn readme_says_what_analyze_reports_on_the_examples() {
    let (_, blocks) = split_markdown(&read("README.md"));
    let block = blocks
        .iter()
        .find(|b| b.text.starts_with("$ xbackend-controller analyze -f examples/"))
        .expect("README shows analyze on examples/");
    let (first, shown) = block.text.split_once('\n').unwrap();
    let words = shell_words(first.trim_start_matches("$ "));
    for version in [None, Some("v1.7.0"), Some("v1.6.3")] {
        let mut args: Vec<String> = words[2..].to_vec();
        args.extend(version.into_iter().flat_map(|v| ["--gateway-api-version".to_string(), v.to_string()]));
        let out = analyze(&repo(), &args);
        assert_eq!(out.status.code(), Some(3), "{version:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim_end(), shown.trim_end(), "README's output of {first} ({version:?})");
    }
}
