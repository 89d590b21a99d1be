//! How an entry is stored in the shared cache: the value plus what probabilistic early
//! refresh needs (how long the value took to compute, and when it expires).
//!
//! Layout: `delta_ms: u64 LE | expiry_ms: u64 LE | kind: u8 (1 found, 0 missing) | JSON`.

use bytes::Bytes;

use super::Cached;

/// XFetch's β: 1 is the value the paper (Vattani et al., VLDB 2015) shows optimal.
const BETA: f64 = 1.0;

#[derive(Debug, PartialEq)]
pub struct Envelope {
    pub value: Cached,
    pub delta_ms: u64,
    pub expiry_ms: u64,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let body: &[u8] = match &self.value {
            Cached::Found(b) => b,
            Cached::Missing => &[],
        };
        let mut out = Vec::with_capacity(17 + body.len());
        out.extend_from_slice(&self.delta_ms.to_le_bytes());
        out.extend_from_slice(&self.expiry_ms.to_le_bytes());
        out.push(matches!(self.value, Cached::Found(_)) as u8);
        out.extend_from_slice(body);
        out
    }

    pub fn decode(raw: &[u8]) -> Option<Envelope> {
        if raw.len() < 17 {
            return None;
        }
        let delta_ms = u64::from_le_bytes(raw[0..8].try_into().ok()?);
        let expiry_ms = u64::from_le_bytes(raw[8..16].try_into().ok()?);
        let value = match raw[16] {
            1 => Cached::Found(Bytes::copy_from_slice(&raw[17..])),
            0 => Cached::Missing,
            _ => return None,
        };
        Some(Envelope {
            value,
            delta_ms,
            expiry_ms,
        })
    }

    /// XFetch: refresh when `now − δ·β·ln(u) ≥ expiry`, `u` uniform in (0, 1]. The
    /// closer to expiry and the costlier the value, the likelier an early refresh.
    pub fn should_refresh_early(&self, now_ms: u64, u: f64) -> bool {
        let u = u.clamp(f64::MIN_POSITIVE, 1.0);
        let gap = -(self.delta_ms as f64) * BETA * u.ln();
        now_ms as f64 + gap >= self.expiry_ms as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_kinds() {
        for value in [
            Cached::Found(Bytes::from_static(b"{\"id\":1}")),
            Cached::Missing,
        ] {
            let e = Envelope {
                value,
                delta_ms: 12,
                expiry_ms: 1_700_000_000_000,
            };
            assert_eq!(Envelope::decode(&e.encode()), Some(e));
        }
        assert_eq!(Envelope::decode(b"short"), None);
    }

    #[test]
    fn early_refresh_gets_likelier_near_expiry() {
        let e = Envelope {
            value: Cached::Missing,
            delta_ms: 100,
            expiry_ms: 10_000,
        };
        let share = |now: u64| {
            (1..=1000)
                .filter(|i| e.should_refresh_early(now, *i as f64 / 1000.0))
                .count()
        };
        // Far from expiry: never; 100 ms before it (one δ): about 1 − e^−1 = 37 %;
        // after it: always.
        assert_eq!(share(5_000), 0);
        let near = share(9_900);
        assert!((330..=410).contains(&near), "{near}");
        assert_eq!(share(10_000), 1000);
    }
}
