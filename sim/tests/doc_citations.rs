//! The repository stands on its own: no source file or document cites a document that is not in
//! it. This test fails on
//! * a path into the project's outside material (the [`OUTSIDE`] list: the shared folder above
//!   the repository, its design notes and reference files), which a user of the repository does
//!   not have;
//! * a `docs/NAME.md` mention whose file does not exist;
//! * a relative Markdown link (`[text](path)`) in a `.md` file whose target does not exist.
use std::path::{Path, PathBuf};

/// Texts that point outside the repository (split with `concat!` so that this file does not
/// cite them itself for a plain text search).
const OUTSIDE: &[&str] = &[
    concat!("..", "/shared"),
    concat!("design", "-notes/"),
    concat!("reference/", "protocols", ".md"),
    concat!("reference/", "embedded-builds", ".md"),
    concat!("reference/", "gui-and-broker", ".md"),
    concat!("DESIGN", ".md"),
    concat!("STYLE", ".md"),
];

/// Folders that hold build output, fuzzer inputs or third-party text, not our writing.
const SKIP: &[&str] = &["target", ".git", "corpus", "artifacts", "node_modules"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !SKIP.contains(&name.as_ref()) {
                files(&path, out);
            }
        } else if [".rs", ".md", ".toml", ".html"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            out.push(path);
        }
    }
}

/// Every `docs/NAME.md` mentioned in `text` (NAME of letters, digits, `-`, `_`).
fn docs_mentions(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("docs/") {
        let tail = &rest[at + "docs/".len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        let name = tail[..len].trim_end_matches('.');
        if name.ends_with(".md") {
            found.push(name);
        }
        rest = &tail[len..];
    }
    found
}

/// Targets of relative Markdown links `](target)` in `text`, without their `#anchor`.
fn relative_links(text: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        let tail = &rest[at + 2..];
        let Some(end) = tail.find(')') else { break };
        let target = tail[..end].split('#').next().unwrap_or("");
        let external = target.contains("://") || target.starts_with("mailto:");
        if !target.is_empty() && !external && !target.contains(' ') {
            found.push(target);
        }
        rest = &tail[end..];
    }
    found
}

fn findings(root: &Path) -> Vec<String> {
    let mut all = Vec::new();
    files(root, &mut all);
    let this_file = Path::new(file!()).file_name().expect("file name");
    let mut bad = Vec::new();
    for path in all {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // This file names what it looks for.
        if path.file_name() == Some(this_file) {
            continue;
        }
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        for outside in OUTSIDE {
            if text.contains(outside) {
                bad.push(format!(
                    "{shown}: cites `{outside}`, which is not in the repository"
                ));
            }
        }
        for name in docs_mentions(&text) {
            if !root.join("docs").join(name).is_file() {
                bad.push(format!("{shown}: cites docs/{name}, which does not exist"));
            }
        }
        if shown.ends_with(".md") {
            let dir = path.parent().expect("a file has a folder");
            for target in relative_links(&text) {
                if !dir.join(target).exists() {
                    bad.push(format!("{shown}: links to {target}, which does not exist"));
                }
            }
        }
    }
    bad
}

#[test]
fn the_repository_cites_only_what_it_holds() {
    let bad = findings(&repo_root());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_scanners_find_what_they_look_for() {
    assert_eq!(
        docs_mentions("see docs/interfaces.md §5.1 and `docs/fidelity.md`."),
        ["interfaces.md", "fidelity.md"]
    );
    assert_eq!(
        relative_links("[a](docs/x.md#top) [b](https://x.org/y) [c](../z.md)"),
        ["docs/x.md", "../z.md"]
    );
    // A broken tree: a dangling docs mention, a dangling link and an outside citation.
    let dir = std::env::temp_dir().join(format!("doc-citations-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("docs")).expect("temp dir");
    std::fs::write(dir.join("docs/here.md"), "fine").expect("write");
    std::fs::write(
        dir.join("lib.rs"),
        concat!(
            "//! docs/here.md, docs/gone.md, ..",
            "/shared/DESIGN",
            ".md"
        ),
    )
    .expect("write");
    std::fs::write(
        dir.join("README.md"),
        "[ok](docs/here.md) [no](docs/missing.md)",
    )
    .expect("write");
    let bad = findings(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(bad.len(), 5, "{bad:#?}");
    assert!(bad.iter().any(|b| b.contains("docs/gone.md")));
    assert!(bad.iter().any(|b| b.contains("links to docs/missing.md")));
    assert!(bad.iter().any(|b| b.contains(concat!("`..", "/shared`"))));
}
