//! nf_tables over netlink.

pub mod codec;
