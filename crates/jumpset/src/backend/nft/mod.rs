//! nf_tables over netlink: the backend for iptables-nft hosts.
//!
//! A read is one `sendmsg` holding GETGEN and a GETRULE dump of the chain; every dumped
//! rule carries the low 16 bits of the generation it was dumped at, so a dump that raced
//! a commit is detected and re-read, and names the rule dumped before it, so a dump torn
//! by a change of the chain between its parts, or by another process's transaction in
//! flight (either shifts the kernel's resume index), is re-read too. The generation is
//! global: beside an agent committing elsewhere many times a second, every dump of a long
//! chain races a commit. So when the second dump races too but is not torn, it is taken
//! with generation 0: the chain is whole, no write can be guarded by it (one is refused
//! as stale before it is sent), and one anchored on its handles is read back. A write is one batch — BEGIN carrying the
//! generation the plan was made from, then NEWTABLE/NEWCHAIN (only when missing, exactly as
//! iptables-nft creates them), DELRULEs by handle and NEWRULEs before a kept handle or
//! appended, then END with an ACK request. The kernel holds its commit mutex from the
//! generation check to the commit, so a concurrent writer makes the batch fail with
//! ERESTART and nothing is applied. Success is the END ack and nothing else.

pub mod codec;
pub(crate) mod sys;

use super::{Applied, Backend, BackendError};
use crate::iptables;
use crate::plan::{Op, Plan};
use crate::snapshot::{Family, Rule, Snapshot, Verdict};
use crate::spec::ChainSpec;
use codec::{Batch, Body, Message, Position};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use std::time::Duration;

const ENOENT: i32 = 2;
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ERESTART: i32 = 85;
/// Receive buffer for one datagram: the kernel fills dump parts up to ~32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// `NLM_F_DUMP_INTR`: the dump raced a change.
const NLM_F_DUMP_INTR: u16 = 0x10;
/// How many times a read that raced a commit is retried.
const READ_RETRIES: usize = 16;
/// Dumps that raced a commit (but are not torn) re-read before one is taken with
/// generation 0.
const STRICT_READS: usize = 1;

/// Expressions iptables-nft can turn back into iptables rules (`nft.c`,
/// `nft_is_expr_compatible`), besides match/target/counter/immediate, which the codec
/// decodes itself. A rule holding any other expression makes its table "incompatible".
const IPTABLES_EXPRS: &[&[u8]] = &[
    b"payload", b"meta", b"cmp", b"bitwise", b"lookup", b"range", b"limit", b"log",
];

/// What nf_tables holds (see [`NftBackend::census`]).
#[derive(Debug, Clone, Default)]
pub struct NftCensus {
    /// Every table: (nfgen family, name).
    pub tables: Vec<(u8, String)>,
    /// The iptables tables of ip and ip6, counted.
    pub iptables: Vec<(Family, crate::snapshot::TableCensus)>,
}

/// Every nf_tables table, chain and rule count at one generation (see
/// [`NftBackend::overview`]).
#[derive(Debug, Clone, Default)]
pub struct NftOverview {
    /// The generation the dumps were taken at.
    pub generation: u32,
    /// Every table: (nfgen family, table).
    pub tables: Vec<(u8, codec::TableInfo)>,
    /// Every chain: (nfgen family, chain, the number of rules in it).
    pub chains: Vec<(u8, codec::ChainInfo, usize)>,
}

/// The name `nft` uses for an nfgen family.
pub fn family_name(f: u8) -> String {
    match f {
        1 => "inet".into(),
        2 => "ip".into(),
        3 => "arp".into(),
        5 => "netdev".into(),
        7 => "bridge".into(),
        10 => "ip6".into(),
        other => format!("family {other}"),
    }
}

/// The `nfgen_family` of an address family.
pub fn nfproto(family: Family) -> u8 {
    match family {
        Family::Ip => codec::NFPROTO_IPV4,
        Family::Ip6 => codec::NFPROTO_IPV6,
    }
}

/// A netlink socket to nf_tables in the network namespace of the thread that opened it.
pub struct NftBackend {
    sock: Socket,
    portid: u32,
    seq: u32,
    buf: Vec<u8>,
    allow_mixed: bool,
}

fn io_err(step: &str) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
    move |source| {
        if matches!(source.raw_os_error(), Some(EPERM) | Some(EACCES)) {
            BackendError::Permission {
                step: step.to_string(),
                capability: "CAP_NET_ADMIN",
            }
        } else {
            BackendError::Io {
                step: step.to_string(),
                source,
            }
        }
    }
}

