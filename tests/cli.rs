//! The `wcfs` command as a user meets it first: `--version` and `--help`.

use std::process::Command;

fn wcfs(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(args)
        .output()
        .expect("run wcfs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn version_names_the_program_and_its_version() {
    let (ok, text) = wcfs(&["--version"]);
    assert!(ok);
    assert_eq!(text.trim(), format!("wcfs {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_describes_the_program() {
    let (ok, text) = wcfs(&["--help"]);
    assert!(ok);
    assert!(text.contains("union filesystem"), "{text}");
    assert!(text.contains("Usage: wcfs"), "{text}");
}

#[test]
fn unknown_arguments_are_refused_with_a_message() {
    let (ok, text) = wcfs(&["--no-such-flag"]);
    assert!(!ok);
    assert!(text.contains("--no-such-flag"), "{text}");
}
