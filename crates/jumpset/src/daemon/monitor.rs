//! nf_tables change notifications (NFNLGRP_NFTABLES), decoded into [`Commit`]s.
//!
//! Per committed batch the kernel multicasts one message per changed object (NEWRULE,
//! DELRULE, DELCHAIN, DELTABLE, ...) and then one NEWGEN carrying the new generation and
//! the committing task's pid and comm; every message of a batch carries, as `nlmsg_pid`,
//! the port id of the socket that sent it. The [`Classifier`] is pure: it collects, per
//! port id, which ip/ip6 chains a batch touched (and whose rules moved there) and hands
//! out one [`Commit`] when that batch's NEWGEN arrives. Which chains matter, and telling
//! our own commits from others' (by the port id of the socket we commit from, not this
//! one's: the monitor never writes), is the engine's business.
//!
//! [`Monitor`] is the socket: subscribed to group 7, with a large receive buffer
//! (SO_RCVBUFFORCE), non-blocking under tokio. When the queue overflows, `recv` fails
//! with ENOBUFS and the caller re-reads everything.

use crate::backend::nft::codec::{Body, Message, NFPROTO_IPV4, NFPROTO_IPV6};
use crate::notification::Commit;
use crate::snapshot::{agent_of, Family, Rule};
use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};
use std::collections::HashMap;
use std::io;

/// The nf_tables multicast group.
pub const NFNLGRP_NFTABLES: u32 = 7;
/// Room for one notification datagram (a rule notification is a few hundred bytes; the
/// kernel never sends one larger than a page plus its headers, but be generous).
const RECV_BUF: usize = 64 * 1024;

/// Turns notification messages into [`Commit`]s touching ip/ip6 chains.
#[derive(Debug, Default)]
pub struct Classifier {
    /// Batches seen in part, by port id: what they touched so far.
    pending: HashMap<u32, Pending>,
}

/// A batch in progress, with an index of what it touched (a kube-proxy restore touches
/// thousands of chains in one batch).
#[derive(Debug)]
struct Pending {
    commit: Commit,
    index: HashMap<(Family, String, Option<String>), usize>,
}

fn family(nfproto: u8) -> Option<Family> {
    match nfproto {
        NFPROTO_IPV4 => Some(Family::Ip),
        NFPROTO_IPV6 => Some(Family::Ip6),
        _ => None,
    }
}

impl Classifier {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Classifier::default()
    }

    /// Forget half-seen batches (after an overflow: their NEWGEN may be lost).
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    fn touch(
        &mut self,
        m: &Message<'_>,
        table: &str,
        chain: Option<&str>,
        rule: Option<(&Rule, bool)>,
    ) {
        self.touch_as(m, table, chain, rule, false)
    }

    fn touch_as(
        &mut self,
        m: &Message<'_>,
        table: &str,
        chain: Option<&str>,
        rule: Option<(&Rule, bool)>,
        chain_changed: bool,
    ) {
        let Some(fam) = family(m.family) else {
            return;
        };
        let p = self.pending.entry(m.portid).or_insert_with(|| Pending {
            commit: Commit::new(0, m.portid, None, None),
            index: HashMap::new(),
        });
        let key = (fam, table.to_string(), chain.map(str::to_string));
        let i = match p.index.get(&key) {
            Some(&i) => i,
            None => {
                p.commit.touch(fam, table, chain, None);
                let i = p.commit.touched.len() - 1;
                p.index.insert(key, i);
                i
            }
        };
        p.commit.touched[i].chain_changed |= chain_changed;
        let Some((rule, added)) = rule else {
            return;
        };
        let t = &mut p.commit.touched[i];
        let a = agent_of(rule);
        if a != "unknown" && !t.agents.contains(&a) {
            t.agents.push(a);
        }
        if let Some(target) = rule.target() {
            if added {
                t.added.push(target.to_string());
            } else {
                t.removed.push(target.to_string());
            }
        }
    }

    /// Feed one message; returns the commit when `m` is the NEWGEN closing a batch that
    /// touched an ip/ip6 chain.
    pub fn feed(&mut self, m: &Message<'_>) -> Option<Commit> {
        match &m.body {
            Body::NewRule(r) | Body::DelRule(r) => {
                let added = matches!(m.body, Body::NewRule(_));
                let table = String::from_utf8_lossy(r.table());
                let chain = String::from_utf8_lossy(r.chain());
                self.touch(m, &table, Some(&chain), Some((&r.rule, added)));
                None
            }
            // A new chain: created, or renamed (nf_tables announces a rename as the chain
            // under its new name); a jump to it may now lead elsewhere.
            Body::NewChain(c) | Body::DelChain(c) => {
                self.touch_as(m, &c.table, Some(&c.name), None, true);
                None
            }
            Body::DelTable(t) => {
                self.touch(m, &t.name, None, None);
                None
            }
            Body::Gen(g) => {
                let mut c = self.pending.remove(&m.portid)?.commit;
                c.generation = g.id;
                c.pid = g.proc_pid;
                c.comm = g.proc_name.as_deref().map(str::to_owned);
                Some(c)
            }
            _ => None,
        }
    }
}

