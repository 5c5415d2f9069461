//! The checks every decision passes before the agent acts on it, whatever
//! produced it. A policy is never trusted: an index out of range, a host
//! without room, a crossed fence or an oversized answer is refused here with
//! a sentence that says what was wrong.

use locus_sdk::{Cluster, GroupKind, Migration, Partition, Placement, PlanBuilder, Request};

/// Longest rejection message kept, in bytes.
pub const MAX_MESSAGE: usize = 1024;

/// Checks a placement decision against the view it was made on.
pub fn placement(cluster: &Cluster, request: &Request, decision: &Placement) -> Result<(), String> {
    let hosts = &cluster.hosts;
    let choice = match decision {
        Placement::Reject(_) => return Ok(()),
        Placement::Place(choice) => choice,
    };
    if choice.scores.len() > hosts.len() {
        return Err(format!("returned {} scores for {} hosts", choice.scores.len(), hosts.len()));
    }
    if let Some(s) = choice.scores.iter().find(|s| s.host as usize >= hosts.len()) {
        return Err(format!("scored host row {} but there are {} hosts", s.host, hosts.len()));
    }
    let row = choice.host as usize;
    if row >= hosts.len() {
        return Err(format!("chose host row {row} but there are {} hosts", hosts.len()));
    }
    if !request.size.fits_in(hosts.free(row)) {
        return Err(format!("chose host row {row}, which has no room for the VM"));
    }
    let pop = hosts.pop[row];
    let jurisdiction = cluster.pops.get(pop as usize).map(|p| p.jurisdiction);
    if !request.allowed_jurisdictions.is_empty()
        && !jurisdiction.is_some_and(|j| request.allowed_jurisdictions.contains(&j))
    {
        return Err(format!("chose host row {row}, outside the allowed jurisdictions"));
    }
    if let (Some(bound), Some(rtt)) = (request.max_latency_us, request.user_latency(pop))
        && rtt > bound
    {
        return Err(format!("chose host row {row}, {rtt} µs from the users, above the {bound} µs bound"));
    }
    if let Some(g) = &request.group
        && g.kind == GroupKind::AntiAffinity
        && g.members_on_host.get(row).is_some_and(|&n| n > 0)
    {
        return Err(format!("chose host row {row}, which already runs a member of the anti-affinity group"));
    }
    Ok(())
}

/// Checks a migration plan against the partition it was made on.
pub fn plan(partition: &Partition, plan: &[Migration]) -> Result<(), String> {
    if plan.len() > partition.vms.len() {
        return Err(format!("returned {} migrations for {} VMs", plan.len(), partition.vms.len()));
    }
    let mut builder = PlanBuilder::new(partition);
    for (i, m) in plan.iter().enumerate() {
        builder.try_move(m.vm, m.to).map_err(|e| format!("migration {i}: {e}"))?;
    }
    Ok(())
}

/// Cuts `message` to [`MAX_MESSAGE`] bytes on a character boundary.
pub fn truncate_message(message: String) -> String {
    truncate_message_to(message, MAX_MESSAGE)
}

/// Cuts `message` to `max` bytes on a character boundary, marking the cut.
pub fn truncate_message_to(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use locus_sdk::testing::{ClusterBuilder, PartitionBuilder, RequestBuilder};
    use locus_sdk::{Resources, Score};

    fn cluster() -> Cluster {
        ClusterBuilder::new()
            .pop("FR", 48.0, 2.0)
            .pop("JP", 35.0, 139.0)
            .host(0, Resources::new(4, 4096, 10))
            .host_used(0, Resources::new(4, 4096, 10), Resources::new(4, 4096, 10))
            .host(1, Resources::new(4, 4096, 10))
            .build()
    }

    #[test]
    fn placement_rules() {
        let c = cluster();
        let r = RequestBuilder::new(&c, Resources::new(1, 512, 1)).jurisdictions(&["FR"]).build();
        assert!(placement(&c, &r, &Placement::on(0)).is_ok());
        assert_eq!(
            placement(&c, &r, &Placement::on(3)).unwrap_err(),
            "chose host row 3 but there are 3 hosts"
        );
        assert!(placement(&c, &r, &Placement::on(1)).unwrap_err().contains("no room"));
        assert!(placement(&c, &r, &Placement::on(2)).unwrap_err().contains("jurisdictions"));
        let many = vec![Score { host: 0, value: 0.0 }; 4];
        assert!(placement(&c, &r, &Placement::on_with_scores(0, many)).unwrap_err().contains("4 scores"));
        let anti =
            RequestBuilder::new(&c, Resources::new(1, 512, 1)).group(GroupKind::AntiAffinity, &[0]).build();
        assert!(placement(&c, &anti, &Placement::on(0)).unwrap_err().contains("anti-affinity"));
        let far = RequestBuilder::new(&c, Resources::new(1, 512, 1))
            .user_at(48.0, 2.0)
            .max_latency_us(5000)
            .build();
        assert!(placement(&c, &far, &Placement::on(2)).unwrap_err().contains("bound"));
    }

    #[test]
    fn plan_rules() {
        let p = PartitionBuilder::new(cluster()).vm(0, Resources::new(1, 512, 1), 100).build();
        assert!(plan(&p, &[Migration { vm: 0, to: 2 }]).is_ok());
        assert_eq!(
            plan(&p, &[Migration { vm: 0, to: 9 }]).unwrap_err(),
            "migration 0: host row 9 does not exist (the partition has 3 hosts)"
        );
        assert!(plan(&p, &[Migration { vm: 0, to: 1 }; 2]).unwrap_err().contains("2 migrations for 1 VMs"));
    }

    #[test]
    fn messages_are_cut_on_a_character_boundary() {
        let cut = truncate_message("é".repeat(1000));
        assert!(cut.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
