//! Engine tests (below).
