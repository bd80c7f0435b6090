//! Output files of the commands: written whole or not at all.

use anyhow::{Context, Result};

/// Writes `text` to `path` through a temporary file in the same folder and a
/// rename, so a failure never leaves a half-written `path` (nor the
/// temporary file). Errors name the path.
pub(crate) fn write_atomic(path: &str, text: &str) -> Result<()> {
    let tmp = format!("{path}.tmp{}", std::process::id());
    std::fs::write(&tmp, text).with_context(|| format!("writing {path} (via {tmp})"))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("renaming {tmp} to {path}")
    })
}
