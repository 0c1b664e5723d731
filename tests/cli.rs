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

#[test]
fn ca_init_then_issue_writes_loadable_files() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    let certs = d.path().join("certs");
    let (ok, text) = wcfs(&["ca", "init", "--out", ca.to_str().unwrap()]);
    assert!(ok, "{text}");
    let (ok, text) = wcfs(&[
        "ca",
        "issue",
        "web1",
        "--ca-dir",
        ca.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let key = certs.join("web1.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let tls =
        wcfs_gossip::tls::NodeTls::load(&ca.join("ca.pem"), &certs.join("web1.pem"), &key).unwrap();
    assert_eq!(tls.name(), "web1");

    // Running init again must not replace the CA, and says why.
    let (ok, text) = wcfs(&["ca", "init", "--out", ca.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        text.contains("ca.key") && text.contains("overwrite"),
        "{text}"
    );
    // A bad name is refused with the reason.
    let (ok, text) = wcfs(&[
        "ca",
        "issue",
        "Bad_Name",
        "--ca-dir",
        ca.to_str().unwrap(),
        "--out",
        certs.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("invalid node name"), "{text}");
}
