//! The traffic mix: what a worker does next. A [`Plan`] turns a seeded RNG into a sequence of
//! [`Scenario`]s, so the same `--seed` gives every worker the same sequence; only the ids the
//! service hands back (order ids) and the timing differ between runs.
//!
//! Default shares (percent of scenarios; a scenario is one request or a short sequence):
//!
//! | scenario | share | what it exercises |
//! |---|---|---|
//! | product read, Zipf over 1..=N | 52 | hot keys, cache layers, single-flight |
//! | product read, unknown id (N+1..=N+20) | 4 | negative caching (404) |
//! | product read, malformed id | 1 | 400 |
//! | categories | 10 | the shared list |
//! | new order (+ polls of its Location) | 14 | idempotent write, outbox, workers |
//! | poison order (`payment_method: "poison"`) | 1 | retries and the dead-letter queue |
//! | order, then the exact retry | 4 | replay (`Idempotent-Replayed: true`) |
//! | order sent 3× at once | 3 | 409 + Retry-After while in flight, then a replay |
//! | order, then same key with another body | 2 | 422 |
//! | order summary of a created order | 9 | the fan-out to three downstreams |

use rand::Rng;
use serde_json::json;

use crate::zipf::Zipf;

/// Unknown ids come from a small fixed set so their negative cache entries get hit.
pub const MISSING_IDS: u64 = 20;
/// Path segments that are not product ids at all.
pub const MALFORMED_IDS: [&str; 3] = ["abc", "12x", "1.5"];
/// Copies of an order sent at the same moment by the concurrent-duplicate scenario.
pub const CONCURRENT_COPIES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    HotProduct,
    MissingProduct,
    MalformedProduct,
    Categories,
    NewOrder,
    PoisonOrder,
    RetriedOrder,
    ConcurrentOrder,
    MismatchedOrder,
    Summary,
}

/// Shares in percent; they sum to 100.
pub const SHARES: [(Kind, u32); 10] = [
    (Kind::HotProduct, 52),
    (Kind::MissingProduct, 4),
    (Kind::MalformedProduct, 1),
    (Kind::Categories, 10),
    (Kind::NewOrder, 14),
    (Kind::PoisonOrder, 1),
    (Kind::RetriedOrder, 4),
    (Kind::ConcurrentOrder, 3),
    (Kind::MismatchedOrder, 2),
    (Kind::Summary, 9),
];

/// The path segment after `/products/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductId {
    Seeded(u32),
    Missing(u64),
    Malformed(&'static str),
}

