//! Netlink framing: splitting a datagram into messages, iterating and emitting
//! attributes, and the errors every layer above reports.
//!
//! Attribute types are masked with `NLA_TYPE_MASK` (the kernel does not set
//! `NLA_F_NESTED` in replies) and every length is checked against the bytes there are, so
//! nothing above this module indexes past a buffer.

use netlink_packet_core::{NetlinkBuffer, NlaBuffer, NLA_ALIGNTO, NLA_HEADER_SIZE, NLA_TYPE_MASK};

/// `struct nlmsghdr`.
pub(super) const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`, after the netlink header of every nfnetlink message.
pub(super) const NFGENMSG_LEN: usize = 4;
/// `nfgenmsg.version`.
const NFNETLINK_V0: u8 = 0;

/// A decoding failure: what was expected and what was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The bytes end before the structure does.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// The structure being read.
        what: &'static str,
        /// The bytes it needs.
        need: usize,
        /// The bytes there are.
        have: usize,
    },
    /// The bytes are present but not what the kernel sends.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The structure being read.
        what: &'static str,
        /// What was expected and what was found.
        detail: String,
    },
}

// ---------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------

/// The messages of one datagram, each with its nlmsg_len checked against the buffer.
pub(super) fn framed(
    datagram: &[u8],
) -> impl Iterator<Item = Result<NetlinkBuffer<&[u8]>, CodecError>> {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < NLMSG_HDRLEN {
            let have = std::mem::take(&mut rest).len();
            return Some(Err(CodecError::Truncated {
                what: "nlmsghdr",
                need: NLMSG_HDRLEN,
                have,
            }));
        }
        let len = NetlinkBuffer::new(rest).length() as usize;
        let err = if len < NLMSG_HDRLEN {
            Some(CodecError::Malformed {
                what: "nlmsghdr",
                detail: format!("nlmsg_len {len} is shorter than the 16-byte header"),
            })
        } else if len > rest.len() {
            Some(CodecError::Truncated {
                what: "netlink message",
                need: len,
                have: rest.len(),
            })
        } else {
            None
        };
        if let Some(e) = err {
            rest = &[];
            return Some(Err(e));
        }
        let msg = NetlinkBuffer::new(&rest[..len]);
        rest = &rest[align(len).min(rest.len())..];
        Some(Ok(msg))
    })
}

/// The attributes in `buf` as (type without flag bits, payload); `what` names the
/// structure in errors.
pub(super) fn attrs<'a>(buf: &'a [u8], what: &'static str) -> Attrs<'a> {
    Attrs { buf, what }
}

/// A hand-rolled `NlasIterator`: the same checks, inlined (this loop is the whole cost of
/// reading a dump), and errors that say what was expected. After an error it ends.
pub(super) struct Attrs<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (b, what) = (self.buf, self.what);
        if b.is_empty() {
            return None;
        }
        self.buf = &[];
        if b.len() < NLA_HEADER_SIZE {
            let (need, have) = (NLA_HEADER_SIZE, b.len());
            return Some(Err(CodecError::Truncated { what, need, have }));
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < NLA_HEADER_SIZE {
            let detail = format!("nla_len {len} is shorter than the 4-byte attribute header");
            return Some(Err(CodecError::Malformed { what, detail }));
        }
        if len > b.len() {
            let (need, have) = (len, b.len());
            return Some(Err(CodecError::Truncated { what, need, have }));
        }
        self.buf = &b[align(len).min(b.len())..];
        Some(Ok((kind, &b[NLA_HEADER_SIZE..len])))
    }
}

/// A big-endian u32 attribute payload.
#[inline]
pub(super) fn be32(p: &[u8], what: &'static str) -> Result<u32, CodecError> {
    match <[u8; 4]>::try_from(p) {
        Ok(b) => Ok(u32::from_be_bytes(b)),
        Err(_) => Err(wrong_size(what, 4, p.len())),
    }
}

/// A big-endian u64 attribute payload.
#[inline]
pub(super) fn be64(p: &[u8], what: &'static str) -> Result<u64, CodecError> {
    match <[u8; 8]>::try_from(p) {
        Ok(b) => Ok(u64::from_be_bytes(b)),
        Err(_) => Err(wrong_size(what, 8, p.len())),
    }
}

#[cold]
fn wrong_size(what: &'static str, want: usize, found: usize) -> CodecError {
    CodecError::Malformed {
        what,
        detail: format!("expected a {want}-byte big-endian integer, found {found} bytes"),
    }
}

/// `attr` of `what` is required and absent.
#[cold]
pub(super) fn missing(what: &'static str, attr: &'static str) -> CodecError {
    CodecError::Malformed {
        what,
        detail: format!("{attr} is missing"),
    }
}

/// The bytes before the first NUL (all of them if there is none).
pub(super) fn until_nul(p: &[u8]) -> &[u8] {
    p.iter().position(|&b| b == 0).map_or(p, |n| &p[..n])
}

/// A NUL-terminated attribute string (lossy for bytes that are not UTF-8).
pub(super) fn string(p: &[u8]) -> String {
    let p = until_nul(p);
    match std::str::from_utf8(p) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(p).into_owned(),
    }
}

/// `len` rounded up to the 4-byte netlink alignment (saturating).
pub(super) fn align(len: usize) -> usize {
    len.saturating_add(NLA_ALIGNTO - 1) & !(NLA_ALIGNTO - 1)
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Start a message (nlmsghdr + nfgenmsg); `end_msg` fills in its length.
pub(super) fn begin_msg(
    buf: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid 0: to the kernel
    buf.extend_from_slice(&[family, NFNETLINK_V0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

/// Write the length of the message begun at `start` (nlmsg_len saturates).
pub(super) fn end_msg(buf: &mut [u8], start: usize) {
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// Write an attribute header at `at` (nla_len saturates: the kernel rejects such a rule).
fn set_nla_header(buf: &mut [u8], at: usize, kind: u16, nested: bool) {
    let len = u16::try_from(buf.len() - at).unwrap_or(u16::MAX);
    let mut nla = NlaBuffer::new(&mut buf[at..at + NLA_HEADER_SIZE]);
    nla.set_length(len);
    nla.set_kind(kind);
    if nested {
        nla.set_nested_flag();
    }
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(align(buf.len()), 0);
}

/// One attribute with a raw payload (`nested` sets `NLA_F_NESTED`).
pub(super) fn put(buf: &mut Vec<u8>, kind: u16, nested: bool, payload: &[u8]) {
    let at = buf.len();
    buf.extend_from_slice(&[0; NLA_HEADER_SIZE]);
    buf.extend_from_slice(payload);
    set_nla_header(buf, at, kind, nested);
    pad(buf);
}

/// One NUL-terminated string attribute.
pub(super) fn put_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let at = buf.len();
    buf.extend_from_slice(&[0; NLA_HEADER_SIZE]);
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    set_nla_header(buf, at, kind, false);
    pad(buf);
}

/// One big-endian u32 attribute.
pub(super) fn put_be32(buf: &mut Vec<u8>, kind: u16, v: u32) {
    put(buf, kind, false, &v.to_be_bytes());
}

/// One big-endian u64 attribute.
pub(super) fn put_be64(buf: &mut Vec<u8>, kind: u16, v: u64) {
    put(buf, kind, false, &v.to_be_bytes());
}

/// Open a nested attribute; `nest_end` writes its header once the content is in.
pub(super) fn nest_start(buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0; NLA_HEADER_SIZE]);
    at
}

/// Close the nested attribute opened at `at`, flagged `NLA_F_NESTED` as libnftnl does.
pub(super) fn nest_end(buf: &mut [u8], at: usize, kind: u16) {
    set_nla_header(buf, at, kind, true);
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{fixture, split, FIXTURES};
    use super::*;
    use netlink_packet_core::NLA_F_NESTED;
    use proptest::prelude::*;

    /// The messages `framed` finds, as byte slices.
    fn frames(d: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
        framed(d)
            .map(|m| m.map(NetlinkBuffer::into_inner))
            .collect()
    }

    /// (type, payload) of the attributes of a message after nlmsghdr + nfgenmsg.
    fn top(m: &[u8]) -> Result<Vec<(u16, &[u8])>, CodecError> {
        attrs(&m[NLMSG_HDRLEN + NFGENMSG_LEN..], "test").collect()
    }

    #[test]
    fn every_capture_splits_into_its_messages() {
        for d in FIXTURES {
            assert_eq!(frames(d).unwrap(), split(d));
        }
        // iptables-nft -t nat -S PREROUTING: the dump part holding the chain's six rules.
        assert_eq!(frames(fixture!("rx_dump_prerouting")).unwrap().len(), 6);
        // iptables-nft -t nat -A PREROUTING -m comment --comment "kube-ovn prerouting
        // rules" -j OVN-PREROUTING: BEGIN, NEWCHAIN PREROUTING, NEWRULE, END.
        let batch = frames(fixture!("tx_comment_batch")).unwrap();
        let lens: Vec<usize> = batch.iter().map(|m| m.len()).collect();
        assert_eq!(lens, [28, 80, 480, 20]);
    }

    #[test]
    fn attributes_iterate_in_order_with_flag_bits_masked() {
        // The first rule of the dump (iptables-nft -t nat -S PREROUTING): TABLE "nat",
        // CHAIN "PREROUTING", HANDLE 3, EXPRESSIONS; the second also has POSITION (6).
        let dump = split(fixture!("rx_dump_prerouting"));
        let first = top(dump[0]).unwrap();
        let kinds: Vec<u16> = first.iter().map(|a| a.0).collect();
        assert_eq!(kinds, [1, 2, 3, 4]);
        assert_eq!(first[0].1, b"nat\0");
        assert_eq!(string(first[1].1), "PREROUTING");
        assert_eq!(be64(first[2].1, "handle"), Ok(3));
        let kinds: Vec<u16> = top(dump[1]).unwrap().iter().map(|a| a.0).collect();
        assert_eq!(kinds, [1, 2, 3, 6, 4]);
        // iptables-nft sets NLA_F_NESTED on EXPRESSIONS (0x8004) and COMPAT (0x8005).
        let rule = split(fixture!("tx_comment_batch"))[2];
        assert_eq!(
            rule[NLMSG_HDRLEN + NFGENMSG_LEN + 24..][..4],
            [0xa0, 1, 4, 0x80]
        );
        let kinds: Vec<u16> = top(rule).unwrap().iter().map(|a| a.0).collect();
        assert_eq!(kinds, [1, 2, 4, 5]);
    }

    #[test]
    fn emitting_what_was_read_gives_the_captured_bytes() {
        // Every message iptables-nft and nft sent, rebuilt attribute by attribute from what
        // was read (the flag bits taken from the capture), is byte for byte what they sent.
        let sent = [
            fixture!("tx_addrtype_batch"),
            fixture!("tx_comment_batch"),
            fixture!("tx_delete_batch"),
            fixture!("tx_getchain"),
            fixture!("tx_getgen"),
            fixture!("tx_gethooks_prerouting"),
            fixture!("tx_insert_before_batch"),
            fixture!("tx_insert_head_batch"),
            fixture!("tx_newtable_userchain"),
            fixture!("tx_nft_userdata_batch"),
        ];
        let mut n = 0;
        for d in sent {
            for m in split(d) {
                let h = NetlinkBuffer::new(m);
                let (family, res_id) = (m[16], u16::from_be_bytes([m[18], m[19]]));
                let mut ours = Vec::new();
                let at = begin_msg(
                    &mut ours,
                    h.message_type(),
                    h.flags(),
                    h.sequence_number(),
                    family,
                    res_id,
                );
                let mut off = NLMSG_HDRLEN + NFGENMSG_LEN;
                for (kind, payload) in top(m).unwrap() {
                    let raw = u16::from_ne_bytes([m[off + 2], m[off + 3]]);
                    put(&mut ours, kind, raw & NLA_F_NESTED != 0, payload);
                    off += align(NLA_HEADER_SIZE + payload.len());
                }
                end_msg(&mut ours, at);
                assert_eq!(ours, m);
                n += 1;
            }
        }
        assert_eq!(n, 26);

        // The typed writers: DELRULE's TABLE, CHAIN, HANDLE (iptables-nft -t nat -D
        // PREROUTING -j RETURN, handle 8) and NEWCHAIN's nested HOOK {0, -100} (the -A of
        // the comment capture creating PREROUTING).
        let del = split(fixture!("tx_delete_batch"))[1];
        let mut ours = Vec::new();
        put_str(&mut ours, 1, "nat");
        put_str(&mut ours, 2, "PREROUTING");
        put_be64(&mut ours, 3, 8);
        assert_eq!(ours, del[20..56]);
        let chain = split(fixture!("tx_comment_batch"))[1];
        let mut ours = Vec::new();
        let hook = nest_start(&mut ours);
        put_be32(&mut ours, 1, 0);
        put_be32(&mut ours, 2, -100i32 as u32);
        nest_end(&mut ours, hook, 4);
        assert_eq!(ours, chain[44..64]);
    }

    #[test]
    fn malformed_framing_is_an_error() {
        // iptables-nft's GETGEN reply: one 56-byte message, NFTA_GEN_ID first.
        let gen = fixture!("rx_newgen");
        fn truncated<T>(what: &'static str, need: usize, have: usize) -> Result<T, CodecError> {
            Err(CodecError::Truncated { what, need, have })
        }
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut m = gen.to_vec();
            f(&mut m);
            m
        };
        assert_eq!(frames(&[]), Ok(vec![]));
        assert_eq!(frames(&gen[..10]), truncated("nlmsghdr", 16, 10));
        assert_eq!(frames(&gen[..40]), truncated("netlink message", 56, 40));
        assert_eq!(
            frames(&edit(&|m| m.extend_from_slice(&[1, 2, 3]))),
            truncated("nlmsghdr", 16, 3)
        );
        let short = edit(&|m| m[0] = 8);
        assert!(matches!(
            frames(&short),
            Err(CodecError::Malformed { what: "nlmsghdr", ref detail }) if detail.contains("nlmsg_len 8")
        ));
        // After an error the framing ends.
        assert_eq!(framed(&short).count(), 1);

        // NFTA_GEN_ID's nla_len overruns the message; nla_len below the attribute header.
        assert_eq!(top(&edit(&|m| m[20] = 200)), truncated("test", 200, 36));
        let m = edit(&|m| m[20] = 2);
        assert!(matches!(
            top(&m),
            Err(CodecError::Malformed { what: "test", ref detail }) if detail.contains("nla_len 2 is shorter")
        ));
        assert_eq!(attrs(&m[20..], "test").count(), 1, "ends after the error");
        assert_eq!(top(&m[..22]), truncated("test", 4, 2));
        // Integers of the wrong size.
        let bad = |r: Result<_, _>, want: &str| match r {
            Err(CodecError::Malformed { what: "x", detail }) => assert!(detail.contains(want)),
            r => panic!("{r:?}"),
        };
        bad(
            be32(&[0; 2], "x").map(u64::from),
            "4-byte big-endian integer, found 2",
        );
        bad(be64(&[0; 4], "x"), "8-byte big-endian integer, found 4");
        assert_eq!(align(usize::MAX), usize::MAX & !3, "saturates");
    }

    #[test]
    fn strings_end_at_their_nul_and_survive_bad_utf8() {
        assert_eq!(until_nul(b"nat\0\0junk"), b"nat");
        assert_eq!(until_nul(b"nat"), b"nat");
        assert_eq!(string(b"PREROUTING\0"), "PREROUTING");
        assert_eq!(string(b"a\xffb\0c"), "a\u{fffd}b");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn framing_and_attributes_survive_random_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..600),
        ) {
            for m in framed(&bytes).flatten() {
                for (_, p) in attrs(&m.into_inner()[NLMSG_HDRLEN..], "any").flatten() {
                    let _ = (be32(p, "x"), be64(p, "x"), string(p));
                    prop_assert!(attrs(p, "nested").count() <= p.len() / 4 + 1);
                }
            }
        }
    }
}
