//! The layering of docs/design.md section 4, checked over the source: a module may use the
//! modules listed above it, never one listed below it (the IR knows no op rule, op rules
//! know no trainer, the learners know no runtime). Code only: a doc comment naming a
//! module below is a cross-reference, not a dependency. `main`, `cli/` and `pipeline/` are
//! the top and may use everything; `error` is shared.

/// Each top-level module's place in the list; today's modules sit where the design puts
/// their contents (`learn/` holds what `select/`, `candle/` and `recover/` will; `verify`,
/// `bench`, `eval` and `sv` belong with `runtime/`).
const LAYERS: &[(&str, u32)] = &[
    ("onnx", 0),
    ("audio", 1),
    ("ir", 2),
    ("ops", 3),
    ("analysis", 4),
    ("inspect", 4),
    ("gates", 5),
    ("prune", 6),
    ("learn", 7),
    ("runtime", 8),
    ("verify", 8),
    ("bench", 8),
    ("eval", 8),
    ("sv", 8),
    ("report", 9),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// `(file, module)` for every `crate::module` path in the code (not the comments) of the
/// `.rs` files under `dir`.
fn crate_paths(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            crate_paths(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            for line in text.lines() {
                let code = line.split("//").next().unwrap_or("");
                for (i, _) in code.match_indices("crate::") {
                    let rest = &code[i + "crate::".len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    out.push((p.display().to_string(), name));
                }
            }
        }
    }
}

#[test]
fn no_module_uses_one_listed_below_it() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = vec![];
    crate_paths(&src, &mut paths);
    // the check sees what it must: the learners do use the op rules
    assert!(paths
        .iter()
        .any(|(f, m)| f.contains("/learn/") && m == "ops"));
    let mut bad = std::collections::BTreeSet::new();
    let mut checked = 0;
    for (file, dep) in &paths {
        let rel = file.rsplit_once("/src/").map(|(_, r)| r).unwrap_or(file);
        let top = rel.split('/').next().unwrap_or("").trim_end_matches(".rs");
        let (Some(from), Some(to)) = (layer(top), layer(dep)) else {
            continue;
        };
        checked += 1;
        if to > from {
            bad.insert(format!("{rel} uses crate::{dep}"));
        }
    }
    assert!(
        checked > 100,
        "only {checked} paths between layered modules"
    );
    assert!(
        bad.is_empty(),
        "imports pointing down the layer list:\n{}",
        bad.into_iter().collect::<Vec<_>>().join("\n")
    );
}
