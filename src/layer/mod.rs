//! What one layer directory means, shared by everyone who reads or writes layers: the whiteout
//! and opaque formats, `override_stat` ownership records and internal xattr names.

pub mod copy;
pub mod meta;
pub mod whiteout;
