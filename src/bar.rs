//! Progress bars for long operations, fed by the engine's [`Progress`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Runs `fut` while drawing `progress` on stderr (only when `show` and stderr is a terminal).
pub async fn with_progress<T>(
    progress: &Arc<Progress>,
    show: bool,
    fut: impl Future<Output = T>,
) -> T {
    let show = show && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !show {
        return fut.await;
    }
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let p = progress.clone();
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            let (phase, done, total) = p.snapshot();
            b.set_message(phase);
            b.set_length(total.max(done));
            b.set_position(done);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let out = fut.await;
    ticker.abort();
    bar.finish_and_clear();
    out
}
