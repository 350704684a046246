//! The iptables-compat translation: rules in iptables-nft's terms ↔ the backend-independent
//! [`Rule`] / [`Match`] / [`Verdict`].
//!
//! Written as iptables-nft 1.8.9 writes `[-m comment --comment C] [-m addrtype ...]
//! -j/-g T`: an xt `comment` match (or, as `nft` writes it, a userdata comment TLV), xt
//! `addrtype` rev 1 matches, a counter and an immediate verdict. Read back, the first
//! comment, the `addrtype` rev 1 matches, the first counter and the first verdict are
//! interpreted; anything else becomes a [`Match::Opaque`] naming it, so a rule holding it
//! is never taken for a bare jump.

use super::batch::NewRule;
use super::expr::{Expr, ExprView, NftVerdict, NFT_GOTO, NFT_JUMP, NFT_RETURN, NF_ACCEPT, NF_DROP};
use super::frame::{string, until_nul};
use crate::snapshot::{quote, Comment, CommentEncoding, Counters, Match, Rule, Verdict};

/// `XT_MAX_COMMENT_LEN`: the size of `struct xt_comment_info`.
const XT_MAX_COMMENT_LEN: usize = 256;
/// libnftnl's `NFTNL_UDATA_RULE_COMMENT` TLV type.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// The 256-byte `xt_comment_info` for a comment (truncated to 255 bytes, NUL-filled).
pub(super) fn xt_comment_info(comment: &[u8]) -> Vec<u8> {
    let mut info = vec![0; XT_MAX_COMMENT_LEN];
    let n = comment.len().min(XT_MAX_COMMENT_LEN - 1);
    info[..n].copy_from_slice(&comment[..n]);
    info
}

/// Rule userdata holding one comment TLV (type 0, NUL-terminated), as `nft` writes it.
///
/// The comment is truncated to [`CommentEncoding::max_len`] (253) bytes, so that the TLV
/// fits the kernel's 256-byte NFTA_RULE_USERDATA limit.
fn userdata_comment(comment: &[u8]) -> Vec<u8> {
    let n = comment.len().min(CommentEncoding::Userdata.max_len());
    let mut u = Vec::with_capacity(n + 3);
    u.extend_from_slice(&[NFTNL_UDATA_RULE_COMMENT, n as u8 + 1]);
    u.extend_from_slice(&comment[..n]);
    u.push(0);
    u
}

