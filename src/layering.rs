//! The direction of imports between the crate's top-level modules, checked over the sources:
//! data flows down, so a module may use only modules of a lower layer. A cycle between modules
//! makes both halves one unit that can only be read, tested and changed together.

use std::collections::BTreeSet;
use std::path::Path;

/// Lowest first. Modules in one layer do not use each other.
const LAYERS: &[&[&str]] = &[
    &["error", "sys"],
    &["layer"],
    &["store"],
    &["archive", "union", "socket"],
    &["driver"],
    &["image", "plugin", "snapshotter"],
];

/// The crate roots, the binary's own modules and this check sit above every layer.
const ABOVE: &[&str] = &["lib", "main", "cli", "layering", "fuzzing"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level modules that `text` names through `crate::` (also in `use crate::{a, b::c}`
/// groups, over several lines), outside `//` comments.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.insert(ident(rest));
            continue;
        };
        // The first name of each item at the group's own depth.
        let mut depth = 0;
        let mut item_start = true;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                _ if item_start && !c.is_whitespace() => {
                    out.insert(ident(&group[i..]));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    out.remove("");
    out
}

fn visit(
    dir: &Path,
    top: Option<&str>,
    modules: &mut BTreeSet<String>,
    edges: &mut BTreeSet<(String, String)>,
) {
    for entry in std::fs::read_dir(dir).expect("listing src") {
        let path = entry.expect("listing src").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let module = top.unwrap_or(name.trim_end_matches(".rs"));
        if path.is_dir() {
            visit(&path, Some(module), modules, edges);
        } else if name.ends_with(".rs") {
            modules.insert(module.to_string());
            let text = std::fs::read_to_string(&path).expect("reading a source file");
            for used in crate_modules(&text) {
                if used != module {
                    edges.insert((module.to_string(), used));
                }
            }
        }
    }
}

#[test]
fn imports_flow_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (mut modules, mut edges) = (BTreeSet::new(), BTreeSet::new());
    visit(&src, None, &mut modules, &mut edges);
    for m in &modules {
        assert!(
            layer_of(m).is_some() || ABOVE.contains(&m.as_str()),
            "module {m} has no place in LAYERS"
        );
    }
    let mut upward = Vec::new();
    for (from, to) in &edges {
        let (Some(f), Some(t)) = (layer_of(from), layer_of(to)) else {
            continue;
        };
        if f <= t {
            upward.push(format!("{from} uses {to}"));
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering {LAYERS:?}: {upward:#?}"
    );
}

#[test]
fn reads_crate_paths() {
    let m = crate_modules(
        "use crate::{layer::idmap::IdMap, store};\nlet x = crate::sys::f(); // crate::driver",
    );
    assert_eq!(m.into_iter().collect::<Vec<_>>(), ["layer", "store", "sys"]);
}
