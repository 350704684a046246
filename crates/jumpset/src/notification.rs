//! What the kernel announces about a committed transaction: nf_tables multicasts, per
//! committed batch, one message per changed object (NEWRULE, DELRULE, DELCHAIN, DELTABLE,
//! ...) and then one NEWGEN carrying the new generation and the committing task's pid and
//! comm; every message of the batch carries, as `nlmsg_pid`, the port id of the socket
//! that sent it.
//!
//! [`Commit`] is that batch, reduced to what a watcher of iptables chains needs: which
//! (family, table, chain) it touched, whose rules moved, and who committed it. The daemon
//! builds them from the notification socket (`daemon::monitor`); the fake kernel
//! (`testing::FakeKernel`, feature `testing`) produces the same for every commit it makes.

use crate::snapshot::{agent_of, Family, Rule};

/// One committed transaction, as announced to listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Commit {
    /// The generation the commit produced.
    pub generation: u32,
    /// Port id of the netlink socket that sent the batch (ours tell our commits apart).
    pub portid: u32,
    /// PID of the committing task (initial PID namespace), when the kernel says.
    pub pid: Option<u32>,
    /// Its comm (at most 15 characters), when the kernel says.
    pub comm: Option<String>,
    /// The iptables chains (ip and ip6 families) the batch changed, in order of first
    /// change.
    pub touched: Vec<Touched>,
}

/// A chain (or a whole table) one commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Touched {
    /// Address family.
    pub family: Family,
    /// Table.
    pub table: String,
    /// The chain whose rules were added or deleted, or that was deleted; `None` when the
    /// whole table was deleted.
    pub chain: Option<String>,
    /// The agents whose rules were added or deleted there (`snapshot::agent_of`), in
    /// order of first appearance, `unknown` left out.
    pub agents: Vec<&'static str>,
    /// The chains the rules added there jump or go to, one entry per such rule.
    pub added: Vec<String>,
    /// The chains the rules deleted there jumped or went to, one entry per such rule
    /// (a DELRULE notification carries the whole deleted rule).
    pub removed: Vec<String>,
    /// Whether the chain itself was created, renamed (nf_tables announces a rename as a
    /// new chain of the new name) or deleted: a jump to it may now lead elsewhere.
    pub chain_changed: bool,
}

impl Touched {
    /// A change to `chain` of `table`; `None` for the whole table.
    pub fn new(family: Family, table: &str, chain: Option<&str>) -> Self {
        Touched {
            family,
            table: table.to_string(),
            chain: chain.map(str::to_string),
            agents: Vec::new(),
            added: Vec::new(),
            removed: Vec::new(),
            chain_changed: false,
        }
    }

    /// Whether this change reaches `family` `table` `chain`.
    pub fn covers(&self, family: Family, table: &str, chain: &str) -> bool {
        self.family == family
            && self.table == table
            && self.chain.as_deref().is_none_or(|c| c == chain)
    }
}

impl Commit {
    /// A commit with nothing touched yet.
    pub fn new(generation: u32, portid: u32, pid: Option<u32>, comm: Option<String>) -> Self {
        Commit {
            generation,
            portid,
            pid,
            comm,
            touched: Vec::new(),
        }
    }

    /// Record that the batch touched `family` `table` `chain` (`None`: the table), moving
    /// a rule of `agent` (if any) there.
    pub fn touch(
        &mut self,
        family: Family,
        table: &str,
        chain: Option<&str>,
        agent: Option<&'static str>,
    ) {
        let i = match self
            .touched
            .iter()
            .position(|t| t.family == family && t.table == table && t.chain.as_deref() == chain)
        {
            Some(i) => i,
            None => {
                self.touched.push(Touched::new(family, table, chain));
                self.touched.len() - 1
            }
        };
        if let Some(a) = agent.filter(|a| *a != "unknown") {
            let t = &mut self.touched[i];
            if !t.agents.contains(&a) {
                t.agents.push(a);
            }
        }
    }

