//! Witness the anchors: the other agents' jumps a managed chain's `after`/`before` name
//! ([`ChainSpec::anchors`]). jumpset reads them anyway and never writes them; the daemon,
//! which has the history, says when one that was present disappears, and who removed it.
//!
//! One [`Anchors`] per managed (chain, family). It counts, per anchor, the rules of the
//! chain that jump or go to it: exactly at every read ([`Anchors::on_read`]), and between
//! reads from the notifications ([`Anchors::on_commit`]: a DELRULE carries the whole
//! deleted rule, so the commit that took the last such rule away is known, and so is its
//! writer — even while the fight policy holds the repair, or yields). When notifications
//! were lost the counts are unknown until the next read ([`Anchors::forget`]). Legacy
//! x_tables has no notifications: a removal is found by the next poll, and who made it is
//! not known.

use super::fight::Writer;
use crate::notification::Touched;
use crate::snapshot::Snapshot;
use crate::spec::ChainSpec;
use tracing::Level;

/// An anchor appearing or disappearing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The anchor (the chain its rule jumps to).
    pub anchor: String,
    /// Present now.
    pub present: bool,
    /// The first thing known about it (the first read): not a change, a fact.
    pub first: bool,
    /// The writer of the commit that made the change, when a notification said.
    pub by: Option<Writer>,
}

impl Change {
    /// The log record (after `FAMILY TABLE CHAIN: `) and its level, if this is worth one;
    /// `notified`: the backend has change notifications (nf_tables).
    pub fn message(&self, notified: bool) -> Option<(Level, String)> {
        let who = |verb: &str| {
            match &self.by {
            Some(w) => format!("{verb} by {}", w.describe()),
            None if notified => "found by a re-read (the notification was lost)".to_string(),
            None => "found by the poll (x_tables sends no change notifications: who did it is not known)".to_string(),
        }
        };
        match (self.present, self.first) {
            (false, false) => Some((
                Level::WARN,
                format!(
                    "anchor {} is gone: the last rule jumping to it was {}; it is another agent's jump, jumpset does not write it back",
                    self.anchor,
                    who("removed")
                ),
            )),
            (false, true) => Some((
                Level::INFO,
                format!("anchor {} is absent (no rule jumps to it)", self.anchor),
            )),
            (true, false) => Some((
                Level::INFO,
                format!("anchor {} is back: {}", self.anchor, who("added")),
            )),
            (true, true) => None,
        }
    }
}

/// The anchors of one managed chain in one family.
#[derive(Debug, Clone)]
pub struct Anchors {
    names: Vec<String>,
    /// Rules jumping to each, when known.
    counts: Option<Vec<usize>>,
    /// Last reported presence of each.
    present: Vec<Option<bool>>,
}

impl Anchors {
    /// The anchors of `spec`, nothing known yet.
    pub fn new(spec: &ChainSpec) -> Self {
        let names: Vec<String> = spec.anchors().into_iter().map(str::to_string).collect();
        Anchors {
            present: vec![None; names.len()],
            counts: None,
            names,
        }
    }

