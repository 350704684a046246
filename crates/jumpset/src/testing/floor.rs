//! The kernel's floor, for `jumpset bench`: the kernel's part of a reconcile done raw,
//! with nothing decoded, planned or rebuilt — how far jumpset is from the limit is the
//! ratio of its figures to these.

use crate::backend::legacy::blob::Encoded;
use crate::backend::legacy::{io_err, RawSocket, XtCounters, ENTRIES_HEADER, REPLACE_HEADER};
use crate::backend::nft::{Guard, NftBackend};
use crate::backend::BackendError;
use crate::plan::Plan;
use crate::snapshot::{Family, Snapshot};
use crate::spec::ChainSpec;

/// An x_tables table read and replaced raw: `GET_INFO` + `GET_ENTRIES` into a buffer kept
/// between calls ([`RawTable::read`]), and that read followed by `SET_REPLACE` of the
/// table exactly as read and `ADD_COUNTERS` of the counters the replace handed back
/// ([`RawTable::read_and_replace`]) — the four calls a repair cannot do without. The
/// blob is read right behind room for the replace's header, so nothing is copied.
pub struct RawTable {
    sock: RawSocket,
    table: String,
    buf: Vec<u8>,
    old: Vec<XtCounters>,
    add: Vec<u8>,
}

/// Room before the `GET_ENTRIES` request so that the blob lands where `SET_REPLACE` wants it.
const ROOM: usize = REPLACE_HEADER - ENTRIES_HEADER;

impl RawTable {
    /// A raw socket for `table` of `family`, in the calling thread's network namespace.
    pub fn open(family: Family, table: &str) -> Result<RawTable, BackendError> {
        let sock = RawSocket::open(family)
            .map_err(io_err("opening a raw socket for the floor", "CAP_NET_RAW"))?;
        Ok(RawTable {
            sock,
            table: table.to_string(),
            buf: Vec::new(),
            old: Vec::new(),
            add: Vec::new(),
        })
    }

    /// `GET_INFO` + `GET_ENTRIES`; returns the table's size in bytes (as `GET_INFO` has it).
    pub fn read(&mut self) -> Result<u32, BackendError> {
        Ok(self.read_info()?.size)
    }

    fn read_info(&mut self) -> Result<crate::backend::legacy::blob::Info, BackendError> {
        let step = "reading the table for the floor";
        let info = self
            .sock
            .get_info(&self.table)
            .map_err(io_err(step, "CAP_NET_ADMIN"))?;
        self.sock
            .get_entries_into(&self.table, info.size, &mut self.buf, ROOM)
            .map_err(io_err(step, "CAP_NET_ADMIN"))?;
        Ok(info)
    }

    /// [`RawTable::read`], then `SET_REPLACE` of the table as read and `ADD_COUNTERS` of
    /// the counters it handed back; returns the table's size in bytes.
    pub fn read_and_replace(&mut self) -> Result<u32, BackendError> {
        let info = self.read_info()?;
        let valid = |h: usize| info.valid_hooks & (1 << h) != 0;
        let shape = Encoded {
            num_entries: info.num_entries,
            size: info.size,
            hook_entry: std::array::from_fn(|h| if valid(h) { info.hook_entry[h] } else { 0 }),
            underflow: std::array::from_fn(|h| if valid(h) { info.underflow[h] } else { 0 }),
            runs: Vec::new(),
        };
        self.old.clear();
        self.old
            .resize(info.num_entries as usize, XtCounters::default());
        let step = "replacing the table as read for the floor";
        self.sock
            .replace(
                &self.table,
                info.valid_hooks,
                &shape,
                &mut self.buf,
                &mut self.old,
            )
            .map_err(io_err(step, "CAP_NET_ADMIN"))?;
        self.sock
            .add_counters(&self.table, &self.old, &mut self.add)
            .map_err(io_err(step, "CAP_NET_ADMIN"))?;
        Ok(info.size)
    }
}

/// The request jumpset's nf_tables read sends for `table`/`chain` of `family` once it knows
/// the chain (GETGEN and the GETRULE dump, in one `sendmsg`, seq 1 and 3), and the seq of
/// the dump's NLMSG_DONE: the floor sends the same request raw.
pub fn nft_read_request(family: Family, table: &str, chain: &str) -> (Vec<u8>, u32) {
    let fam = crate::backend::nft::nfproto(family);
    (
        crate::backend::nft::read_request(fam, table, chain, 1, false),
        3,
    )
}

/// The very batch jumpset sends to apply a plan on nf_tables, built by the backend as its
/// commit builds it, to be sent raw on another socket: the floor of a repair is the dump
/// plus this batch, with nothing planned, encoded or decoded.
pub struct RawBatch {
    bytes: Vec<u8>,
    end: u32,
}

/// Where BEGIN's `NFNL_BATCH_GENID` is: after its netlink header (16 bytes), its
/// nfgenmsg (4) and the attribute's header (4).
const GENID_AT: usize = 24;

impl RawBatch {
    /// The batch `backend` would send to apply `plan`, made from `snap` for `spec`, when
    /// every target chain exists.
    pub fn build(
        backend: &mut NftBackend,
        snap: &Snapshot,
        spec: &ChainSpec,
        plan: &Plan,
    ) -> Result<RawBatch, BackendError> {
        let built = backend.build_batch(snap, spec, plan, &[], Guard::Generation)?;
        Ok(RawBatch {
            bytes: built.bytes,
            end: built.end,
        })
    }

    /// Put `generation` in BEGIN (the batch is guarded by it).
    pub fn set_generation(&mut self, generation: u32) {
        if let Some(g) = self.bytes.get_mut(GENID_AT..GENID_AT + 4) {
            g.copy_from_slice(&generation.to_be_bytes());
        }
    }

    /// The batch.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// END's seq: the kernel's ack with this seq is the commit.
    pub fn end_seq(&self) -> u32 {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nft::codec::Batch;

    #[test]
    fn the_generation_is_where_begin_carries_it() {
        let (bytes, end) = Batch::begin(0x0102_0304, 7).end();
        let mut b = RawBatch { bytes, end };
        assert_eq!(&b.bytes()[GENID_AT..GENID_AT + 4], &[1, 2, 3, 4]);
        b.set_generation(0xa0b0_c0d0);
        assert_eq!(
            &b.bytes()[GENID_AT..GENID_AT + 4],
            &[0xa0, 0xb0, 0xc0, 0xd0]
        );
        assert_eq!(b.end_seq(), 8);
    }
}
