//! User and group id maps (container id, host id, size), as Docker and OCI define them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One contiguous range: container ids `container_id..container_id+size` are host ids
/// `host_id..host_id+size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The uid and gid maps of a store. Empty maps mean identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMappings {
    pub uids: Vec<IdMap>,
    pub gids: Vec<IdMap>,
}

impl IdMap {
    /// Parse `C:H:N[:C:H:N...]` (the mount-program form, also accepted by the CLI).
    pub fn parse_list(spec: &str) -> Result<Vec<IdMap>> {
        let bad = |reason: &str| Error::InvalidIdMap {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let fields: Vec<&str> = spec.split(':').collect();
        if spec.is_empty() || fields.len() % 3 != 0 {
            return Err(bad("expected triples container:host:size"));
        }
        let mut maps = Vec::with_capacity(fields.len() / 3);
        for t in fields.chunks(3) {
            let num = |s: &str| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| bad(&format!("{s:?} is not a number")))
            };
            maps.push(IdMap {
                container_id: num(t[0])?,
                host_id: num(t[1])?,
                size: num(t[2])?,
            });
        }
        validate(&maps).map_err(|r| bad(&r))?;
        Ok(maps)
    }
}

/// Check sizes are non-zero, ranges do not overflow and container ranges do not overlap.
pub fn validate(maps: &[IdMap]) -> std::result::Result<(), String> {
    for m in maps {
        if m.size == 0 {
            return Err("a range has size 0".into());
        }
        if m.container_id.checked_add(m.size - 1).is_none()
            || m.host_id.checked_add(m.size - 1).is_none()
        {
            return Err(format!(
                "range {}:{}:{} overflows",
                m.container_id, m.host_id, m.size
            ));
        }
    }
    for (i, a) in maps.iter().enumerate() {
        for b in &maps[i + 1..] {
            let overlap = |x: u32, y: u32| x < y + b.size.max(1) && y < x + a.size.max(1);
            if overlap(a.container_id, b.container_id) {
                return Err("container ranges overlap".into());
            }
            if overlap(a.host_id, b.host_id) {
                return Err("host ranges overlap".into());
            }
        }
    }
    Ok(())
}

fn map_one(maps: &[IdMap], id: u32, to_host: bool) -> Option<u32> {
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter().find_map(|m| {
        let (from, to) = if to_host {
            (m.container_id, m.host_id)
        } else {
            (m.host_id, m.container_id)
        };
        (id >= from && id - from < m.size).then(|| to + (id - from))
    })
}

impl IdMappings {
    /// Build validated mappings.
    pub fn new(uids: Vec<IdMap>, gids: Vec<IdMap>) -> Result<Self> {
        for (what, maps) in [("uid", &uids), ("gid", &gids)] {
            validate(maps).map_err(|reason| Error::InvalidIdMap {
                spec: format!("{what} map {maps:?}"),
                reason,
            })?;
        }
        Ok(IdMappings { uids, gids })
    }

    pub fn is_identity(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    /// Container (uid, gid) to host ids; `None` when an id is outside the maps.
    pub fn to_host(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        Some((
            map_one(&self.uids, uid, true)?,
            map_one(&self.gids, gid, true)?,
        ))
    }

    /// Host (uid, gid) to container ids; `None` when an id is outside the maps.
    pub fn to_container(&self, uid: u32, gid: u32) -> Option<(u32, u32)> {
        Some((
            map_one(&self.uids, uid, false)?,
            map_one(&self.gids, gid, false)?,
        ))
    }

    /// The host ids that own the root of a new layer (the mapped container root).
    pub fn root_pair(&self) -> Result<(u32, u32)> {
        self.to_host(0, 0).ok_or_else(|| Error::InvalidIdMap {
            spec: format!("{self:?}"),
            reason: "container root (0) is not mapped".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_maps_both_ways() {
        let uids = IdMap::parse_list("0:100000:65536").unwrap();
        let m = IdMappings::new(uids.clone(), uids).unwrap();
        assert_eq!(m.to_host(0, 5), Some((100000, 100005)));
        assert_eq!(m.to_container(100010, 100000), Some((10, 0)));
        assert_eq!(m.to_host(65536, 0), None);
        assert_eq!(m.root_pair().unwrap(), (100000, 100000));
    }

    #[test]
    fn identity_when_empty() {
        let m = IdMappings::default();
        assert!(m.is_identity());
        assert_eq!(m.to_host(7, 8), Some((7, 8)));
    }

    #[test]
    fn rejects_bad_specs() {
        for spec in [
            "",
            "0:1",
            "0:x:1",
            "0:1:0",
            "0:0:10:5:100:10",
            "0:4294967295:2",
        ] {
            assert!(IdMap::parse_list(spec).is_err(), "{spec} accepted");
        }
        assert_eq!(
            IdMap::parse_list("0:1000:1:1:100000:65536").unwrap().len(),
            2
        );
    }

    #[test]
    fn unmapped_root_is_an_error() {
        let uids = IdMap::parse_list("1:1000:10").unwrap();
        let m = IdMappings::new(uids.clone(), uids).unwrap();
        assert!(m.root_pair().is_err());
    }
}
