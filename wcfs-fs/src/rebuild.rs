//! Reading the translation table back from the RW branch (`wcfs rebuild`, `wcfs check`).
//!
//! The union keeps the RW branch self-describing in aufs's format (see `fs.rs`): an entry
//! that exists there is RW content, `.wh.<name>` deletes `<name>` of the RO branch, and a
//! directory holding `.wh..wh..opq` hides the RO directory below it. Other `.wh..wh.` names
//! are the union's own temporary files (copy-up in progress) and mean nothing.
//!
//! [`walk`] scans the branch one directory at a time, without following symlinks, and
//! compares what it finds with a table through [`TableHandle`]: [`reconcile`] proposes the
//! mutations that make the table agree, [`check`] lists where they disagree. Memory is
//! bounded by the largest directory, not the size of the branch.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use wcfs_core::dot::{Kind, Op};
use wcfs_core::handle::{ProposeError, TableHandle};
use wcfs_core::path::WPath;
use wcfs_core::table::{Child, Resolution};

use crate::branch::Branch;
use crate::fs::{WH_OPAQUE, WH_PREFIX};

/// Names the union reserves for itself (`.wh..wh..opq`, `.wh..wh.copyup.*`): never a whiteout.
const RESERVED_PREFIX: &[u8] = b".wh..wh.";

/// Why a scan stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The RW branch (or a directory in it) could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The directory, as a path on the host.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The table refused a mutation, or it could not be made durable.
    #[error("table: {0}")]
    Propose(#[from] ProposeError),
}

/// What the scan found on the RW branch so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Directory entries read (all names, markers included).
    pub entries: u64,
    /// Non-directories (files, symlinks, devices...) that are RW content.
    pub files: u64,
    /// Directories that are RW content (opaque ones included).
    pub dirs: u64,
    /// Directories holding `.wh..wh..opq`.
    pub opaque_dirs: u64,
    /// `.wh.<name>` whiteouts that take effect (not shadowed by `<name>` itself on RW).
    pub whiteouts: u64,
    /// Names ignored: the union's temporary files, whiteouts with an invalid target, and
    /// whiteouts shadowed by an RW entry of the same name.
    pub skipped: u64,
}

/// One place where the table and the RW branch differ. `want` is what the RW branch says
/// (`None`: nothing), `have` the table's winning live kind (`None`: no live entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    /// The path.
    pub path: WPath,
    /// What the RW branch says.
    pub want: Option<Kind>,
    /// What the table says.
    pub have: Option<Kind>,
    /// The RW entry is a directory.
    pub dir: bool,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.want, self.have) {
            (None, Some(Kind::Whiteout)) => "whiteout in table, no .wh. file on RW",
            (None, Some(_)) => "in table, not on RW",
            (Some(Kind::Whiteout), None) => ".wh. file on RW, not in table",
            (Some(Kind::Whiteout), Some(_)) => {
                "whiteout mismatch: .wh. file on RW, table says present"
            }
            (Some(_), Some(Kind::Whiteout)) => "whiteout mismatch: on RW, table says deleted",
            (Some(_), None) => "on RW, not in table",
            (Some(Kind::Opaque), Some(_)) => {
                "opaque mismatch: .wh..wh..opq on RW, table says merged"
            }
            (Some(_), Some(_)) => "opaque mismatch: table says opaque, no .wh..wh..opq on RW",
            (None, None) => "no difference",
        };
        write!(f, "{}: {what}", self.path)
    }
}

/// What [`reconcile`] changed in the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `MarkRw` proposed.
    pub marked_rw: u64,
    /// `MarkOpaque` proposed.
    pub marked_opaque: u64,
    /// `Whiteout` proposed.
    pub whited_out: u64,
    /// `Forget` proposed (entries the RW branch does not back).
    pub forgotten: u64,
}

impl Changes {
    /// Total mutations proposed.
    pub fn total(&self) -> u64 {
        self.marked_rw + self.marked_opaque + self.whited_out + self.forgotten
    }
}

/// What one RW directory says about one name.
struct Want {
    path: WPath,
    kind: Kind,
    dir: bool,
}

fn io_err(root: &Path, dir: Option<&WPath>) -> impl FnOnce(io::Error) -> ScanError {
    use std::os::unix::ffi::OsStrExt;
    let path = match dir {
        Some(d) => root.join(std::ffi::OsStr::from_bytes(d.as_bytes())),
        None => root.to_owned(),
    };
    move |source| ScanError::Io { path, source }
}

