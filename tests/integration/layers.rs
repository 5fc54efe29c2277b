//! The floor plan of `src/`, read from the code itself: every `crate::` and `super::` path
//! (in `use` lines and inline, outside comments and unit tests) is an import of the file
//! it names. No two files import each other, directly or around a loop, and a module
//! imports only modules of lower layers (files of its own module excepted).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom to top. The roles (fifth from the bottom) never import each other;
/// the admin page is built on the authorization server, the MCP server stands behind the
/// resource server, TLS wraps the proxy's listener; the gateway wires everything.
const LAYERS: &[&[&str]] = &[
    &["roots"],
    &["clock", "secret", "metrics", "store"],
    &["web"],
    &["config"],
    &["settings"],
    &["tokens"],
    &["audit"],
    &["idp"],
    &["shared"],
    &["authz", "resource", "proxy", "client", "ops"],
    &["admin", "mcp", "tls"],
    &["gateway"],
];

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().map(String::as_str) == Some("mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests (by convention the last item) and comments.
fn code(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    text.lines()
        .map(|line| line.find("//").map_or(line, |i| &line[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expand `a::{b, c::{d, e}}` (the text after `crate::` or `super::`) into paths.
fn expand(text: &str) -> Vec<String> {
    let text = text.trim();
    let Some(open) = text.find('{') else {
        return vec![text.to_string()];
    };
    let prefix = &text[..open];
    let inner = &text[open + 1..text.rfind('}').unwrap_or(text.len())];
    let (mut items, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .filter(|item| !item.trim().is_empty())
        .flat_map(|item| {
            expand(item)
                .into_iter()
                .map(move |p| format!("{prefix}{p}"))
        })
        .collect()
}

/// The paths after each `crate::` or `super::` in `code`, made absolute (`super` is the
/// parent of `module`).
fn paths(code: &str, module: &str) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut out = Vec::new();
    for (anchor, base) in [("crate::", ""), ("super::", parent)] {
        let mut rest = code;
        while let Some(i) = rest.find(anchor) {
            let preceded = rest[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            rest = &rest[i + anchor.len()..];
            if preceded {
                continue;
            }
            let end = if rest.starts_with('{') {
                let mut depth = 0;
                rest.char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' => 1,
                            '}' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(rest.len(), |(i, _)| i + 1)
            } else {
                rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len())
            };
            let text: String = rest[..end].split_whitespace().collect();
            for p in expand(&text) {
                let p = p.trim_end_matches(':');
                out.push(match base {
                    "" => p.to_string(),
                    b => format!("{b}::{p}"),
                });
            }
        }
    }
    out
}

/// The longest module named by a prefix of `path`.
fn resolve<'a>(path: &str, modules: &'a BTreeSet<String>) -> Option<&'a String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|n| modules.get(&parts[..n].join("::")))
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// file -> the files it imports.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let sources: BTreeMap<String, String> = files
        .iter()
        .map(|f| (module_of(&src, f), std::fs::read_to_string(f).unwrap()))
        .filter(|(m, _)| m != "lib" && m != "main")
        .collect();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    sources
        .iter()
        .map(|(module, text)| {
            let targets = paths(&code(text), module)
                .iter()
                .filter_map(|p| resolve(p, &modules))
                .filter(|t| *t != module)
                .cloned()
                .collect();
            (module.clone(), targets)
        })
        .collect()
}

/// A loop through `start`, if there is one.
fn loop_through(start: &str, graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut stack = vec![vec![start.to_string()]];
    let mut seen = BTreeSet::new();
    while let Some(path) = stack.pop() {
        let last = path.last().unwrap();
        for next in graph.get(last).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push(longer);
            }
        }
    }
    None
}

#[test]
fn the_parser_reads_groups_and_relative_paths() {
    let text = "use crate::{a::{B, c::D}, e};\nuse super::f::G;\nlet x = crate::h::i();";
    let mut got = paths(text, "m::n");
    got.sort();
    assert_eq!(got, ["a::B", "a::c::D", "e", "h::i", "m::f::G"]);
    assert_eq!(code("x // crate::y"), "x ");
}

#[test]
fn no_file_imports_itself_around_a_loop() {
    let graph = imports();
    assert!(graph.len() > 40, "the source files were found");
    for file in graph.keys() {
        if let Some(cycle) = loop_through(file, &graph) {
            panic!("import loop: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let rank = |module: &str| {
        LAYERS
            .iter()
            .position(|layer| layer.contains(&top(module)))
            .unwrap_or_else(|| panic!("`{module}` is in no layer: add it to LAYERS"))
    };
    let mut wrong = Vec::new();
    for (file, targets) in imports() {
        for target in targets {
            if top(&file) != top(&target) && rank(&target) >= rank(&file) {
                wrong.push(format!("{file} -> {target}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports across or up the layers: {wrong:#?}"
    );
}