fn kernel_err(step: String, errno: i32, ext: Option<String>) -> BackendError {
    if errno == EPERM || errno == EACCES {
        return BackendError::Permission {
            step,
            capability: "CAP_NET_ADMIN",
        };
    }
    let mut message = std::io::Error::from_raw_os_error(errno).to_string();
    if let Some(m) = ext {
        message = format!("{m} ({message})");
    }
    BackendError::Kernel {
        step,
        errno,
        message,
    }
}

/// Decode one received datagram.
fn decode<'b>(buf: &'b [u8], step: &str) -> Result<Vec<Message<'b>>, BackendError> {
    codec::parse(buf).map_err(|source| BackendError::Decode {
        step: step.to_string(),
        source,
    })
}

impl NftBackend {
    /// Open and bind a NETLINK_NETFILTER socket (the kernel assigns the port id).
    pub fn open() -> Result<Self, BackendError> {
        let step = "opening the nf_tables netlink socket";
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(io_err(step))?;
        let addr = sock.bind_auto().map_err(io_err(step))?;
        // Extended acks name what the kernel disliked; capped acks keep errors small.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        sys::set_recv_timeout(&sock, Duration::from_secs(10)).map_err(io_err(step))?;
        Ok(NftBackend {
            sock,
            portid: addr.port_number(),
            seq: 1,
            buf: Vec::with_capacity(RECV_BUF),
            allow_mixed: false,
        })
    }

    /// Whether this backend may create the first nf_tables iptables table of a family
    /// while iptables-legacy is in use for it (default: refused, [`BackendError::WouldMix`]).
    #[must_use]
    pub fn allow_mixed(mut self, allow: bool) -> Self {
        self.allow_mixed = allow;
        self
    }

    /// The socket's netlink port id: the `nlmsg_pid` of notifications about our commits.
    pub fn portid(&self) -> u32 {
        self.portid
    }