/// Scans the RW branch at `root` against `table` and calls `on_diff` for every path where
/// they differ (see [`Diff`]), directory by directory, parents before children. `progress`
/// is called after every directory with the running totals.
///
/// Entries the table has below a directory that is not on the RW branch are reported too
/// (with `want: None`). Symlinks are reported as entries, never followed; directories are
/// opened beneath `root` only (a symlink swapped in during the scan is refused, not followed).
pub fn walk(
    root: &Path,
    table: &dyn TableHandle,
    mut on_diff: impl FnMut(&Diff, &dyn TableHandle) -> Result<(), ScanError>,
    mut progress: impl FnMut(&ScanStats),
) -> Result<ScanStats, ScanError> {
    let branch = Branch::open(root, None).map_err(io_err(root, None))?;
    let mut stats = ScanStats::default();
    let mut stack: Vec<Option<WPath>> = vec![None];
    while let Some(dir) = stack.pop() {
        let list = branch
            .list(dir.as_ref())
            .map_err(io_err(root, dir.as_ref()))?;
        stats.entries += list.len() as u64;
        let mut want: BTreeMap<Vec<u8>, Want> = BTreeMap::new();
        let mut whiteouts: Vec<Vec<u8>> = Vec::new();
        for e in &list {
            if e.name.starts_with(RESERVED_PREFIX) {
                if e.name != WH_OPAQUE {
                    stats.skipped += 1;
                }
                continue;
            }
            if let Some(target) = e.name.strip_prefix(WH_PREFIX) {
                whiteouts.push(target.to_vec());
                continue;
            }
            let path = WPath::child_of(dir.as_ref(), &e.name);
            let Ok(path) = path else {
                // A name the union could never have made (too long for a whiteout, say).
                stats.skipped += 1;
                continue;
            };
            let is_dir = match e.dtype {
                libc::DT_DIR => true,
                libc::DT_UNKNOWN => {
                    let st = branch
                        .lstat(Some(&path))
                        .map_err(io_err(root, Some(&path)))?;
                    st.st_mode & libc::S_IFMT == libc::S_IFDIR
                }
                _ => false,
            };
            let sub_opaque = is_dir && {
                let m = path.join(WH_OPAQUE).ok();
                m.is_some_and(|m| branch.lstat(Some(&m)).is_ok())
            };
            if is_dir {
                stats.dirs += 1;
                stats.opaque_dirs += u64::from(sub_opaque);
                stack.push(Some(path.clone()));
            } else {
                stats.files += 1;
            }
            let kind = if sub_opaque { Kind::Opaque } else { Kind::Rw };
            want.insert(
                e.name.clone(),
                Want {
                    path,
                    kind,
                    dir: is_dir,
                },
            );
        }
        for t in whiteouts {
            let path = WPath::child_of(dir.as_ref(), &t);
            match path {
                Ok(path) if !want.contains_key(&t) => {
                    stats.whiteouts += 1;
                    let kind = Kind::Whiteout;
                    want.insert(
                        t,
                        Want {
                            path,
                            kind,
                            dir: false,
                        },
                    );
                }
                // Shadowed by the entry itself, or naming nothing a path can be.
                _ => stats.skipped += 1,
            }
        }
        let have = table.children(dir.as_ref());
        let mut have_by: BTreeMap<&[u8], &Child> = BTreeMap::new();
        for c in &have {
            have_by.insert(c.name.as_slice(), c);
        }
        for (name, w) in &want {
            let h = have_by.get(name.as_slice()).and_then(|c| c.kind);
            if h != Some(w.kind) {
                on_diff(
                    &Diff {
                        path: w.path.clone(),
                        want: Some(w.kind),
                        have: h,
                        dir: w.dir,
                    },
                    table,
                )?;
            }
        }
        for c in &have {
            let on_rw = want.get(c.name.as_slice());
            let Ok(path) = WPath::child_of(dir.as_ref(), &c.name) else {
                continue;
            };
            if on_rw.is_none() && c.kind.is_some() {
                on_diff(
                    &Diff {
                        path: path.clone(),
                        want: None,
                        have: c.kind,
                        dir: false,
                    },
                    table,
                )?;
            }
            // Table state below a name that is not an RW directory has nothing behind it.
            if c.has_children && !on_rw.is_some_and(|w| w.dir) {
                absent_subtree(&path, table, &mut on_diff)?;
            }
        }
        progress(&stats);
    }
    Ok(stats)
}