    /// The anchors' names, in the order the spec first names them.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Last known presence of each anchor (`None`: not read yet).
    pub fn presence(&self) -> impl Iterator<Item = (&str, Option<bool>)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.present.iter().copied())
    }

    /// The anchors known to be absent.
    pub fn absent(&self) -> Vec<&str> {
        self.presence()
            .filter(|(_, p)| *p == Some(false))
            .map(|(n, _)| n)
            .collect()
    }

    fn report(&mut self, by: Option<&Writer>) -> Vec<Change> {
        let Some(counts) = &self.counts else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let now = counts[i] > 0;
            if self.present[i] != Some(now) {
                out.push(Change {
                    anchor: name.clone(),
                    present: now,
                    first: self.present[i].is_none(),
                    by: by.cloned(),
                });
                self.present[i] = Some(now);
            }
        }
        out
    }

    /// The chain as read: exact counts. Changes found this way have no known writer.
    pub fn on_read(&mut self, snap: &Snapshot) -> Vec<Change> {
        self.counts = Some(
            self.names
                .iter()
                .map(|n| {
                    snap.rules
                        .iter()
                        .filter(|r| r.target() == Some(n.as_str()))
                        .count()
                })
                .collect(),
        );
        self.report(None)
    }

    /// A foreign commit by `writer` touched the chain (`touched`: what it did there, or
    /// to its whole table).
    pub fn on_commit(&mut self, touched: &[&Touched], writer: &Writer) -> Vec<Change> {
        let Some(counts) = self.counts.as_mut() else {
            return Vec::new();
        };
        for t in touched {
            if t.chain.is_none() {
                // The whole table was deleted.
                counts.iter_mut().for_each(|c| *c = 0);
                continue;
            }
            for (i, name) in self.names.iter().enumerate() {
                let added = t.added.iter().filter(|a| *a == name).count();
                let removed = t.removed.iter().filter(|a| *a == name).count();
                counts[i] = (counts[i] + added).saturating_sub(removed);
            }
        }
        self.report(Some(writer))
    }

    /// Notifications were lost: nothing is known until the next read.
    pub fn forget(&mut self) {
        self.counts = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{Family, Rule, Verdict};
    use crate::spec::Config;

    fn spec() -> ChainSpec {
        Config::from_toml(include_str!("../../testdata/harvester.toml"))
            .unwrap()
            .chains()[0]
            .clone()
    }

    fn rule(target: &str) -> Rule {
        Rule {
            handle: 1,
            comment: None,
            matches: Vec::new(),
            counters: None,
            verdict: Verdict::Jump(target.into()),
        }
    }

    fn snap(targets: &[&str]) -> Snapshot {
        Snapshot {
            family: Family::Ip,
            table: "nat".into(),
            chain: "PREROUTING".into(),
            generation: 1,
            table_exists: true,
            chain_exists: true,
            rules: targets.iter().map(|t| rule(t)).collect(),
        }
    }

    fn writer() -> Writer {
        Writer {
            pid: Some(77),
            name: Some("iptables".into()),
            ..Writer::default()
        }
    }

    fn touched(added: &[&str], removed: &[&str]) -> Touched {
        let mut t = Touched::new(Family::Ip, "nat", Some("PREROUTING"));
        t.added = added.iter().map(|s| s.to_string()).collect();
        t.removed = removed.iter().map(|s| s.to_string()).collect();
        t
    }

    #[test]
    fn a_removal_is_seen_in_the_notification_with_its_writer_and_confirmed_by_a_read() {
        let mut a = Anchors::new(&spec());
        assert_eq!(
            a.names(),
            ["cali-PREROUTING", "KUBE-SERVICES", "CNI-HOSTPORT-DNAT"]
        );
        // Before the first read nothing is known, nothing is said.
        assert!(a
            .on_commit(&[&touched(&[], &["KUBE-SERVICES"])], &writer())
            .is_empty());
        let first = a.on_read(&snap(&[
            "cali-PREROUTING",
            "OVN-PREROUTING",
            "KUBE-SERVICES",
        ]));
        assert_eq!(first.len(), 3);
        assert!(first.iter().all(|c| c.first && c.by.is_none()));
        assert_eq!(a.absent(), ["CNI-HOSTPORT-DNAT"]);
        // A duplicate of kube-proxy's jump added, then one removed: still present.
        assert!(a
            .on_commit(&[&touched(&["KUBE-SERVICES"], &[])], &writer())
            .is_empty());
        assert!(a
            .on_commit(&[&touched(&[], &["KUBE-SERVICES"])], &writer())
            .is_empty());
        // The last one removed: said once, with the writer.
        let gone = a.on_commit(
            &[&touched(&["OVN-PREROUTING"], &["KUBE-SERVICES"])],
            &writer(),
        );
        assert_eq!(
            gone,
            [Change {
                anchor: "KUBE-SERVICES".into(),
                present: false,
                first: false,
                by: Some(writer()),
            }]
        );
        let (level, text) = gone[0].message(true).unwrap();
        assert_eq!(level, Level::WARN);
        assert!(
            text.starts_with("anchor KUBE-SERVICES is gone: the last rule jumping to it was removed by pid 77 (iptables)"),
            "{text}"
        );
        assert!(text.contains("does not write it back"), "{text}");
        // The read agrees: nothing new.
        assert!(a
            .on_read(&snap(&["cali-PREROUTING", "OVN-PREROUTING"]))
            .is_empty());
        // portmap's jump appears.
        let back = a.on_commit(&[&touched(&["CNI-HOSTPORT-DNAT"], &[])], &writer());
        assert_eq!(back.len(), 1);
        assert!(back[0].present && back[0].anchor == "CNI-HOSTPORT-DNAT");
    }

    #[test]
    fn a_table_deletion_removes_them_all_and_lost_notifications_wait_for_a_read() {
        let mut a = Anchors::new(&spec());
        a.on_read(&snap(&[
            "cali-PREROUTING",
            "KUBE-SERVICES",
            "CNI-HOSTPORT-DNAT",
        ]));
        let t = Touched::new(Family::Ip, "nat", None);
        let gone = a.on_commit(&[&t], &writer());
        assert_eq!(gone.len(), 3);
        assert!(gone.iter().all(|c| !c.present && c.by.is_some()));
        a.on_read(&snap(&[
            "cali-PREROUTING",
            "KUBE-SERVICES",
            "CNI-HOSTPORT-DNAT",
        ]));
        a.forget();
        assert!(a
            .on_commit(&[&touched(&[], &["KUBE-SERVICES"])], &writer())
            .is_empty());
        // Found by the next read, with no writer to name.
        let found = a.on_read(&snap(&["cali-PREROUTING", "CNI-HOSTPORT-DNAT"]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].by, None);
        assert!(!found[0].present && !found[0].first);
        assert!(found[0]
            .message(false)
            .unwrap()
            .1
            .contains("x_tables sends no change notifications"));
    }
}
