//! The one check every secret file gets at start: its permissions.
//!
//! Private keys, PINs, challenge passwords and tokens come only from files or the
//! environment, never inline in the config. A secret file that any user of the machine
//! can read ("others" bits) is logged as a warning that names the file and its mode (never
//! the content). Group access is allowed: Kubernetes mounts Secret volumes owned by root
//! with the pod's `fsGroup`, so the process reads them through its group (`deploy/` sets
//! `defaultMode: 0440`). It is a warning, not a refusal: Kubernetes mounts Secret volumes
//! 0644 unless `defaultMode` says otherwise, and refusing would stop a fleet at its next
//! restart.

use std::path::Path;

/// Warns when `path` (the secret named by `setting`) is readable or writable by others.
pub fn check_permissions(setting: &str, path: &Path) {
    if let Some(mode) = loose_mode(path) {
        tracing::warn!(
            setting,
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "a secret file is accessible to every user of this machine: chmod 600 (or 640) it"
        );
    }
}

/// The file's permission bits when others may read or write it.
#[cfg(unix)]
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o007 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn files_others_can_read_are_flagged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(loose_mode(&path), None);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            loose_mode(&path),
            None,
            "group access is the fsGroup pattern"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(loose_mode(&path), Some(0o644));
    }
}