/// Reports every live entry of the table strictly below `dir` as not on the RW branch.
fn absent_subtree(
    dir: &WPath,
    table: &dyn TableHandle,
    on_diff: &mut impl FnMut(&Diff, &dyn TableHandle) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for c in table.children(Some(&d)) {
            let Ok(p) = d.join(&c.name) else { continue };
            if c.kind.is_some() {
                on_diff(
                    &Diff {
                        path: p.clone(),
                        want: None,
                        have: c.kind,
                        dir: false,
                    },
                    table,
                )?;
            }
            if c.has_children {
                stack.push(p);
            }
        }
    }
    Ok(())
}

/// Makes `table` agree with the RW branch at `root`: every RW entry marked `Rw` (a directory
/// with `.wh..wh..opq`: `Opaque`), every effective `.wh.<name>` a `Whiteout`, and every live
/// entry the branch does not back forgotten. Mutations are proposed on top of the table's
/// state, so they supersede what this replica knew and propagate to peers like any local
/// change (concurrent changes from peers survive: add-wins). A file the table calls `Opaque`
/// (a rename over a whiteout) is left alone: for a non-directory it means the same as `Rw`.
pub fn reconcile(
    root: &Path,
    table: &dyn TableHandle,
    progress: impl FnMut(&ScanStats),
) -> Result<(ScanStats, Changes), ScanError> {
    let mut ch = Changes::default();
    let stats = walk(
        root,
        table,
        |d, t| {
            let op = match (d.want, d.have) {
                (Some(Kind::Rw), Some(Kind::Opaque)) if !d.dir => return Ok(()),
                (Some(Kind::Rw), _) => {
                    ch.marked_rw += 1;
                    Op::MarkRw
                }
                (Some(Kind::Opaque), _) => {
                    ch.marked_opaque += 1;
                    Op::MarkOpaque
                }
                (Some(Kind::Whiteout), _) => {
                    ch.whited_out += 1;
                    Op::Whiteout
                }
                (None, _) => {
                    ch.forgotten += 1;
                    Op::Forget
                }
            };
            t.propose(&d.path, op)?;
            Ok(())
        },
        progress,
    )?;
    Ok((stats, ch))
}

