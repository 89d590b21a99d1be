//! Zipf sampling over ranks 1..=n by inverse CDF: P(k) ∝ 1 / k^s. The table is built once
//! (n is the number of seeded products, small), a draw is one uniform number and a binary search.

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Zipf {
    /// cdf[k-1] = P(rank <= k); the last entry is 1.
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u32, exponent: f64) -> Self {
        assert!(n >= 1, "Zipf needs at least one rank");
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / f64::from(k).powf(exponent);
            cdf.push(sum);
        }
        for p in &mut cdf {
            *p /= sum;
        }
        *cdf.last_mut().expect("n >= 1") = 1.0;
        Self { cdf }
    }

    /// A rank in 1..=n; rank 1 is the hottest.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        let u: f64 = rng.random();
        let index = self.cdf.partition_point(|&p| p <= u);
        // u < 1 and the last entry is 1, so index < len.
        (index.min(self.cdf.len() - 1) + 1) as u32
    }

    /// P(rank = k), for tests and the docs.
    #[cfg(test)]
    pub fn probability(&self, k: u32) -> f64 {
        let i = (k - 1) as usize;
        self.cdf[i] - if i == 0 { 0.0 } else { self.cdf[i - 1] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn probabilities_follow_the_power_law() {
        let z = Zipf::new(200, 1.0);
        let harmonic: f64 = (1..=200).map(|k| 1.0 / f64::from(k)).sum();
        assert!((z.probability(1) - 1.0 / harmonic).abs() < 1e-12);
        assert!((z.probability(1) / z.probability(2) - 2.0).abs() < 1e-9);
        assert!((z.probability(10) / z.probability(100) - 10.0).abs() < 1e-9);
        let total: f64 = (1..=200).map(|k| z.probability(k)).sum();
        assert!((total - 1.0).abs() < 1e-9);
    }

    #[test]
    fn samples_match_the_distribution() {
        let z = Zipf::new(200, 1.1);
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u32; 201];
        for _ in 0..draws {
            let k = z.sample(&mut rng);
            assert!((1..=200).contains(&k));
            counts[k as usize] += 1;
        }
        for k in [1u32, 2, 5, 20] {
            let expected = z.probability(k) * f64::from(draws);
            let got = f64::from(counts[k as usize]);
            // 5 standard deviations of a binomial count.
            let sigma = (expected * (1.0 - z.probability(k))).sqrt();
            assert!(
                (got - expected).abs() < 5.0 * sigma,
                "rank {k}: {got} draws, expected {expected:.0}"
            );
        }
        // Hot keys: the top 10 of 200 ids take far more than their 5 % uniform share.
        let top10: u32 = counts[1..=10].iter().sum();
        assert!(f64::from(top10) / f64::from(draws) > 0.5);
        assert!(counts[200] > 0, "the tail is reachable");
    }

    #[test]
    fn exponent_zero_is_uniform_and_one_rank_is_constant() {
        let z = Zipf::new(4, 0.0);
        for k in 1..=4 {
            assert!((z.probability(k) - 0.25).abs() < 1e-12);
        }
        let one = Zipf::new(1, 1.1);
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..100).all(|_| one.sample(&mut rng) == 1));
    }

    #[test]
    fn same_seed_same_draws() {
        let z = Zipf::new(200, 1.1);
        let a: Vec<u32> = {
            let mut rng = StdRng::seed_from_u64(42);
            (0..50).map(|_| z.sample(&mut rng)).collect()
        };
        let b: Vec<u32> = {
            let mut rng = StdRng::seed_from_u64(42);
            (0..50).map(|_| z.sample(&mut rng)).collect()
        };
        assert_eq!(a, b);
    }
}
