//! Small state files in the data dir (quota counters, warm-up days): read leniently (a damaged
//! file is logged and its state starts again: it must never stop mail), written atomically and
//! durably (temporary file, fsync, rename, directory fsync), saved every second while they
//! change and once more at shutdown.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;

/// The JSON state in `path`, or the default (logged) when it is missing or unreadable.
pub fn read_json<T: DeserializeOwned + Default>(path: &Path, what: &str) -> T {
    let parsed = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return T::default(),
        Err(e) => Err(e.to_string()),
    };
    parsed.unwrap_or_else(|error| {
        tracing::warn!(file = %path.display(), %error, "{what} unreadable; starting from zero");
        T::default()
    })
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// State that writes itself when it changed.
pub trait Saved: Send + Sync + 'static {
    fn save(&self) -> std::io::Result<()>;
}

/// Saves `state` every second until `stop`, and once more then.
pub async fn keep_saved(
    state: Arc<dyn Saved>,
    what: &'static str,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.save()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "{what} not saved"),
            Err(e) => tracing::warn!(error = %e, "{what} not saved"),
        }
        if stopping {
            return;
        }
    }
}
