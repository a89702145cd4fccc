//! Reading the certificate and CA files that flags and labels name.
//!
//! A label is Marathon input: it may name a FIFO, a device, a file of any size, or a file on a
//! network mount that hangs. So a file is only read when it is a regular file of at most
//! [`MAX_PEM_FILE`] bytes (opened non-blocking: opening a FIFO does not wait for a writer), and
//! the read runs on a thread of its own that the caller waits for until a deadline: a hung read
//! costs one parked thread, never a runtime worker, a lock or the apply. A few reads still hung
//! stop new ones from being started, so a hung mount cannot pile up threads either.
use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

/// Largest certificate or CA file read: a chain and key, or a CA bundle, is a few hundred KiB
/// at most.
pub(crate) const MAX_PEM_FILE: u64 = 4 << 20;

/// How long one reload (or one apply) waits for all the files it reads.
pub(crate) const READ_BUDGET: Duration = Duration::from_secs(2);

/// Reads still running (hung) past which no new one is started; a file whose read still hangs
/// is not read again meanwhile.
const MAX_HUNG_READS: usize = 8;

/// What a file looked like when read: reloaded when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub(crate) modified: Option<SystemTime>,
    pub(crate) len: u64,
}

pub(crate) fn stamp(path: &Path) -> Option<FileStamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// A file's content, or why it has none, and how the file looked before it was read.
#[derive(Debug)]
pub(crate) struct FileRead {
    pub(crate) stamp: Option<FileStamp>,
    /// `None`: the stamp equals the one the caller knew; the content was not read again.
    pub(crate) pem: Option<Result<Vec<u8>, String>>,
}

/// How files are read: [`read_if_changed`], or a stand-in that hangs in tests.
pub(crate) type Reader = fn(&Path, Option<FileStamp>) -> FileRead;

/// Stats `path`, then reads it unless its stamp is still `known`.
pub(crate) fn read_if_changed(path: &Path, known: Option<FileStamp>) -> FileRead {
    let stamp = stamp(path);
    if known.is_some() && known == stamp {
        return FileRead { stamp, pem: None };
    }
    FileRead {
        stamp,
        pem: Some(read_pem_file(path)),
    }
}

/// Runs `reader` on a thread of its own and waits for it until `deadline`.
pub(crate) fn read_by(
    reader: Reader,
    path: &Path,
    known: Option<FileStamp>,
    deadline: Instant,
) -> Result<FileRead, String> {
    // Paths being read now: a read that hangs stays here until it ends.
    static READING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let reading = || READING.lock().unwrap_or_else(PoisonError::into_inner);
    {
        let mut now = reading();
        if now.iter().any(|p| p == path) {
            return Err("not read: an earlier read of it still hangs".into());
        }
        if now.len() >= MAX_HUNG_READS {
            return Err(format!(
                "not read: {MAX_HUNG_READS} reads of certificate files still hang"
            ));
        }
        now.push(path.to_owned());
    }
    let done = move |path: &Path| reading().retain(|p| p != path);
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned: PathBuf = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("mlb-cert-read".into())
        .spawn(move || {
            let read = reader(&owned, known);
            done(&owned);
            let _ = tx.send(read);
        });
    if let Err(e) = spawned {
        done(path);
        return Err(format!("not read: no thread to read it: {e}"));
    }
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| {
            "not read in time: reading it hangs (a file on a hung mount?); the last good \
             version, if any, stays in use"
                .to_owned()
        })
}

/// Runs `f`, a synchronous step that reads files, without holding up a runtime worker: on a
/// multi-thread runtime the worker hands its other tasks over first (proxy connections, the
/// admin API keep being served). Elsewhere (a current-thread runtime in tests, no runtime) it
/// just runs `f`.
pub(crate) fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Reads a PEM file named by a flag or a label without ever blocking on it or reading without
/// bound: opened non-blocking (a FIFO with no writer does not hang the open), then only a
/// regular file of at most [`MAX_PEM_FILE`] bytes is read (not a FIFO, device or socket such as
/// `/dev/zero`).
pub(crate) fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::{io::Read as _, os::unix::fs::OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file (a FIFO, device or directory is never read)".into());
    }
    if meta.len() > MAX_PEM_FILE {
        return Err(format!(
            "{} bytes: larger than the {MAX_PEM_FILE}-byte limit",
            meta.len()
        ));
    }
    let mut pem = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut pem)
        .map_err(|e| e.to_string())?;
    if pem.len() as u64 > MAX_PEM_FILE {
        return Err(format!("larger than the {MAX_PEM_FILE}-byte limit"));
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hangs(_: &Path, _: Option<FileStamp>) -> FileRead {
        std::thread::sleep(Duration::from_secs(30));
        FileRead {
            stamp: None,
            pem: None,
        }
    }

    /// A read that hangs is given up at the deadline, not waited for.
    #[test]
    fn a_hung_read_is_given_up_at_the_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(200);
        let e = read_by(hangs, Path::new("/hung/cert.pem"), None, deadline).unwrap_err();
        assert!(e.contains("not read in time"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    /// An unchanged file is not read again; a changed one is.
    #[test]
    fn unchanged_files_are_not_read_again() {
        let dir = std::env::temp_dir().join(format!("mlb-cert-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.pem");
        std::fs::write(&path, b"one").unwrap();
        let first = read_if_changed(&path, None);
        assert_eq!(first.pem, Some(Ok(b"one".to_vec())));
        let again = read_if_changed(&path, first.stamp.clone());
        assert!(again.pem.is_none());
        std::fs::write(&path, b"second").unwrap();
        let changed = read_if_changed(&path, first.stamp);
        assert_eq!(changed.pem, Some(Ok(b"second".to_vec())));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
