//! nf_tables over netlink: the backend for iptables-nft hosts.
//!
//! A read is one `sendmsg` holding GETGEN, a GETCHAIN of the chain (only until a rule
//! seen in it vouches for the same chain object: see `KnownChain`) and a GETRULE dump of
//! the chain; every dumped rule carries the low 16 bits of the generation it was dumped
//! at, so a dump that raced a commit is detected and re-read, and names the rule dumped
//! before it, so a dump torn by a change of the chain between its parts, or by another
//! process's transaction in flight (either shifts the kernel's resume index), is re-read
//! too. The generation is global: beside an agent committing elsewhere many times a
//! second, every dump of a long chain races a commit. So when the second dump races too
//! but is not torn, it is taken with generation 0: the chain is whole, no write can be
//! guarded by it (one is refused as stale before it is sent), and one anchored on its
//! handles is read back.
//!
//! A write is one batch — BEGIN carrying the generation the plan was made from, then
//! NEWTABLE/NEWCHAIN (only when missing, exactly as iptables-nft creates them), DELRULEs
//! by handle and NEWRULEs (echoed) before a kept handle or appended, then END with an ACK
//! request. The kernel holds its commit mutex from the generation check to the commit, so
//! a concurrent writer makes the batch fail with ERESTART and nothing is applied. Success
//! is the END ack and nothing else, and it proves the result: the chain is not read back,
//! the inserted rules' handles come from the echo. After repeated stale attempts (and for
//! a read taken with generation 0) the batch is anchored instead: no generation in BEGIN,
//! the kernel refuses it whole when a handle it deletes or inserts before is gone, and the
//! reconcile reads the chain back.

#[cfg(any(feature = "testing", feature = "fuzzing"))]
pub mod codec;
#[cfg(not(any(feature = "testing", feature = "fuzzing")))]
pub(crate) mod codec;
pub(crate) mod sys;

use super::{Applied, Backend, BackendError, Transaction, Verified};
use crate::iptables;
use crate::plan::{Op, Plan};
use crate::snapshot::{Family, Rule, Snapshot, Verdict};
use crate::spec::ChainSpec;
use codec::{Batch, Body, CodecError, Message, Position};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use std::fmt::{self, Display};
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
pub(crate) struct NftCensus {
    /// Every table: (nfgen family, name).
    pub tables: Vec<(u8, String)>,
    /// The iptables tables of ip and ip6, counted.
    pub iptables: Vec<(Family, crate::snapshot::TableCensus)>,
}

/// Every nf_tables table, chain and rule count at one generation (see
/// [`NftBackend::overview`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct NftOverview {
    /// The generation the dumps were taken at.
    pub generation: u32,
    /// Every table: (nfgen family, table).
    pub tables: Vec<(u8, codec::TableInfo)>,
    /// Every chain: (nfgen family, chain, the number of rules in it).
    pub chains: Vec<(u8, codec::ChainInfo, usize)>,
}

/// The name `nft` uses for an nfgen family.
pub(crate) fn family_name(f: u8) -> String {
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
pub(crate) fn nfproto(family: Family) -> u8 {
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
    /// The last read's request and the last batch, their buffers kept for the next ones.
    req: Vec<u8>,
    batch: Vec<u8>,
    /// The last committed batch's steps, inserts and echoes: their buffers kept likewise.
    steps: Vec<(u32, Step)>,
    inserts: Vec<(u32, usize)>,
    echoed: Vec<(u32, u64)>,
    allow_mixed: bool,
    /// The managed chain as the last read found it.
    base: Option<BaseSeen>,
    /// Managed chains whose GETCHAIN was seen, with the rules seen in them since.
    known: Vec<KnownChain>,
}

fn io_err<S: Display + ?Sized>(step: &S) -> impl FnOnce(std::io::Error) -> BackendError + '_ {
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

/// The request of a read (see [`Backend::read`]): GETGEN (`seq`), with `ask` a GETCHAIN of
/// the chain (`seq + 1`, no ack: its reply is the chain or ENOENT), and the GETRULE dump of
/// its rules (`seq + 2`), sent in one `sendmsg`; the dump ends with NLMSG_DONE at `seq + 2`.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn read_request(fam: u8, table: &str, chain: &str, seq: u32, ask: bool) -> Vec<u8> {
    let mut req = Vec::new();
    read_request_into(&mut req, fam, table, chain, seq, ask);
    req
}

