//! Series by attribute key, capped: the HTTP and gRPC RED keep theirs here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, RwLock};

thread_local! {
    static KEY: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) struct SeriesMap<V> {
    series: RwLock<HashMap<Box<str>, Arc<V>>>,
    max_series: usize,
}

impl<V> SeriesMap<V> {
    pub(crate) fn new(max_series: usize) -> SeriesMap<V> {
        SeriesMap {
            series: RwLock::new(HashMap::new()),
            max_series: max_series.max(1),
        }
    }

    /// The series for `key`, made by `make` on first use; `None` once the cap is
    /// reached. The key is formatted into a reused thread-local buffer, so an
    /// existing series costs a read lock and no allocation.
    pub(crate) fn get(&self, key: fmt::Arguments<'_>, make: impl FnOnce() -> V) -> Option<Arc<V>> {
        KEY.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let _ = buf.write_fmt(key);
            if let Some(s) = self
                .series
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(buf.as_str())
            {
                return Some(s.clone());
            }
            let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = map.get(buf.as_str()) {
                return Some(s.clone());
            }
            if map.len() >= self.max_series {
                return None;
            }
            let s = Arc::new(make());
            map.insert(buf.as_str().into(), s.clone());
            Some(s)
        })
    }

    pub(crate) fn values(&self) -> Vec<Arc<V>> {
        self.series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