/// Why a receive failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// ENOBUFS: notifications were dropped; the local view is unknown.
    #[error("the notification queue overflowed (ENOBUFS): notifications were lost")]
    Overflow,
    /// Any other socket error.
    #[error("receiving nf_tables notifications: {0}")]
    Io(io::Error),
}

fn classify(e: io::Error) -> RecvError {
    if e.raw_os_error() == Some(libc::ENOBUFS) {
        RecvError::Overflow
    } else {
        RecvError::Io(e)
    }
}

/// A NETLINK_NETFILTER socket subscribed to NFNLGRP_NFTABLES, in the network namespace
/// of the thread that opened it. Must be opened inside a tokio runtime.
pub struct Monitor {
    sock: TokioSocket,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").finish_non_exhaustive()
    }
}

impl Monitor {
    /// Open, size the receive buffer (`rcvbuf` bytes, forced: needs CAP_NET_ADMIN, as
    /// does the subscription itself), subscribe.
    pub fn open(rcvbuf: usize) -> io::Result<Self> {
        let mut sock = TokioSocket::new(NETLINK_NETFILTER)?;
        sock.socket_mut().bind_auto()?;
        crate::backend::nft::sys::set_recv_buffer(sock.socket_ref(), rcvbuf)?;
        sock.socket_ref().add_membership(NFNLGRP_NFTABLES)?;
        Ok(Monitor { sock })
    }

    /// The receive buffer the kernel granted (SO_RCVBUF reads back twice the request).
    pub fn rcvbuf(&self) -> usize {
        self.sock.socket_ref().get_rx_buf_sz().unwrap_or(0)
    }

