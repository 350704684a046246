//! Rules and snapshots for the crate's unit tests (the planner's, `explain`'s).

use crate::snapshot::{Comment, CommentEncoding, Counters, Family, Match, Rule, Snapshot, Verdict};

/// A rule with an xt `comment` and no match.
pub(crate) fn bare(handle: u64, comment: &str, verdict: Verdict) -> Rule {
    Rule {
        handle,
        comment: Some(Comment {
            bytes: comment.as_bytes().to_vec(),
            encoding: CommentEncoding::Xt,
        }),
        matches: vec![],
        counters: Some(Counters::default()),
        verdict,
    }
}

/// A bare jump to `target` with an xt `comment`, as the owned jumps are.
pub(crate) fn jump(handle: u64, comment: &str, target: &str) -> Rule {
    bare(handle, comment, Verdict::Jump(target.into()))
}

/// Another agent's jump to `target`: no comment, a match (kube-proxy's `addrtype LOCAL`).
pub(crate) fn foreign(handle: u64, target: &str) -> Rule {
    Rule {
        handle,
        comment: None,
        matches: vec![Match::AddrType {
            source: 0,
            dest: crate::snapshot::ADDRTYPE_LOCAL,
            flags: 0,
        }],
        counters: Some(Counters::default()),
        verdict: Verdict::Jump(target.into()),
    }
}

/// `rules` as ip nat PREROUTING, read at generation 1.
pub(crate) fn snap(rules: Vec<Rule>) -> Snapshot {
    Snapshot {
        family: Family::Ip,
        table: "nat".into(),
        chain: "PREROUTING".into(),
        generation: 1,
        table_exists: true,
        chain_exists: true,
        rules,
    }
}
