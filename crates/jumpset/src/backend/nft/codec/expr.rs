//! Rule expressions: the xt `match` and `target`, `counter`, `immediate` into the verdict
//! register, and every other expression kept as its raw `NFTA_EXPR_DATA`.
//!
//! Read as [`ExprView`]s borrowing the kernel's bytes (what [`super::compat`] turns into
//! the model); written from [`Expr`]s, nested attributes flagged as libnftnl flags them.
//! An expression that is not interpreted is sent back byte for byte as it was read.

use super::frame::{
    attrs, be32, be64, missing, nest_end, nest_start, put, put_be32, put_be64, put_str, until_nul,
    CodecError,
};

/// Verdict code `NF_DROP`.
pub(super) const NF_DROP: i32 = 0;
/// Verdict code `NF_ACCEPT` (also the base chain policy iptables-nft sets).
pub(super) const NF_ACCEPT: i32 = 1;
/// Verdict code `NFT_JUMP` (`-j CHAIN`).
pub(super) const NFT_JUMP: i32 = -3;
/// Verdict code `NFT_GOTO` (`-g CHAIN`).
pub(super) const NFT_GOTO: i32 = -4;
/// Verdict code `NFT_RETURN`.
pub(super) const NFT_RETURN: i32 = -5;

pub(super) const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// `target` uses the same numbers (NFTA_TARGET_NAME/REV/INFO).
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_REV: u16 = 2;
const NFTA_MATCH_INFO: u16 = 3;
const NFTA_COUNTER_BYTES: u16 = 1;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;

/// An nf_tables verdict (`NFTA_DATA_VERDICT`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NftVerdict {
    /// NFT_JUMP -3, NFT_GOTO -4, NFT_RETURN -5, NF_DROP 0, NF_ACCEPT 1, ...
    pub code: i32,
    /// The chain for jump/goto.
    pub chain: Option<String>,
}

/// One expression of a rule to write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// xt match (`match`): name, revision, raw info blob (host byte order).
    Match {
        /// The xt extension name (`comment`, `addrtype`, ...).
        name: String,
        /// The extension revision.
        rev: u32,
        /// The extension's info struct, raw.
        info: Vec<u8>,
    },
    /// xt target (`target`): name, revision, raw info blob.
    Target {
        /// The xt extension name (`DNAT`, `MARK`, ...).
        name: String,
        /// The extension revision.
        rev: u32,
        /// The extension's info struct, raw.
        info: Vec<u8>,
    },
    /// `counter`.
    Counter {
        /// Bytes counted.
        bytes: u64,
        /// Packets counted.
        packets: u64,
    },
    /// `immediate` into the verdict register.
    Verdict(NftVerdict),
    /// Any other expression: its name and the raw payload of NFTA_EXPR_DATA, sent as is.
    Other {
        /// The expression name (`payload`, `meta`, `cmp`, `fib`, ...).
        name: String,
        /// The payload of its NFTA_EXPR_DATA, byte for byte.
        data: Vec<u8>,
    },
}

/// One expression of a rule as the kernel sent it, borrowing the datagram. Names are
/// the attribute's bytes up to their NUL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprView<'a> {
    /// xt match (`match`).
    Match {
        /// The xt extension name (`comment`, `addrtype`, ...).
        name: &'a [u8],
        /// The extension revision.
        rev: u32,
        /// The extension's info struct, raw (host byte order).
        info: &'a [u8],
    },
    /// xt target (`target`).
    Target {
        /// The xt extension name (`DNAT`, `MARK`, ...).
        name: &'a [u8],
        /// The extension revision.
        rev: u32,
        /// The extension's info struct, raw.
        info: &'a [u8],
    },
    /// `counter` (0/0 for attributes `nft` leaves out).
    Counter {
        /// Bytes counted.
        bytes: u64,
        /// Packets counted.
        packets: u64,
    },
    /// `immediate` into the verdict register.
    Verdict {
        /// NFT_JUMP -3, NFT_GOTO -4, NFT_RETURN -5, NF_DROP 0, NF_ACCEPT 1, ...
        code: i32,
        /// The chain for jump/goto.
        chain: Option<&'a [u8]>,
    },
    /// Any other expression (an `immediate` loading data included): its name and the
    /// payload of its NFTA_EXPR_DATA.
    Other {
        /// The expression name (`payload`, `meta`, `cmp`, `fib`, ...).
        name: &'a [u8],
        /// The payload of its NFTA_EXPR_DATA, byte for byte.
        data: &'a [u8],
    },
}

