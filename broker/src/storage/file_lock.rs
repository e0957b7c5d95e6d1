//! The data directory lock: an exclusive flock(2) on `LOCK`, which holds the owner's pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held for as long as the store is open; the kernel releases it if the process dies.
#[derive(Debug)]
pub(crate) struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<Self> {
        let path: PathBuf = data_dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("cannot open lock file", &path, e))?;
        // SAFETY: flock on a valid, owned file descriptor.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "unknown pid".to_string(),
                    pid => format!("pid {pid}"),
                };
                return Err(Error::DataDirLocked { path: data_dir.to_path_buf(), holder });
            }
            return Err(Error::io("cannot lock", &path, error));
        }
        file.set_len(0).map_err(|e| Error::io("cannot write", &path, e))?;
        file.seek(SeekFrom::Start(0)).map_err(|e| Error::io("cannot write", &path, e))?;
        write!(file, "{}", std::process::id()).map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(DataDirLock { _file: file })
    }
}