    /// Wait for the next datagram. Cancel-safe: nothing is consumed until it returns.
    pub async fn next(&self) -> Result<Vec<u8>, RecvError> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        self.sock.recv(&mut buf).await.map_err(classify)?;
        Ok(buf)
    }

    /// The next queued datagram, without waiting (`None`: the queue is empty).
    pub fn try_next(&self) -> Option<Result<Vec<u8>, RecvError>> {
        let mut buf = Vec::with_capacity(RECV_BUF);
        match self.sock.socket_ref().recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => Some(Ok(buf)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(classify(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nft::codec::{
        encode_rule, parse, Batch, ChainInfo, GenInfo, Position, RuleMsg, TableInfo,
    };
    use crate::snapshot::Verdict;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/nft/",
                $name,
                ".bin"
            ))
            .as_slice()
        };
    }

    /// (chain or `*` for a whole table, agents) of each touched ip/ip6 chain.
    fn touched(c: &Commit) -> Vec<(Family, String, String, Vec<&'static str>)> {
        c.touched
            .iter()
            .map(|t| {
                (
                    t.family,
                    t.table.clone(),
                    t.chain.clone().unwrap_or_else(|| "*".into()),
                    t.agents.clone(),
                )
            })
            .collect()
    }

    fn ip_nat_prerouting(c: &Commit) -> bool {
        c.touched
            .iter()
            .any(|t| t.covers(Family::Ip, "nat", "PREROUTING"))
    }

    fn msg(portid: u32, family: u8, body: Body<'_>) -> Message<'_> {
        Message {
            ty: 0,
            flags: 0,
            seq: 1,
            portid,
            family,
            res_id: 0,
            body,
        }
    }

    fn gen(portid: u32, id: u32, name: &str) -> Message<'static> {
        msg(
            portid,
            0,
            Body::Gen(GenInfo {
                id,
                proc_pid: Some(77),
                proc_name: Some(name.to_owned().into()),
            }),
        )
    }

    /// A rule message of `table` `chain` as a notification would carry it.
    fn rule(table: &str, chain: &str) -> Vec<u8> {
        let mut b = Batch::begin(1, 1);
        let rule = encode_rule(None, &[], &Verdict::Accept);
        b.new_rule(NFPROTO_IPV4, table, chain, &rule, Position::Append);
        let (bytes, _) = b.end();
        // NEWRULE (the second message), as the kernel sends it: with a handle.
        let len = |m: &[u8]| u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize;
        let at = len(&bytes);
        let mut m = bytes[at..at + len(&bytes[at..])].to_vec();
        m.extend_from_slice(&[12, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        let n = m.len() as u32;
        m[..4].copy_from_slice(&n.to_ne_bytes());
        m
    }

    /// The rule of a message made by [`rule`].
    fn rule_body(m: &[u8]) -> RuleMsg<'_> {
        let Body::NewRule(r) = parse(m).unwrap().remove(0).body else {
            panic!()
        };
        r
    }

    #[test]
    fn real_iptables_nft_notifications_make_one_commit_naming_the_writer() {
        // Captured from a listener while iptables-nft ran (see capture.sh): the base chain
        // and the rule of `-A PREROUTING ...`, and a NEWGEN of iptables-nft. The captures
        // come from different batches, so the NEWGEN is given the rule's port id.
        let rule_msgs = parse(fixture!("rx_notify_basechain_rule")).unwrap();
        let mut g = parse(fixture!("rx_notify_newgen")).unwrap().remove(0);
        g.portid = rule_msgs[1].portid;
        let mut c = Classifier::new();
        for m in &rule_msgs {
            assert!(c.feed(m).is_none(), "nothing before the NEWGEN");
        }
        let commit = c.feed(&g).expect("a commit touching ip nat PREROUTING");
        assert!(ip_nat_prerouting(&commit), "{commit:?}");
        assert_eq!(commit.touched.len(), 1, "{commit:?}");
        assert_eq!(commit.comm.as_deref(), Some("iptables-nft"));
        assert!(commit.pid.is_some());
        assert_eq!(commit.portid, rule_msgs[1].portid);
        let Body::Gen(newgen) = &g.body else {
            panic!("not a NEWGEN: {g:?}")
        };
        assert_eq!(commit.generation, newgen.id);

        // A batch that only created the table and a user chain touches no chain's rules,
        // but names the chain it created: a jump to that name may now lead elsewhere.
        let mut c = Classifier::new();
        let msgs = parse(fixture!("rx_notify_newtable_userchain")).unwrap();
        for m in &msgs {
            assert!(c.feed(m).is_none());
        }
        let mut g2 = g.clone();
        g2.portid = msgs[0].portid;
        let commit = c.feed(&g2).expect("a chain was created");
        assert_eq!(commit.touched.len(), 1, "{commit:?}");
        assert!(commit.touched[0].chain_changed && commit.touched[0].agents.is_empty());
        assert!(!ip_nat_prerouting(&commit), "{commit:?}");
    }

    #[test]
    fn a_renamed_chain_is_a_change_of_its_table() {
        // `nft rename chain ip nat OVN-PREROUTING X` is announced as NEWCHAIN X.
        let mut c = Classifier::new();
        c.feed(&msg(
            4,
            NFPROTO_IPV4,
            Body::NewChain(ChainInfo {
                table: "nat".into(),
                name: "X".into(),
                handle: 4,
                hook: None,
                policy: None,
                chain_type: None,
                flags: 0,
            }),
        ));
        let commit = c.feed(&gen(4, 9, "nft")).unwrap();
        assert_eq!(
            touched(&commit),
            [(Family::Ip, "nat".into(), "X".into(), vec![])]
        );
        assert!(commit.touched[0].chain_changed);
    }

    #[test]
    fn only_ip_and_ip6_chains_count_and_each_is_named() {
        let mut c = Classifier::new();
        let (filter, output) = (rule("filter", "PREROUTING"), rule("nat", "OUTPUT"));
        let prerouting = rule("nat", "PREROUTING");
        for m in [
            msg(9, NFPROTO_IPV4, Body::NewRule(rule_body(&filter))),
            msg(9, NFPROTO_IPV4, Body::NewRule(rule_body(&output))),
            msg(9, 1 /* inet */, Body::NewRule(rule_body(&prerouting))),
            msg(
                9,
                NFPROTO_IPV4,
                Body::NewTable(TableInfo {
                    name: "nat".into(),
                    flags: 0,
                    handle: 1,
                }),
            ),
        ] {
            assert!(c.feed(&m).is_none());
        }
        let commit = c.feed(&gen(9, 3, "kube-proxy")).unwrap();
        assert_eq!(
            touched(&commit),
            [
                (Family::Ip, "filter".into(), "PREROUTING".into(), vec![]),
                (Family::Ip, "nat".into(), "OUTPUT".into(), vec![]),
            ]
        );
        assert!(
            !ip_nat_prerouting(&commit),
            "inet nat PREROUTING is not ip's"
        );
        // A batch of nothing but a new table: no commit.
        c.feed(&msg(
            5,
            NFPROTO_IPV4,
            Body::NewTable(TableInfo {
                name: "nat".into(),
                flags: 0,
                handle: 1,
            }),
        ));
        assert!(c.feed(&gen(5, 4, "nft")).is_none());
    }

    #[test]
    fn commits_are_kept_apart_by_port_id_and_deletions_count() {
        let mut c = Classifier::new();
        let del_chain = Body::DelChain(ChainInfo {
            table: "nat".into(),
            name: "PREROUTING".into(),
            handle: 1,
            hook: None,
            policy: None,
            chain_type: None,
            flags: 0,
        });
        c.feed(&msg(1, NFPROTO_IPV6, del_chain));
        let prerouting = rule("nat", "PREROUTING");
        c.feed(&msg(2, NFPROTO_IPV4, Body::DelRule(rule_body(&prerouting))));
        c.feed(&msg(
            3,
            NFPROTO_IPV4,
            Body::DelTable(TableInfo {
                name: "nat".into(),
                flags: 0,
                handle: 1,
            }),
        ));
        let a = c.feed(&gen(2, 10, "a")).unwrap();
        assert_eq!((a.portid, a.generation), (2, 10));
        assert_eq!(
            touched(&a),
            [(Family::Ip, "nat".into(), "PREROUTING".into(), vec![])]
        );
        let b = c.feed(&gen(1, 11, "b")).unwrap();
        assert_eq!(
            touched(&b),
            [(Family::Ip6, "nat".into(), "PREROUTING".into(), vec![])]
        );
        let d = c.feed(&gen(3, 12, "nft")).unwrap();
        assert_eq!(
            touched(&d),
            [(Family::Ip, "nat".into(), "*".into(), vec![])]
        );
        assert!(ip_nat_prerouting(&d), "a table deletion covers its chains");
        assert!(c.feed(&gen(3, 13, "nft")).is_none(), "consumed");
    }

    #[test]
    fn the_agent_whose_rule_moved_is_named() {
        let msgs = parse(fixture!("rx_notify_insert_before")).unwrap();
        let mut c = Classifier::new();
        for m in &msgs {
            c.feed(m);
        }
        let commit = c.feed(&gen(msgs[0].portid, 4, "iptables-nft")).unwrap();
        // That capture inserts `-g KUBE-SERVICES`.
        assert_eq!(
            touched(&commit),
            [(
                Family::Ip,
                "nat".into(),
                "PREROUTING".into(),
                vec!["kube-proxy"]
            )]
        );
        assert_eq!(commit.touched[0].added, ["KUBE-SERVICES"]);
        assert!(commit.touched[0].removed.is_empty());
        c.reset();
        assert!(c.feed(&gen(msgs[0].portid, 5, "x")).is_none());
    }

    #[test]
    fn a_batch_over_thousands_of_chains_names_each_once() {
        // As a kube-proxy restore: every chain written twice in one batch.
        let mut c = Classifier::new();
        let chains: Vec<Vec<u8>> = (0..1000)
            .map(|i| rule("nat", &format!("KUBE-SVC-{i}")))
            .collect();
        for _round in 0..2 {
            for r in &chains {
                c.feed(&msg(3, NFPROTO_IPV4, Body::NewRule(rule_body(r))));
            }
        }
        let prerouting = rule("nat", "PREROUTING");
        c.feed(&msg(3, NFPROTO_IPV4, Body::DelRule(rule_body(&prerouting))));
        let commit = c.feed(&gen(3, 9, "iptables-nft-re")).unwrap();
        assert_eq!(commit.touched.len(), 1001);
        assert_eq!(commit.touched[999].chain.as_deref(), Some("KUBE-SVC-999"));
        assert!(ip_nat_prerouting(&commit));
    }
}