    /// Record that the batch created, renamed or deleted `family` `table` `chain`.
    pub fn touch_chain(&mut self, family: Family, table: &str, chain: &str) {
        self.touch(family, table, Some(chain), None);
        if let Some(t) = self
            .touched
            .iter_mut()
            .find(|t| t.family == family && t.table == table && t.chain.as_deref() == Some(chain))
        {
            t.chain_changed = true;
        }
    }

    /// Record that the batch added (`added`) or deleted `rule` in `family` `table`
    /// `chain`: the chain is touched, the rule's agent and target noted.
    pub fn touch_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        rule: &Rule,
        added: bool,
    ) {
        self.touch(family, table, Some(chain), Some(agent_of(rule)));
        if let Some(target) = rule.target() {
            let t = self
                .touched
                .iter_mut()
                .find(|t| {
                    t.family == family && t.table == table && t.chain.as_deref() == Some(chain)
                })
                .expect("touched above");
            if added {
                t.added.push(target.to_string());
            } else {
                t.removed.push(target.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touches_merge_per_chain_and_a_table_deletion_covers_its_chains() {
        let mut c = Commit::new(7, 42, Some(1), Some("iptables-nft".into()));
        c.touch(Family::Ip, "nat", Some("PREROUTING"), Some("kube-proxy"));
        c.touch(Family::Ip, "nat", Some("PREROUTING"), Some("unknown"));
        c.touch(Family::Ip, "nat", Some("PREROUTING"), Some("kube-proxy"));
        c.touch(Family::Ip, "nat", Some("PREROUTING"), Some("calico"));
        c.touch(Family::Ip6, "nat", None, None);
        assert_eq!(c.touched.len(), 2);
        assert_eq!(c.touched[0].agents, vec!["kube-proxy", "calico"]);
        assert!(c.touched[0].covers(Family::Ip, "nat", "PREROUTING"));
        assert!(!c.touched[0].covers(Family::Ip, "nat", "OUTPUT"));
        assert!(!c.touched[0].covers(Family::Ip6, "nat", "PREROUTING"));
        assert!(c.touched[1].covers(Family::Ip6, "nat", "OUTPUT"));
        assert!(!c.touched[1].covers(Family::Ip6, "filter", "OUTPUT"));
        assert!(c.touched[0].added.is_empty() && c.touched[0].removed.is_empty());
    }

    #[test]
    fn rules_added_and_deleted_are_noted_with_their_targets() {
        use crate::snapshot::{Comment, CommentEncoding, Verdict};
        let rule = |target: &str, comment: Option<&str>| Rule {
            handle: 1,
            comment: comment.map(|c| Comment {
                bytes: c.as_bytes().to_vec(),
                encoding: CommentEncoding::Xt,
            }),
            matches: Vec::new(),
            counters: None,
            verdict: Verdict::Jump(target.into()),
        };
        let mut c = Commit::new(3, 9, None, None);
        c.touch_rule(
            Family::Ip,
            "nat",
            "PREROUTING",
            &rule("OVN-PREROUTING", Some("kube-ovn prerouting rules")),
            true,
        );
        c.touch_rule(
            Family::Ip,
            "nat",
            "PREROUTING",
            &rule("CNI-HOSTPORT-DNAT", None),
            false,
        );
        c.touch_rule(
            Family::Ip,
            "nat",
            "PREROUTING",
            &rule("OVN-PREROUTING", None),
            false,
        );
        let accept = Rule {
            verdict: Verdict::Accept,
            ..rule("X", None)
        };
        c.touch_rule(Family::Ip, "nat", "OUTPUT", &accept, false);
        assert_eq!(c.touched.len(), 2);
        let t = &c.touched[0];
        assert_eq!(t.agents, ["kube-ovn", "portmap"]);
        assert_eq!(t.added, ["OVN-PREROUTING"]);
        assert_eq!(t.removed, ["CNI-HOSTPORT-DNAT", "OVN-PREROUTING"]);
        assert!(c.touched[1].removed.is_empty(), "a rule with no target");
    }
}