    fn take_seq(&mut self, n: u32) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n).max(1);
        s
    }

    fn send(&self, bytes: &[u8], step: &str) -> Result<(), BackendError> {
        self.sock.send(bytes, 0).map_err(io_err(step))?;
        Ok(())
    }

    /// Receive one datagram; `Ok(None)` when `nonblocking` and nothing is queued.
    fn recv(
        &mut self,
        step: &str,
        nonblocking: bool,
    ) -> Result<Option<Vec<Message<'_>>>, BackendError> {
        if !self.recv_bytes(step, nonblocking)? {
            return Ok(None);
        }
        decode(&self.buf, step).map(Some)
    }

    /// Receive one datagram into `self.buf`, undecoded; `Ok(false)` when `nonblocking`
    /// and nothing is queued.
    fn recv_bytes(&mut self, step: &str, nonblocking: bool) -> Result<bool, BackendError> {
        self.buf.clear();
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        match self.sock.recv(&mut self.buf, flags) {
            Ok(n) if n > self.buf.len() => Err(BackendError::Io {
                step: step.to_string(),
                source: std::io::Error::other(format!(
                    "a {n}-byte datagram did not fit the {RECV_BUF}-byte buffer"
                )),
            }),
            Ok(_) => Ok(true),
            Err(e) if nonblocking && e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(BackendError::Io {
                step: step.to_string(),
                source: std::io::Error::other("the kernel did not answer within 10 s"),
            }),
            Err(e) => Err(io_err(step)(e)),
        }
    }

    /// Send one request and hand every reply with seq `first..=last` to `each`, until
    /// it says the exchange is complete.
    fn exchange(
        &mut self,
        req: &[u8],
        seqs: std::ops::RangeInclusive<u32>,
        step: &str,
        mut each: impl FnMut(Message<'_>) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        self.send(req, step)?;
        let me = self.portid;
        loop {
            let msgs = self.recv(step, false)?.unwrap_or_default();
            for m in msgs {
                if (m.portid != me && m.portid != 0) || !seqs.contains(&m.seq) {
                    continue; // not a reply to this request
                }
                if each(m)? {
                    return Ok(());
                }
            }
        }
    }

    /// Whether `table` and `table`/`chain` exist (GETCHAIN, then GETTABLE on ENOENT).
    fn exists(&mut self, fam: u8, table: &str, chain: &str) -> Result<(bool, bool), BackendError> {
        if self.chain_exists(fam, table, chain)? {
            return Ok((true, true));
        }
        let seq = self.take_seq(1);
        let step = format!("looking up table {table}");
        let mut found = false;
        self.exchange(
            &codec::get_table(fam, table, seq),
            seq..=seq,
            &step,
            |m| match m.body {
                Body::NewTable(_) => {
                    found = true;
                    Ok(false)
                }
                Body::Error { code: 0, .. } => Ok(true),
                Body::Error { code, .. } if -code == ENOENT => Ok(true),
                Body::Error { code, msg, .. } => Err(kernel_err(step.clone(), -code, msg)),
                _ => Ok(false),
            },
        )?;
        Ok((found, false))
    }

    /// Whether chain `chain` exists in `table` (GETCHAIN).
    pub fn chain_exists(
        &mut self,
        fam: u8,
        table: &str,
        chain: &str,
    ) -> Result<bool, BackendError> {
        Ok(self.chain_info(fam, table, chain)?.is_some())
    }

    /// Chain `chain` of `table` as the kernel has it (GETCHAIN), if it exists.
    pub fn chain_info(
        &mut self,
        fam: u8,
        table: &str,
        chain: &str,
    ) -> Result<Option<codec::ChainInfo>, BackendError> {
        let seq = self.take_seq(1);
        let step = format!("looking up chain {table} {chain}");
        let mut found = None;
        let req = codec::get_chain(fam, table, chain, seq);
        self.exchange(&req, seq..=seq, &step, |m| match m.body {
            Body::NewChain(c) => {
                found = Some(c);
                Ok(false)
            }
            Body::Error { code: 0, .. } => Ok(true),
            Body::Error { code, .. } if -code == ENOENT => Ok(true),
            Body::Error { code, msg, .. } => Err(kernel_err(step.clone(), -code, msg)),
            _ => Ok(false),
        })?;
        Ok(found)
    }

    /// Refuse to write into a base chain iptables-nft would not write into: one that
    /// exists with another hook, priority or type than the built-in chain iptables-nft
    /// makes, or that is not a base chain at all (written by `nft` directly).
    /// iptables-nft fails re-declaring its built-in chain there (`CHAIN_ADD failed
    /// (Operation not supported)`) and calls the table incompatible; a jump written there
    /// would serve none of the agents that use iptables, and would run at another point
    /// of the packet path than declared. So jumpset leaves it alone and says why.
    fn check_base_chain(&mut self, snap: &Snapshot) -> Result<(), BackendError> {
        let (table, chain) = (snap.table.as_str(), snap.chain.as_str());
        let def = base_chain(table, chain)?;
        let Some(info) = self.chain_info(nfproto(snap.family), table, chain)? else {
            return Ok(()); // gone since the read: the batch is refused as stale
        };
        let found_type = info.chain_type.as_deref().unwrap_or("?");
        let found = match info.hook {
            Some((hook, prio))
                if hook == def.hook && prio == def.priority && found_type == def.chain_type =>
            {
                return Ok(());
            }
            Some((hook, prio)) => {
                format!("type {found_type} hook {} priority {prio}", hook_name(hook))
            }
            None => "a regular chain, not a base chain".to_string(),
        };
        Err(BackendError::Unsupported(format!(
            "{family} {table} {chain} exists but is not the base chain iptables-nft makes: it is {found}, where iptables-nft makes `type {} hook {} priority {}`. It was written by nft directly; iptables-nft refuses to write into it and calls the table incompatible, so jumpset leaves it alone too. Recreate it as iptables-nft makes it (move its rules, `nft delete chain {family} {table} {chain}`, and let iptables-nft or jumpset create it), or manage that chain with nft",
            def.chain_type,
            hook_name(def.hook),
            def.priority,
            family = snap.family,
        )))
    }

    /// Commit a batch and wait for its verdict: `Ok` only on the END ack.
    fn commit(
        &mut self,
        bytes: &[u8],
        begin: u32,
        end: u32,
        planned: u32,
        steps: &[(u32, String)],
    ) -> Result<(), BackendError> {
        if bytes.len() > 128 * 1024 {
            let _ = sys::set_send_buffer(&self.sock, bytes.len() * 2);
            let _ = sys::set_recv_buffer(&self.sock, steps.len() * 512 + RECV_BUF);
        }
        self.send(bytes, "sending the batch")?;
        // The kernel handles a batch inside sendmsg: every ack and error is queued now.
        let mut acked = false;
        let mut errors: Vec<(u32, i32, Option<String>)> = Vec::new();
        while let Some(msgs) = self.recv("reading the batch's acks", true)? {
            for m in msgs {
                if let Body::Error { code, seq, msg } = m.body {
                    if code == 0 && seq == end {
                        acked = true;
                    } else if code != 0 {
                        errors.push((seq, -code, msg));
                    }
                }
            }
        }
        if errors.iter().any(|e| e.1 == ERESTART && e.0 == begin) {
            return Err(BackendError::Stale { planned });
        }
        if let Some((seq, errno, msg)) = errors.into_iter().next() {
            let step = steps
                .iter()
                .find(|s| s.0 == seq)
                .map(|s| s.1.clone())
                .unwrap_or_else(|| "committing the batch".to_string());
            // The kernel answers a missing CAP_NET_ADMIN on the batch as a whole (the
            // BEGIN message). EPERM on a message inside it is nf_tables refusing to let
            // us change a table another process owns (`flags owner`).
            if errno == EPERM && seq != begin {
                return Err(BackendError::Kernel {
                    step,
                    errno,
                    message: format!(
                        "{}: the table is owned by another process (nf_tables `flags owner`); only that process may change it",
                        std::io::Error::from_raw_os_error(errno)
                    ),
                });
            }
            return Err(kernel_err(step, errno, msg));
        }
        if !acked {
            return Err(BackendError::Kernel {
                step: "committing the batch".into(),
                errno: 0,
                message: "the kernel did not acknowledge the end of the batch".into(),
            });
        }
        Ok(())
    }

    /// The GETRULE dump of one chain as the kernel sent it: every datagram, undecoded
    /// except to find the end. For tests (an independent decoder reads the same bytes)
    /// and for the benchmark's floor.
    pub fn dump_raw(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> Result<Vec<Vec<u8>>, BackendError> {
        let seq = self.take_seq(1);
        let step = format!("dumping {family} {table} {chain}");
        self.send(&codec::get_rules(nfproto(family), table, chain, seq), &step)?;
        let mut out = Vec::new();
        loop {
            self.recv_bytes(&step, false)?;
            out.push(self.buf.clone());
            for m in decode(&self.buf, &step)? {
                match m.body {
                    Body::Done if m.seq == seq => return Ok(out),
                    Body::Error { code, msg, .. } if code != 0 => {
                        return Err(kernel_err(step, -code, msg))
                    }
                    _ => {}
                }
            }
        }
    }

    /// Run a dump request to its NLMSG_DONE, handing each message to `each`.
    fn dump(
        &mut self,
        req: &[u8],
        seq: u32,
        step: &str,
        mut each: impl FnMut(Message<'_>),
    ) -> Result<(), BackendError> {
        self.exchange(req, seq..=seq, step, |m| match m.body {
            Body::Done => Ok(true),
            Body::Error { code, msg, .. } if code != 0 => {
                Err(kernel_err(step.to_string(), -code, msg))
            }
            _ => {
                each(m);
                Ok(false)
            }
        })
    }

    /// What nf_tables holds, for host detection: every table as (nfgen family, name), and
    /// for the iptables tables of `ip` and `ip6` their rules, user chains and whether
    /// iptables-nft could list them. Read-only: dumps, nothing created.
    pub fn census(&mut self) -> Result<NftCensus, BackendError> {
        let mut census = NftCensus::default();
        let seq = self.take_seq(1);
        self.dump(
            &codec::get_tables(seq),
            seq,
            "listing nf_tables tables",
            |m| {
                if let Body::NewTable(t) = m.body {
                    census.tables.push((m.family, t.name));
                }
            },
        )?;
        let iptables: Vec<(u8, String)> = census
            .tables
            .iter()
            .filter(|(f, n)| {
                (*f == codec::NFPROTO_IPV4 || *f == codec::NFPROTO_IPV6)
                    && crate::iptables::IPTABLES_TABLES.contains(&n.as_str())
            })
            .cloned()
            .collect();
        for (fam, table) in iptables {
            let family = if fam == codec::NFPROTO_IPV4 {
                Family::Ip
            } else {
                Family::Ip6
            };
            let mut c = crate::snapshot::TableCensus {
                table: table.clone(),
                ..Default::default()
            };
            let step = format!("listing the chains of {family} {table}");
            let seq = self.take_seq(1);
            self.dump(&codec::get_chains(fam, &table, seq), seq, &step, |m| {
                // The kernel's chain dump ignores the table attribute: filter here.
                let Body::NewChain(ch) = m.body else { return };
                if ch.table == table {
                    match ch.hook {
                        None => c.user_chains.push(ch.name),
                        Some((hook, prio)) => {
                            // iptables-nft only accepts base chains exactly as it makes them.
                            let ok = iptables::base_chain(&table, &ch.name).is_some_and(|d| {
                                d.hook == hook
                                    && d.priority == prio
                                    && ch.chain_type.as_deref() == Some(d.chain_type)
                            });
                            c.incompatible |= !ok;
                        }
                    }
                }
            })?;
            let step = format!("listing the rules of {family} {table}");
            let seq = self.take_seq(1);
            self.dump(&codec::get_table_rules(fam, &table, seq), seq, &step, |m| {
                if let Body::NewRule(r) = m.body {
                    c.rules += 1;
                    c.incompatible |= r.exprs().any(|e| {
                        matches!(e, Ok(codec::ExprView::Other { name, .. }) if !IPTABLES_EXPRS.contains(&name))
                    });
                }
            })?;
            census.iptables.push((family, c));
        }
        Ok(census)
    }

    /// The hook dump of hook `hook` (NF_INET_*) of nfgen family `fam`: each function the
    /// kernel runs there, in the order it runs them (`nft list hooks`). `Ok(None)` when
    /// this kernel has no hook dump (built without `CONFIG_NETFILTER_NETLINK_HOOK`, or
    /// older than 5.14: nfnetlink answers `EINVAL`, or `EOPNOTSUPP`). Read-only. A dump
    /// the kernel marks interrupted (the hook array changed under it) is read again.
    pub fn hooks(
        &mut self,
        fam: u8,
        hook: u32,
    ) -> Result<Option<Vec<codec::HookInfo>>, BackendError> {
        const EINVAL: i32 = 22;
        const EOPNOTSUPP: i32 = 95;
        let step = format!("dumping the hooks of {} hook {hook}", family_name(fam));
        for _ in 0..READ_RETRIES {
            let seq = self.take_seq(1);
            let mut entries = Vec::new();
            let mut unsupported = false;
            let mut raced = false;
            self.exchange(&codec::get_hooks(fam, hook, seq), seq..=seq, &step, |m| {
                raced |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.body {
                    Body::Hook(h) => {
                        entries.push(h);
                        Ok(false)
                    }
                    Body::Done => Ok(true),
                    Body::Error { code, .. } if -code == EINVAL || -code == EOPNOTSUPP => {
                        unsupported = true;
                        Ok(true)
                    }
                    Body::Error { code, msg, .. } if code != 0 => {
                        Err(kernel_err(step.clone(), -code, msg))
                    }
                    _ => Ok(false),
                }
            })?;
            if unsupported {
                return Ok(None);
            }
            if !raced {
                return Ok(Some(entries));
            }
        }
        Err(BackendError::Kernel {
            step,
            errno: 0,
            message: format!("the hooks changed during each of {READ_RETRIES} dumps"),
        })
    }

    /// Every nf_tables table (with its flags), every chain (with its hook, priority,
    /// type and policy) and the number of rules in each, all at one generation: what
    /// `jumpset explain` reads. Read-only: dumps, nothing created; re-read when a commit
    /// got in between.
    pub fn overview(&mut self) -> Result<NftOverview, BackendError> {
        let step = "listing nf_tables tables, chains and rules";
        for _ in 0..READ_RETRIES {
            let generation = self.generation()?;
            let mut o = NftOverview {
                generation,
                ..NftOverview::default()
            };
            let mut raced = false;
            let seq = self.take_seq(1);
            self.dump(&codec::get_tables(seq), seq, step, |m| {
                raced |= m.flags & NLM_F_DUMP_INTR != 0;
                if let Body::NewTable(t) = m.body {
                    o.tables.push((m.family, t));
                }
            })?;
            let seq = self.take_seq(1);
            self.dump(&codec::get_all_chains(seq), seq, step, |m| {
                raced |= m.flags & NLM_F_DUMP_INTR != 0;
                if let Body::NewChain(c) = m.body {
                    o.chains.push((m.family, c, 0));
                }
            })?;
            let seq = self.take_seq(1);
            let index: std::collections::HashMap<(u8, &[u8], &[u8]), usize> = o
                .chains
                .iter()
                .enumerate()
                .map(|(i, (f, c, _))| ((*f, c.table.as_bytes(), c.name.as_bytes()), i))
                .collect();
            let mut counts = vec![0usize; o.chains.len()];
            self.dump(&codec::get_all_rules(seq), seq, step, |m| {
                raced |= m.flags & NLM_F_DUMP_INTR != 0;
                if let Body::NewRule(r) = m.body {
                    if let Some(&i) = index.get(&(m.family, r.table(), r.chain())) {
                        counts[i] += 1;
                    }
                }
            })?;
            drop(index);
            for (c, n) in o.chains.iter_mut().zip(counts) {
                c.2 = n;
            }
            if !raced && self.generation()? == generation {
                return Ok(o);
            }
        }
        Err(BackendError::Kernel {
            step: step.into(),
            errno: 0,
            message: format!("the ruleset changed during each of {READ_RETRIES} reads"),
        })
    }

    /// Write `rules` at the end of `table`/`chain` in one batch, creating the table, the
    /// base chain and the user chains `chains` first when missing. Used by `demo` to set
    /// up a scenario; the rules' counters become their initial values.
    pub fn load(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        chains: &[&str],
        rules: &[Rule],
    ) -> Result<(), BackendError> {
        let fam = nfproto(family);
        let gen = self.generation()?;
        let (table_exists, chain_exists) = self.exists(fam, table, chain)?;
        let begin = self.take_seq(0);
        let mut b = Batch::begin(gen, begin);
        let mut steps = Vec::new();
        if !table_exists {
            steps.push((b.new_table(fam, table), format!("create table {table}")));
        }
        if !chain_exists {
            let def = base_chain(table, chain)?;
            let s = b.new_base_chain(fam, table, chain, def.hook, def.priority, def.chain_type);
            steps.push((s, format!("create base chain {chain}")));
        }
        for c in chains {
            if !table_exists || !self.chain_exists(fam, table, c)? {
                steps.push((b.new_user_chain(fam, table, c), format!("-N {c}")));
            }
        }
        for r in rules {
            let comment = r.comment.as_ref().map(|c| (c.bytes.as_slice(), c.encoding));
            let mut nr = codec::encode_rule(comment, &r.matches, &r.verdict);
            if let Some(c) = r.counters {
                for e in &mut nr.exprs {
                    if let codec::Expr::Counter { bytes, packets } = e {
                        (*bytes, *packets) = (c.bytes, c.packets);
                    }
                }
            }
            let s = b.new_rule(fam, table, chain, &nr, Position::Append);
            steps.push((s, format!("-A {chain} {}", r.iptables())));
        }
        let (bytes, end) = b.end();
        self.seq = end.wrapping_add(1);
        self.commit(&bytes, begin, end, gen, &steps)
    }
}

/// One change another agent would make (see [`NftBackend::write_scene`]; feature `testing`).
#[cfg(feature = "testing")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SceneOp {
    /// A new rule in `chain`, at `at`.
    Add {
        /// The chain.
        chain: String,
        /// The rule, as the codec encodes it.
        rule: codec::NewRule,
        /// Where it goes.
        at: Position,
    },
    /// Delete the rule with `handle` from `chain`.
    Delete {
        /// The chain.
        chain: String,
        /// The rule's handle.
        handle: u64,
    },
}

#[cfg(feature = "testing")]
impl NftBackend {
    /// Play other agents: in the existing `table`, create the user `chains` that are
    /// missing, then make `ops` in order, all in one batch. For `demo` and tests that set
    /// a scene (kube-proxy's and portmap's rules, a foreign jump deleted); jumpset's own
    /// changes go through [`Backend::apply`].
    pub fn write_scene(
        &mut self,
        family: Family,
        table: &str,
        chains: &[&str],
        ops: &[SceneOp],
    ) -> Result<(), BackendError> {
        let fam = nfproto(family);
        let gen = self.generation()?;
        let mut missing = Vec::new();
        for c in chains {
            if !self.chain_exists(fam, table, c)? {
                missing.push(*c);
            }
        }
        let begin = self.take_seq(0);
        let mut b = Batch::begin(gen, begin);
        let mut steps = Vec::new();
        for c in missing {
            steps.push((b.new_user_chain(fam, table, c), format!("-N {c}")));
        }
        for op in ops {
            let s = match op {
                SceneOp::Add { chain, rule, at } => (
                    b.new_rule(fam, table, chain, rule, *at),
                    format!("a rule in {chain}"),
                ),
                SceneOp::Delete { chain, handle } => (
                    b.del_rule(fam, table, chain, *handle),
                    format!("deleting handle {handle} from {chain}"),
                ),
            };
            steps.push(s);
        }
        let (bytes, end) = b.end();
        self.seq = end.wrapping_add(1);
        self.commit(&bytes, begin, end, gen, &steps)
    }
}

fn base_chain(table: &str, chain: &str) -> Result<iptables::BaseChain, BackendError> {
    iptables::base_chain(table, chain).ok_or_else(|| {
        BackendError::Unsupported(format!(
            "{table} {chain} is not an iptables built-in chain; jumpset does not create it"
        ))
    })
}

/// The iptables name of a netfilter inet hook number.
pub fn hook_name(hook: u32) -> String {
    match hook {
        0 => "prerouting".into(),
        1 => "input".into(),
        2 => "forward".into(),
        3 => "output".into(),
        4 => "postrouting".into(),
        n => format!("{n}"),
    }
}

impl Backend for NftBackend {
    fn commit_portid(&self) -> Option<u32> {
        Some(self.portid)
    }

    fn name(&self) -> &'static str {
        "nft"
    }

    fn generation(&mut self) -> Result<u32, BackendError> {
        let seq = self.take_seq(1);
        let step = "reading the ruleset generation (GETGEN)";
        let mut gen = None;
        self.exchange(&codec::get_gen(seq), seq..=seq, step, |m| match m.body {
            Body::Gen(g) => {
                gen = Some(g.id);
                Ok(true)
            }
            Body::Error { code, msg, .. } if code != 0 => {
                Err(kernel_err(step.to_string(), -code, msg))
            }
            _ => Ok(false),
        })?;
        gen.ok_or_else(|| BackendError::Kernel {
            step: step.into(),
            errno: 0,
            message: "no generation in the reply".into(),
        })
    }

    fn read(&mut self, family: Family, table: &str, chain: &str) -> Result<Snapshot, BackendError> {
        let fam = nfproto(family);
        let step = format!("reading {family} {table} {chain}");
        for attempt in 0..READ_RETRIES {
            let s = self.take_seq(2);
            let mut req = codec::get_gen(s);
            req.extend_from_slice(&codec::get_rules(fam, table, chain, s + 1));
            let mut gen: Option<u32> = None;
            let mut rules = Vec::new();
            // A commit (anywhere) got in during the dump.
            let mut raced = false;
            // This chain's dump is torn: a rule repeated or skipped.
            let mut torn = false;
            // The handle of the rule dumped last: each dumped rule names the one before it.
            let mut last: Option<u64> = None;
            self.exchange(&req, s..=s + 1, &step, |m| match m.body {
                Body::NewRule(r) => {
                    // Each dumped rule carries the low 16 bits of the generation it was
                    // dumped at; a mismatch or DUMP_INTR means a commit got in between. And
                    // each names the rule before it: the kernel resumes a multi-part dump by
                    // index, and a change of this chain between parts, or another process's
                    // transaction in flight (rules inserted but not committed, or aborted:
                    // no new generation), shifts that index — a rule is then sent twice or
                    // skipped, and the chain is broken.
                    raced |=
                        m.flags & NLM_F_DUMP_INTR != 0 || gen.map(|g| g as u16) != Some(m.res_id);
                    torn |= r.position.is_some_and(|p| Some(p) != last);
                    last = Some(r.rule.handle);
                    rules.push(r.rule);
                    Ok(false)
                }
                Body::Gen(g) => {
                    gen = Some(g.id);
                    Ok(false)
                }
                Body::Done => Ok(true),
                Body::Error { code, msg, .. } if code != 0 => {
                    Err(kernel_err(step.clone(), -code, msg))
                }
                _ => Ok(false),
            })?;
            let Some(generation) = gen else {
                return Err(BackendError::Kernel {
                    step,
                    errno: 0,
                    message: "no generation in the reply".into(),
                });
            };
            if torn || (raced && attempt < STRICT_READS) {
                continue;
            }
            // Whole, but not at one generation: no write can be guarded by it.
            let generation = if raced { 0 } else { generation };
            let (table_exists, chain_exists) = if rules.is_empty() {
                self.exists(fam, table, chain)?
            } else {
                (true, true)
            };
            return Ok(Snapshot {
                family,
                table: table.to_string(),
                chain: chain.to_string(),
                generation,
                table_exists,
                chain_exists,
                rules,
            });
        }
        Err(BackendError::Kernel {
            step,
            errno: 0,
            message: format!("the ruleset changed during each of {READ_RETRIES} reads"),
        })
    }

    fn apply(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        self.apply_batch(snap, spec, plan, true)
    }

    fn apply_anchored(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        // Creating the table or the base chain is left to the guarded batch.
        let guarded = !(snap.table_exists && snap.chain_exists);
        self.apply_batch(snap, spec, plan, guarded)
    }
}

