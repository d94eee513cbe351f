//! The appliance context the policy tests check against: three regions tagged by tier and
//! provider, the clusters the example policies cover, and WAL shipped every 10 seconds.

use std::time::Duration;

use cairn_policies::{Context, RegionInfo};

pub fn context() -> Context {
    Context {
        regions: vec![
            RegionInfo::new("eu-1", &[("tier", "hot"), ("provider", "aws")]),
            RegionInfo::new("eu-2", &[("tier", "hot"), ("provider", "gcp")]),
            RegionInfo::new("us-1", &[("tier", "cold"), ("provider", "aws")]),
        ],
        clusters: [
            "prod-eu",
            "prod-us",
            "analytics-main",
            "analytics-adhoc",
            "billing",
            "ledger",
            "dev-alice",
            "dev-bob",
        ]
        .map(String::from)
        .to_vec(),
        ship_interval: Duration::from_secs(10),
    }
}