/// [`read_request`], into `req` (cleared first).
fn read_request_into(req: &mut Vec<u8>, fam: u8, table: &str, chain: &str, seq: u32, ask: bool) {
    req.clear();
    codec::get_gen_into(req, seq);
    if ask {
        codec::get_chain_unacked_into(req, fam, table, chain, seq + 1);
    }
    codec::get_rules_into(req, fam, table, chain, seq + 2);
}

/// The step of a read, as errors name it (`reading ip nat PREROUTING`): formatted only
/// when one is reported.
struct Reading<'a>(Family, &'a str, &'a str);

impl Display for Reading<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "reading {} {} {}", self.0, self.1, self.2)
    }
}

/// A managed chain as a GETCHAIN described it, and the rules it held then. nf_tables gives
/// every rule a handle unique in its table and never reused, and a rule never moves to
/// another chain: a read that finds one of these rules — same handle, same rule — in the
/// chain has found the same chain object, whose hook, priority and type cannot have
/// changed (a base chain keeps them for its life; the kernel refuses to update them). So
/// what the GETCHAIN said still holds, without asking again. (The content is compared
/// too because a table deleted and created again restarts its handles.)
struct KnownChain {
    family: Family,
    table: String,
    chain: String,
    info: codec::ChainInfo,
    rules: Vec<Rule>,
}

impl KnownChain {
    /// Whether a rule of `rules` is one this chain held when it was described.
    fn vouched_by(&self, rules: &[Rule]) -> bool {
        rules.iter().any(|r| {
            self.rules.iter().any(|k| {
                k.handle == r.handle
                    && k.comment == r.comment
                    && k.matches == r.matches
                    && k.verdict == r.verdict
            })
        })
    }
}

/// What the last read knew of its chain, for the write planned from it.
struct BaseSeen {
    family: Family,
    table: String,
    chain: String,
    generation: u32,
    /// Whether the chain is described by its entry in `known`: fresh from the read's
    /// GETCHAIN, or vouched for by a rule of the chain known from an earlier one. If
    /// not, it is asked about before writing.
    described: bool,
}

/// Why `info`, the managed chain of `snap` as the kernel has it, is not the base chain
/// iptables-nft makes (see `NftBackend::check_base_chain`); `None` when it is.
fn base_chain_problem(snap: &Snapshot, info: &codec::ChainInfo) -> Option<BackendError> {
    let (table, chain) = (snap.table.as_str(), snap.chain.as_str());
    let def = match base_chain(table, chain) {
        Ok(d) => d,
        Err(e) => return Some(e),
    };
    let found_type = info.chain_type.as_deref().unwrap_or("?");
    let found = match info.hook {
        Some((hook, prio))
            if hook == def.hook && prio == def.priority && found_type == def.chain_type =>
        {
            return None;
        }
        Some((hook, prio)) => {
            format!("type {found_type} hook {} priority {prio}", hook_name(hook))
        }
        None => "a regular chain, not a base chain".to_string(),
    };
    Some(BackendError::Unsupported(format!(
        "{family} {table} {chain} exists but is not the base chain iptables-nft makes: it is {found}, where iptables-nft makes `type {} hook {} priority {}`. It was written by nft directly; iptables-nft refuses to write into it and calls the table incompatible, so jumpset leaves it alone too. Recreate it as iptables-nft makes it (move its rules, `nft delete chain {family} {table} {chain}`, and let iptables-nft or jumpset create it), or manage that chain with nft",
        def.chain_type,
        hook_name(def.hook),
        def.priority,
        family = snap.family,
    )))
}

/// What the kernel answered to a batch.
enum Answer {
    /// The END ack: committed. The rules echoed back, as (their message's seq, handle).
    Committed { echoed: Vec<(u32, u64)> },
    /// ERESTART on BEGIN: the generation moved; nothing was applied.
    Stale,
    /// Every error it reported, as (seq, errno, extended-ack message); nothing applied.
    Refused(Vec<(u32, i32, Option<String>)>),
}

/// What a batch is guarded by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guard {
    /// The generation the plan was read at (`NFNL_BATCH_GENID`): the kernel refuses the
    /// batch when anyone committed since.
    Generation,
    /// The handles it deletes and inserts before: no generation in BEGIN; the kernel
    /// refuses the batch when one of them is gone (the fallback after stale attempts).
    Anchors,
}

