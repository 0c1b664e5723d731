//! Validated, normalized paths relative to the union's root.
//!
//! Every path that comes from the network, the kernel, the disk or a user goes through
//! [`WPath::new`] (or [`validate_name`] for a single component) before it touches the table.

use std::fmt;

/// Longest path accepted, in bytes (Linux `PATH_MAX` less the terminating NUL).
pub const MAX_PATH_LEN: usize = 4095;
/// Longest single component accepted, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Most components a path can have: every component takes at least one byte plus a `/`.
pub const MAX_DEPTH: usize = MAX_PATH_LEN.div_ceil(2);

/// Why a byte string is not a valid [`WPath`] or name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The empty string names the root; the table holds no entry for the root.
    #[error("path is empty (the root has no table entry)")]
    Empty,
    /// Longer than [`MAX_PATH_LEN`].
    #[error("path is {len} bytes long; the limit is {MAX_PATH_LEN}")]
    TooLong {
        /// Length of the rejected path.
        len: usize,
    },
    /// Starts with `/`: paths are relative to the union's root.
    #[error("path starts with '/'; paths are relative to the mount's root")]
    Absolute,
    /// Contains a NUL byte.
    #[error("path contains a NUL byte at offset {at}")]
    Nul {
        /// Byte offset of the NUL.
        at: usize,
    },
    /// Has an empty component (`a//b` or a trailing `/`).
    #[error("path has an empty component at offset {at} ('//' or a trailing '/')")]
    EmptyComponent {
        /// Byte offset where the empty component starts.
        at: usize,
    },
    /// Has a `.` or `..` component.
    #[error("path has a '.' or '..' component at offset {at}")]
    DotComponent {
        /// Byte offset of the component.
        at: usize,
    },
    /// A component is longer than [`MAX_NAME_LEN`].
    #[error("path component at offset {at} is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    NameTooLong {
        /// Byte offset of the component.
        at: usize,
        /// Its length.
        len: usize,
    },
    /// A single name contains `/`.
    #[error("name contains '/'")]
    Slash,
}

/// Checks one path component (a file name): non-empty, not `.`/`..`, no `/` or NUL,
/// at most [`MAX_NAME_LEN`] bytes.
pub fn validate_name(name: &[u8]) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::EmptyComponent { at: 0 });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(PathError::NameTooLong {
            at: 0,
            len: name.len(),
        });
    }
    if name == b"." || name == b".." {
        return Err(PathError::DotComponent { at: 0 });
    }
    if let Some(at) = name.iter().position(|&b| b == 0) {
        return Err(PathError::Nul { at });
    }
    if name.contains(&b'/') {
        return Err(PathError::Slash);
    }
    Ok(())
}

/// A normalized relative path: components separated by single `/`, no leading or trailing
/// `/`, no empty, `.` or `..` components, no NUL, components ≤ 255 bytes, whole ≤ 4095 bytes.
///
/// The only ways to build one validate, so holding a `WPath` proves these rules hold.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WPath(Box<[u8]>);

impl WPath {
    /// Validates `bytes` and wraps them. Every rule broken is reported with its offset.
    pub fn new(bytes: &[u8]) -> Result<WPath, PathError> {
        validate(bytes)?;
        Ok(WPath(bytes.into()))
    }

    /// `self/name`, validating `name` as one component and the result's length.
    pub fn join(&self, name: &[u8]) -> Result<WPath, PathError> {
        validate_name(name)?;
        let len = self.0.len() + 1 + name.len();
        if len > MAX_PATH_LEN {
            return Err(PathError::TooLong { len });
        }
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(name);
        Ok(WPath(v.into_boxed_slice()))
    }

    /// A one-component path from a validated name.
    pub fn from_name(name: &[u8]) -> Result<WPath, PathError> {
        validate_name(name)?;
        Ok(WPath(name.into()))
    }

    /// `dir/name` where `dir` may be the root (`None`).
    pub fn child_of(dir: Option<&WPath>, name: &[u8]) -> Result<WPath, PathError> {
        match dir {
            Some(d) => d.join(name),
            None => WPath::from_name(name),
        }
    }

