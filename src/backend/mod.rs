//! Kernel backends.

pub mod nft;
