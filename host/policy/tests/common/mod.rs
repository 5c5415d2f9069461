//! Shared fixtures for the runtime's tests.
#![allow(dead_code)]

use locus_policy::{Loaded, Runtime, RuntimeConfig};
use locus_sdk::testing::{ClusterBuilder, PartitionBuilder, RequestBuilder};
use locus_sdk::{Cluster, Partition, Request, Resources};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("runtime starts")
}

pub fn load(rt: &Runtime, bytes: &[u8], name: &str) -> Arc<Loaded> {
    rt.load(bytes, name, BTreeMap::new()).unwrap_or_else(|e| panic!("{name} loads: {e}"))
}

pub fn cluster(hosts: usize) -> Cluster {
    let mut b = ClusterBuilder::new().pop("FR", 48.86, 2.35).pop("DE", 52.52, 13.40);
    for i in 0..hosts {
        let used = Resources::new((i % 7) as u32, ((i % 5) * 4096) as u32, (i % 3) as u32 * 50);
        b = b.host_used((i % 2) as u32, Resources::new(32, 65_536, 1000), used);
    }
    b.build()
}

pub fn request(cluster: &Cluster) -> Request {
    RequestBuilder::new(cluster, Resources::new(2, 4096, 20)).build()
}

pub fn partition() -> Partition {
    PartitionBuilder::new(cluster(3))
        .vm(0, Resources::new(2, 2048, 10), 20_000)
        .vm(0, Resources::new(2, 2048, 10), 15_000)
        .vm(1, Resources::new(2, 2048, 10), 1_000)
        .build()
}
