//! The power model and the meter: what each host draws (idle power plus
//! its CPU use's share of the range to full load, or standby power), each
//! PoP's draw summed as hosts change, and each PoP's energy supply now
//! (renewable power and the grid's carbon intensity, step series).

use crate::hypervisor::Hypervisor;
use crate::scenario::Pop;

/// What every PoP draws and the supply its agents were last told of.
#[derive(Debug)]
pub struct Energy {
    /// What each host draws, as of its last sample, watts.
    host_watts: Vec<f64>,
    /// What each PoP's hosts draw, watts.
    pop_watts: Vec<f64>,
    /// Each PoP's renewable watts and grid gCO2/kWh, as last told.
    supply: Vec<(u32, u32)>,
}

impl Energy {
    /// Every host of `hosts` (its PoP's index each) idle, each PoP's supply at time 0.
    pub fn new(pops: &[Pop], hosts: impl Iterator<Item = usize>) -> Self {
        let mut pop_watts = vec![0.0; pops.len()];
        let host_watts = hosts
            .map(|p| {
                let w = f64::from(pops[p].energy.idle_watts);
                pop_watts[p] += w;
                w
            })
            .collect();
        let supply =
            pops.iter().map(|p| (p.energy.renewable_watts.at(0), p.energy.carbon_g_per_kwh.at(0))).collect();
        Energy { host_watts, pop_watts, supply }
    }

    /// Host `i` of PoP `pop` (of `pops`) draws what its domains' CPU use says.
    pub fn host(&mut self, i: usize, pop: usize, pops: &[Pop], hv: &Hypervisor, standby: bool) {
        let p = &pops[pop];
        let e = &p.energy;
        let milli: u64 =
            (hv.domains.values()).filter(|d| d.state.is_active()).map(|d| u64::from(d.cpu_milli)).sum();
        let watts = if standby && milli == 0 {
            f64::from(e.standby_watts)
        } else {
            let cpus = f64::from(p.cpus.unwrap_or(p.vcpus).max(1)) * 1000.0;
            let busy = (milli as f64 / cpus).min(1.0);
            f64::from(e.idle_watts) + f64::from(e.max_watts - e.idle_watts) * busy
        };
        self.pop_watts[pop] += watts - self.host_watts[i];
        self.host_watts[i] = watts;
    }

    /// What PoP `pop` draws now, watts, and its supply as last told.
    pub fn pop(&self, pop: usize) -> (f64, (u32, u32)) {
        (self.pop_watts[pop], self.supply[pop])
    }

    /// PoP `pop`'s supply at `us`, if it changed since last told (and now told).
    pub fn supply_changed(&mut self, pop: usize, pops: &[Pop], us: u64) -> Option<(u32, u32)> {
        let e = &pops[pop].energy;
        let now = (e.renewable_watts.at(us), e.carbon_g_per_kwh.at(us));
        (now != self.supply[pop]).then(|| {
            self.supply[pop] = now;
            now
        })
    }

    /// Every host's draw and the grid's share of it, watts.
    pub fn totals(&self) -> (f64, f64) {
        let grid = (self.pop_watts.iter().zip(&self.supply))
            .map(|(&w, &(renewable, _))| (w - f64::from(renewable)).max(0.0))
            .sum();
        (self.pop_watts.iter().sum(), grid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Domain;
    use locus_core::hypervisor::DomainState;

    #[test]
    fn a_host_draws_idle_power_plus_its_load_share_and_standby_power_when_empty_in_standby() {
        let text = "name = \"e\"\nduration-s = 10\n[[pops]]\nname = \"a\"\njurisdiction = \"FR\"\n\
                    lat = 0\nlon = 0\nhosts = 2\nvcpus = 8\ncpus = 4\nmemory-mib = 1\n\
                    [pops.energy]\nidle-watts = 100\nmax-watts = 300\nstandby-watts = 10\n\
                    renewable-watts = { values = [150] }\n";
        let pops = crate::Scenario::parse(text).expect("scenario").pops;
        let mut e = Energy::new(&pops, [0, 0].into_iter());
        assert_eq!(e.totals(), (200.0, 50.0));
        let mut hv = Hypervisor::new("a-0");
        let busy = Domain {
            state: DomainState::Running,
            owner: "a-0".into(),
            generation: 1,
            memory_mib: 1,
            vcpus: 2,
            cpu_milli: 2_000,
        };
        hv.domains.insert("vm".into(), busy);
        e.host(0, 0, &pops, &hv, false);
        // Half of 4 CPUs busy: 100 + 200 / 2.
        assert_eq!(e.pop(0), (300.0, (150, 300)));
        e.host(1, 0, &pops, &Hypervisor::new("a-1"), true);
        assert_eq!(e.totals(), (210.0, 60.0));
        assert_eq!(e.supply_changed(0, &pops, 5_000_000), None, "a constant supply never changes");
    }
}
