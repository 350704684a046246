//! Test support for agents that embed jumpset (feature `testing`): an in-memory kernel to
//! unit-test a use of jumpset without root, as kubernetes-sigs/knftables' `fake.go` does
//! for nftables users.
//!
//! [`FakeKernel`] implements [`Backend`](crate::backend::Backend) with nf_tables'
//! semantics: generations, stale-write refusal, handles, table/base-chain/target-chain
//! creation, commit notifications, and a way for a test to write as another agent —
//! including between jumpset's read and its write ([`FakeKernel::before_next_apply`]).
//!
//! ```
//! use jumpset::reconcile::{reconcile, Goal};
//! use jumpset::snapshot::Family;
//! use jumpset::spec::Config;
//! use jumpset::testing::{jump, FakeKernel};
//!
//! let cfg = Config::from_toml(r#"
//!     families = ["ip"]
//!     [[chain]]
//!     table = "nat"
//!     chain = "PREROUTING"
//!       [[chain.jump]]
//!       target = "OVN-PREROUTING"
//!       comment = "kube-ovn prerouting rules"
//!       before = ["KUBE-SERVICES"]
//!       create_chain = true
//! "#)?;
//! let spec = &cfg.chains()[0];
//!
//! // kube-proxy got there first.
//! let mut kernel = FakeKernel::new();
//! let kube_proxy = kernel.connect(4242, "kube-proxy");
//! kube_proxy.new_chain(Family::Ip, "nat", "KUBE-SERVICES")?;
//! kube_proxy.append(Family::Ip, "nat", "PREROUTING",
//!     jump("kubernetes service portals", "KUBE-SERVICES"))?;
//!
//! // And writes again between our read and our write: the kernel refuses our stale
//! // batch, jumpset re-reads and re-plans.
//! let again = kube_proxy.clone();
//! kernel.before_next_apply(move || {
//!     again.append(Family::Ip, "nat", "PREROUTING",
//!         jump("kubernetes service portals", "KUBE-SERVICES")).unwrap();
//! });
//!
//! let out = reconcile(&mut kernel, Family::Ip, spec, Goal::Converge)?;
//! assert!(out.committed);
//! assert_eq!(out.retries, 1);
//! assert_eq!(
//!     kernel.listing(Family::Ip, "nat", "PREROUTING"),
//!     [
//!         r#"-A PREROUTING -m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING"#,
//!         r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
//!         r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
//!     ]
//! );
//!
//! // Converged: the next reconcile reads and commits nothing.
//! let generation = kernel.current_generation();
//! assert!(!reconcile(&mut kernel, Family::Ip, spec, Goal::Converge)?.committed);
//! assert_eq!(kernel.current_generation(), generation);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod fake;
mod floor;

pub use fake::{FakeKernel, Fault, Overflow, Step, Subscription, Tx};
pub use floor::{nft_read_request, RawBatch, RawTable};

use crate::snapshot::{Comment, CommentEncoding, Counters, Rule, Verdict};

/// `-m comment --comment COMMENT -j TARGET` with a counter, as `iptables` writes it.
pub fn jump(comment: &str, target: &str) -> Rule {
    Rule {
        handle: 0,
        comment: Some(Comment {
            bytes: comment.as_bytes().to_vec(),
            encoding: CommentEncoding::Xt,
        }),
        matches: Vec::new(),
        counters: Some(Counters::default()),
        verdict: Verdict::Jump(target.to_string()),
    }
}

/// A rule with no comment and no match, only `verdict` (and a counter).
pub fn rule(verdict: Verdict) -> Rule {
    Rule {
        handle: 0,
        comment: None,
        matches: Vec::new(),
        counters: Some(Counters::default()),
        verdict,
    }
}
