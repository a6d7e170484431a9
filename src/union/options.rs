//! The fuse-overlayfs-compatible option string of the mount program (`-o OPTIONS`), plus
//! stratafs's own options (`quota=`, `lowerdir_file=`, `log=`, `pidfile=`, `threads=`).

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::layer::idmap::IdMap;
use crate::store::opts::parse_size;

/// Generic mount flags accepted (and passed on to the kernel where meaningful).
const GENERIC_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "nodev",
    "dev",
    "nosuid",
    "suid",
    "noexec",
    "exec",
    "noatime",
    "atime",
    "relatime",
    "norelatime",
    "strictatime",
    "nodiratime",
    "diratime",
    "sync",
    "async",
    "dirsync",
    "lazytime",
    "nolazytime",
    "silent",
    "loud",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "private",
    "shared",
    "slave",
    "rprivate",
    "rshared",
    "rslave",
];

/// Everything the mount program was told.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Lower directories, topmost first.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub volatile: bool,
    /// Host ids on disk shown as container ids: (container, host, size) triples.
    pub uid_map: Vec<IdMap>,
    pub gid_map: Vec<IdMap>,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub xattr_permissions: u32,
    /// `ro` was given (the mount is also read-only without an upper directory).
    pub ro: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    /// Generic flags (`nodev`, `noexec`, ...) in the order given.
    pub flags: Vec<String>,
    /// Byte quota of the upper layer (enforced by the write path).
    pub quota: Option<u64>,
    /// Where the background server logs.
    pub log: Option<PathBuf>,
    /// Where the background server writes its pid.
    pub pidfile: Option<PathBuf>,
    /// Worker threads of the FUSE session.
    pub threads: Option<usize>,
    /// Never use FUSE passthrough (`nopassthrough`).
    pub no_passthrough: bool,
    /// Never ask for the kernel's writeback cache (`nowriteback`): without passthrough every
    /// write then goes to the server as it is made.
    pub no_writeback: bool,
    /// How requests reach the server: `uring`, `nouring`, or (neither) the default.
    pub transport: Transport,
}

/// The request transport a mount asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// The default: FUSE over io_uring when the kernel offers it (Linux 6.14+ with the fuse
    /// module's `enable_uring` set), else `/dev/fuse`, without a warning.
    #[default]
    Auto,
    /// FUSE over io_uring when the kernel offers it (`uring`), else `/dev/fuse` with a warning.
    Uring,
    /// Never the ring (`nouring`).
    DevFuse,
}

impl MountOptions {
    /// Whether the view accepts no changes.
    pub fn read_only(&self) -> bool {
        self.ro || self.upperdir.is_none()
    }

