//! docs/design.md §11 kept true: its layering table against the modules'
//! imports, and its lists of indexers and writers against the `Indexer` and
//! `Work` impls. A change that breaks the doc fails here. Plain file reads;
//! no cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn design() -> String {
    std::fs::read_to_string(root().join("docs/design.md")).expect("docs/design.md")
}

/// The text of one `### §N` section of the design doc.
fn section(doc: &str, heading: &str) -> String {
    let start = doc.find(heading).unwrap_or_else(|| panic!("docs/design.md has no {heading}"));
    let rest = &doc[start + heading.len()..];
    let end = rest.find("\n### ").or_else(|| rest.find("\n## ")).unwrap_or(rest.len());
    rest[..end].to_string()
}

/// The `backticked` words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The rows of the markdown tables in `text`, as cells (header and rule rows left out).
fn rows(text: &str) -> Vec<Vec<String>> {
    let table_lines = text.lines().filter(|l| l.trim_start().starts_with('|'));
    let cells =
        table_lines.map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>());
    cells.filter(|c| !c[0].starts_with("---") && c[0].parse::<u32>().is_ok() || c[0].starts_with('`')).collect()
}

/// Which side of the crate a module is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Core,
    Runtime,
}

/// Every .rs file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The module a file belongs to: a file under src/ or src/runtime/, or the
/// folder it sits in (a folder is one module; its files import each other freely).
fn module_of(relative: &Path) -> (Side, String) {
    let parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().to_string()).collect();
    let stem = |name: &str| name.trim_end_matches(".rs").to_string();
    match parts.as_slice() {
        [runtime, file] if runtime == "runtime" => (Side::Runtime, stem(file)),
        [runtime, folder, ..] if runtime == "runtime" => (Side::Runtime, folder.clone()),
        [file] => (Side::Core, stem(file)),
        [folder, ..] => (Side::Core, folder.clone()),
        [] => unreachable!(),
    }
}

/// The code outside tests and comments.
fn code(text: &str) -> String {
    let cut = ["#[cfg(test)]\nmod ", "#[cfg(test)]\npub(crate) mod ", "#[cfg(test)]\npub mod "]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .unwrap_or(text.len());
    text[..cut].lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The identifiers that follow each `prefix` in `text`.
fn after<'a>(text: &'a str, prefix: &'a str) -> impl Iterator<Item = String> + 'a {
    text.match_indices(prefix).filter_map(move |(i, _)| {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            return None;
        }
        let rest = &text[i + prefix.len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        (!name.is_empty()).then_some(name)
    })
}

/// Every module's imports of other modules: `crate::x`, and in the runtime
/// `super::x` (or `super::super::x` from a file inside a runtime folder).
fn imports() -> BTreeMap<(Side, String), BTreeSet<(Side, String)>> {
    let src = root().join("src");
    let mut edges: BTreeMap<(Side, String), BTreeSet<(Side, String)>> = BTreeMap::new();
    for file in files(&src) {
        let relative = file.strip_prefix(&src).unwrap().to_path_buf();
        if relative == Path::new("lib.rs") || relative == Path::new("main.rs") {
            continue;
        }
        let me = module_of(&relative);
        let text = code(&std::fs::read_to_string(&file).unwrap());
        let found = edges.entry(me.clone()).or_default();
        for name in after(&text, "crate::") {
            if name != "runtime" {
                found.insert((Side::Core, name));
            }
        }
        found.extend(after(&text, "crate::runtime::").map(|n| (Side::Runtime, n)));
        if me.0 == Side::Runtime {
            let depth = relative.iter().count();
            let top = depth == 2 || relative.ends_with("mod.rs");
            let prefix = if top { "super::" } else { "super::super::" };
            found.extend(after(&text, prefix).map(|n| (Side::Runtime, n)));
        }
        found.remove(&me);
    }
    edges
}

#[test]
fn the_layering_table_holds_every_module_and_every_import_goes_down() {
    let table = section(&design(), "### §11.2 Module layering");
    let mut layer: BTreeMap<(Side, String), u32> = BTreeMap::new();
    for row in rows(&table) {
        let Ok(level) = row[0].parse::<u32>() else { continue };
        for (side, cell) in [(Side::Core, &row[1]), (Side::Runtime, &row[2])] {
            for module in ticked(cell) {
                assert!(layer.insert((side, module.clone()), level).is_none(), "{module} twice in the table");
            }
        }
    }
    let edges = imports();
    let mut problems = Vec::new();
    for module in edges.keys() {
        if !layer.contains_key(module) {
            problems.push(format!("{module:?} is not in the layering table"));
        }
    }
    for (module, imports) in &edges {
        for import in imports {
            let (Some(from), Some(to)) = (layer.get(module), layer.get(import)) else {
                if !layer.contains_key(import) {
                    problems.push(format!("{module:?} imports {import:?}, which is not in the table"));
                }
                continue;
            };
            let ok = match (module.0, import.0) {
                (Side::Runtime, Side::Core) => true,
                (Side::Core, Side::Runtime) => false,
                _ => to < from,
            };
            if !ok {
                problems.push(format!("{module:?} (layer {from}) imports {import:?} (layer {to}): not a lower layer"));
            }
        }
    }
    for listed in layer.keys() {
        if !edges.contains_key(listed) && listed.1 != "mod" {
            problems.push(format!("{listed:?} is in the table but no such module exists"));
        }
    }
    assert!(problems.is_empty(), "docs/design.md §11.2 and the code disagree:\n{}", problems.join("\n"));
}

/// The type names of every `impl ... TRAIT for NAME` under src/runtime.
fn impls(of: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in files(&root().join("src/runtime")) {
        let text = code(&std::fs::read_to_string(&file).unwrap());
        for line in text.lines().filter(|l| l.starts_with("impl")) {
            if let Some((_, rest)) = line.split_once(&format!(" {of} for ")) {
                names.insert(rest.split(|c: char| !c.is_alphanumeric()).next().unwrap().to_string());
            }
        }
    }
    names
}

/// The first column's names of the tables in a section.
fn listed(heading: &str) -> BTreeSet<String> {
    let text = section(&design(), heading);
    rows(&text).iter().flat_map(|row| ticked(&row[0])).map(|name| name.split('<').next().unwrap().to_string()).collect()
}

#[test]
fn every_indexer_is_in_the_watch_table() {
    assert_eq!(listed("### §11.3 The watch driver"), impls("Indexer"), "docs/design.md §11.3's table of indexers");
}

#[test]
fn every_writer_is_in_the_runner_table() {
    assert_eq!(listed("### §11.10 Writers on one runner"), impls("Work"), "docs/design.md §11.4's table of writers");
}
