//! `docs/FIRECRACKER.md` is complete: it names every path and method, every definition's
//! fields, of Firecracker 1.16.1's API spec, and every flag of its `--help`, read from
//! `../shared/reference/firecracker-1.16.1/` beside the checkout, and every flag of its jailer's
//! `--help` (`../shared/anchors/jailer`). Without them the test says it skipped.

#![cfg(test)] // So that the workspace's test allowances cover the helpers, as in common/.

use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Firecracker's reference file `name`, or `None` after saying the test skipped.
fn reference(name: &str) -> Option<String> {
    let path = workspace()
        .join("../shared/reference/firecracker-1.16.1")
        .join(name);
    let text = std::fs::read_to_string(&path).ok();
    if text.is_none() {
        eprintln!("skipped: {} is absent", path.display());
    }
    text
}

fn table() -> String {
    std::fs::read_to_string(workspace().join("docs/FIRECRACKER.md")).unwrap()
}

/// The names the spec has: `GET /path` for each method of each path, `Definition.field` for
/// each field (the bare `Definition` when it has none).
fn spec_names(spec: &serde_yaml::Value) -> Vec<String> {
    let mut names = Vec::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for method in item.as_mapping().unwrap().keys() {
            let method = method.as_str().unwrap().to_ascii_uppercase();
            names.push(format!("{method} {}", path.as_str().unwrap()));
        }
    }
    for (name, definition) in spec["definitions"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        match definition["properties"].as_mapping() {
            Some(fields) => names.extend(
                fields
                    .keys()
                    .map(|f| format!("{name}.{}", f.as_str().unwrap())),
            ),
            None => names.push(name.to_string()),
        }
    }
    names
}

#[test]
fn the_table_names_every_endpoint_and_field_of_firecrackers_spec() {
    let Some(text) = reference("firecracker.yaml") else {
        return;
    };
    let spec: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let table = table();
    let names = spec_names(&spec);
    assert!(names.len() > 100, "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !table.contains(&format!("| `{n}` |")))
        .collect();
    assert!(missing.is_empty(), "docs/FIRECRACKER.md lacks {missing:?}");
}

/// The `--flags` a `--help` text lists, one a line.
fn help_flags(help: &str) -> Vec<&str> {
    help.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("--"))
        .collect()
}

/// Panics unless `section` of the table has a row for each of `flags`.
fn assert_rows(section: &str, flags: &[&str]) {
    let missing: Vec<&&str> = flags
        .iter()
        .filter(|f| !section.contains(&format!("| `{f}` |")))
        .collect();
    assert!(missing.is_empty(), "docs/FIRECRACKER.md lacks {missing:?}");
}

/// The table's text from the heading `## {title}` to the next heading.
fn section(title: &str) -> String {
    let table = table();
    let start = table
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("docs/FIRECRACKER.md has no '## {title}'"));
    let rest = &table[start + 1..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].to_string()
}

#[test]
fn the_table_names_every_flag_of_firecrackers_help() {
    let Some(help) = reference("firecracker-help.txt") else {
        return;
    };
    let flags = help_flags(&help);
    assert!(flags.len() > 20, "{flags:?}");
    assert_rows(&section("Command-line flags"), &flags);
}

#[test]
fn the_table_names_every_flag_of_firecrackers_jailer() {
    let jailer = workspace().join("../shared/anchors/jailer");
    let Ok(out) = std::process::Command::new(&jailer).arg("--help").output() else {
        eprintln!("skipped: {} is absent", jailer.display());
        return;
    };
    let help = String::from_utf8(out.stdout).unwrap();
    let flags = help_flags(&help);
    assert!(flags.len() > 10, "{help}");
    assert_rows(&section("Jailer flags"), &flags);
}
