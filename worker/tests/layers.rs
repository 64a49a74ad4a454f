//! The worker's layers, and that imports between them run one way.
//!
//! Every top-level module of the crate belongs to one layer; code in a
//! layer may name (`crate::…`) only modules of its own layer or of layers
//! below it. Comments are left out: a doc comment may point anywhere.
//! ARCHITECTURE.md's code map lists the same layers.
//!
//! `cargo test -p worker --test layers -- --nocapture` prints the import
//! graph between modules it found.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom up, with their top-level modules.
const LAYERS: &[(&str, &[&str])] = &[
    ("pure cores", &["core"]),
    ("sources", &["source"]),
    ("the UDP send path", &["udp"]),
    ("ways out (sinks)", &["srtp_out"]),
    ("the viewer policy", &["fanout"]),
    ("viewer transports", &["rtc"]),
    (
        "orchestration",
        &[
            "lib",
            "config",
            "service",
            "session",
            "heartbeat",
            "input_state",
        ],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// Top-level modules a file names as `crate::x`, outside comments.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn imports_between_layers_run_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "main" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "{}: module `{module}` is in no layer (add it to LAYERS and ARCHITECTURE.md)",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read file");
        for used in imports(&text) {
            if used == module {
                continue;
            }
            // Items of the crate root (`crate::Ctx`) are the orchestration's.
            let target = if layer_of(&used).is_some() {
                used.clone()
            } else {
                "lib".to_string()
            };
            graph
                .entry(module.clone())
                .or_default()
                .insert(target.clone());
            let theirs = layer_of(&target).expect("known");
            if theirs > own {
                problems.push(format!(
                    "{}: `{module}` ({}) names `crate::{used}` ({}), a layer above it",
                    file.display(),
                    LAYERS[own].0,
                    LAYERS[theirs].0
                ));
            }
        }
    }
    for (module, uses) in &graph {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!("{module} -> {}", uses.join(", "));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import_and_ignores_comments() {
    let text = "use crate::fanout::Sink; // crate::session\n/// see `crate::rtc`\nfn f() { crate::core::x(); }";
    assert_eq!(
        imports(text),
        BTreeSet::from(["fanout".to_string(), "core".to_string()])
    );
    assert!(layer_of("session") > layer_of("fanout"));
    assert!(layer_of("nothing").is_none());
}
