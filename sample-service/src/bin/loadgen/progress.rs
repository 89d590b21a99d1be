//! The progress bar on stderr: requests sent of `--requests`, time left of `--duration`,
//! answers and transport errors so far. Redrawn by a ticker, never by the workers.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::runner::{taken, Progress, Shared};

pub struct Bar {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

pub fn enabled(no_progress: bool) -> bool {
    !no_progress && std::io::stderr().is_terminal()
}

impl Bar {
    pub fn start(
        show: bool,
        requests: u64,
        duration: Duration,
        shared: Arc<Shared>,
        progress: Arc<Progress>,
    ) -> Self {
        if !show {
            return Self {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(requests), ProgressDrawTarget::stderr())
            .with_style(
                ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} requests  {msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
        let start = Instant::now();
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let sent = taken(&shared);
                b.set_position(sent);
                let elapsed = start.elapsed();
                let left = duration.saturating_sub(elapsed);
                b.set_message(format!(
                    "{:.0} req/s  {:.0}s left  answered {}  transport errors {}",
                    sent as f64 / elapsed.as_secs_f64().max(0.001),
                    left.as_secs_f64(),
                    progress.answered.load(Ordering::Relaxed),
                    progress.transport_errors.load(Ordering::Relaxed),
                ));
            }
        });
        Self {
            bar,
            ticker: Some(ticker),
        }
    }

    pub fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}
