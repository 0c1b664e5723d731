//! Help good enough to be the man page: every command explains itself with examples, and the
//! completions and man pages generated from it are usable.

use std::process::{Command, Output};

fn wcfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_command_has_examples_that_use_it() {
    for cmd in [
        &["mount"][..],
        &["demo"],
        &["rebuild"],
        &["check"],
        &["ca"],
        &["ca", "init"],
        &["ca", "issue"],
        &["completions"],
        &["man"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let text = stdout(&wcfs(&args));
        let (_, examples) = text
            .split_once("\nExamples:\n")
            .unwrap_or_else(|| panic!("wcfs {cmd:?} --help has no Examples section:\n{text}"));
        let first = format!("wcfs {}", cmd.join(" "));
        assert!(
            examples.contains(&first),
            "wcfs {cmd:?}: no example runs `{first}`"
        );
    }
    let top = stdout(&wcfs(&["--help"]));
    for section in ["Examples:", "Files:", "Environment:", "Exit status:"] {
        assert!(top.contains(section), "wcfs --help lacks {section}");
    }
    // -h stays short.
    assert!(!stdout(&wcfs(&["-h"])).contains("Examples:"));
}

#[test]
fn completion_scripts_cover_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&wcfs(&["completions", shell]));
        for sub in ["mount", "demo", "rebuild", "check", "ca"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    // The bash script parses.
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("wcfs.bash");
    std::fs::write(&f, stdout(&wcfs(&["completions", "bash"]))).unwrap();
    let st = Command::new("bash").arg("-n").arg(&f).status().unwrap();
    assert!(st.success());
    let bad = wcfs(&["completions", "tcsh"]);
    assert!(!bad.status.success());
}

#[test]
fn man_pages_are_roff_with_the_examples() {
    let page = stdout(&wcfs(&["man"]));
    assert!(page.starts_with(".ie") || page.contains("\n.TH "), "{page}");
    assert!(page.contains("wcfs demo"));
    let tmp = tempfile::tempdir().unwrap();
    let out = stdout(&wcfs(&["man", "--out", tmp.path().to_str().unwrap()]));
    for name in [
        "wcfs",
        "wcfs-mount",
        "wcfs-rebuild",
        "wcfs-check",
        "wcfs-demo",
        "wcfs-ca",
    ] {
        let p = tmp.path().join(format!("{name}.1"));
        assert!(out.contains(p.to_str().unwrap()), "{out}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(".SH"), "{name}.1");
    }
    let rebuild = std::fs::read_to_string(tmp.path().join("wcfs-rebuild.1")).unwrap();
    assert!(rebuild.contains("\\-\\-force"), "{rebuild}");
}
