//! File operations that must survive a power loss: a new or renamed file is durable only
//! once its data *and* the directory entry naming it are synced, so every helper here
//! syncs the directory too.

use std::fs::File;
use std::path::Path;

use crate::error::{Error, Result};

/// Syncs the directory `dir`, making the names created, renamed or removed in it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing directory", dir))
}

/// Syncs the file at `path` and the directory holding it.
pub fn sync_file_and_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(Error::io("syncing", path))?;
    sync_dir(parent(path))
}

/// Creates `dir` (and missing parents) and makes its entry durable in its parent.
pub fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating directory", dir))?;
    sync_dir(dir)?;
    sync_dir(parent(dir))
}

/// Renames `from` to `to` (same directory or file system) and syncs both directories.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(Error::io("renaming", from))?;
    sync_dir(parent(to))?;
    if parent(from) != parent(to) {
        sync_dir(parent(from))?;
    }
    Ok(())
}

/// Removes `path` if it exists; a missing file is not an error.
pub fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("removing", path)(e)),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_renamed_files_are_synced_and_missing_removals_are_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b");
        create_dir(&nested).expect("create");
        let file = nested.join("f");
        std::fs::write(&file, b"x").expect("write");
        sync_file_and_dir(&file).expect("sync");
        let moved = nested.join("g");
        rename(&file, &moved).expect("rename");
        assert!(moved.exists() && !file.exists());
        remove_if_exists(&file).expect("absent is fine");
        remove_if_exists(&moved).expect("remove");
        assert!(!moved.exists());
        assert!(matches!(
            sync_dir(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
    }
}
