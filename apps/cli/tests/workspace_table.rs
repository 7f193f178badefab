//! README.md's "Workspace" table lists exactly the workspace's crates: one row per member of
//! the root `Cargo.toml`, in the members' order, with the crate name read from the member's own
//! `Cargo.toml` and its folder. A crate added, renamed or moved without its row fails here.
//!
//! On a mismatch the test prints the table it expects (the "what" column kept for crates the
//! README already describes, the crate's `description` for new ones). `TRAM_BLESS=1 cargo test
//! -p tram-cli --test workspace_table` writes that table into README.md.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A row of the table: crate name, folder (with its trailing `/`), what it is.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    path: String,
    what: String,
}

/// `(crate name, folder, description)` of every workspace member, in the members' order.
fn members(root: &Path) -> Vec<(String, String, String)> {
    let manifest: toml::Value = std::fs::read_to_string(root.join("Cargo.toml")).unwrap().parse().unwrap();
    let members = manifest["workspace"]["members"].as_array().expect("workspace.members is a list");
    members
        .iter()
        .map(|m| {
            let dir = m.as_str().expect("a member is a path");
            let crate_toml: toml::Value = std::fs::read_to_string(root.join(dir).join("Cargo.toml")).unwrap().parse().unwrap();
            let package = &crate_toml["package"];
            let name = package["name"].as_str().unwrap().to_string();
            let description = package.get("description").and_then(|d| d.as_str()).unwrap_or("").to_string();
            (name, format!("{dir}/"), description)
        })
        .collect()
}

/// The table under `## Workspace`: its line range in `readme` and its rows.
fn table(readme: &str) -> (std::ops::Range<usize>, Vec<Row>) {
    let lines: Vec<&str> = readme.lines().collect();
    let heading = lines.iter().position(|l| *l == "## Workspace").expect("README.md has a `## Workspace` section");
    let start = heading + lines[heading..].iter().position(|l| l.starts_with('|')).expect("a table under `## Workspace`");
    let end = start + lines[start..].iter().position(|l| !l.starts_with('|')).unwrap_or(lines.len() - start);
    let rows = lines[start + 2..end]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').splitn(3, '|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "a workspace row has three cells: {l}");
            Row { name: cells[0].trim_matches('`').to_string(), path: cells[1].trim_matches('`').to_string(), what: cells[2].to_string() }
        })
        .collect();
    (start..end, rows)
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from("| crate | path | what |\n|---|---|---|\n");
    for r in rows {
        out.push_str(&format!("| `{}` | `{}` | {} |\n", r.name, r.path, r.what));
    }
    out
}

#[test]
fn readme_workspace_table_lists_every_crate_at_its_folder_in_members_order() {
    let root = repo();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (range, found) = table(&readme);
    let expected: Vec<Row> = members(&root)
        .into_iter()
        .map(|(name, path, description)| {
            let what = found.iter().find(|r| r.name == name).map(|r| r.what.clone()).unwrap_or(description);
            Row { name, path, what }
        })
        .collect();
    if found == expected {
        return;
    }
    let table = render(&expected);
    if std::env::var_os("TRAM_BLESS").is_some() {
        let lines: Vec<&str> = readme.lines().collect();
        let mut out = lines[..range.start].join("\n");
        out.push('\n');
        out.push_str(&table);
        out.push_str(&lines[range.end..].join("\n"));
        out.push('\n');
        std::fs::write(root.join("README.md"), out).unwrap();
        return;
    }
    panic!(
        "README.md's workspace table does not match the workspace's crates (root Cargo.toml `members`).\n\
         Expected:\n\n{table}\nRerun with TRAM_BLESS=1 to write it into README.md."
    );
}

#[test]
fn the_table_parser_reads_name_path_and_what_cells() {
    let readme = "# x\n\n## Workspace\n\n| crate | path | what |\n|---|---|---|\n| `a` | `b/` | c | d |\n\nafter\n";
    let (range, rows) = table(readme);
    assert_eq!(range, 4..7);
    assert_eq!(rows, vec![Row { name: "a".into(), path: "b/".into(), what: "c | d".into() }]);
}
