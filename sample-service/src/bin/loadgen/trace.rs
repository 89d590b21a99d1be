//! W3C `traceparent` for requests that start a trace: random ids, sampled flag set, so the
//! service's server span becomes the child of a span that only the loadgen knows about.

use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub span_id: String,
}

impl TraceParent {
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        // All-zero ids are invalid; the chance is negligible but the fix is free.
        let trace: u128 = rng.random::<u128>().max(1);
        let span: u64 = rng.random::<u64>().max(1);
        Self {
            trace_id: format!("{trace:032x}"),
            span_id: format!("{span:016x}"),
        }
    }

    pub fn header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn header_is_version_00_sampled_lowercase_hex() {
        let mut rng = StdRng::seed_from_u64(1);
        let tp = TraceParent::random(&mut rng);
        let h = tp.header();
        let parts: Vec<&str> = h.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert!(parts[1..3].iter().all(|p| p
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))));
        assert_ne!(parts[1], "0".repeat(32));
        assert_ne!(TraceParent::random(&mut rng), tp);
    }
}
