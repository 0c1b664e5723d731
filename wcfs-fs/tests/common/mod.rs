//! Shared test fixture: an RO dir, an RW dir and a mount of their union, always unmounted.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wcfs_core::dot::ReplicaId;
use wcfs_core::handle::LocalHandle;
use wcfs_core::path::WPath;
use wcfs_core::table::Table;
use wcfs_fs::{FsConfig, MountConfig, MountGuard, lazy_unmount, mount};

/// Unmounts lazily on drop even if the test panicked before the mount guard's own drop ran.
pub struct Detach(pub PathBuf);
impl Drop for Detach {
    fn drop(&mut self) {
        let _ = lazy_unmount(&self.0);
    }
}

pub struct Fx {
    // Field order matters: the guard unmounts before the dirs are removed.
    pub guard: Option<MountGuard>,
    _detach: Detach,
    pub handle: Arc<LocalHandle>,
    pub ro: PathBuf,
    pub rw: PathBuf,
    pub mnt: PathBuf,
    pub tmp: tempfile::TempDir,
}

pub fn handle(id: u64) -> Arc<LocalHandle> {
    LocalHandle::new(Table::new(ReplicaId(id), 7))
}

/// Whether this run tests `fast_open` mounts (`WCFS_TEST_FAST_OPEN=1`: CI runs the suite both
/// ways, since that mode serves I/O without open handles).
pub fn fast_open() -> bool {
    std::env::var_os("WCFS_TEST_FAST_OPEN").is_some_and(|v| v == "1")
}

pub fn fs_config() -> FsConfig {
    FsConfig {
        threads: 2,
        fast_open: fast_open(),
        ..FsConfig::default()
    }
}

impl Fx {
    /// Builds the RO tree with `populate`, then mounts.
    pub fn new(populate: impl FnOnce(&Path)) -> Fx {
        Fx::with_config(fs_config(), populate)
    }

    /// Like [`Fx::new`], with union tunables `fs`.
    pub fn with_config(fs: FsConfig, populate: impl FnOnce(&Path)) -> Fx {
        let tmp = tempfile::tempdir().unwrap();
        let ro = tmp.path().join("ro");
        let rw = tmp.path().join("rw");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::create_dir_all(&rw).unwrap();
        populate(&ro);
        Fx::mount_cfg(tmp, ro, rw, handle(1), "mnt", fs)
    }

    pub fn mount_cfg(
        tmp: tempfile::TempDir,
        ro: PathBuf,
        rw: PathBuf,
        h: Arc<LocalHandle>,
        name: &str,
        fs: FsConfig,
    ) -> Fx {
        let mnt = tmp.path().join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let cfg = MountConfig {
            ro: ro.clone(),
            rw: rw.clone(),
            mountpoint: mnt.clone(),
            allow_other: false,
            fs,
        };
        let guard = mount(&cfg, h.clone()).expect("mount");
        let inv = guard.invalidator();
        h.on_change(move |p| inv.path_changed(p));
        Fx {
            guard: Some(guard),
            _detach: Detach(mnt.clone()),
            handle: h,
            ro,
            rw,
            mnt,
            tmp,
        }
    }

    /// A second mount (another "node") on the same branches with its own table, linked to
    /// this one's in process, mounted with `fs`.
    pub fn peer(&self, fs: FsConfig) -> Fx {
        let h = handle(2);
        LocalHandle::link(&self.handle, &h);
        let tmp = tempfile::tempdir().unwrap();
        Fx::mount_cfg(tmp, self.ro.clone(), self.rw.clone(), h, "mnt", fs)
    }

    pub fn m(&self, p: &str) -> PathBuf {
        self.mnt.join(p)
    }
    pub fn stats(&self) -> Arc<wcfs_fs::RwStats> {
        self.guard.as_ref().unwrap().stats()
    }
}

pub fn wp(s: &str) -> WPath {
    WPath::new(s.as_bytes()).unwrap()
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