/// The rule iptables-nft 1.8.9 writes for `[-m comment --comment C] [matches] -j/-g T`,
/// with the comment in the given encoding.
///
/// Never panics. What has no encoding is left out of the returned rule: `Match::Opaque`
/// (its bytes are not in the model) and `Verdict::None`/`Verdict::Other` (no verdict
/// expression is written). Callers only encode rules they own, which have neither.
pub fn encode_rule(
    comment: Option<(&[u8], CommentEncoding)>,
    matches: &[Match],
    verdict: &Verdict,
) -> NewRule {
    let mut exprs = Vec::with_capacity(matches.len() + 3);
    let mut userdata = None;
    match comment {
        Some((c, CommentEncoding::Xt)) => exprs.push(Expr::Match {
            name: "comment".into(),
            rev: 0,
            info: xt_comment_info(c),
        }),
        Some((c, CommentEncoding::Userdata)) => userdata = Some(userdata_comment(c)),
        None => {}
    }
    for m in matches {
        if let Match::AddrType {
            source,
            dest,
            flags,
        } = m
        {
            // struct xt_addrtype_info_v1 { u16 source; u16 dest; u32 flags; }, host order.
            let mut info = Vec::with_capacity(8);
            info.extend_from_slice(&source.to_ne_bytes());
            info.extend_from_slice(&dest.to_ne_bytes());
            info.extend_from_slice(&flags.to_ne_bytes());
            exprs.push(Expr::Match {
                name: "addrtype".into(),
                rev: 1,
                info,
            });
        }
    }
    exprs.push(Expr::Counter {
        bytes: 0,
        packets: 0,
    });
    let (code, chain) = match verdict {
        Verdict::Jump(c) => (NFT_JUMP, Some(c.clone())),
        Verdict::Goto(c) => (NFT_GOTO, Some(c.clone())),
        Verdict::Accept => (NF_ACCEPT, None),
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::None | Verdict::Other(_) => {
            return NewRule {
                exprs,
                userdata,
                compat: true,
            }
        }
    };
    exprs.push(Expr::Verdict(NftVerdict { code, chain }));
    NewRule {
        exprs,
        userdata,
        compat: true,
    }
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// A rule with nothing in it yet (handle 0).
pub(super) fn empty_rule() -> Rule {
    Rule {
        handle: 0,
        comment: None,
        matches: Vec::new(),
        counters: None,
        verdict: Verdict::None,
    }
}

/// Forget what expressions put into `out` (its handle stays).
pub(super) fn clear(out: &mut Rule) {
    out.comment = None;
    out.matches.clear();
    out.counters = None;
    out.verdict = Verdict::None;
}

/// One expression, in rule order, into `out`.
#[inline]
pub(super) fn add_expr(out: &mut Rule, e: ExprView<'_>) {
    match e {
        ExprView::Match { name, rev, info } => match (name, rev, info.len()) {
            (b"comment", 0, _) => add_comment(out, until_nul(info), CommentEncoding::Xt),
            (b"addrtype", 1, 8) => out.matches.push(Match::AddrType {
                source: u16::from_ne_bytes([info[0], info[1]]),
                dest: u16::from_ne_bytes([info[2], info[3]]),
                flags: u32::from_ne_bytes([info[4], info[5], info[6], info[7]]),
            }),
            _ => out.matches.push(Match::Opaque(named("-m ", name, ""))),
        },
        ExprView::Target { name, .. } => set_verdict(out, Verdict::Other(named("-j ", name, ""))),
        ExprView::Counter { bytes, packets } => {
            if out.counters.is_none() {
                out.counters = Some(Counters { packets, bytes });
            } else {
                out.matches.push(Match::Opaque("<nft counter>".into()));
            }
        }
        ExprView::Verdict { code, chain } => set_verdict(out, verdict(code, chain)),
        ExprView::Other { name, .. } => out.matches.push(Match::Opaque(named("<nft ", name, ">"))),
    }
}

/// `prefix`, the name (lossily where it is not UTF-8), `suffix` — without the formatting
/// machinery: the read path makes one for every expression of a foreign rule.
fn named(prefix: &str, name: &[u8], suffix: &str) -> String {
    let name = String::from_utf8_lossy(until_nul(name));
    let mut s = String::with_capacity(prefix.len() + name.len() + suffix.len());
    s.push_str(prefix);
    s.push_str(&name);
    s.push_str(suffix);
    s
}

fn verdict(code: i32, chain: Option<&[u8]>) -> Verdict {
    match (code, chain) {
        (NFT_JUMP, Some(c)) => Verdict::Jump(string(c)),
        (NFT_GOTO, Some(c)) => Verdict::Goto(string(c)),
        (NF_ACCEPT, _) => Verdict::Accept,
        (NF_DROP, _) => Verdict::Drop,
        (NFT_RETURN, _) => Verdict::Return,
        (code, _) => Verdict::Other(format!("<verdict {code}>")),
    }
}

fn set_verdict(out: &mut Rule, v: Verdict) {
    if out.verdict == Verdict::None {
        out.verdict = v;
    } else {
        out.matches.push(Match::Opaque(v.iptables()));
    }
}

fn add_comment(out: &mut Rule, bytes: &[u8], encoding: CommentEncoding) {
    if out.comment.is_none() {
        out.comment = Some(Comment {
            bytes: bytes.to_vec(),
            encoding,
        });
    } else {
        let text = quote(&String::from_utf8_lossy(bytes));
        out.matches
            .push(Match::Opaque(format!("-m comment --comment {text}")));
    }
}

/// The rule's NFTA_RULE_USERDATA into `out`, after its expressions. libnftnl udata:
/// packed TLVs `u8 type, u8 len, value[len]`; the comment is type 0 with a NUL-terminated
/// value (iptables-nft ignores one without the NUL).
pub(super) fn add_userdata(out: &mut Rule, mut u: &[u8]) {
    while let [ty, len, rest @ ..] = u {
        let Some(value) = rest.get(..*len as usize) else {
            break;
        };
        if *ty == NFTNL_UDATA_RULE_COMMENT && value.last() == Some(&0) {
            add_comment(out, until_nul(value), CommentEncoding::Userdata);
        } else {
            out.matches
                .push(Match::Opaque(format!("<userdata type {ty}>")));
        }
        u = &rest[*len as usize..];
    }
    if !u.is_empty() {
        out.matches
            .push(Match::Opaque("<userdata malformed>".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::batch::{Batch, Position};
    use super::super::message::{parse, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA};
    use super::super::testutil::*;
    use super::*;
    use crate::snapshot::ADDRTYPE_LOCAL;
    use proptest::prelude::*;

    /// encode_rule → NEWRULE request → kernel-style reply → the one decoder.
    fn round_trip(
        comment: Option<(&[u8], CommentEncoding)>,
        matches: &[Match],
        verdict: &Verdict,
    ) -> Rule {
        let rule = encode_rule(comment, matches, verdict);
        let bytes = dumped(&rule);
        let m = one(&bytes);
        let r = rule_of(&m);
        let read: Vec<Expr> = r.exprs().map(|e| Expr::from(e.unwrap())).collect();
        assert_eq!(read, rule.exprs);
        assert_eq!(r.userdata().map(<[u8]>::to_vec), rule.userdata);
        r.rule.clone()
    }

    /// A rule with these expressions and userdata, as the decoder reads it.
    fn decoded(exprs: Vec<Expr>, userdata: Option<Vec<u8>>) -> Rule {
        let bytes = dumped_exprs(exprs, userdata);
        let m = one(&bytes);
        rule_of(&m).rule.clone()
    }

    fn comment(text: &str, encoding: CommentEncoding) -> Option<Comment> {
        Some(Comment {
            bytes: text.as_bytes().to_vec(),
            encoding,
        })
    }

    fn jump(chain: &str) -> Verdict {
        Verdict::Jump(chain.into())
    }

    const LOCAL: Match = Match::AddrType {
        source: 0,
        dest: ADDRTYPE_LOCAL,
        flags: 0,
    };

    #[test]
    fn the_captured_chain_reads_in_iptables_terms() {
        // The dump of `iptables-nft -t nat -S PREROUTING` (see message's tests for what
        // wrote each rule).
        let msgs = parse(fixture!("rx_dump_prerouting")).unwrap();
        let model: Vec<&Rule> = msgs.iter().map(|m| &rule_of(m).rule).collect();
        let counters = Some(Counters::default());
        let want = [
            (
                3,
                comment("kube-ovn prerouting rules", CommentEncoding::Xt),
                vec![],
                jump("OVN-PREROUTING"),
            ),
            (
                7,
                comment("kubernetes service portals", CommentEncoding::Xt),
                vec![],
                Verdict::Goto("KUBE-SERVICES".into()),
            ),
            (5, None, vec![LOCAL], jump("CNI-HOSTPORT-DNAT")),
            (
                9,
                comment("kubernetes service portals", CommentEncoding::Userdata),
                vec![],
                jump("KUBE-SERVICES"),
            ),
            (
                10,
                None,
                vec![
                    Match::Opaque("<nft fib>".into()),
                    Match::Opaque("<nft cmp>".into()),
                ],
                jump("CNI-HOSTPORT-DNAT"),
            ),
            (
                11,
                None,
                vec![
                    Match::Opaque("<nft meta>".into()),
                    Match::Opaque("<nft cmp>".into()),
                ],
                jump("KUBE-SERVICES"),
            ),
        ];
        assert_eq!(model.len(), want.len());
        for (got, (handle, comment, matches, verdict)) in model.iter().zip(want) {
            let want = Rule {
                handle,
                comment,
                matches,
                counters,
                verdict,
            };
            assert_eq!(**got, want);
        }
        let bare: Vec<bool> = model.iter().map(|r| r.is_bare_jump()).collect();
        assert_eq!(bare, [true, true, false, true, false, false]);
        assert_eq!(
            model[2].iptables(),
            "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT"
        );
    }

    #[test]
    fn dumped_rules_written_from_the_model_are_what_was_sent() {
        // The kernel's copy of an iptables-nft rule, read into the model and written again
        // (encode_rule, with COMPAT), is byte for byte the NEWRULE iptables-nft sent.
        let dump = parse(fixture!("rx_dump_prerouting")).unwrap();
        let resend = |i: usize, genid, seq, at| {
            let r = &rule_of(&dump[i]).rule;
            let c = r.comment.as_ref().map(|c| (c.bytes.as_slice(), c.encoding));
            let mut b = Batch::begin(genid, seq);
            b.new_rule(
                IP,
                "nat",
                "PREROUTING",
                &encode_rule(c, &r.matches, &r.verdict),
                at,
            );
            split(&b.end().0)[1].to_vec()
        };
        let sent = |tx: &[u8], i: usize| split(tx)[i].to_vec();
        assert_eq!(
            resend(0, 2, 2, Position::Append),
            sent(fixture!("tx_comment_batch"), 2)
        );
        assert_eq!(
            resend(1, 6, 1, Position::Before(5)),
            sent(fixture!("tx_insert_before_batch"), 1)
        );
        assert_eq!(
            resend(2, 4, 1, Position::Append),
            sent(fixture!("tx_addrtype_batch"), 1)
        );
        // nft's rule (userdata comment): the same userdata, the same expressions read;
        // nft sends no COMPAT and an empty counter, encode_rule both.
        let ours = resend(3, 1, 1, Position::Append);
        let theirs = split(fixture!("tx_nft_userdata_batch"))[1];
        assert_eq!(
            top_attr(&ours, NFTA_RULE_USERDATA),
            top_attr(theirs, NFTA_RULE_USERDATA)
        );
        let exprs = |m| {
            let msg = as_dumped(m, 1);
            let m = one(&msg);
            rule_of(&m)
                .exprs()
                .map(|e| Expr::from(e.unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(exprs(&ours), exprs(theirs));
        assert!(top_attr(&ours, NFTA_RULE_EXPRESSIONS).is_some());
    }

    #[test]
    fn comment_helpers_truncate_and_terminate() {
        let long = [b'a'; 300];
        let info = xt_comment_info(&long);
        assert_eq!(info.len(), 256);
        assert!(info[..255].iter().all(|&b| b == b'a') && info[255] == 0);
        assert_eq!(xt_comment_info(b"X")[..2], [b'X', 0]);

        let u = userdata_comment(b"kube-ovn");
        assert_eq!(u, b"\x00\x09kube-ovn\x00");
        let u = userdata_comment(&long);
        assert_eq!((u.len(), u[1], u[255]), (256, 254, 0));
    }

    #[test]
    fn encode_then_decode_round_trips_both_encodings() {
        for enc in [CommentEncoding::Xt, CommentEncoding::Userdata] {
            let c: &[u8] = b"cali:6gwbT8clXdHdC1b1";
            let r = round_trip(Some((c, enc)), &[], &jump("cali-PREROUTING"));
            assert_eq!(r.comment, comment("cali:6gwbT8clXdHdC1b1", enc));
            assert_eq!(
                (r.verdict, r.counters),
                (jump("cali-PREROUTING"), Some(Counters::default()))
            );
            assert!(r.matches.is_empty());

            let goto = Verdict::Goto("CNI-HOSTPORT-DNAT".into());
            let r = round_trip(Some((b"portmap", enc)), &[LOCAL], &goto);
            assert_eq!(r.comment, comment("portmap", enc));
            assert_eq!((r.matches, r.verdict), (vec![LOCAL], goto));

            for v in [Verdict::Accept, Verdict::Drop, Verdict::Return] {
                assert_eq!(round_trip(Some((b"x", enc)), &[], &v).verdict, v);
            }
        }
    }

    #[test]
    fn what_cannot_be_encoded_is_left_out() {
        let opaque = [Match::Opaque("-p tcp".into()), LOCAL];
        for v in [Verdict::None, Verdict::Other("-j DNAT".into())] {
            let rule = encode_rule(None, &opaque, &v);
            assert_eq!(rule.exprs.len(), 2, "addrtype and counter only: {rule:?}");
            assert!(matches!(rule.exprs[1], Expr::Counter { .. }));
        }
        let r = round_trip(None, &opaque, &Verdict::None);
        assert_eq!((r.matches, r.verdict), (vec![LOCAL], Verdict::None));
    }

    #[test]
    fn what_makes_a_rule_not_ours_is_opaque() {
        let xt = |name: &str, rev, info: &[u8]| Expr::Match {
            name: name.into(),
            rev,
            info: info.to_vec(),
        };
        let verdict = Expr::Verdict(NftVerdict {
            code: NFT_JUMP,
            chain: Some("X".into()),
        });
        // Two comments: the second is opaque.
        let r = decoded(
            vec![xt("comment", 0, &xt_comment_info(b"a")), verdict.clone()],
            Some(userdata_comment(b"b c")),
        );
        assert_eq!(r.comment, comment("a", CommentEncoding::Xt));
        assert_eq!(
            r.matches,
            [Match::Opaque(r#"-m comment --comment "b c""#.into())]
        );
        // Userdata with another TLV, or cut short, is opaque too.
        let mut u = userdata_comment(b"a");
        u.extend_from_slice(&[1, 1, 7]);
        let r = decoded(vec![verdict.clone()], Some(u.clone()));
        assert_eq!(r.comment, comment("a", CommentEncoding::Userdata));
        assert_eq!(r.matches, [Match::Opaque("<userdata type 1>".into())]);
        u.truncate(u.len() - 1);
        let r = decoded(vec![verdict.clone()], Some(u));
        assert_eq!(r.matches, [Match::Opaque("<userdata malformed>".into())]);
        // Other matches, targets, second counters and verdicts, native expressions.
        let r = decoded(
            vec![
                xt("tcp", 0, &[0; 16]),
                xt("addrtype", 0, &[0; 8]),
                Expr::Counter {
                    bytes: 5,
                    packets: 1,
                },
                Expr::Counter {
                    bytes: 0,
                    packets: 0,
                },
                Expr::Other {
                    name: "payload".into(),
                    data: vec![],
                },
                Expr::Target {
                    name: "DNAT".into(),
                    rev: 2,
                    info: vec![],
                },
                verdict,
            ],
            None,
        );
        let opaque = |s: &str| Match::Opaque(s.into());
        assert_eq!(
            r.matches,
            [
                opaque("-m tcp"),
                opaque("-m addrtype"),
                opaque("<nft counter>"),
                opaque("<nft payload>"),
                opaque("-j X")
            ]
        );
        assert_eq!(r.verdict, Verdict::Other("-j DNAT".into()));
        assert_eq!(
            r.counters,
            Some(Counters {
                packets: 1,
                bytes: 5
            })
        );
        // An unknown verdict code and a jump without a chain.
        for code in [-1, NFT_JUMP] {
            let v = Expr::Verdict(NftVerdict { code, chain: None });
            let r = decoded(vec![v], None);
            assert_eq!(r.verdict, Verdict::Other(format!("<verdict {code}>")));
        }
    }

    fn verdicts() -> impl Strategy<Value = Verdict> {
        let chain = "[A-Z][A-Z0-9_-]{0,28}";
        prop_oneof![
            chain.prop_map(Verdict::Jump),
            chain.prop_map(Verdict::Goto),
            Just(Verdict::Accept),
            Just(Verdict::Drop),
            Just(Verdict::Return),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn userdata_survives_random_bytes(u in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut r = empty_rule();
            add_userdata(&mut r, &u);
            // Nothing is dropped silently: every byte is a comment or something opaque.
            prop_assert!(u.is_empty() || r.comment.is_some() || !r.matches.is_empty());
        }

        #[test]
        fn encode_then_decode_gives_the_rule_back(
            text in prop::collection::vec(1u8..=255, 1..300),
            userdata in any::<bool>(),
            addrtypes in prop::collection::vec((any::<u16>(), any::<u16>(), any::<u32>()), 0..3),
            verdict in verdicts(),
        ) {
            let enc = if userdata { CommentEncoding::Userdata } else { CommentEncoding::Xt };
            let matches: Vec<Match> = addrtypes
                .iter()
                .map(|&(source, dest, flags)| Match::AddrType { source, dest, flags })
                .collect();
            let r = round_trip(Some((&text, enc)), &matches, &verdict);
            let n = text.len().min(enc.max_len());
            let want = Comment { bytes: text[..n].to_vec(), encoding: enc };
            prop_assert_eq!(r.comment, Some(want));
            prop_assert_eq!(&r.matches, &matches);
            prop_assert_eq!(r.counters, Some(Counters::default()));
            prop_assert_eq!(&r.verdict, &verdict);
        }
    }
}