impl<'a> ExprView<'a> {
    /// The expression's NFTA_EXPR_NAME (`match`, `target`, `counter`, `immediate`, ...).
    #[cfg(any(test, feature = "testing", feature = "fuzzing"))]
    pub fn name(&self) -> &'a [u8] {
        match self {
            ExprView::Match { .. } => b"match",
            ExprView::Target { .. } => b"target",
            ExprView::Counter { .. } => b"counter",
            ExprView::Verdict { .. } => b"immediate",
            ExprView::Other { name, .. } => name,
        }
    }
}

impl From<ExprView<'_>> for Expr {
    /// The expression that writes back what was read (names that are not UTF-8 lossily).
    fn from(v: ExprView<'_>) -> Expr {
        let name = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
        match v {
            ExprView::Match { name: n, rev, info } => Expr::Match {
                name: name(n),
                rev,
                info: info.to_vec(),
            },
            ExprView::Target { name: n, rev, info } => Expr::Target {
                name: name(n),
                rev,
                info: info.to_vec(),
            },
            ExprView::Counter { bytes, packets } => Expr::Counter { bytes, packets },
            ExprView::Verdict { code, chain } => Expr::Verdict(NftVerdict {
                code,
                chain: chain.map(name),
            }),
            ExprView::Other { name: n, data } => Expr::Other {
                name: name(n),
                data: data.to_vec(),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// The expressions of an NFTA_RULE_EXPRESSIONS payload, in order (attributes other than
/// NFTA_LIST_ELEM are skipped). Callers stop at the first error.
pub(super) fn list(buf: &[u8]) -> impl Iterator<Item = Result<ExprView<'_>, CodecError>> {
    attrs(buf, "NFTA_RULE_EXPRESSIONS").filter_map(|a| match a {
        Ok((NFTA_LIST_ELEM, e)) => Some(decode(e)),
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    })
}

/// One NFTA_LIST_ELEM: its name, then what its data says.
#[inline(always)]
pub(super) fn decode(buf: &[u8]) -> Result<ExprView<'_>, CodecError> {
    let (mut name, mut data): (Option<&[u8]>, &[u8]) = (None, &[]);
    for a in attrs(buf, "expression") {
        let (t, p) = a?;
        match t {
            NFTA_EXPR_NAME => name = Some(until_nul(p)),
            NFTA_EXPR_DATA => data = p,
            _ => {}
        }
    }
    let name = name.ok_or_else(|| missing("expression", "NFTA_EXPR_NAME"))?;
    Ok(match name {
        b"match" => {
            let (name, rev, info) = xt(data, "match")?;
            ExprView::Match { name, rev, info }
        }
        b"target" => {
            let (name, rev, info) = xt(data, "target")?;
            ExprView::Target { name, rev, info }
        }
        b"counter" => counter(data)?,
        b"immediate" => verdict(data)?.unwrap_or(ExprView::Other { name, data }),
        _ => ExprView::Other { name, data },
    })
}

/// An xt match's or target's extension name (up to its NUL), revision and info.
fn xt<'a>(buf: &'a [u8], what: &'static str) -> Result<(&'a [u8], u32, &'a [u8]), CodecError> {
    let (mut name, mut rev, mut info) = (None, None, None);
    for a in attrs(buf, what) {
        let (t, p) = a?;
        match t {
            NFTA_MATCH_NAME => name = Some(until_nul(p)),
            NFTA_MATCH_REV => rev = Some(be32(p, "NFTA_MATCH_REV")?),
            NFTA_MATCH_INFO => info = Some(p),
            _ => {}
        }
    }
    Ok((
        name.ok_or_else(|| missing(what, "NFTA_MATCH_NAME"))?,
        rev.ok_or_else(|| missing(what, "NFTA_MATCH_REV"))?,
        info.ok_or_else(|| missing(what, "NFTA_MATCH_INFO"))?,
    ))
}

