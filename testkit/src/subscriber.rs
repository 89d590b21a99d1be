//! A `tracing` subscriber for one test, not for the whole test binary.
//!
//! Every integration test of a crate shares one process, so a test that installed
//! its subscriber globally (`set_global_default`, `agent::init`) would capture the
//! other tests' events, and the next one to try would fail. Instead the test runs on a
//! runtime whose threads — workers, blocking pool, and the thread that blocks on the
//! test — all have the subscriber as their thread default.

use std::cell::RefCell;
use std::future::Future;

use tracing::dispatcher::{self, DefaultGuard, Dispatch};

thread_local! {
    /// The runtime thread's default subscriber, kept for the thread's life.
    static DEFAULT: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// Runs `test` to completion on a multi-thread runtime of `workers` threads where
/// `subscriber` receives every event and span.
pub fn run_with_subscriber<F: Future>(
    subscriber: impl Into<Dispatch>,
    workers: usize,
    test: F,
) -> F::Output {
    let dispatch: Dispatch = subscriber.into();
    let for_threads = dispatch.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .on_thread_start(move || {
            let guard = dispatcher::set_default(&for_threads);
            DEFAULT.with(|d| *d.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| DEFAULT.with(|d| drop(d.borrow_mut().take())))
        .build()
        .expect("test runtime");
    let _guard = dispatcher::set_default(&dispatch);
    runtime.block_on(test)
}
