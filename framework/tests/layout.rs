//! The module graph of the framework has no cycle: each module's `crate::…` and `super::…`
//! imports (outside its unit tests) point only at modules that do not import it back. A module
//! may use its parent (an `impl` split across files, as `engine::checkpoint` does); that edge
//! is not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `a::b` for `src/a/b.rs` and `src/a/b/mod.rs`; `""` for `src/lib.rs`.
fn module_name(rel: &Path) -> String {
    let mut parts: Vec<String> = rel.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn collect(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, root, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let src = std::fs::read_to_string(&p).unwrap();
            // Unit tests may reach anywhere; comments are not imports.
            let code = src.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
            let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
            out.insert(module_name(p.strip_prefix(root).unwrap()), code);
        }
    }
}

/// Every `prefix` path in `code`, as its `::`-separated lowercase segments.
fn paths<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    code.match_indices(prefix)
        .filter(|(i, _)| !code[..*i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$'))
        .map(|(i, _)| {
            let rest = &code[i + prefix.len()..];
            let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')).unwrap_or(rest.len());
            rest[..end].split("::").filter(|s| !s.is_empty()).collect()
        })
        .collect()
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    collect(&root, &root, &mut sources);
    let resolve = |segments: &[&str]| -> Option<String> {
        (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| sources.contains_key(m))
    };
    let mut graph = BTreeMap::new();
    for (m, code) in &sources {
        let parent: Vec<&str> = m.split("::").collect();
        let parent = &parent[..parent.len().saturating_sub(1)];
        let mut deps = BTreeSet::new();
        for p in paths(code, "crate::") {
            deps.extend(resolve(&p));
        }
        for p in paths(code, "super::") {
            let full: Vec<&str> = parent.iter().copied().chain(p).collect();
            deps.extend(resolve(&full));
        }
        // Not edges: itself, the crate root (re-exports only), its ancestors and descendants.
        deps.retain(|d| d != m && !d.is_empty() && !m.starts_with(&format!("{d}::")) && !d.starts_with(&format!("{m}::")));
        graph.insert(m.clone(), deps);
    }
    graph
}

#[test]
fn the_framework_modules_import_each_other_without_a_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("engine") && graph["engine"].contains("compose::bind"), "the scan sees the imports: {graph:?}");
    // Depth-first search; a back edge is a cycle.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == m) {
            return Some(path[i..].iter().map(|s| s.to_string()).chain([m.to_string()]).collect());
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for d in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn the_rooms_depend_in_one_direction() {
    // components ← compose ← {engine, plugin} ← testing (test support for component authors,
    // on top of everything); the shared leaves (error, check, ops, noise, schedule) depend on
    // no room.
    let rank = |m: &str| match m.split("::").next().unwrap() {
        "components" => 1,
        "compose" => 2,
        "engine" | "plugin" => 3,
        "testing" => 4,
        _ => 0,
    };
    // The crate root only declares the rooms and re-exports from them.
    for (m, deps) in module_graph().into_iter().filter(|(m, _)| !m.is_empty()) {
        for d in deps {
            let same_room = m.split("::").next() == d.split("::").next();
            assert!(same_room || rank(&d) < rank(&m) || rank(&d) == 0, "`{m}` imports `{d}`, a room above it");
        }
    }
}