impl Guard {
    /// Anchored, unless the table or the base chain of `snap` must be created: that is
    /// left to the guarded batch.
    fn anchors_for(snap: &Snapshot) -> Guard {
        if snap.table_exists && snap.chain_exists {
            Guard::Anchors
        } else {
            Guard::Generation
        }
    }
}

/// A batch built for a plan, not sent yet ([`NftBackend::build_batch`]).
pub(crate) struct Built {
    /// The batch.
    pub(crate) bytes: Vec<u8>,
    /// BEGIN's seq.
    pub(crate) begin: u32,
    /// END's seq.
    pub(crate) end: u32,
    /// Each message's seq and what it does (told in iptables terms only for an error).
    steps: Vec<(u32, Step)>,
    /// Each inserted jump's NEWRULE: (seq, index of the jump in the spec).
    inserts: Vec<(u32, usize)>,
}

/// What a message of a batch does.
enum Step {
    CreateTable,
    CreateBaseChain,
    CreateUserChain(usize),
    Delete { index: usize, handle: u64 },
    Insert { jump: usize, position: usize },
}

impl Built {
    /// What the message with `seq` does, in iptables terms (`create`: the user chains the
    /// batch creates).
    fn describe(
        &self,
        seq: u32,
        snap: &Snapshot,
        spec: &ChainSpec,
        create: &[&str],
    ) -> Option<String> {
        let (table, chain) = (snap.table.as_str(), snap.chain.as_str());
        Some(match &self.steps.iter().find(|s| s.0 == seq)?.1 {
            Step::CreateTable => format!("create table {family} {table}", family = snap.family),
            Step::CreateBaseChain => format!("create base chain {table} {chain}"),
            Step::CreateUserChain(i) => {
                format!("-t {table} -N {}", create.get(*i).copied().unwrap_or("?"))
            }
            Step::Delete { index, handle } => {
                let text = snap
                    .rules
                    .get(*index)
                    .map(Rule::iptables)
                    .unwrap_or_default();
                format!("-D {chain} {text}  # handle {handle}")
            }
            Step::Insert { jump, position } => {
                let js = spec.jumps.get(*jump)?;
                format!(
                    "-I {chain} {position} -m comment --comment {} -j {}",
                    crate::snapshot::quote(&js.comment),
                    js.target
                )
            }
        })
    }
}

/// The error of a refused batch: the first error, named by the message it answers
/// (`describe`).
fn refused(
    errors: Vec<(u32, i32, Option<String>)>,
    begin: u32,
    describe: impl Fn(u32) -> Option<String>,
) -> BackendError {
    let Some((seq, errno, msg)) = errors.into_iter().next() else {
        return BackendError::Kernel {
            step: "committing the batch".into(),
            errno: 0,
            message: "the batch was refused without an error".into(),
        };
    };
    let step = describe(seq).unwrap_or_else(|| "committing the batch".to_string());
    // The kernel answers a missing CAP_NET_ADMIN on the batch as a whole (the BEGIN
    // message). EPERM on a message inside it is nf_tables refusing to let us change a
    // table another process owns (`flags owner`).
    if errno == EPERM && seq != begin {
        return BackendError::Kernel {
            step,
            errno,
            message: format!(
                "{}: the table is owned by another process (nf_tables `flags owner`); only that process may change it",
                std::io::Error::from_raw_os_error(errno)
            ),
        };
    }
    kernel_err(step, errno, msg)
}

