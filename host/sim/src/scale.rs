//! Scenarios of any size, for measuring how the protocol and the
//! simulator scale (`locus sim --scale`): PoPs of [`HOSTS_PER_POP`] hosts
//! spread over the inhabited latitudes, ten VMs per host requested in the
//! first twenty seconds, entering anywhere, and each VM's CPU use changing
//! about once a minute.

use crate::net::NetConfig;
use crate::scenario::{Arrivals, LoadChanges, Pop, Scenario, ScenarioError};

/// Hosts of each PoP (the last may have fewer).
pub const HOSTS_PER_POP: u32 = 32;
/// VMs requested per host.
pub const VMS_PER_HOST: u32 = 10;
/// Jurisdictions the PoPs take in turn.
const JURISDICTIONS: [&str; 8] = ["FR", "DE", "ES", "US", "JP", "BR", "IN", "AU"];

/// A scenario of `hosts` hosts that runs for `duration_s` seconds.
pub fn scenario(hosts: u32, duration_s: u64) -> Result<Scenario, ScenarioError> {
    if hosts == 0 || duration_s < 30 {
        return Err(ScenarioError::Invalid("a scale run needs hosts and at least 30 s".into()));
    }
    let n = hosts.div_ceil(HOSTS_PER_POP);
    let pops = (0..n)
        .map(|i| {
            let (lat, lon) = spread(i, n);
            Pop {
                name: format!("pop{i}"),
                jurisdiction: JURISDICTIONS[i as usize % JURISDICTIONS.len()].into(),
                lat,
                lon,
                hosts: HOSTS_PER_POP.min(hosts - i * HOSTS_PER_POP),
                vcpus: 32,
                cpus: Some(16),
                memory_mib: 65_536,
                energy: Default::default(),
            }
        })
        .collect();
    let vms = hosts.saturating_mul(VMS_PER_HOST);
    let changes = u64::from(vms) * duration_s.saturating_sub(25) / 60;
    let scenario = Scenario {
        name: format!("scale: {hosts} hosts, {vms} VMs"),
        duration_s,
        // The agent's default.
        sample_interval_ms: 2_000,
        network: NetConfig::default(),
        hypervisor: Default::default(),
        pops,
        arrivals: vec![Arrivals {
            at_s: 5.0,
            count: vms,
            every_ms: 20_000.0 / f64::from(vms),
            vcpus: 2,
            memory_mib: 4_096,
            load_cpu_milli: Some(800),
            pop: None,
            jurisdictions: vec![],
            user: None,
            max_latency_ms: None,
        }],
        load_changes: vec![LoadChanges {
            at_s: 25.0,
            count: u32::try_from(changes).unwrap_or(u32::MAX),
            every_ms: 60_000.0 / f64::from(vms),
            min_milli: 0,
            max_milli: 2_000,
            step_milli: 100,
            normal: None,
        }],
        faults: vec![],
        policies: Default::default(),
        scheduler: Default::default(),
    };
    scenario.check().map_err(ScenarioError::Invalid)?;
    Ok(scenario)
}

/// The `i`th of `n` points spread evenly (a Fibonacci lattice) between
/// latitudes 60° south and north.
fn spread(i: u32, n: u32) -> (f32, f32) {
    let golden = std::f64::consts::PI * (3.0 - 5f64.sqrt());
    let z = (1.0 - 2.0 * (f64::from(i) + 0.5) / f64::from(n)) * 60f64.to_radians().sin();
    let lon = (f64::from(i) * golden).to_degrees().rem_euclid(360.0) - 180.0;
    (z.asin().to_degrees() as f32, lon as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scale_scenario_has_the_hosts_asked_for_in_pops_of_32_on_the_globe() {
        let s = scenario(100, 60).expect("valid");
        assert_eq!(s.pops.iter().map(|p| p.hosts).collect::<Vec<_>>(), [32, 32, 32, 4]);
        assert_eq!(s.arrivals[0].count, 1000);
        assert!(s.pops.iter().all(|p| p.lat.abs() <= 60.0 && p.lon.abs() <= 180.0));
        assert!(scenario(0, 60).is_err() && scenario(10, 10).is_err());
    }
}
