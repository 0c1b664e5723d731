//! The small interface where the filesystem and the node runtime meet: a handle that reads
//! the table, proposes local mutations, and reports changes. `wcfs-fs` depends only on the
//! [`TableHandle`] trait; the runtime implements it around its node, and [`LocalHandle`] is an
//! in-memory implementation for a single node and for tests.

use std::sync::{Arc, RwLock};

use crate::dot::Op;
use crate::path::WPath;
use crate::record::Record;
use crate::table::{Child, Resolution, Table, TableError};

/// Why a local mutation could not be applied. When one is returned the mutation did not
/// happen and the filesystem call that asked for it must fail (EIO).
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The table refused it.
    #[error(transparent)]
    Table(#[from] TableError),
    /// The mutation could not be made durable.
    #[error("journal: {0}")]
    Journal(String),
}

/// The translation table as the filesystem sees it. Implementations are shared between the
/// FUSE worker threads.
pub trait TableHandle: Send + Sync + 'static {
    /// What the union shows for `path` (see [`Table::resolve`]).
    fn resolve(&self, path: &WPath) -> Resolution;
    /// Children of `dir` with table state (see [`Table::children`]).
    fn children(&self, dir: Option<&WPath>) -> Vec<Child>;
    /// Applies a local mutation. `Ok` means it is in the table, durable per the node's
    /// journal policy, and queued for the peers, so the caller's syscall may return.
    fn propose(&self, path: &WPath, op: Op) -> Result<(), ProposeError>;
}

type Listener = Box<dyn Fn(&Record) + Send + Sync>;
type ChangeListener = Box<dyn Fn(&WPath) + Send + Sync>;

/// An in-memory table handle: a table behind a lock, with listeners for local proposals
/// (to ship them) and for changes (to invalidate caches).
pub struct LocalHandle {
    table: RwLock<Table>,
    on_propose: RwLock<Vec<Listener>>,
    on_change: RwLock<Vec<ChangeListener>>,
}

impl LocalHandle {
    /// Wraps a table.
    pub fn new(table: Table) -> Arc<LocalHandle> {
        Arc::new(LocalHandle {
            table: RwLock::new(table),
            on_propose: RwLock::default(),
            on_change: RwLock::default(),
        })
    }

    /// Runs `f` with the table read-locked.
    pub fn with_table<R>(&self, f: impl FnOnce(&Table) -> R) -> R {
        f(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Calls `f` with the record of every successful local proposal.
    pub fn on_propose(&self, f: impl Fn(&Record) + Send + Sync + 'static) {
        self.on_propose
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Calls `f` with every path whose resolution changed through [`LocalHandle::apply_remote`].
    pub fn on_change(&self, f: impl Fn(&WPath) + Send + Sync + 'static) {
        self.on_change
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Merges a record that came from elsewhere and reports the path if its resolution changed.
    pub fn apply_remote(&self, rec: &Record) -> Result<bool, TableError> {
        let out = self
            .table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .merge(rec)?;
        if out.changed {
            for f in self
                .on_change
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                f(&rec.path);
            }
        }
        Ok(out.changed)
    }

    /// Connects two handles in process, both ways: each one's proposals are merged into the
    /// other at once. A test helper standing in for the network.
    pub fn link(a: &Arc<LocalHandle>, b: &Arc<LocalHandle>) {
        let wb = Arc::downgrade(b);
        a.on_propose(move |r| {
            if let Some(b) = wb.upgrade() {
                let _ = b.apply_remote(r);
            }
        });
        let wa = Arc::downgrade(a);
        b.on_propose(move |r| {
            if let Some(a) = wa.upgrade() {
                let _ = a.apply_remote(r);
            }
        });
    }
}

impl TableHandle for LocalHandle {
    fn resolve(&self, path: &WPath) -> Resolution {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .resolve(path)
    }
    fn children(&self, dir: Option<&WPath>) -> Vec<Child> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .children(dir)
    }
    fn propose(&self, path: &WPath, op: Op) -> Result<(), ProposeError> {
        let rec = self
            .table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .propose(path, op)?;
        for f in self
            .on_propose
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            f(&rec);
        }
        Ok(())
    }
}
