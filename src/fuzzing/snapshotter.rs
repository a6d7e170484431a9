//! Target `snapshotter`: sequences of containerd snapshot calls (prepare, view, commit, remove,
//! stat, update, usage, mounts, list, cleanup, and a restart of the snapshotter) on a scratch
//! root, with arbitrary keys, names, parents and labels.
//!
//! Input: one byte per call (its low nibble picks it), then its arguments: a key is one byte
//! (below 0xc0: one of a few fixed keys, so that calls meet) or a byte 0xc0.. followed by a
//! string. Invariants: no panic; every call succeeds exactly when containerd's rules say it may
//! (a model of key -> kind and parent); the snapshot list equals the model, also after reopening
//! the root (labels included).

use std::collections::{BTreeMap, HashMap};

use super::Input;
use crate::snapshotter::{Core, Kind, Update};

const KEYS: &[&str] = &[
    "a",
    "b",
    "default/1/extract-1 sha256:aa",
    "k8s.io/7/c",
    "",
    "x,y:z",
    "../escape",
    "a/b",
];

fn key(input: &mut Input<'_>) -> String {
    let b = input.byte();
    if b < 0xc0 {
        KEYS[b as usize % KEYS.len()].to_string()
    } else {
        input.string()
    }
}

fn labels(input: &mut Input<'_>) -> HashMap<String, String> {
    let n = input.byte() % 3;
    (0..n).map(|_| (key(input), key(input))).collect()
}

type Model = BTreeMap<String, (Kind, String)>;

type Listing = BTreeMap<String, (Kind, String, BTreeMap<String, String>)>;

fn listing(core: &Core) -> Listing {
    core.list()
        .into_iter()
        .map(|i| {
            let labels = i.labels.into_iter().collect();
            (i.name, (i.kind, i.parent, labels))
        })
        .collect()
}

fn agree(core: &Core, model: &Model) {
    let got: Model = listing(core)
        .into_iter()
        .map(|(k, (kind, parent, _))| (k, (kind, parent)))
        .collect();
    assert_eq!(&got, model, "the snapshot list differs from the model");
}

pub fn snapshotter(data: &[u8]) {
    let scratch = super::scratch();
    let root = scratch.path().join("root");
    let mut core = Some(Core::open(&root).expect("opening a scratch snapshotter"));
    let mut model = Model::new();
    let mut input = Input::new(data);
    let mut calls = 0;
    while !input.is_empty() && calls < 64 {
        calls += 1;
        let Some(c) = core.as_ref() else {
            break;
        };
        match input.byte() & 15 {
            op @ (0 | 1) => {
                let kind = if op == 0 { Kind::Active } else { Kind::View };
                let (k, parent, labels) = (key(&mut input), key(&mut input), labels(&mut input));
                let parent_ok = parent.is_empty()
                    || model
                        .get(&parent)
                        .is_some_and(|(k, _)| *k == Kind::Committed);
                let may = !k.is_empty() && !model.contains_key(&k) && parent_ok;
                let res = c.create(kind, &k, &parent, labels);
                assert_eq!(
                    res.is_ok(),
                    may,
                    "create {kind:?} {k:?} on {parent:?}: {res:?}"
                );
                if let Ok(mounts) = res {
                    assert!(!mounts.is_empty(), "no mounts for {k:?}");
                    model.insert(k, (kind, parent));
                }
            }
            2 => {
                let (name, k, labels) = (key(&mut input), key(&mut input), labels(&mut input));
                let may = !name.is_empty()
                    && model.get(&k).is_some_and(|(kind, _)| *kind == Kind::Active)
                    && !model.contains_key(&name);
                let res = c.commit(&name, &k, labels);
                assert_eq!(res.is_ok(), may, "commit {k:?} as {name:?}: {res:?}");
                if res.is_ok() {
                    if let Some((_, parent)) = model.remove(&k) {
                        model.insert(name, (Kind::Committed, parent));
                    }
                }
            }
            3 => {
                let k = key(&mut input);
                let has_children = model.values().any(|(_, p)| *p == k);
                let may = model.contains_key(&k) && !has_children;
                let res = c.remove(&k);
                assert_eq!(res.is_ok(), may, "remove {k:?}: {res:?}");
                if res.is_ok() {
                    model.remove(&k);
                }
            }
            4 => {
                let k = key(&mut input);
                let res = c.stat(&k);
                assert_eq!(res.is_ok(), model.contains_key(&k), "stat {k:?}: {res:?}");
            }
            5 => {
                let (name, labels) = (key(&mut input), labels(&mut input));
                let paths: Vec<String> = (0..input.byte() % 3)
                    .map(|_| match input.byte() % 3 {
                        0 => "labels".to_string(),
                        1 => format!("labels.{}", key(&mut input)),
                        _ => key(&mut input),
                    })
                    .collect();
                let paths_ok = paths
                    .iter()
                    .all(|p| p == "labels" || p.starts_with("labels."));
                let may = model.contains_key(&name) && paths_ok;
                let res = c.update(
                    Update {
                        name: name.clone(),
                        labels,
                    },
                    Some(paths),
                );
                assert_eq!(res.is_ok(), may, "update {name:?}: {res:?}");
            }
            6 => {
                let k = key(&mut input);
                let res = c.usage(&k);
                assert_eq!(res.is_ok(), model.contains_key(&k), "usage {k:?}: {res:?}");
            }
            7 => {
                let k = key(&mut input);
                let may = model
                    .get(&k)
                    .is_some_and(|(kind, _)| *kind != Kind::Committed);
                let res = c.mounts(&k);
                assert_eq!(res.is_ok(), may, "mounts {k:?}: {res:?}");
            }
            8 => {
                let removed = c.cleanup().expect("cleanup");
                assert!(
                    removed.is_empty(),
                    "cleanup removed live layers {removed:?}"
                );
            }
            9 => {
                let before = listing(c);
                drop(core.take());
                let again = Core::open(&root).expect("reopening the snapshotter");
                assert_eq!(
                    listing(&again),
                    before,
                    "the state changed across a restart"
                );
                core = Some(again);
            }
            _ => agree(c, &model),
        }
    }
    if let Some(c) = &core {
        agree(c, &model);
    }
}
