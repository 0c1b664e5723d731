//! Crash-safe file replacement shared by the journal, snapshots and the identity file.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Fsyncs the directory holding `path`, so a create or rename in it is durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Atomically replaces (or creates) `path` with what `fill` writes: a temporary file beside it
/// (`<path>.tmp`), fsync, rename over `path`, fsync the directory. A crash leaves either the
/// old file or the new one, never a mix. Returns the new file, open for reading and writing.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
) -> io::Result<File> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, &f);
        fill(&mut w)?;
        w.flush()?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_parent(path)?;
    Ok(f)
}
