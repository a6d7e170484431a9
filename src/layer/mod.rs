//! What one layer directory means, shared by everyone who reads or writes layers: the whiteout
//! and opaque formats, `override_stat` ownership records, internal xattr names and the id maps
//! between container and host owners.

pub mod copy;
pub mod idmap;
pub mod meta;
pub mod tarindex;
pub mod whiteout;