/// A message of a received datagram ([`codec::messages`]) that did not decode, in `step`.
fn undecodable<S: Display + ?Sized>(step: &S) -> impl Fn(CodecError) -> BackendError + '_ {
    move |source| BackendError::Decode {
        step: step.to_string(),
        source,
    }
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
            req: Vec::new(),
            batch: Vec::new(),
            steps: Vec::new(),
            inserts: Vec::new(),
            echoed: Vec::new(),
            allow_mixed: false,
            base: None,
            known: Vec::new(),
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

    fn send<S: Display + ?Sized>(&self, bytes: &[u8], step: &S) -> Result<(), BackendError> {
        self.sock.send(bytes, 0).map_err(io_err(step))?;
        Ok(())
    }

    /// Receive one datagram into `self.buf`, undecoded; `Ok(false)` when `nonblocking`
    /// and nothing is queued.
    fn recv_bytes<S: Display + ?Sized>(
        &mut self,
        step: &S,
        nonblocking: bool,
    ) -> Result<bool, BackendError> {
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
    fn exchange<S: Display + ?Sized>(
        &mut self,
        req: &[u8],
        seqs: std::ops::RangeInclusive<u32>,
        step: &S,
        mut each: impl FnMut(Message<'_>) -> Result<bool, BackendError>,
    ) -> Result<(), BackendError> {
        self.send(req, step)?;
        let me = self.portid;
        loop {
            self.recv_bytes(step, false)?;
            let mut msgs = codec::messages(&self.buf);
            while let Some(m) = msgs.next() {
                let m = m.map_err(undecodable(step))?;
                if (m.portid != me && m.portid != 0) || !seqs.contains(&m.seq) {
                    continue; // not a reply to this request
                }
                if each(m)? {
                    // A malformed message anywhere in the datagram still fails the exchange.
                    for m in msgs {
                        m.map_err(undecodable(step))?;
                    }
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
        Ok((self.table_exists(fam, table)?, false))
    }

    /// Whether `table` exists (GETTABLE).
    fn table_exists(&mut self, fam: u8, table: &str) -> Result<bool, BackendError> {
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
        Ok(found)
    }

    /// Whether chain `chain` exists in `table` (GETCHAIN).
    pub(crate) fn chain_exists(
        &mut self,
        fam: u8,
        table: &str,
        chain: &str,
    ) -> Result<bool, BackendError> {
        Ok(self.chain_info(fam, table, chain)?.is_some())
    }

    /// Chain `chain` of `table` as the kernel has it (GETCHAIN), if it exists.
    pub(crate) fn chain_info(
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
    ///
    /// Known from the read the plan was made from (its GETCHAIN, at the same generation
    /// the batch is guarded by); asked again (GETCHAIN) only for a snapshot this backend
    /// did not read last, or one read without a generation (`Snapshot::generation` 0:
    /// commits kept racing the dump, and its write is anchored on handles, not guarded).
    fn check_base_chain(&mut self, snap: &Snapshot) -> Result<(), BackendError> {
        let seen = self.base.as_ref().is_some_and(|b| {
            b.described
                && b.generation != 0
                && (b.family, b.table.as_str(), b.chain.as_str(), b.generation)
                    == (
                        snap.family,
                        snap.table.as_str(),
                        snap.chain.as_str(),
                        snap.generation,
                    )
        });
        let known = seen
            .then(|| {
                self.known.iter().find(|k| {
                    (k.family, k.table.as_str(), k.chain.as_str())
                        == (snap.family, snap.table.as_str(), snap.chain.as_str())
                })
            })
            .flatten();
        if let Some(k) = known {
            return base_chain_problem(snap, &k.info).map_or(Ok(()), Err);
        }
        let info = self.chain_info(nfproto(snap.family), &snap.table, &snap.chain)?;
        if let Some(i) = info.as_ref().filter(|_| snap.generation != 0) {
            self.learn(snap, i.clone());
        }
        match info {
            // Gone since the read: the batch is refused as stale.
            None => Ok(()),
            Some(info) => base_chain_problem(snap, &info).map_or(Ok(()), Err),
        }
    }

    /// The chain of `snap` is `info`, with the rules `snap` holds.
    fn learn(&mut self, snap: &Snapshot, info: codec::ChainInfo) {
        self.known.retain(|k| {
            (k.family, k.table.as_str(), k.chain.as_str())
                != (snap.family, snap.table.as_str(), snap.chain.as_str())
        });
        self.known.push(KnownChain {
            family: snap.family,
            table: snap.table.clone(),
            chain: snap.chain.clone(),
            info,
            rules: snap.rules.clone(),
        });
    }

    /// The known chain `table`/`chain` of `family`, if any.
    fn known(&mut self, family: Family, table: &str, chain: &str) -> Option<&mut KnownChain> {
        self.known
            .iter_mut()
            .find(|k| (k.family, k.table.as_str(), k.chain.as_str()) == (family, table, chain))
    }

    /// Send a batch and collect the kernel's answer: the END ack (and the rules it echoed
    /// back, by their message's seq), ERESTART on BEGIN, or every error it reported.
    fn send_batch(&mut self, bytes: &[u8], begin: u32, end: u32) -> Result<Answer, BackendError> {
        if bytes.len() > 128 * 1024 {
            let _ = sys::set_send_buffer(&self.sock, bytes.len() * 2);
            let _ = sys::set_recv_buffer(&self.sock, bytes.len() + RECV_BUF);
        }
        self.send(bytes, "sending the batch")?;
        // The kernel handles a batch inside sendmsg: every ack, error and echo is queued now.
        let mut acked = false;
        let mut errors: Vec<(u32, i32, Option<String>)> = Vec::new();
        let mut echoed = std::mem::take(&mut self.echoed);
        echoed.clear();
        let me = self.portid;
        // END's ack comes last: after the echoes of a commit (a refused batch has none).
        let step = "reading the batch's acks";
        while !acked {
            if !self.recv_bytes(step, true)? {
                break;
            }
            for m in codec::messages(&self.buf) {
                let m = m.map_err(undecodable(step))?;
                match m.body {
                    Body::Error { code, seq, msg } => {
                        if code == 0 && seq == end {
                            acked = true;
                        } else if code != 0 {
                            errors.push((seq, -code, msg));
                        }
                    }
                    Body::NewRule(r) if m.portid == me => echoed.push((m.seq, r.rule.handle)),
                    _ => {}
                }
            }
        }
        if errors.iter().any(|e| e.1 == ERESTART && e.0 == begin) {
            return Ok(Answer::Stale);
        }
        if !errors.is_empty() {
            return Ok(Answer::Refused(errors));
        }
        if !acked {
            return Err(BackendError::Kernel {
                step: "committing the batch".into(),
                errno: 0,
                message: "the kernel did not acknowledge the end of the batch".into(),
            });
        }
        Ok(Answer::Committed { echoed })
    }

    /// The batch that applies `plan`, made from `snap` for `spec`, creating the user
    /// chains `create` first. Builds bytes only: no round trip.
    pub(crate) fn build_batch(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
        create: &[&str],
        guard: Guard,
    ) -> Result<Built, BackendError> {
        let fam = nfproto(snap.family);
        let (table, chain) = (snap.table.as_str(), snap.chain.as_str());
        let def = base_chain(table, chain)?;
        let begin = self.take_seq(0);
        let buf = std::mem::take(&mut self.batch);
        let mut b = match guard {
            Guard::Generation => Batch::begin_in(buf, snap.generation, begin),
            Guard::Anchors => Batch::unguarded_in(buf, begin),
        };
        let mut steps = std::mem::take(&mut self.steps);
        steps.clear();
        steps.reserve(plan.ops.len() + 2);
        if !snap.table_exists {
            steps.push((b.new_table(fam, table), Step::CreateTable));
        }
        if !snap.chain_exists {
            let s = b.new_base_chain(fam, table, chain, def.hook, def.priority, def.chain_type);
            steps.push((s, Step::CreateBaseChain));
        }
        for (i, c) in create.iter().enumerate() {
            steps.push((b.new_user_chain(fam, table, c), Step::CreateUserChain(i)));
        }
        let mut inserts = std::mem::take(&mut self.inserts);
        inserts.clear();
        for op in &plan.ops {
            match *op {
                Op::Delete { handle, index, .. } => {
                    let s = b.del_rule(fam, table, chain, handle);
                    steps.push((s, Step::Delete { index, handle }));
                }
                Op::Insert {
                    jump,
                    position,
                    before_handle,
                    ..
                } => {
                    let js = spec.jumps.get(jump).ok_or_else(|| {
                        BackendError::Unsupported(format!(
                            "the plan names jump {jump}, which the spec does not have"
                        ))
                    })?;
                    let verdict = Verdict::Jump(js.target.clone());
                    let nr = codec::encode_rule(
                        Some((js.comment.as_bytes(), js.encoding)),
                        &[],
                        &verdict,
                    );
                    let at = before_handle.map_or(Position::Append, Position::Before);
                    let s = b.new_rule_echoed(fam, table, chain, &nr, at);
                    inserts.push((s, jump));
                    steps.push((s, Step::Insert { jump, position }));
                }
            }
        }
        let (bytes, end) = b.end();
        self.seq = end.wrapping_add(1);
        Ok(Built {
            bytes,
            begin,
            end,
            steps,
            inserts,
        })
    }

    /// Apply `plan` as one batch guarded by `guard`; the applied transaction and the
    /// handle of each inserted jump (echoed by the kernel).
    ///
    /// Guarded by `snap.generation`, the facts the write needs are not asked for first:
    /// that the chain is iptables-nft's is known from the read the plan was made from (its
    /// GETCHAIN, at the generation the batch is guarded by); that each jump's target
    /// exists is known from that read when a rule of the chain jumps to it, and otherwise
    /// checked by the kernel inside the batch — a NEWRULE whose target is missing is
    /// refused (ENOENT) with the whole batch, and only then are the missing chains
    /// created (`create_chain`) in a second batch, or the write refused.
    ///
    /// Anchored ([`Guard::Anchors`]: no generation in BEGIN), the kernel looks up each
    /// handle the batch deletes or inserts before when it applies it, and a missing one
    /// fails the whole batch with ENOENT, reported as stale. ENOENT must then mean only
    /// that, so the base chain and the targets no rule of the chain vouches for are asked
    /// about first (GETCHAIN). Such a batch does not see a foreign rule inserted since the
    /// read: the caller reads the chain back. A snapshot read without a generation (0)
    /// guards nothing: its guarded write is refused as stale before anything is sent (0 in
    /// BEGIN would mean "no check").
    fn commit_plan(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
        guard: Guard,
    ) -> Result<(Applied, Vec<(usize, u64)>), BackendError> {
        if plan.ops.is_empty() {
            return Ok((Applied::NOTHING, Vec::new()));
        }
        if guard == Guard::Generation && snap.generation == 0 {
            return Err(BackendError::Stale { planned: 0 });
        }
        let missing_target = |js: &crate::spec::JumpSpec| BackendError::MissingTarget {
            family: snap.family,
            table: snap.table.clone(),
            chain: js.target.clone(),
        };
        // A table that does not exist yet has no chain to jump to.
        let mut create: Vec<&str> = Vec::new();
        if !snap.table_exists {
            for op in &plan.ops {
                if let Op::Insert { jump, .. } = *op {
                    let Some(js) = spec.jumps.get(jump) else {
                        continue; // refused by build_batch
                    };
                    if !js.create_chain {
                        return Err(missing_target(js));
                    }
                    if !create.contains(&js.target.as_str()) {
                        create.push(&js.target);
                    }
                }
            }
            if !self.allow_mixed {
                BackendError::check_mixing(crate::detect::Choice::Nft, snap.family)?;
            }
        }
        if snap.chain_exists {
            self.check_base_chain(snap)?;
        }
        if guard == Guard::Anchors {
            // Targets no rule of the chain jumps to: asked about, so that an ENOENT from
            // the batch can only mean a missing anchor.
            let fam = nfproto(snap.family);
            for op in &plan.ops {
                let Op::Insert { jump, .. } = *op else {
                    continue;
                };
                let Some(js) = spec.jumps.get(jump) else {
                    continue; // refused by build_batch
                };
                let t = js.target.as_str();
                if create.contains(&t) || snap.rules.iter().any(|r| r.target() == Some(t)) {
                    continue;
                }
                if !self.chain_exists(fam, &snap.table, t)? {
                    if !js.create_chain {
                        return Err(missing_target(js));
                    }
                    create.push(t);
                }
            }
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut built = self.build_batch(snap, spec, plan, &create, guard)?;
            let answer = self.send_batch(&built.bytes, built.begin, built.end);
            self.batch = std::mem::take(&mut built.bytes);
            let errors = match answer? {
                Answer::Committed { echoed } => {
                    let inserted = built
                        .inserts
                        .iter()
                        .filter_map(|&(seq, jump)| {
                            echoed.iter().find(|e| e.0 == seq).map(|e| (jump, e.1))
                        })
                        .collect();
                    let changes = built.steps.len();
                    (self.steps, self.inserts, self.echoed) = (built.steps, built.inserts, echoed);
                    return Ok((
                        Applied {
                            committed: true,
                            changes,
                            // The kernel increments the genid once per commit, skipping 0;
                            // an anchored batch does not know the generation it committed
                            // on.
                            expected_generation: (guard == Guard::Generation).then_some(match snap
                                .generation
                                .wrapping_add(1)
                            {
                                0 => 1,
                                n => n,
                            }),
                        },
                        inserted,
                    ));
                }
                Answer::Stale => {
                    return Err(BackendError::Stale {
                        planned: snap.generation,
                    })
                }
                // An anchor (a handle deleted or inserted before) is gone.
                Answer::Refused(errors)
                    if guard == Guard::Anchors && errors.first().is_some_and(|e| e.1 == ENOENT) =>
                {
                    return Err(BackendError::Stale {
                        planned: snap.generation,
                    })
                }
                Answer::Refused(errors) => errors,
            };
            // Every error an ENOENT on a NEWRULE whose target the read could not vouch
            // for (under the generation guard nothing else can be missing): those chains
            // do not exist.
            let missing: Option<Vec<usize>> = errors
                .iter()
                .map(|e| {
                    built
                        .inserts
                        .iter()
                        .find(|i| i.0 == e.0 && e.1 == ENOENT)
                        .map(|i| i.1)
                        .filter(|&j| {
                            let t = spec.jumps[j].target.as_str();
                            !create.contains(&t)
                                && !snap.rules.iter().any(|r| r.target() == Some(t))
                        })
                })
                .collect();
            match missing {
                Some(jumps) if attempts == 1 && !jumps.is_empty() => {
                    for j in jumps {
                        let js = &spec.jumps[j];
                        if !js.create_chain {
                            return Err(missing_target(js));
                        }
                        if !create.contains(&js.target.as_str()) {
                            create.push(&js.target);
                        }
                    }
                }
                _ => {
                    return Err(refused(errors, built.begin, |seq| {
                        built.describe(seq, snap, spec, &create)
                    }))
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
    pub(crate) fn census(&mut self) -> Result<NftCensus, BackendError> {
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
    pub(crate) fn hooks(
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
    pub(crate) fn overview(&mut self) -> Result<NftOverview, BackendError> {
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

/// Scaffolding for tests, benches and the demo (feature `testing`; not a stable API):
/// write what other agents would, read the raw dump.
#[cfg(feature = "testing")]
impl NftBackend {
    /// Commit a batch and wait for its verdict: `Ok` only on the END ack.
    fn commit(
        &mut self,
        bytes: &[u8],
        begin: u32,
        end: u32,
        planned: u32,
        steps: &[(u32, String)],
    ) -> Result<(), BackendError> {
        match self.send_batch(bytes, begin, end)? {
            Answer::Committed { .. } => Ok(()),
            Answer::Stale => Err(BackendError::Stale { planned }),
            Answer::Refused(errors) => Err(refused(errors, begin, |seq| {
                steps.iter().find(|s| s.0 == seq).map(|s| s.1.clone())
            })),
        }
    }

    /// Write `rules` at the end of `table`/`chain` in one batch, creating the table, the
    /// base chain and the user chains `chains` first when missing. Used by `demo`, the
    /// bench and tests to set up a scenario (feature `testing`); the rules' counters
    /// become their initial values.
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

    /// The GETRULE dump of one chain as the kernel sent it: every datagram, undecoded
    /// except to find the end. For tests (an independent decoder reads the same bytes)
    /// and for the benchmark's floor (feature `testing`).
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
            for m in codec::messages(&self.buf) {
                let m = m.map_err(undecodable(&step))?;
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
pub(crate) fn hook_name(hook: u32) -> String {
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
        let step = Reading(family, table, chain);
        for attempt in 0..READ_RETRIES {
            let s = self.take_seq(3);
            // The chain is asked for unless a rule seen in it earlier vouches for it.
            let ask = self.known(family, table, chain).is_none();
            let mut req = std::mem::take(&mut self.req);
            read_request_into(&mut req, fam, table, chain, s, ask);
            let mut gen: Option<u32> = None;
            let mut rules = Vec::new();
            // A commit (anywhere) got in during the dump.
            let mut raced = false;
            // This chain's dump is torn: a rule repeated or skipped.
            let mut torn = false;
            // The chain itself (GETCHAIN in the same request): what a write needs to know
            // of it, as of this read.
            let mut found: Option<codec::ChainInfo> = None;
            let mut missing = false;
            // The handle of the rule dumped last: each dumped rule names the one before it.
            let mut last: Option<u64> = None;
            let replies = self.exchange(&req, s..=s + 2, &step, |m| match m.body {
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
                Body::NewChain(c) if m.seq == s + 1 => {
                    raced |= gen.map(|g| g as u16) != Some(m.res_id);
                    found = Some(c);
                    Ok(false)
                }
                Body::Error { code, seq, .. } if seq == s + 1 && -code == ENOENT => {
                    missing = true;
                    Ok(false)
                }
                Body::Done => Ok(true),
                Body::Error { code, msg, .. } if code != 0 => {
                    Err(kernel_err(step.to_string(), -code, msg))
                }
                _ => Ok(false),
            });
            self.req = req;
            replies?;
            let Some(generation) = gen else {
                return Err(BackendError::Kernel {
                    step: step.to_string(),
                    errno: 0,
                    message: "no generation in the reply".into(),
                });
            };
            if torn
                || (raced && attempt < STRICT_READS)
                || (ask && found.is_none() && !missing)
                || (missing && !rules.is_empty())
            {
                continue;
            }
            // Whole, but not at one generation: no write can be guarded by it.
            let generation = if raced { 0 } else { generation };
            let (table_exists, chain_exists) = match (&found, ask) {
                (Some(_), _) => (true, true),
                (None, true) => (self.table_exists(fam, table)?, false),
                (None, false) if rules.is_empty() => self.exists(fam, table, chain)?,
                (None, false) => (true, true),
            };
            let snap = Snapshot {
                family,
                table: table.to_string(),
                chain: chain.to_string(),
                generation,
                table_exists,
                chain_exists,
                rules,
            };
            let described = match found {
                // Not when the read raced a commit: the chain described may not be the one
                // whose rules were dumped.
                Some(info) if !raced => {
                    self.learn(&snap, info);
                    true
                }
                _ => match self.known(family, table, chain) {
                    // The same chain object: a rule known to be in it is still there.
                    Some(k) if k.vouched_by(&snap.rules) => true,
                    _ => {
                        self.known.retain(|k| {
                            (k.family, k.table.as_str(), k.chain.as_str()) != (family, table, chain)
                        });
                        false
                    }
                },
            };
            match &mut self.base {
                Some(b)
                    if (b.family, b.table.as_str(), b.chain.as_str()) == (family, table, chain) =>
                {
                    (b.generation, b.described) = (generation, described);
                }
                base => {
                    *base = Some(BaseSeen {
                        family,
                        table: table.to_string(),
                        chain: chain.to_string(),
                        generation,
                        described,
                    })
                }
            }
            return Ok(snap);
        }
        Err(BackendError::Kernel {
            step: step.to_string(),
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
        self.commit_plan(snap, spec, plan, Guard::Generation)
            .map(|(applied, _)| applied)
    }

    fn apply_anchored(
        &mut self,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<Applied, BackendError> {
        self.commit_plan(snap, spec, plan, Guard::anchors_for(snap))
            .map(|(applied, _)| applied)
    }

    /// Read, plan, and commit one batch guarded by the generation read: once the kernel
    /// acknowledged it, the chain is what the plan made of the read (the kernel checked
    /// the generation under its commit mutex and applied every message or none), so it is
    /// not read back; the inserted rules' handles come from the kernel's echo. A read that
    /// could not be taken at one generation (0) guards nothing: its write is anchored at
    /// once and read back ([`Verified::ReadBack`]).
    fn transact(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Transaction, BackendError> {
        let before = self.read(family, &spec.table, &spec.chain)?;
        let plan = planner(&before);
        let guard = if before.generation == 0 {
            Guard::anchors_for(&before)
        } else {
            Guard::Generation
        };
        self.transaction(before, spec, plan, guard)
    }

    /// Read, plan, and commit one batch anchored on handles (the fallback after stale
    /// attempts): always [`Verified::ReadBack`], unless the table or the chain must be
    /// created, which only a guarded batch does.
    fn transact_anchored(
        &mut self,
        family: Family,
        spec: &ChainSpec,
        planner: &mut dyn FnMut(&Snapshot) -> Plan,
    ) -> Result<Transaction, BackendError> {
        let before = self.read(family, &spec.table, &spec.chain)?;
        let plan = planner(&before);
        let guard = Guard::anchors_for(&before);
        self.transaction(before, spec, plan, guard)
    }
}

impl NftBackend {
    /// Commit `plan`, made from `before`, under `guard`; what that proves.
    fn transaction(
        &mut self,
        before: Snapshot,
        spec: &ChainSpec,
        plan: Plan,
        guard: Guard,
    ) -> Result<Transaction, BackendError> {
        let (applied, inserted) = self.commit_plan(&before, spec, &plan, guard)?;
        Ok(Transaction {
            before,
            plan,
            applied,
            verified: match guard {
                Guard::Generation => Verified::Proven { inserted },
                // A handle guard cannot see a foreign rule inserted since the read.
                Guard::Anchors => Verified::ReadBack,
            },
        })
    }
}