    /// Parse one or more `-o` strings (joined as if comma-separated).
    pub fn parse(raw: &str) -> Result<MountOptions> {
        let mut o = MountOptions::default();
        let mut unknown = Vec::new();
        for item in split_escaped_with(raw, ',', true) {
            if item.is_empty() {
                continue;
            }
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item.as_str(), None),
            };
            let need = || {
                value
                    .map(str::to_string)
                    .ok_or_else(|| Error::InvalidMountOption {
                        option: item.clone(),
                        reason: "needs a value".into(),
                    })
            };
            let num = |v: String| {
                v.parse::<u32>().map_err(|_| Error::InvalidMountOption {
                    option: item.clone(),
                    reason: format!("{v:?} is not a number"),
                })
            };
            match key {
                "lowerdir" => o.lowerdirs.extend(
                    split_escaped(&need()?, ':')
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from),
                ),
                "lowerdir_file" => {
                    let text = read_lowerdir_file(&need()?)?;
                    o.lowerdirs
                        .extend(text.lines().filter(|l| !l.is_empty()).map(PathBuf::from));
                }
                "upperdir" => o.upperdir = Some(PathBuf::from(need()?)),
                "workdir" => o.workdir = Some(PathBuf::from(need()?)),
                "volatile" => o.volatile = true,
                "context" | "fscontext" | "defcontext" | "rootcontext" => {}
                "uidmapping" => o.uid_map = IdMap::parse_list(&need()?)?,
                "gidmapping" => o.gid_map = IdMap::parse_list(&need()?)?,
                "squash_to_uid" => o.squash_to_uid = Some(num(need()?)?),
                "squash_to_gid" => o.squash_to_gid = Some(num(need()?)?),
                "squash_to_root" => {
                    o.squash_to_uid = Some(0);
                    o.squash_to_gid = Some(0);
                }
                "xattr_permissions" => o.xattr_permissions = num(need()?)?,
                "allow_other" => o.allow_other = true,
                "allow_root" => o.allow_root = true,
                "default_permissions" => o.default_permissions = true,
                "fsname" => o.fsname = Some(need()?),
                "subtype" => o.subtype = Some(need()?),
                "quota" => {
                    let v = need()?;
                    o.quota = Some(parse_size(&v).map_err(|reason| Error::InvalidMountOption {
                        option: item.clone(),
                        reason,
                    })?)
                }
                "nopassthrough" => o.no_passthrough = true,
                "nowriteback" => o.no_writeback = true,
                "uring" => o.transport = Transport::Uring,
                "nouring" => o.transport = Transport::DevFuse,
                "log" => o.log = Some(PathBuf::from(need()?)),
                "pidfile" => o.pidfile = Some(PathBuf::from(need()?)),
                "threads" => {
                    let n = num(need()?)?;
                    if n == 0 {
                        return Err(Error::InvalidMountOption {
                            option: item.clone(),
                            reason: "needs at least one thread".into(),
                        });
                    }
                    o.threads = Some(n as usize);
                }
                // Options fuse-overlayfs accepts that change nothing for us.
                "fast_ino" | "noacl" | "acl" | "static_nlink" | "plugins" | "redirect_dir"
                | "index" | "metacopy" | "timeout" | "threaded" | "fsync" | "noxattrs"
                | "max_idle_threads" | "userxattr" => {}
                "ro" => {
                    o.ro = true;
                    o.flags.push(key.to_string());
                }
                k if GENERIC_FLAGS.contains(&k) && value.is_none() => o.flags.push(k.to_string()),
                _ => unknown.push(item.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(Error::InvalidMountOption {
                option: unknown.join(","),
                reason: "unknown option".into(),
            });
        }
        if o.lowerdirs.is_empty() && o.upperdir.is_none() {
            return Err(Error::InvalidMountOption {
                option: raw.to_string(),
                reason: "no lowerdir= (or upperdir=) given".into(),
            });
        }
        if o.upperdir.is_some() != o.workdir.is_some() {
            return Err(Error::InvalidMountOption {
                option: raw.to_string(),
                reason: "upperdir= and workdir= go together".into(),
            });
        }
        Ok(o)
    }

    /// Make every directory absolute and check it exists (the server changes directory to `/`).
    pub fn resolve_paths(&mut self) -> Result<()> {
        fn canon(p: &Path) -> Result<PathBuf> {
            let c = std::fs::canonicalize(p).ctx(|| format!("resolving {}", p.display()))?;
            if !c.is_dir() {
                return Err(Error::InvalidMountOption {
                    option: p.display().to_string(),
                    reason: "not a directory".into(),
                });
            }
            Ok(c)
        }
        for l in &mut self.lowerdirs {
            // A tar index (`*.idx`) serves as a lower layer too.
            *l = match std::fs::canonicalize(&*l) {
                Ok(c) if crate::union::tarlayer::TarLayer::is_index(&c) => c,
                _ => canon(l)?,
            };
        }
        if let Some(u) = &self.upperdir {
            self.upperdir = Some(canon(u)?);
        }
        if let Some(w) = &self.workdir {
            self.workdir = Some(canon(w)?);
        }
        let cwd = std::env::current_dir().ctx(|| "reading the current directory")?;
        for p in [&mut self.log, &mut self.pidfile].into_iter().flatten() {
            if p.is_relative() {
                *p = cwd.join(&*p);
            }
        }
        Ok(())
    }
}

/// Largest `lowerdir_file=` read: a path a line, far more layers than the kernel stacks.
const LOWERDIR_FILE_MAX: u64 = 16 << 20;

/// The text of a `lowerdir_file=`: a regular file (a FIFO would block the parse, `/dev/zero`
/// would never end), at most [`LOWERDIR_FILE_MAX`] bytes.
fn read_lowerdir_file(p: &str) -> Result<String> {
    use std::io::Read as _;
    let bad = |reason: String| Error::InvalidMountOption {
        option: format!("lowerdir_file={p}"),
        reason,
    };
    let md = std::fs::metadata(p).ctx(|| format!("reading lowerdir_file {p}"))?;
    if !md.is_file() {
        return Err(bad("not a regular file".into()));
    }
    let f = std::fs::File::open(p).ctx(|| format!("reading lowerdir_file {p}"))?;
    let mut text = String::new();
    f.take(LOWERDIR_FILE_MAX + 1)
        .read_to_string(&mut text)
        .ctx(|| format!("reading lowerdir_file {p}"))?;
    if text.len() as u64 > LOWERDIR_FILE_MAX {
        return Err(bad(format!("larger than {LOWERDIR_FILE_MAX} bytes")));
    }
    Ok(text)
}