/// Lists where `table` and the RW branch at `root` disagree in a way the union can show.
/// Differences the union itself produces and that show the same files are not listed: an
/// unmarked RW entry below an opaque directory (served from RW anyway), an unmarked RW
/// directory that holds table entries (a parent the union created to hold them), and a file
/// the table calls `Opaque` instead of `Rw`.
pub fn check(
    root: &Path,
    table: &dyn TableHandle,
    progress: impl FnMut(&ScanStats),
) -> Result<(ScanStats, Vec<Diff>), ScanError> {
    let mut out = Vec::new();
    let stats = walk(
        root,
        table,
        |d, t| {
            let tolerated = match (d.want, d.have) {
                (Some(Kind::Rw), Some(Kind::Opaque)) => !d.dir,
                (Some(Kind::Rw | Kind::Opaque), None) => {
                    t.resolve(&d.path) == Resolution::RwOnly
                        || (d.want == Some(Kind::Rw)
                            && d.dir
                            && !t.children(Some(&d.path)).is_empty())
                }
                _ => false,
            };
            if !tolerated {
                out.push(d.clone());
            }
            Ok(())
        },
        progress,
    )?;
    Ok((stats, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use wcfs_core::dot::ReplicaId;
    use wcfs_core::handle::LocalHandle;
    use wcfs_core::table::Table;

    fn p(s: &str) -> WPath {
        WPath::new(s.as_bytes()).unwrap()
    }

    /// A hand-made RW branch as the union leaves it.
    fn tree(root: &Path) {
        let mk = |d: &str| std::fs::create_dir_all(root.join(d)).unwrap();
        let put = |f: &str| std::fs::write(root.join(f), b"x").unwrap();
        mk("uploads/2024");
        put("uploads/2024/a.jpg");
        put("index.php"); // a copied-up RO file
        mk("wp-includes");
        put("wp-includes/.wh.old.php"); // an RO file deleted
        put(".wh.readme.html");
        mk("cache"); // rmdir + mkdir of an RO dir
        put("cache/.wh..wh..opq");
        put("cache/fresh");
        put(".wh..wh.copyup.123.4"); // a copy-up interrupted by a crash
        put("uploads/.wh.x"); // shadowed: x exists on RW too
        put("uploads/x");
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
    }

    fn handle() -> Arc<LocalHandle> {
        LocalHandle::new(Table::new(ReplicaId(7), 1))
    }

    #[test]
    fn a_hand_made_rw_branch_becomes_the_table_it_describes() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let h = handle();
        let mut calls = 0;
        let (stats, ch) = reconcile(tmp.path(), &*h, |_| calls += 1).unwrap();
        assert_eq!(
            stats,
            ScanStats {
                entries: 14,
                files: 5, // a.jpg, index.php, fresh, x, link (nothing from /etc)
                dirs: 4,
                opaque_dirs: 1,
                whiteouts: 2,
                skipped: 2, // the copy-up temp and the shadowed .wh.x
            }
        );
        assert_eq!(calls, 5, "one progress call per directory");
        assert_eq!(
            ch,
            Changes {
                marked_rw: 8, // 3 merged dirs, 5 files
                marked_opaque: 1,
                whited_out: 2,
                forgotten: 0
            }
        );
        let r = |s: &str| h.with_table(|t| t.resolve(&p(s)));
        assert_eq!(r("uploads"), Resolution::Rw);
        assert_eq!(r("uploads/2024/a.jpg"), Resolution::Rw);
        assert_eq!(r("uploads/x"), Resolution::Rw);
        assert_eq!(r("index.php"), Resolution::Rw);
        assert_eq!(r("wp-includes"), Resolution::Rw);
        assert_eq!(r("wp-includes/old.php"), Resolution::Hidden);
        assert_eq!(r("wp-includes/other.php"), Resolution::Ro);
        assert_eq!(r("readme.html"), Resolution::Hidden);
        assert_eq!(r("cache"), Resolution::Opaque);
        assert_eq!(r("cache/fresh"), Resolution::Rw);
        assert_eq!(r("cache/from-ro"), Resolution::RwOnly);
        assert_eq!(r("link"), Resolution::Rw);
        assert_eq!(
            r("link/passwd"),
            Resolution::Ro,
            "the symlink was not followed"
        );
        // Nothing named after the markers.
        assert_eq!(r(".wh..wh.copyup.123.4"), Resolution::Ro);
        assert!(h.with_table(|t| t.get(&p("cache/.wh..wh..opq")).is_none()));

        // Now they agree; a second pass changes nothing.
        let (_, diffs) = check(tmp.path(), &*h, |_| {}).unwrap();
        assert_eq!(diffs, vec![]);
        let (_, ch) = reconcile(tmp.path(), &*h, |_| {}).unwrap();
        assert_eq!(ch.total(), 0);
    }

    #[test]
    fn check_lists_each_kind_of_disagreement_and_reconcile_repairs_them() {
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        let h = handle();
        reconcile(tmp.path(), &*h, |_| {}).unwrap();
        let root = tmp.path();
        std::fs::write(root.join("uploads/stray"), b"?").unwrap();
        std::fs::remove_file(root.join("uploads/2024/a.jpg")).unwrap();
        std::fs::write(root.join("wp-includes/.wh.gone.php"), b"").unwrap();
        std::fs::remove_file(root.join(".wh.readme.html")).unwrap();
        std::fs::remove_file(root.join("cache/.wh..wh..opq")).unwrap();
        h.propose(&p("gone-dir/f"), Op::MarkRw).unwrap();
        let (_, mut diffs) = check(root, &*h, |_| {}).unwrap();
        diffs.sort_by(|a, b| a.path.cmp(&b.path));
        let got: Vec<String> = diffs.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "cache: opaque mismatch: table says opaque, no .wh..wh..opq on RW",
                "gone-dir/f: in table, not on RW",
                "readme.html: whiteout in table, no .wh. file on RW",
                "uploads/2024/a.jpg: in table, not on RW",
                "uploads/stray: on RW, not in table",
                "wp-includes/gone.php: .wh. file on RW, not in table",
            ]
        );
        let (_, ch) = reconcile(root, &*h, |_| {}).unwrap();
        assert_eq!(
            ch,
            Changes {
                marked_rw: 2, // stray, cache (no longer opaque)
                marked_opaque: 0,
                whited_out: 1,
                forgotten: 3,
            }
        );
        assert_eq!(check(root, &*h, |_| {}).unwrap().1, vec![]);
        assert_eq!(
            h.with_table(|t| t.resolve(&p("readme.html"))),
            Resolution::Ro
        );
    }

    #[test]
    fn a_missing_branch_is_an_error_naming_it() {
        let h = handle();
        let e = reconcile(Path::new("/nonexistent/wcfs-rw"), &*h, |_| {}).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/wcfs-rw"), "{e}");
    }
}
