//! The layer check: the crate's folders are layers, and imports only go down.
//!
//! ```text
//! 4  the binary (src/main.rs, src/cli/)   may use anything below
//! 3  bench/    route/                     the load generator, the router
//! 2  server/   client/                    never each other
//! 1  handler/  config.rs                  never each other
//! 0  wire/     transport/   stats.rs      nothing else of the crate
//! ```
//!
//! It reads every `crate::LAYER` path in src/ (and `courier::LAYER` in the binary), outside
//! comments, and fails on any that points to a layer not strictly below the file's own.
//! Within a layer's folder, files may use each other, but two files that name each
//! other's modules (`super::a::` in b.rs and `super::b::` in a.rs) are a cycle and fail
//! too. The same test holds the size rules of docs/ARCHITECTURE.md: no function over 80
//! lines and no file over 700 lines, tests aside.
//!
//! To see it fail, add `use crate::server::Server;` to src/wire/mod.rs and run
//! `cargo test --test layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module's files may import only modules of lower rank.
const LAYERS: &[(&str, u8)] = &[
    ("wire", 0),
    ("transport", 0),
    ("stats", 0),
    ("handler", 1),
    ("config", 1),
    ("server", 2),
    ("client", 2),
    ("bench", 3),
    ("route", 3),
    ("cli", 4),
];

const MAX_FUNCTION_LINES: usize = 80;
const MAX_FILE_LINES: usize = 700;

fn rank(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, rank)| *rank)
}

/// A source file: its path relative to src/ and its text.
struct Source {
    path: String,
    text: String,
}

impl Source {
    /// The top-level module the file belongs to: `wire` for src/wire/codec.rs, `config`
    /// for src/config.rs, `cli` for the binary; `None` for lib.rs.
    fn module(&self) -> Option<&str> {
        if self.path == "main.rs" {
            return Some("cli");
        }
        if self.path == "lib.rs" {
            return None;
        }
        let first = self.path.split('/').next()?;
        Some(first.strip_suffix(".rs").unwrap_or(first))
    }

    /// The file's lines that are code: comments and doc comments left out.
    fn code_lines(&self) -> impl Iterator<Item = (usize, &str)> {
        self.text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim_start().starts_with("//"))
            .map(|(n, line)| (n + 1, line.split("//").next().unwrap_or(line)))
    }
}

fn sources(root: &Path) -> Vec<Source> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path: PathBuf = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| Source {
            path: path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/"),
            text: std::fs::read_to_string(&path).expect("read source"),
        })
        .collect()
}

/// Every `PREFIX::name` in `line`, as `name`.
fn paths_after<'a>(line: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        found.push(&rest[..end]);
    }
    found
}

/// The imports that break the layer rule, as lines for a report.
fn upward_imports(sources: &[Source]) -> Vec<String> {
    let mut problems = Vec::new();
    for source in sources {
        let Some(module) = source.module() else {
            continue;
        };
        let Some(own) = rank(module) else {
            problems.push(format!(
                "src/{}: module `{module}` is in no layer (add it to LAYERS and docs/ARCHITECTURE.md)",
                source.path
            ));
            continue;
        };
        let prefix = if module == "cli" {
            "courier::"
        } else {
            "crate::"
        };
        for (n, line) in source.code_lines() {
            for target in paths_after(line, prefix) {
                if target == module {
                    continue;
                }
                match rank(target) {
                    Some(theirs) if theirs < own => {}
                    Some(theirs) => problems.push(format!(
                        "src/{}:{n}: `{module}` (layer {own}) imports `{target}` (layer {theirs}): imports only go down",
                        source.path
                    )),
                    None => problems.push(format!(
                        "src/{}:{n}: `{module}` imports `{target}`, which is in no layer",
                        source.path
                    )),
                }
            }
        }
    }
    problems
}

/// Pairs of sibling files that name each other's modules.
fn sibling_cycles(sources: &[Source]) -> Vec<String> {
    // (folder, file stem) -> sibling stems it names through `super::` or its own layer.
    let mut names: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let Some((folder, file)) = source.path.rsplit_once('/') else {
            continue;
        };
        let stem = file.trim_end_matches(".rs").to_owned();
        let layer = folder.split('/').next().unwrap_or(folder);
        let mut named = BTreeSet::new();
        for (_, line) in source.code_lines() {
            named.extend(paths_after(line, "super::").into_iter().map(str::to_owned));
            let own = format!("crate::{layer}::");
            named.extend(paths_after(line, &own).into_iter().map(str::to_owned));
        }
        named.remove(&stem);
        names.insert((folder.to_owned(), stem), named);
    }
    let mut cycles = Vec::new();
    for ((folder, a), named) in &names {
        for b in named {
            let back = names.get(&(folder.clone(), b.clone()));
            if a < b && back.is_some_and(|theirs| theirs.contains(a)) {
                cycles.push(format!(
                    "src/{folder}/{a}.rs and src/{folder}/{b}.rs name each other: a cycle"
                ));
            }
        }
    }
    cycles
}

