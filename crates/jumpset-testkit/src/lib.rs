//! Test scaffolding shared by jumpset's integration tests, benches, `jumpset demo` and
//! `jumpset bench`. Nothing here is part of the product path.
//!
//! - [`netns`] — throwaway network namespaces: a closure runs on a thread that left the
//!   caller's namespace.
//! - [`scenario`] — reads the iptables-restore fixtures (the Harvester chains) into rules.
//! - [`fixtures`] — the Harvester incident: its spec, its broken and its healthy chain.
//! - [`table`] — the kube-proxy-style nat table generator of the benchmarks.
//! - [`datapath`] — a node's data path: client, node and pod namespaces over veth, the
//!   agents' DNAT and counting rules, a server in the pod, a client that records every
//!   new connection.
//! - [`rtnl`] — the rtnetlink requests that build it (no `ip` program).

pub mod datapath;
pub mod fixtures;
pub mod netns;
pub mod rtnl;
pub mod scenario;
pub mod table;