/// Split on `sep` unless escaped with a backslash. `\SEP` becomes `SEP`; other escapes are kept
/// for the inner split when `keep_other` (the outer comma split), else `\x` becomes `x`.
fn split_escaped_with(s: &str, sep: char, keep_other: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == sep || !keep_other => cur.push(n),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn split_escaped(s: &str, sep: char) -> Vec<String> {
    split_escaped_with(s, sep, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_container_form() {
        let o = MountOptions::parse("lowerdir=/l/a:/l/b,upperdir=/u,workdir=/w,,volatile").unwrap();
        assert_eq!(
            o.lowerdirs,
            vec![PathBuf::from("/l/a"), PathBuf::from("/l/b")]
        );
        assert_eq!(o.upperdir.as_deref(), Some(Path::new("/u")));
        assert_eq!(o.workdir.as_deref(), Some(Path::new("/w")));
        assert!(o.volatile);
        assert!(!o.read_only());
    }

    #[test]
    fn transport_options() {
        let t = |s: &str| MountOptions::parse(s).unwrap().transport;
        assert_eq!(t("lowerdir=/a"), Transport::Auto);
        assert_eq!(t("lowerdir=/a,uring"), Transport::Uring);
        assert_eq!(t("lowerdir=/a,nouring"), Transport::DevFuse);
        // The last one given wins (STRATAFS_EXTRA_MOUNT_OPTS comes last).
        assert_eq!(t("lowerdir=/a,nouring,uring"), Transport::Uring);
    }

    #[test]
    fn read_only_without_upper_and_escapes() {
        let o = MountOptions::parse(r"lowerdir=/a\:b:/c\,d,context=x,nodev,noexec,ro").unwrap();
        assert_eq!(
            o.lowerdirs,
            vec![PathBuf::from("/a:b"), PathBuf::from("/c,d")]
        );
        assert!(o.read_only());
        assert_eq!(o.flags, vec!["nodev", "noexec", "ro"]);
    }

    #[test]
    fn mappings_squash_quota() {
        let o = MountOptions::parse(
            "lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,squash_to_root,xattr_permissions=2,quota=10M",
        )
        .unwrap();
        assert_eq!(o.uid_map.len(), 2);
        assert_eq!(o.uid_map[1].host_id, 100000);
        assert_eq!(o.gid_map.len(), 1);
        assert_eq!((o.squash_to_uid, o.squash_to_gid), (Some(0), Some(0)));
        assert_eq!(o.xattr_permissions, 2);
        assert_eq!(o.quota, Some(10 << 20));
    }

    #[test]
    fn lowerdir_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("lowers");
        std::fs::write(&f, "/x/1\n/x/2\n\n/x/3\n").unwrap();
        let o =
            MountOptions::parse(&format!("lowerdir=/top,lowerdir_file={}", f.display())).unwrap();
        assert_eq!(o.lowerdirs.len(), 4);
        assert_eq!(o.lowerdirs[0], PathBuf::from("/top"));
        assert_eq!(o.lowerdirs[3], PathBuf::from("/x/3"));
    }

    #[test]
    fn lowerdir_file_must_be_a_small_regular_file() {
        // Found writing the fuzz target: /dev/zero was read until memory ran out.
        let e = MountOptions::parse("lowerdir_file=/dev/zero").unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("huge");
        std::fs::File::create(&f)
            .unwrap()
            .set_len(LOWERDIR_FILE_MAX + 1)
            .unwrap();
        let e = MountOptions::parse(&format!("lowerdir_file={}", f.display())).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    #[test]
    fn errors_name_the_option() {
        let e = MountOptions::parse("lowerdir=/a,bogus,frobnicate=1").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("bogus") && msg.contains("frobnicate=1"),
            "{msg}"
        );
        assert!(
            MountOptions::parse("upperdir=/u").is_err(),
            "upper without work"
        );
        assert!(MountOptions::parse("nodev").is_err(), "no layers");
        assert!(MountOptions::parse("lowerdir=/a,squash_to_uid=x").is_err());
        assert!(MountOptions::parse("lowerdir=/a,quota=lots").is_err());
    }
}
