//! How on-disk owners are shown and requests' ids stored (uidmapping/gidmapping/squash).

use crate::layer::idmap::IdMap;

/// Shown for ids outside the uid/gid mapping.
const OVERFLOW_ID: u32 = 65534;

/// How on-disk owners are shown (uidmapping/gidmapping/squash options).
#[derive(Debug, Clone, Default)]
pub struct IdView {
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

fn host_to_container(maps: &[IdMap], id: u32) -> u32 {
    if maps.is_empty() {
        return id;
    }
    maps.iter()
        .find(|m| id >= m.host_id && id - m.host_id < m.size)
        .map(|m| m.container_id + (id - m.host_id))
        .unwrap_or(OVERFLOW_ID)
}

/// Map a container id (from a request) to the host id stored on disk.
pub fn container_to_host(maps: &[IdMap], id: u32) -> Option<u32> {
    if maps.is_empty() {
        return Some(id);
    }
    maps.iter()
        .find(|m| id >= m.container_id && id - m.container_id < m.size)
        .map(|m| m.host_id + (id - m.container_id))
}

impl IdView {
    pub fn uid(&self, host: u32) -> u32 {
        self.squash_uid
            .unwrap_or_else(|| host_to_container(&self.uid_map, host))
    }
    pub fn gid(&self, host: u32) -> u32 {
        self.squash_gid
            .unwrap_or_else(|| host_to_container(&self.gid_map, host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_mapping() {
        let v = IdView {
            uid_map: vec![IdMap {
                container_id: 0,
                host_id: 1000,
                size: 10,
            }],
            ..Default::default()
        };
        assert_eq!(v.uid(1000), 0);
        assert_eq!(v.uid(1005), 5);
        assert_eq!(v.uid(0), OVERFLOW_ID);
        assert_eq!(v.gid(7), 7);
        assert_eq!(container_to_host(&v.uid_map, 3), Some(1003));
    }
}
