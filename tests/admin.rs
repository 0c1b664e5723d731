//! The admin socket of a real `wcfs mount` process: `wcfs status`, `wcfs table`, `wcfs
//! invalidate`; and `wcfs mount --config`.

mod common;
use common::{is_mounted, spawn_mount, wait};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn wcfs(args: &[&str], sock: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(args)
        .arg("--socket")
        .arg(sock)
        .output()
        .unwrap()
}

fn ok(args: &[&str], sock: &Path) -> String {
    let out = wcfs(args, sock);
    assert!(
        out.status.success(),
        "wcfs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Dirs {
    ro: PathBuf,
    rw: PathBuf,
    data: PathBuf,
    mnt: PathBuf,
    _tmp: tempfile::TempDir,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let d = Dirs {
        ro: tmp.path().join("ro"),
        rw: tmp.path().join("rw"),
        data: tmp.path().join("data"),
        mnt: tmp.path().join("mnt"),
        _tmp: tmp,
    };
    for p in [&d.ro, &d.rw, &d.mnt] {
        std::fs::create_dir(p).unwrap();
    }
    d
}

#[test]
fn status_table_and_invalidate_talk_to_a_running_node() {
    let d = dirs();
    std::fs::create_dir(d.ro.join("assets")).unwrap();
    std::fs::write(d.ro.join("assets/app.js"), b"v1();").unwrap();
    let sock = d.data.join("admin.sock");
    let missing = wcfs(&["status"], &sock);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("is the node running?") && err.contains(sock.to_str().unwrap()),
        "{err}"
    );

    let mut p = spawn_mount(
        &[
            "--ro".as_ref(),
            d.ro.as_os_str(),
            "--rw".as_ref(),
            d.rw.as_os_str(),
            "--data".as_ref(),
            d.data.as_os_str(),
            d.mnt.as_os_str(),
        ],
        &d.mnt,
    );
    assert!(wait(Duration::from_secs(10), || sock.exists()), "no socket");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::create_dir(d.mnt.join("uploads")).unwrap();
    for i in 0..5 {
        std::fs::write(d.mnt.join(format!("uploads/{i}.jpg")), b"jpg").unwrap();
    }

    let v: serde_json::Value = serde_json::from_str(&ok(&["status", "--json"], &sock)).unwrap();
    assert_eq!(v["table"]["live_paths"], 6, "{v:#}");
    assert_eq!(v["generation"], 1);
    assert_eq!(v["members"].as_array().unwrap().len(), 0);
    assert!(v["journal"]["appends"].as_u64().unwrap() >= 6, "{v:#}");
    assert_eq!(
        v["fast_open"], false,
        "the default mode holds locks across nodes"
    );
    let human = ok(&["status"], &sock);
    assert!(
        human.contains("6 paths")
            && human.contains("single node")
            && human.contains("locks hold across nodes"),
        "{human}"
    );

    let get = ok(&["table", "get", "uploads/3.jpg"], &sock);
    assert!(
        get.contains("resolution Rw") && get.contains("live Rw"),
        "{get}"
    );
    let replica = v["replica"].as_str().unwrap();
    assert!(get.contains(&format!("dot {replica}:")), "{get}");
    // An absolute path under the mountpoint names the same entry.
    let abs = d.mnt.join("uploads/3.jpg");
    let v2: serde_json::Value = serde_json::from_str(&ok(
        &["table", "get", abs.to_str().unwrap(), "--json"],
        &sock,
    ))
    .unwrap();
    assert_eq!(v2["path"], "uploads/3.jpg");
    assert_eq!(v2["entries"].as_array().unwrap().len(), 1);
    let ls = ok(&["table", "ls", "uploads"], &sock);
    assert_eq!(ls.lines().count(), 5, "{ls}");
    assert!(ls.lines().all(|l| l.starts_with("Rw ")), "{ls}");
    let bad = wcfs(&["table", "get", "a/../b"], &sock);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("a/../b"));

    // A new RO image under the running mount: the kernel keeps its cached answers (here:
    // that these names do not exist, for the negative TTL of 60 s) until told.
    assert!(!d.mnt.join("assets/new.js").exists());
    assert!(!d.mnt.join("robots.txt").exists());
    let tmp = d.ro.join("assets/.new");
    std::fs::write(&tmp, b"release2();").unwrap();
    std::fs::rename(&tmp, d.ro.join("assets/app.js")).unwrap();
    std::fs::write(d.ro.join("assets/new.js"), b"new();").unwrap();
    std::fs::write(d.ro.join("robots.txt"), b"User-agent: *").unwrap();
    assert!(
        !d.mnt.join("assets/new.js").exists() && !d.mnt.join("robots.txt").exists(),
        "the kernel served its cache (else this test proves nothing)"
    );
    let out = ok(&["invalidate"], &sock);
    assert!(out.contains("invalidated everything"), "{out}");
    assert_eq!(
        std::fs::read(d.mnt.join("assets/new.js")).unwrap(),
        b"new();"
    );
    assert_eq!(
        std::fs::read(d.mnt.join("robots.txt")).unwrap(),
        b"User-agent: *"
    );
    assert_eq!(
        std::fs::read(d.mnt.join("assets/app.js")).unwrap(),
        b"release2();"
    );
    // One directory only.
    assert!(!d.mnt.join("assets/late.js").exists());
    std::fs::write(d.ro.join("assets/late.js"), b"late();").unwrap();
    assert!(
        !d.mnt.join("assets/late.js").exists(),
        "cached negative entry"
    );
    let out = ok(&["invalidate", "assets"], &sock);
    assert!(out.contains("invalidated assets"), "{out}");
    assert!(d.mnt.join("assets/late.js").exists());

    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    assert!(p.0.wait().unwrap().success());
    assert!(!sock.exists(), "socket left behind after a clean stop");
}