    /// The raw bytes, e.g. `b"a/b/c"`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The components, root first. Never empty.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &[u8]> + Clone {
        self.0.split(|&b| b == b'/')
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }

    /// The parent directory, or `None` when the parent is the root.
    pub fn parent(&self) -> Option<WPath> {
        let i = self.0.iter().rposition(|&b| b == b'/')?;
        Some(WPath(self.0[..i].into()))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &WPath) -> bool {
        self.0.starts_with(&other.0)
            && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }
}

fn validate(bytes: &[u8]) -> Result<(), PathError> {
    if bytes.is_empty() {
        return Err(PathError::Empty);
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: bytes.len() });
    }
    if bytes[0] == b'/' {
        return Err(PathError::Absolute);
    }
    let mut at = 0;
    for comp in bytes.split(|&b| b == b'/') {
        if comp.is_empty() {
            return Err(PathError::EmptyComponent { at });
        }
        if comp.len() > MAX_NAME_LEN {
            return Err(PathError::NameTooLong {
                at,
                len: comp.len(),
            });
        }
        if comp == b"." || comp == b".." {
            return Err(PathError::DotComponent { at });
        }
        if let Some(i) = comp.iter().position(|&b| b == 0) {
            return Err(PathError::Nul { at: at + i });
        }
        at += comp.len() + 1;
    }
    Ok(())
}

impl fmt::Debug for WPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for WPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0))
    }
}

impl TryFrom<&str> for WPath {
    type Error = PathError;
    fn try_from(s: &str) -> Result<WPath, PathError> {
        WPath::new(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_normal_paths() {
        for p in [
            "a",
            "a/b/c",
            "site42/wp-content/uploads/2024/05/img-1.jpg",
            ".hidden/..x/...",
            "a b/ü",
        ] {
            let w = WPath::new(p.as_bytes()).unwrap();
            assert_eq!(w.as_bytes(), p.as_bytes());
        }
    }

    #[test]
    fn rejects_each_rule_with_its_reason() {
        assert_eq!(WPath::new(b""), Err(PathError::Empty));
        assert_eq!(WPath::new(b"/a"), Err(PathError::Absolute));
        assert_eq!(
            WPath::new(b"a//b"),
            Err(PathError::EmptyComponent { at: 2 })
        );
        assert_eq!(WPath::new(b"a/"), Err(PathError::EmptyComponent { at: 2 }));
        assert_eq!(WPath::new(b"a/./b"), Err(PathError::DotComponent { at: 2 }));
        assert_eq!(WPath::new(b"a/.."), Err(PathError::DotComponent { at: 2 }));
        assert_eq!(WPath::new(b"ab/c\0d"), Err(PathError::Nul { at: 4 }));
        let long = vec![b'x'; 256];
        assert_eq!(
            WPath::new(&long),
            Err(PathError::NameTooLong { at: 0, len: 256 })
        );
        let deep = "ab/".repeat(1400) + "x";
        assert_eq!(
            WPath::new(deep.as_bytes()),
            Err(PathError::TooLong { len: deep.len() })
        );
        assert_eq!(validate_name(b"a/b"), Err(PathError::Slash));
        assert!(PathError::Nul { at: 4 }.to_string().contains("NUL"));
    }

    #[test]
    fn parent_name_and_join_agree() {
        let p = WPath::new(b"a/b/c").unwrap();
        assert_eq!(p.file_name(), b"c");
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
        assert_eq!(WPath::new(b"a").unwrap().parent(), None);
        assert_eq!(p.parent().unwrap().join(b"c").unwrap(), p);
        assert!(p.starts_with(&WPath::new(b"a/b").unwrap()));
        assert!(!p.starts_with(&WPath::new(b"a/bc").unwrap()));
        assert!(
            !WPath::new(b"a/bc")
                .unwrap()
                .starts_with(&WPath::new(b"a/b").unwrap())
        );
        assert_eq!(
            p.components().collect::<Vec<_>>(),
            vec![&b"a"[..], b"b", b"c"]
        );
    }

    proptest! {
        #[test]
        fn any_bytes_validate_without_panic_and_accepted_ones_roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(p) = WPath::new(&bytes) {
                prop_assert_eq!(p.as_bytes(), &bytes[..]);
                let rebuilt = p.components().map(|c| c.to_vec()).collect::<Vec<_>>().join(&b'/');
                prop_assert_eq!(rebuilt, bytes);
            }
        }
    }
}