/// The part of a file that is not its unit tests.
fn without_tests(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// Functions over the limit and files over theirs, tests aside.
fn oversize(sources: &[Source]) -> Vec<String> {
    let mut problems = Vec::new();
    for source in sources {
        if source.path.ends_with("tests.rs") {
            continue;
        }
        let text = without_tests(&source.text);
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > MAX_FILE_LINES {
            problems.push(format!(
                "src/{}: {} lines, over {MAX_FILE_LINES}",
                source.path,
                lines.len()
            ));
        }
        for (start, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = trimmed.starts_with("fn ")
                || trimmed.contains(" fn ") && !trimmed.starts_with("//");
            if !is_fn {
                continue;
            }
            // A declaration without a body (a trait's method) ends with `;` before any `{`.
            let head_end = lines[start..]
                .iter()
                .map(|l| l.trim_end())
                .find(|l| l.ends_with('{') || l.ends_with(';'));
            if head_end.is_none_or(|l| l.ends_with(';')) {
                continue;
            }
            // rustfmt closes a function with `}` at the indentation it opened with.
            let indent = &line[..line.len() - trimmed.len()];
            let close = format!("{indent}}}");
            if let Some(len) = lines[start..].iter().position(|l| *l == close) {
                if len + 1 > MAX_FUNCTION_LINES {
                    problems.push(format!(
                        "src/{}:{}: a function of {} lines, over {MAX_FUNCTION_LINES}: {}",
                        source.path,
                        start + 1,
                        len + 1,
                        trimmed
                    ));
                }
            }
        }
    }
    problems
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn imports_only_go_down_the_layers() {
    let problems = upward_imports(&sources(&src()));
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn files_of_one_layer_do_not_import_each_other_in_a_circle() {
    let problems = sibling_cycles(&sources(&src()));
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn no_function_over_80_lines_and_no_file_over_700() {
    let problems = oversize(&sources(&src()));
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

fn source(path: &str, text: &str) -> Source {
    Source {
        path: path.into(),
        text: text.into(),
    }
}

#[test]
fn the_check_catches_an_upward_import_a_sideways_one_and_an_unknown_module() {
    let tree = [
        source("wire/mod.rs", "use crate::server::Server;\n"),
        source(
            "server/mod.rs",
            "use crate::client::Client;\nuse crate::wire::Frame;\n",
        ),
        source(
            "client/mod.rs",
            "// use crate::server::Server; (a comment)\n",
        ),
        source("router.rs", "use crate::wire::Frame;\n"),
        source("main.rs", "use courier::server::Server;\n"),
    ];
    let problems = upward_imports(&tree);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].contains("src/wire/mod.rs:1") && problems[0].contains("`server`"));
    assert!(problems[1].contains("src/server/mod.rs:1") && problems[1].contains("`client`"));
    assert!(problems[2].contains("`router` is in no layer"));
}

#[test]
fn the_check_catches_two_files_that_name_each_other() {
    let tree = [
        source("server/a.rs", "use super::b::Thing;\n"),
        source("server/b.rs", "use crate::server::a::Other;\n"),
        source("server/c.rs", "use super::a::Other;\n"),
    ];
    assert_eq!(
        sibling_cycles(&tree),
        ["src/server/a.rs and src/server/b.rs name each other: a cycle"]
    );
}

#[test]
fn the_check_catches_a_long_function_but_not_a_long_test_module() {
    let body = "    x();\n".repeat(MAX_FUNCTION_LINES);
    let long = format!("fn long() {{\n{body}}}\n\n#[cfg(test)]\nmod tests {{\n    fn also_long() {{\n{body}    }}\n}}\n");
    let problems = oversize(&[source("wire/x.rs", &long)]);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(problems[0].contains("src/wire/x.rs:1") && problems[0].contains("82 lines"));
    let short = format!(
        "fn short() {{\n{}}}\n",
        "    x();\n".repeat(MAX_FUNCTION_LINES - 2)
    );
    assert!(oversize(&[source("wire/y.rs", &short)]).is_empty());
    // A trait method without a body, its signature over several lines, is no function.
    let comments = "    // x\n".repeat(MAX_FUNCTION_LINES);
    let declared = format!(
        "trait T {{\n    fn f(\n        &self,\n    ) -> u8;\n{comments}}}\n\nimpl T for U {{\n    fn f(&self) -> u8 {{\n        1\n    }}\n}}\n"
    );
    assert!(oversize(&[source("wire/z.rs", &declared)]).is_empty());
}