#[test]
fn mount_from_a_config_file_with_flags_overriding_it() {
    let d = dirs();
    std::fs::write(d.ro.join("index.html"), b"hi").unwrap();
    let cfg = d.data.with_extension("toml");
    let sock = d.mnt.parent().unwrap().join("custom.sock");
    std::fs::write(
        &cfg,
        format!(
            "name = \"web1\"\ndata_dir = {:?}\n[branches]\nro = {:?}\nrw = \"/nonexistent\"\n\
             mountpoint = {:?}\n[admin]\nsocket = {:?}\n[durability]\npolicy = \"interval\"\n\
             interval_ms = 50\n",
            d.data, d.ro, d.mnt, sock
        ),
    )
    .unwrap();
    // The file's rw is wrong; the flag fixes it.
    let mut p = spawn_mount(
        &[
            "--config".as_ref(),
            cfg.as_os_str(),
            "--rw".as_ref(),
            d.rw.as_os_str(),
        ],
        &d.mnt,
    );
    assert_eq!(std::fs::read(d.mnt.join("index.html")).unwrap(), b"hi");
    std::fs::write(d.mnt.join("up"), b"u").unwrap();
    assert_eq!(std::fs::read(d.rw.join("up")).unwrap(), b"u");
    assert!(wait(Duration::from_secs(10), || sock.exists()), "no socket");
    // The client finds the socket through the same file.
    let out = Command::new(env!("CARGO_BIN_EXE_wcfs"))
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "web1");
    assert!(
        v["journal"]["durability"]
            .as_str()
            .unwrap()
            .starts_with("Interval")
    );
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    assert!(p.0.wait().unwrap().success());
}

#[test]
fn a_bad_config_is_refused_with_the_key_before_mounting() {
    let d = dirs();
    let cfg = d.data.with_extension("toml");
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_wcfs"))
            .args(["mount", "--config"])
            .arg(&cfg)
            .arg(&d.mnt)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(!is_mounted(&d.mnt));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let base = format!("[branches]\nro = {:?}\nrw = {:?}\n", d.ro, d.rw);
    let e = run(&format!("{base}mountpoint_typo = \"/x\"\n"));
    assert!(e.contains("mountpoint_typo"), "{e}");
    let e = run(&format!(
        "listen = \"127.0.0.1:7000\"\nseeds = [\"127.0.0.1:7001\", \"web2\"]\n\
         data_dir = {:?}\n{base}",
        d.data
    ));
    assert!(e.contains("seeds[1]: not an address"), "{e}");
}