impl ProductId {
    pub fn segment(&self) -> String {
        match self {
            ProductId::Seeded(id) => id.to_string(),
            ProductId::Missing(id) => id.to_string(),
            ProductId::Malformed(s) => (*s).to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub idempotency_key: String,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Scenario {
    Product(ProductId),
    Categories,
    /// A new order; `poison` sets `payment_method: "poison"`.
    Order {
        order: Order,
        poison: bool,
    },
    /// The order, then once more with the same key and body after the first answer.
    RetriedOrder(Order),
    /// [`CONCURRENT_COPIES`] copies at once, then one retry after a 409's Retry-After.
    ConcurrentOrder(Order),
    /// The order, then the same key with `other_body`.
    MismatchedOrder {
        order: Order,
        other_body: serde_json::Value,
    },
    /// The summary of a created order; `pick` chooses among the orders created so far.
    /// `fallback` is created instead while there is none yet (drawn up front so the
    /// sequence does not depend on timing).
    Summary {
        pick: u64,
        fallback: Order,
    },
}

/// One step of a worker: who sends it and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 0-based principal index (`sub` = `user-<index+1>`).
    pub principal: u32,
    pub kind: Kind,
    pub scenario: Scenario,
}

pub struct Plan {
    products: u32,
    principals: u32,
    zipf: Zipf,
    /// XORed into every idempotency key so that re-running with the same seed against the
    /// same service does not replay the previous run's orders.
    run_nonce: u128,
}

impl Plan {
    pub fn new(products: u32, principals: u32, zipf_exponent: f64, run_nonce: u128) -> Self {
        Self {
            products,
            principals,
            zipf: Zipf::new(products, zipf_exponent),
            run_nonce,
        }
    }

    pub fn principals(&self) -> u32 {
        self.principals
    }

    pub fn hot_product<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        self.zipf.sample(rng)
    }

    pub fn next<R: Rng + ?Sized>(&self, rng: &mut R) -> Step {
        let kind = pick_kind(rng);
        let principal = rng.random_range(0..self.principals);
        let scenario = match kind {
            Kind::HotProduct => Scenario::Product(ProductId::Seeded(self.hot_product(rng))),
            Kind::MissingProduct => Scenario::Product(ProductId::Missing(
                u64::from(self.products) + rng.random_range(1..=MISSING_IDS),
            )),
            Kind::MalformedProduct => Scenario::Product(ProductId::Malformed(
                MALFORMED_IDS[rng.random_range(0..MALFORMED_IDS.len())],
            )),
            Kind::Categories => Scenario::Categories,
            Kind::NewOrder => Scenario::Order {
                order: self.order(rng, principal, false),
                poison: false,
            },
            Kind::PoisonOrder => Scenario::Order {
                order: self.order(rng, principal, true),
                poison: true,
            },
            Kind::RetriedOrder => Scenario::RetriedOrder(self.order(rng, principal, false)),
            Kind::ConcurrentOrder => Scenario::ConcurrentOrder(self.order(rng, principal, false)),
            Kind::MismatchedOrder => {
                let order = self.order(rng, principal, false);
                let mut other_body = order.body.clone();
                // Same key, one more unit of the first item: a different payload.
                let q = other_body["items"][0]["quantity"].as_u64().unwrap_or(1);
                other_body["items"][0]["quantity"] = json!(q + 1);
                Scenario::MismatchedOrder { order, other_body }
            }
            Kind::Summary => Scenario::Summary {
                pick: rng.random(),
                fallback: self.order(rng, principal, false),
            },
        };
        Step {
            principal,
            kind,
            scenario,
        }
    }

    fn order<R: Rng + ?Sized>(&self, rng: &mut R, principal: u32, poison: bool) -> Order {
        let bits: u128 = rng.random::<u128>() ^ self.run_nonce;
        let key = uuid::Builder::from_random_bytes(bits.to_be_bytes()).into_uuid();
        let lines = rng.random_range(1..=3usize);
        let mut items: Vec<serde_json::Value> = Vec::with_capacity(lines);
        let mut used = Vec::with_capacity(lines);
        for _ in 0..lines {
            let product_id = self.hot_product(rng);
            if used.contains(&product_id) {
                continue;
            }
            used.push(product_id);
            items.push(json!({"product_id": product_id, "quantity": rng.random_range(1..=3u32)}));
        }
        let n = principal + 1;
        Order {
            idempotency_key: key.hyphenated().to_string(),
            body: json!({
                "items": items,
                "email": format!("user-{n}@example.test"),
                "phone": format!("+1555{:07}", n % 10_000_000),
                "payment_method": if poison { "poison" } else { "card" },
            }),
        }
    }
}

fn pick_kind<R: Rng + ?Sized>(rng: &mut R) -> Kind {
    let mut roll = rng.random_range(0..100u32);
    for (kind, share) in SHARES {
        if roll < share {
            return kind;
        }
        roll -= share;
    }
    unreachable!("SHARES sum to 100")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::BTreeMap;

    #[test]
    fn shares_sum_to_one_hundred() {
        assert_eq!(SHARES.iter().map(|(_, s)| s).sum::<u32>(), 100);
    }

    #[test]
    fn proportions_follow_the_shares() {
        let plan = Plan::new(200, 20, 1.1, 0);
        let mut rng = StdRng::seed_from_u64(1234);
        let n = 100_000u32;
        let mut counts: BTreeMap<Kind, u32> = BTreeMap::new();
        let mut principals = vec![0u32; 20];
        for _ in 0..n {
            let step = plan.next(&mut rng);
            *counts.entry(step.kind).or_default() += 1;
            principals[step.principal as usize] += 1;
        }
        for (kind, share) in SHARES {
            let p = f64::from(share) / 100.0;
            let expected = p * f64::from(n);
            let sigma = (expected * (1.0 - p)).sqrt();
            let got = f64::from(counts[&kind]);
            assert!(
                (got - expected).abs() < 5.0 * sigma,
                "{kind:?}: {got} of {n}, expected {expected}"
            );
        }
        // Principals are uniform: each near 5 %.
        for c in principals {
            assert!((4_500..=5_500).contains(&c), "principal share {c}");
        }
    }

    #[test]
    fn same_seed_same_mix_and_other_seed_differs() {
        let plan = Plan::new(200, 20, 1.1, 99);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200).map(|_| plan.next(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn run_nonce_changes_keys_but_not_the_mix() {
        let a = Plan::new(200, 20, 1.1, 1);
        let b = Plan::new(200, 20, 1.1, 2);
        let mut ra = StdRng::seed_from_u64(3);
        let mut rb = StdRng::seed_from_u64(3);
        let mut keys_differ = 0;
        for _ in 0..500 {
            let (sa, sb) = (a.next(&mut ra), b.next(&mut rb));
            assert_eq!(sa.kind, sb.kind);
            assert_eq!(sa.principal, sb.principal);
            if let (Scenario::Order { order: oa, .. }, Scenario::Order { order: ob, .. }) =
                (&sa.scenario, &sb.scenario)
            {
                assert_eq!(oa.body, ob.body);
                assert_ne!(oa.idempotency_key, ob.idempotency_key);
                keys_differ += 1;
            }
        }
        assert!(keys_differ > 0);
    }

    #[test]
    fn ids_and_bodies_are_in_range() {
        let plan = Plan::new(50, 3, 1.1, 0);
        let mut rng = StdRng::seed_from_u64(8);
        let mut seen_poison = false;
        for _ in 0..5_000 {
            let step = plan.next(&mut rng);
            assert!(step.principal < 3);
            match step.scenario {
                Scenario::Product(ProductId::Seeded(id)) => assert!((1..=50).contains(&id)),
                Scenario::Product(ProductId::Missing(id)) => {
                    assert!((51..=50 + MISSING_IDS).contains(&id))
                }
                Scenario::Product(ProductId::Malformed(s)) => {
                    assert!(s.parse::<i64>().is_err())
                }
                Scenario::Order { order, poison } => {
                    let method = order.body["payment_method"].as_str().unwrap();
                    assert_eq!(method == "poison", poison);
                    seen_poison |= poison;
                    assert!(uuid::Uuid::parse_str(&order.idempotency_key).is_ok());
                    let items = order.body["items"].as_array().unwrap();
                    assert!((1..=3).contains(&items.len()));
                    for item in items {
                        let id = item["product_id"].as_u64().unwrap();
                        assert!((1..=50).contains(&id));
                    }
                    assert_eq!(
                        order.body["email"],
                        format!("user-{}@example.test", step.principal + 1)
                    );
                }
                Scenario::MismatchedOrder { order, other_body } => {
                    assert_ne!(order.body, other_body);
                    assert_eq!(order.body["email"], other_body["email"]);
                }
                _ => {}
            }
        }
        assert!(seen_poison);
    }
}
