//! Run-time switches: inject downstream latency and errors, or turn a protection off,
//! to compare traces and metrics with and without it (`PUT /admin/faults`).

use std::sync::RwLock;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DownstreamFault {
    /// Added to every call, ms.
    pub latency_ms: u64,
    /// Share of calls answered with 500, 0.0–1.0.
    pub error_rate: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub inventory: DownstreamFault,
    pub shipping: DownstreamFault,
    pub recommendations: DownstreamFault,
    pub cache_enabled: bool,
    pub single_flight_enabled: bool,
    pub idempotency_enabled: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            inventory: DownstreamFault::default(),
            shipping: DownstreamFault::default(),
            recommendations: DownstreamFault::default(),
            cache_enabled: true,
            single_flight_enabled: true,
            idempotency_enabled: true,
        }
    }
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        for (name, f) in [
            ("inventory", &self.inventory),
            ("shipping", &self.shipping),
            ("recommendations", &self.recommendations),
        ] {
            if !(0.0..=1.0).contains(&f.error_rate) {
                return Err(format!("{name}.error_rate must be within 0.0 and 1.0"));
            }
            if f.latency_ms > 60_000 {
                return Err(format!("{name}.latency_ms must be at most 60000"));
            }
        }
        Ok(())
    }

    pub fn downstream(&self, name: &str) -> DownstreamFault {
        match name {
            "inventory" => self.inventory.clone(),
            "shipping" => self.shipping.clone(),
            "recommendations" => self.recommendations.clone(),
            _ => DownstreamFault::default(),
        }
    }
}

/// The switches shared by the handlers; reads are far more frequent than writes.
#[derive(Default)]
pub struct FaultSwitch(RwLock<Faults>);

impl FaultSwitch {
    pub fn get(&self) -> Faults {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, faults: Faults) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    pub fn cache_enabled(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cache_enabled
    }

    pub fn single_flight_enabled(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .single_flight_enabled
    }

    pub fn idempotency_enabled(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .idempotency_enabled
    }
}
