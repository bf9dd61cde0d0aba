//! The trigger cursors file: a JSON object of trigger key to offset, replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory) so a
//! crash leaves either the old set or the new, never a mix or a torn file.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::segment::io_error;
use super::writer::sync_dir;
use crate::eventing::backend::local::StoreError;

pub(super) const CURSORS_FILE: &str = "cursors";
const CURSORS_TMP: &str = "cursors.tmp";

/// The saved cursors; none if never saved.
pub(super) fn load(dir: &Path) -> Result<HashMap<String, u64>, StoreError> {
    let path = dir.join(CURSORS_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io_error("reading cursors", &path, e)),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        StoreError::Corrupt(format!(
            "trigger cursors file {} is corrupt: {e}",
            path.display()
        ))
    })
}

/// Replaces the saved cursors atomically.
pub(super) fn save(dir: &Path, cursors: &HashMap<String, u64>) -> Result<(), StoreError> {
    // Sorted, so the file is stable and easy to read by eye.
    let sorted: BTreeMap<&String, &u64> = cursors.iter().collect();
    let json = serde_json::to_vec_pretty(&sorted)
        .map_err(|e| StoreError::io("encoding cursors", io::Error::other(e)))?;
    let tmp = dir.join(CURSORS_TMP);
    write_synced(&tmp, &json).map_err(|e| io_error("writing cursors", &tmp, e))?;
    // A crash here leaves a complete `cursors.tmp` beside the old `cursors`:
    // the next start must read the old set and redeliver, not skip.
    crate::fault::hit(crate::fault::CURSOR_SAVE);
    let path = dir.join(CURSORS_FILE);
    fs::rename(&tmp, &path).map_err(|e| io_error("replacing cursors", &path, e))?;
    sync_dir(dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
