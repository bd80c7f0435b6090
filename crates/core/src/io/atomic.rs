//! Atomic writes: a file under a temporary name renamed into place, and a
//! directory built as a temporary sibling and swapped in.
//!
//! A failed write (an error, not a power loss) leaves the previous file or
//! directory exactly as it was and removes its temporary. The directory swap
//! is two renames (old away, new in): a crash between them leaves the old
//! directory under its `.old-…` sibling name, never a half-written one.

use super::io_error;
use crate::Result;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh sibling path `<parent>/.<name>.<tag>-<pid>-<n>`.
fn sibling(target: &Path, tag: &str) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .ok_or_else(|| io_error(target, "not a file or directory name"))?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let file = format!(".{name}.{tag}-{}-{n}", std::process::id());
    Ok(parent(target).join(file))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes a directory's entries to disk (best effort: not every platform
/// can open a directory for syncing).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` and flushes it to disk (no rename).
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| io_error(path, format!("cannot create: {e}")))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(path, format!("cannot write: {e}")))
}

/// Writes `bytes` to `path` atomically: a synced temporary, then a rename.
pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp")?;
    let result = write_synced(&tmp, bytes).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| io_error(path, format!("cannot rename into place: {e}")))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        sync_dir(parent(path));
    }
    result
}

/// Replaces directory `target` by one that `fill` writes: `fill` gets a
/// fresh temporary sibling directory, which is synced and swapped in only if
/// `fill` succeeds. Entries of an existing `target` that `fill` did not
/// write (other adapters' subdirectories, a README) are carried over by hard
/// links (copies where links fail), so the old directory stays untouched
/// until the swap.
pub(crate) fn replace_dir_atomically(
    target: &Path,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let tmp = sibling(target, "tmp")?;
    fs::create_dir_all(&tmp).map_err(|e| io_error(&tmp, format!("cannot create: {e}")))?;
    let result = fill(&tmp)
        .and_then(|()| carry_over(target, &tmp))
        .and_then(|()| {
            sync_dir(&tmp);
            swap_in(&tmp, target)
        });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Renames `tmp` to `target`, moving an existing `target` away first and
/// deleting it after; restores it if the second rename fails.
fn swap_in(tmp: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        fs::rename(tmp, target)
            .map_err(|e| io_error(target, format!("cannot rename into place: {e}")))?;
        sync_dir(parent(target));
        return Ok(());
    }
    if !target.is_dir() {
        return Err(io_error(target, "exists and is not a directory"));
    }
    let old = sibling(target, "old")?;
    fs::rename(target, &old)
        .map_err(|e| io_error(target, format!("cannot move the old directory away: {e}")))?;
    if let Err(e) = fs::rename(tmp, target) {
        let _ = fs::rename(&old, target);
        return Err(io_error(target, format!("cannot rename into place: {e}")));
    }
    sync_dir(parent(target));
    fs::remove_dir_all(&old).map_err(|e| {
        io_error(
            &old,
            format!("new directory in place, but the old one could not be removed: {e}"),
        )
    })
}

/// Links (or copies) every entry of `from` that `to` does not have yet, recursively.
fn carry_over(from: &Path, to: &Path) -> Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    let entries = fs::read_dir(from).map_err(|e| io_error(from, format!("cannot list: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(from, format!("cannot list: {e}")))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if dst.exists() {
            continue;
        }
        if src.is_dir() {
            fs::create_dir(&dst).map_err(|e| io_error(&dst, format!("cannot create: {e}")))?;
            carry_over(&src, &dst)?;
        } else if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).map_err(|e| io_error(&src, format!("cannot copy: {e}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cranelora-atomic-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("test: scratch dir");
        dir
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("test: list")
            .map(|e| {
                e.expect("test: entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn failed_fill_leaves_the_old_directory_and_no_temporary() {
        let root = scratch("fail");
        let target = root.join("adapter");
        fs::create_dir(&target).expect("test");
        fs::write(target.join("a.txt"), "old").expect("test");
        let err = replace_dir_atomically(&target, |tmp| {
            fs::write(tmp.join("a.txt"), "new").expect("test");
            Err(io_error(tmp, "injected failure"))
        });
        assert!(err.is_err());
        assert_eq!(
            fs::read_to_string(target.join("a.txt")).expect("test"),
            "old"
        );
        assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
        fs::remove_dir_all(&root).expect("test");
    }

    #[test]
    fn replace_swaps_in_and_carries_other_entries_over() {
        let root = scratch("ok");
        let target = root.join("adapter");
        fs::create_dir_all(target.join("other")).expect("test");
        fs::write(target.join("a.txt"), "old").expect("test");
        fs::write(target.join("other/b.txt"), "kept").expect("test");
        replace_dir_atomically(&target, |tmp| write_synced(&tmp.join("a.txt"), b"new"))
            .expect("test");
        assert_eq!(
            fs::read_to_string(target.join("a.txt")).expect("test"),
            "new"
        );
        assert_eq!(
            fs::read_to_string(target.join("other/b.txt")).expect("test"),
            "kept"
        );
        assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
        write_file_atomically(&root.join("w.bin"), b"xyz").expect("test");
        assert_eq!(fs::read(root.join("w.bin")).expect("test"), b"xyz");
        assert!(leftovers(&root).is_empty());
        fs::remove_dir_all(&root).expect("test");
    }
}
