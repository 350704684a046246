//! nf_tables change notifications (NFNLGRP_NFTABLES) and what the daemon makes of them.
//!
//! Per committed batch the kernel multicasts one message per changed object (NEWRULE,
//! DELRULE, DELCHAIN, DELTABLE, ...) and then one NEWGEN carrying the new generation and
//! the committing task's pid and comm; every message of a batch carries, as `nlmsg_pid`,
//! the port id of the socket that sent it (reference C.2, C.3). The [`Classifier`] is pure:
//! it collects, per port id, which watched chains a batch touched and hands out one
//! [`Commit`] when that batch's NEWGEN arrives. Telling our own commits from others' is the
//! caller's business: it compares [`Commit::portid`] with the port id of the socket it
//! commits from (not this one's: the monitor never writes).
//!
//! [`Monitor`] is the socket: subscribed to group 7, with a large receive buffer
//! (SO_RCVBUFFORCE), non-blocking under tokio. When the queue overflows, `recv` fails
//! with ENOBUFS and the caller re-reads everything (reference C.4).

use super::fight::Writer;
use crate::backend::nft::codec::{Body, Message};
use crate::snapshot::agent_of;
use netlink_sys::{protocols::NETLINK_NETFILTER, AsyncSocket, AsyncSocketExt, TokioSocket};
use std::collections::{BTreeSet, HashMap};
use std::io;

/// The nf_tables multicast group.
pub const NFNLGRP_NFTABLES: u32 = 7;
/// Room for one notification datagram (a rule notification is a few hundred bytes; the
/// kernel never sends one larger than a page plus its headers, but be generous).
const RECV_BUF: usize = 64 * 1024;

/// A watched chain: (nfgen family, table, chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
    pub nfproto: u8,
    /// Table name.
    pub table: String,
    /// Chain name.
    pub chain: String,
}

/// A committed batch that touched watched chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Port id of the socket that sent the batch.
    pub portid: u32,
    /// The generation the commit produced.
    pub generation: u32,
    /// Who committed (NEWGEN's pid and comm) and whose rules the batch touched.
    pub writer: Writer,
    /// Indices (into the watch list) of the chains it touched.
    pub targets: Vec<usize>,
}

#[derive(Debug, Default)]
struct Pending {
    targets: BTreeSet<usize>,
    agents: Vec<&'static str>,
}

/// Turns notification messages into [`Commit`]s touching the watched chains.
#[derive(Debug)]
pub struct Classifier {
    watch: Vec<Watched>,
    pending: HashMap<u32, Pending>,
}

impl Classifier {
    /// Watch these chains; a commit's `targets` index into this list.
    pub fn new(watch: Vec<Watched>) -> Self {
        Classifier {
            watch,
            pending: HashMap::new(),
        }
    }

    /// Forget half-seen batches (after an overflow: their NEWGEN may be lost).
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    fn touch(&mut self, portid: u32, hit: impl Fn(&Watched) -> bool, agent: Option<&'static str>) {
        let idx: Vec<usize> = (0..self.watch.len())
            .filter(|&i| hit(&self.watch[i]))
            .collect();
        if idx.is_empty() {
            return;
        }
        let p = self.pending.entry(portid).or_default();
        p.targets.extend(idx);
        if let Some(a) = agent.filter(|a| *a != "unknown") {
            if !p.agents.contains(&a) {
                p.agents.push(a);
            }
        }
    }

    /// Feed one message; returns the commit when `m` is the NEWGEN closing a batch that
    /// touched a watched chain.
    pub fn feed(&mut self, m: &Message) -> Option<Commit> {
        let fam = m.family;
        match &m.body {
            Body::NewRule(r) | Body::DelRule(r) => {
                let agent = agent_of(&r.rule);
                self.touch(
                    m.portid,
                    |w| {
                        w.nfproto == fam
                            && w.table.as_bytes() == r.table()
                            && w.chain.as_bytes() == r.chain()
                    },
                    Some(agent),
                );
                None
            }
            Body::DelChain(c) => {
                self.touch(
                    m.portid,
                    |w| w.nfproto == fam && w.table == c.table && w.chain == c.name,
                    None,
                );
                None
            }
            Body::DelTable(t) => {
                self.touch(m.portid, |w| w.nfproto == fam && w.table == t.name, None);
                None
            }
            Body::Gen(g) => {
                let p = self.pending.remove(&m.portid)?;
                Some(Commit {
                    portid: m.portid,
                    generation: g.id,
                    writer: Writer {
                        pid: g.proc_pid,
                        name: g.proc_name.clone(),
                        agents: p.agents,
                    },
                    targets: p.targets.into_iter().collect(),
                })
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
        encode_rule, parse, Batch, ChainInfo, GenInfo, Position, RuleMsg, TableInfo, NFPROTO_IPV4,
        NFPROTO_IPV6,
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

    fn watch() -> Vec<Watched> {
        vec![
            Watched {
                nfproto: NFPROTO_IPV4,
                table: "nat".into(),
                chain: "PREROUTING".into(),
            },
            Watched {
                nfproto: NFPROTO_IPV6,
                table: "nat".into(),
                chain: "PREROUTING".into(),
            },
        ]
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
                proc_name: Some(name.into()),
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
        let mut c = Classifier::new(watch());
        for m in &rule_msgs {
            assert!(c.feed(m).is_none(), "nothing before the NEWGEN");
        }
        let commit = c.feed(&g).expect("a commit touching ip nat PREROUTING");
        assert_eq!(commit.targets, vec![0]);
        assert_eq!(commit.writer.name.as_deref(), Some("iptables-nft"));
        assert!(commit.writer.pid.is_some());
        assert_eq!(commit.portid, rule_msgs[1].portid);

        // A batch that only created the table and a user chain touches nothing watched.
        let mut c = Classifier::new(watch());
        let msgs = parse(fixture!("rx_notify_newtable_userchain")).unwrap();
        for m in &msgs {
            assert!(c.feed(m).is_none());
        }
        let mut g2 = g.clone();
        g2.portid = msgs[0].portid;
        assert!(c.feed(&g2).is_none());
    }

    #[test]
    fn other_tables_chains_and_families_are_ignored() {
        let mut c = Classifier::new(watch());
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
        assert!(c.feed(&gen(9, 3, "kube-proxy")).is_none());
    }

    #[test]
    fn commits_are_kept_apart_by_port_id_and_deletions_count() {
        let mut c = Classifier::new(watch());
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
        assert_eq!(
            (a.portid, a.targets.clone(), a.generation),
            (2, vec![0], 10)
        );
        let b = c.feed(&gen(1, 11, "b")).unwrap();
        assert_eq!(b.targets, vec![1]);
        let d = c.feed(&gen(3, 12, "nft")).unwrap();
        assert_eq!(d.targets, vec![0]);
        assert!(c.feed(&gen(3, 13, "nft")).is_none(), "consumed");
    }

    #[test]
    fn the_agent_whose_rule_moved_is_named() {
        let msgs = parse(fixture!("rx_notify_insert_before")).unwrap();
        let mut c = Classifier::new(watch());
        for m in &msgs {
            c.feed(m);
        }
        let commit = c.feed(&gen(msgs[0].portid, 4, "iptables-nft")).unwrap();
        // That capture inserts `-g KUBE-SERVICES`.
        assert_eq!(commit.writer.agents, vec!["kube-proxy"]);
        c.reset();
        assert!(c.feed(&gen(msgs[0].portid, 5, "x")).is_none());
    }
}