impl NftBackend {
    /// Commit `plan` as one batch: guarded by the snapshot's generation (`guarded`), or
    /// anchored on the handles it deletes and inserts before, which the kernel looks up
    /// in the chain when it applies the batch (a missing one fails the whole batch with
    /// ENOENT, reported as stale). An anchored batch does not see a foreign rule inserted
    /// since the read: the caller reads the chain back.
    fn apply_batch(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
        guarded: bool,
    ) -> Result<Applied, BackendError> {
        if plan.ops.is_empty() {
            return Ok(Applied {
                committed: false,
                changes: 0,
                expected_generation: None,
            });
        }
        if guarded && snap.generation == 0 {
            // Read while the ruleset kept changing: nothing to guard with (and 0 in BEGIN
            // would mean "no check").
            return Err(BackendError::Stale { planned: 0 });
        }
        let fam = nfproto(snap.family);
        let (table, chain) = (snap.table.as_str(), snap.chain.as_str());
        if snap.chain_exists {
            self.check_base_chain(snap)?;
        }

        // Target chains to create: only for jumps being inserted whose target no rule of
        // the chain already jumps to (the kernel guarantees those exist).
        let mut create: Vec<&str> = Vec::new();
        for op in &plan.ops {
            let Op::Insert { jump, .. } = op else {
                continue;
            };
            let js = &spec.jumps[*jump];
            let t = js.target.as_str();
            if create.contains(&t) || snap.rules.iter().any(|r| r.target() == Some(t)) {
                continue;
            }
            if !snap.table_exists || !self.chain_exists(fam, table, t)? {
                if !js.create_chain {
                    return Err(BackendError::MissingTarget {
                        family: snap.family,
                        table: table.into(),
                        chain: t.into(),
                    });
                }
                create.push(t);
            }
        }

        if !snap.table_exists && !self.allow_mixed {
            BackendError::check_mixing(crate::detect::Choice::Nft, snap.family)?;
        }
        let begin = self.take_seq(0);
        let mut b = if guarded {
            Batch::begin(snap.generation, begin)
        } else {
            Batch::unguarded(begin)
        };
        let mut steps: Vec<(u32, String)> = Vec::new();
        if !snap.table_exists {
            steps.push((
                b.new_table(fam, table),
                format!("create table {family} {table}", family = snap.family),
            ));
        }
        if !snap.chain_exists {
            let def = base_chain(table, chain)?;
            let s = b.new_base_chain(fam, table, chain, def.hook, def.priority, def.chain_type);
            steps.push((s, format!("create base chain {table} {chain}")));
        }
        for c in &create {
            steps.push((
                b.new_user_chain(fam, table, c),
                format!("-t {table} -N {c}"),
            ));
        }
        for op in &plan.ops {
            match *op {
                Op::Delete { handle, index, .. } => {
                    let s = b.del_rule(fam, table, chain, handle);
                    let text = snap.rules[index].iptables();
                    steps.push((s, format!("-D {chain} {text}  # handle {handle}")));
                }
                Op::Insert {
                    jump,
                    position,
                    before_handle,
                    ..
                } => {
                    let js = &spec.jumps[jump];
                    let verdict = Verdict::Jump(js.target.clone());
                    let nr = codec::encode_rule(
                        Some((js.comment.as_bytes(), js.encoding)),
                        &[],
                        &verdict,
                    );
                    let at = before_handle.map_or(Position::Append, Position::Before);
                    let s = b.new_rule(fam, table, chain, &nr, at);
                    steps.push((
                        s,
                        format!(
                            "-I {chain} {position} -m comment --comment {} -j {}",
                            crate::snapshot::quote(&js.comment),
                            js.target
                        ),
                    ));
                }
            }
        }
        let (bytes, end) = b.end();
        self.seq = end.wrapping_add(1);
        match self.commit(&bytes, begin, end, snap.generation, &steps) {
            // An anchor (a handle deleted or inserted before, or a target chain) is gone.
            Err(BackendError::Kernel { errno: ENOENT, .. }) if !guarded => {
                return Err(BackendError::Stale {
                    planned: snap.generation,
                })
            }
            r => r?,
        }
        Ok(Applied {
            committed: true,
            changes: steps.len(),
            // The kernel increments the genid once per commit, skipping 0; an anchored
            // batch does not know the generation it committed on.
            expected_generation: guarded.then_some(match snap.generation.wrapping_add(1) {
                0 => 1,
                n => n,
            }),
        })
    }
}
