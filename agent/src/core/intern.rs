//! Shared copies of strings that repeat across requests (route templates and
//! `{method} {route}` span names), so the request path clones an `Arc` instead of
//! allocating. Bounded: past the capacity new strings are allocated per use.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Arc, RwLock};

use super::value::Str;

pub(crate) struct Interner {
    strings: RwLock<HashMap<Box<str>, Arc<str>>>,
    capacity: usize,
}

thread_local! {
    static BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Interner {
    pub(crate) fn new(capacity: usize) -> Interner {
        Interner {
            strings: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// The formatted string, shared when it was seen before (or fits the cap).
    pub(crate) fn get(&self, args: fmt::Arguments<'_>) -> Str {
        BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            let _ = buf.write_fmt(args);
            if let Some(s) = self
                .strings
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(buf.as_str())
            {
                return Str::Shared(s.clone());
            }
            let mut strings = self.strings.write().unwrap_or_else(|p| p.into_inner());
            if strings.len() >= self.capacity {
                return Str::Owned(buf.clone());
            }
            let shared: Arc<str> = Arc::from(buf.as_str());
            strings.insert(buf.as_str().into(), shared.clone());
            Str::Shared(shared)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_strings_share_one_copy_up_to_the_cap() {
        let interner = Interner::new(1);
        let (Str::Shared(a), Str::Shared(b)) = (
            interner.get(format_args!("GET {}", "/a")),
            interner.get(format_args!("GET {}", "/a")),
        ) else {
            panic!("shared");
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            interner.get(format_args!("GET /b")),
            Str::Owned("GET /b".into())
        );
    }
}