fn counter(buf: &[u8]) -> Result<ExprView<'_>, CodecError> {
    // nft sends a counter without attributes; the kernel always dumps both.
    let (mut bytes, mut packets) = (0, 0);
    for a in attrs(buf, "counter") {
        let (t, p) = a?;
        match t {
            NFTA_COUNTER_BYTES => bytes = be64(p, "NFTA_COUNTER_BYTES")?,
            NFTA_COUNTER_PACKETS => packets = be64(p, "NFTA_COUNTER_PACKETS")?,
            _ => {}
        }
    }
    Ok(ExprView::Counter { bytes, packets })
}

/// The verdict of an `immediate` into the verdict register; `None` when it loads data.
fn verdict(buf: &[u8]) -> Result<Option<ExprView<'_>>, CodecError> {
    let (mut dreg, mut data) = (None, None);
    for a in attrs(buf, "immediate") {
        let (t, p) = a?;
        match t {
            NFTA_IMMEDIATE_DREG => dreg = Some(be32(p, "NFTA_IMMEDIATE_DREG")?),
            NFTA_IMMEDIATE_DATA => data = Some(p),
            _ => {}
        }
    }
    let (Some(NFT_REG_VERDICT), Some(data)) = (dreg, data) else {
        return Ok(None);
    };
    let mut verdict = None;
    for a in attrs(data, "NFTA_IMMEDIATE_DATA") {
        let (t, p) = a?;
        if t == NFTA_DATA_VERDICT {
            verdict = Some(p);
        }
    }
    let Some(verdict) = verdict else {
        return Ok(None);
    };
    let (mut code, mut chain) = (None, None);
    for a in attrs(verdict, "NFTA_DATA_VERDICT") {
        let (t, p) = a?;
        match t {
            NFTA_VERDICT_CODE => code = Some(be32(p, "NFTA_VERDICT_CODE")? as i32),
            NFTA_VERDICT_CHAIN => chain = Some(until_nul(p)),
            _ => {}
        }
    }
    Ok(Some(ExprView::Verdict {
        code: code.ok_or_else(|| missing("NFTA_DATA_VERDICT", "NFTA_VERDICT_CODE"))?,
        chain,
    }))
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// One NFTA_LIST_ELEM {NAME, DATA{...}}, nested attributes flagged like libnftnl does.
pub(super) fn put_expr(b: &mut Vec<u8>, e: &Expr) {
    let elem = nest_start(b);
    match e {
        Expr::Match { name, rev, info } | Expr::Target { name, rev, info } => {
            let kind = if matches!(e, Expr::Match { .. }) {
                "match"
            } else {
                "target"
            };
            put_str(b, NFTA_EXPR_NAME, kind);
            let data = nest_start(b);
            put_str(b, NFTA_MATCH_NAME, name);
            put_be32(b, NFTA_MATCH_REV, *rev);
            put(b, NFTA_MATCH_INFO, false, info);
            nest_end(b, data, NFTA_EXPR_DATA);
        }
        Expr::Counter { bytes, packets } => {
            put_str(b, NFTA_EXPR_NAME, "counter");
            let data = nest_start(b);
            put_be64(b, NFTA_COUNTER_BYTES, *bytes);
            put_be64(b, NFTA_COUNTER_PACKETS, *packets);
            nest_end(b, data, NFTA_EXPR_DATA);
        }
        Expr::Verdict(v) => {
            put_str(b, NFTA_EXPR_NAME, "immediate");
            let data = nest_start(b);
            put_be32(b, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            let imm = nest_start(b);
            let verdict = nest_start(b);
            put_be32(b, NFTA_VERDICT_CODE, v.code as u32);
            if let Some(chain) = &v.chain {
                put_str(b, NFTA_VERDICT_CHAIN, chain);
            }
            nest_end(b, verdict, NFTA_DATA_VERDICT);
            nest_end(b, imm, NFTA_IMMEDIATE_DATA);
            nest_end(b, data, NFTA_EXPR_DATA);
        }
        Expr::Other { name, data } => {
            put_str(b, NFTA_EXPR_NAME, name);
            put(b, NFTA_EXPR_DATA, true, data);
        }
    }
    nest_end(b, elem, NFTA_LIST_ELEM);
}

#[cfg(test)]
mod tests {
    use super::super::message::NFTA_RULE_EXPRESSIONS;
    use super::super::testutil::{fixture, split, top_attr};
    use super::*;
    use crate::snapshot::ADDRTYPE_LOCAL;

    /// The expression list of the `i`th message of a capture.
    fn exprs_of(d: &[u8], i: usize) -> &[u8] {
        top_attr(split(d)[i], NFTA_RULE_EXPRESSIONS).unwrap()
    }

    fn views(list_bytes: &[u8]) -> Result<Vec<ExprView<'_>>, CodecError> {
        list(list_bytes).collect()
    }

    fn jump(code: i32, chain: &str) -> ExprView<'_> {
        ExprView::Verdict {
            code,
            chain: Some(chain.as_bytes()),
        }
    }

    const ZERO: ExprView<'static> = ExprView::Counter {
        bytes: 0,
        packets: 0,
    };

    #[test]
    fn captured_expressions_read_as_views() {
        // The dump of `iptables-nft -t nat -S PREROUTING` (see message's tests for what
        // wrote each rule).
        let dump = fixture!("rx_dump_prerouting");
        let v = views(exprs_of(dump, 0)).unwrap();
        let ExprView::Match { name, rev, info } = v[0] else {
            panic!("{v:?}")
        };
        assert_eq!((name, rev, info.len()), (&b"comment"[..], 0, 256));
        assert!(info.starts_with(b"kube-ovn prerouting rules\0"));
        assert_eq!(v[1..], [ZERO, jump(NFT_JUMP, "OVN-PREROUTING")]);
        let v = views(exprs_of(dump, 1)).unwrap();
        assert_eq!(v[2], jump(NFT_GOTO, "KUBE-SERVICES"));
        // -m addrtype --dst-type LOCAL: xt_addrtype_info_v1 {source 0, dest LOCAL, flags
        // 0}, host order.
        let v = views(exprs_of(dump, 2)).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&0u16.to_ne_bytes());
        want.extend_from_slice(&ADDRTYPE_LOCAL.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        assert_eq!(
            v[0],
            ExprView::Match {
                name: b"addrtype",
                rev: 1,
                info: &want
            }
        );
        // nft's fib and cmp stay raw, under their names.
        let v = views(exprs_of(dump, 4)).unwrap();
        let names: Vec<&[u8]> = v.iter().map(ExprView::name).collect();
        assert_eq!(names, [&b"fib"[..], b"cmp", b"counter", b"immediate"]);
        assert!(matches!(v[0], ExprView::Other { name: b"fib", data } if !data.is_empty()));

        // nft add rule ip nat PREROUTING counter jump KUBE-SERVICES comment "...": nft
        // writes `counter` with an empty NFTA_EXPR_DATA, which reads as 0/0.
        let v = views(exprs_of(fixture!("tx_nft_userdata_batch"), 1)).unwrap();
        assert_eq!(v, [ZERO, jump(NFT_JUMP, "KUBE-SERVICES")]);
        // iptables-nft -t nat -I PREROUTING -j RETURN: a verdict without a chain.
        let v = views(exprs_of(fixture!("tx_insert_head_batch"), 1)).unwrap();
        assert_eq!(
            v[1],
            ExprView::Verdict {
                code: NFT_RETURN,
                chain: None
            }
        );
    }

    #[test]
    fn expressions_write_as_iptables_nft_writes_them() {
        // Each expression list iptables-nft sent (xt comment and addrtype matches, counter,
        // jump, goto, return), read and written again, is byte for byte what it sent.
        let sent = [
            (fixture!("tx_comment_batch"), 2),
            (fixture!("tx_addrtype_batch"), 1),
            (fixture!("tx_insert_before_batch"), 1),
            (fixture!("tx_insert_head_batch"), 1),
        ];
        for (d, i) in sent {
            let theirs = exprs_of(d, i);
            let mut ours = Vec::new();
            for v in views(theirs).unwrap() {
                put_expr(&mut ours, &Expr::from(v));
            }
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn other_expressions_are_kept_byte_for_byte() {
        // The dump's native expressions (fib, meta, cmp), written back raw, read the same.
        let dump = fixture!("rx_dump_prerouting");
        let mut n = 0;
        for i in 0..6 {
            for v in views(exprs_of(dump, i)).unwrap() {
                let ExprView::Other { name, data } = v else {
                    continue;
                };
                let mut b = Vec::new();
                put_expr(&mut b, &Expr::from(v));
                assert_eq!(views(&b).unwrap(), [ExprView::Other { name, data }]);
                n += 1;
            }
        }
        assert_eq!(n, 4, "fib, cmp, meta, cmp");

        // An `immediate` that loads a data register, not the verdict: kept raw too.
        let mut data = Vec::new();
        put_be32(&mut data, NFTA_IMMEDIATE_DREG, 1);
        put(
            &mut data,
            NFTA_IMMEDIATE_DATA,
            true,
            &[8, 0, 1, 0, 1, 2, 3, 4],
        );
        let loads = Expr::Other {
            name: "immediate".into(),
            data: data.clone(),
        };
        let mut b = Vec::new();
        put_expr(&mut b, &loads);
        let v = views(&b).unwrap();
        assert_eq!(
            v,
            [ExprView::Other {
                name: b"immediate",
                data: &data
            }]
        );
        assert_eq!(Expr::from(v[0]), loads);
    }

    #[test]
    fn malformed_expressions_are_errors() {
        let malformed = |b: &[u8], what: &str, detail: &str| match views(b) {
            Err(CodecError::Malformed { what: w, detail: d }) => {
                assert_eq!(w, what);
                assert!(d.contains(detail), "{d}");
            }
            r => panic!("{r:?}"),
        };
        let elem = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            let e = nest_start(&mut b);
            f(&mut b);
            nest_end(&mut b, e, NFTA_LIST_ELEM);
            b
        };
        let named = |name: &'static str, data: Vec<u8>| {
            elem(&move |b| {
                put_str(b, NFTA_EXPR_NAME, name);
                put(b, NFTA_EXPR_DATA, true, &data);
            })
        };
        let attr = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = Vec::new();
            f(&mut b);
            b
        };
        malformed(
            &elem(&|b| put(b, NFTA_EXPR_DATA, true, &[])),
            "expression",
            "NFTA_EXPR_NAME is missing",
        );
        // The first iptables-nft rule's comment match, without its info.
        let comment = attr(&|b| {
            put_str(b, NFTA_MATCH_NAME, "comment");
            put_be32(b, NFTA_MATCH_REV, 0);
        });
        malformed(
            &named("match", comment),
            "match",
            "NFTA_MATCH_INFO is missing",
        );
        let target = attr(&|b| {
            put_str(b, NFTA_MATCH_NAME, "DNAT");
            put(b, NFTA_MATCH_REV, false, &[0; 2]);
            put(b, NFTA_MATCH_INFO, false, &[]);
        });
        malformed(&named("target", target), "NFTA_MATCH_REV", "found 2");
        let counter = attr(&|b| put_be32(b, NFTA_COUNTER_BYTES, 1));
        malformed(&named("counter", counter), "NFTA_COUNTER_BYTES", "found 4");
        let no_code = attr(&|b| {
            put_be32(b, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            let d = nest_start(b);
            let v = nest_start(b);
            put_str(b, NFTA_VERDICT_CHAIN, "X");
            nest_end(b, v, NFTA_DATA_VERDICT);
            nest_end(b, d, NFTA_IMMEDIATE_DATA);
        });
        malformed(
            &named("immediate", no_code),
            "NFTA_DATA_VERDICT",
            "NFTA_VERDICT_CODE is missing",
        );
        // A list cut short ends in an error, after the expressions before it.
        let dump = exprs_of(fixture!("rx_dump_prerouting"), 0);
        let cut = &dump[..dump.len() - 1];
        let got: Vec<_> = list(cut).collect();
        assert!(
            got[..2].iter().all(Result::is_ok) && got[2].is_err(),
            "{got:?}"
        );
    }
}
