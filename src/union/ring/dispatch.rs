//! One ring request decoded and handed to the view: the same [`View`] handlers the fuser
//! adapter (`union::fs`) calls, with the same conversions, so both transports answer alike.
//!
//! On the ring the kernel puts an opcode's argument struct (its first argument) in the
//! slot's `op_in` area and the rest (names, written data) in the payload; opcodes whose
//! first argument is only a name (LOOKUP, UNLINK, RMDIR, SYMLINK, REMOVEXATTR) have an empty
//! `op_in`.

use std::path::Path;
use std::sync::Arc;

use crate::sys::RingRequest;
use crate::union::attr::Timestamp;
use crate::union::ring::wire::{self, fattr, op, DirBuf, Fields, InHeader};
use crate::union::ring::{open_fields, Queue, RingReply};
use crate::union::view::types::{Caller, Errno, SetAttrReq, SetTime, Xattr};
use crate::union::view::View;

/// Answer one request (from the queue's thread; some handlers answer from a thread of
/// their own).
pub(super) fn dispatch(view: &View, q: &Arc<Queue>, rq: RingRequest) {
    let h = InHeader::parse(&rq.headers);
    super::count_opcode(h.opcode);
    let reply = RingReply {
        q: q.clone(),
        slot: rq.slot,
        unique: h.unique,
    };
    // Extensions (security context, supplementary groups) end the payload; none is asked
    // for at INIT, but never read them as arguments.
    let ext = usize::from(h.total_extlen) * 8;
    let payload = &rq.payload[..rq.payload.len().saturating_sub(ext)];
    if !q.acl.permits(h.uid, h.opcode) {
        tracing::debug!(
            uid = h.uid,
            opcode = h.opcode,
            "refused: not a user of this mount"
        );
        return reply.error(Errno::EACCES);
    }
    let args = wire::op_in(&rq.headers);
    serve(view, &h, args, payload, reply);
}

fn caller(h: &InHeader) -> Caller {
    Caller {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
    }
}

fn set_time(now: bool, sec: u64, nsec: u32) -> SetTime {
    if now {
        SetTime::Now
    } else {
        SetTime::At(Timestamp {
            sec: sec as i64,
            nsec,
        })
    }
}

fn xattr(reply: RingReply, r: Result<Xattr, Errno>) {
    match r {
        Ok(Xattr::Size(n)) => reply.data(&wire::xattr_size_out(n)),
        Ok(Xattr::Data(v)) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

fn entry(reply: RingReply, r: Result<crate::union::view::types::Entry, Errno>) {
    reply.with(r, wire::entry_out)
}

fn serve(view: &View, h: &InHeader, args: &[u8], payload: &[u8], reply: RingReply) {
    let mut f = Fields::new(args);
    let ino = h.nodeid;
    // The first name of the payload; a request without one is malformed.
    let one_name = || wire::name(payload).map(|(n, _)| n);
    macro_rules! named {
        ($n:ident => $body:expr) => {
            match one_name() {
                Some($n) => $body,
                None => reply.error(Errno::EINVAL),
            }
        };
    }
    match h.opcode {
        op::LOOKUP => named!(n => entry(reply, view.lookup(ino, n))),
        op::GETATTR => {
            let flags = f.u32();
            let fh = f.skip(4).u64();
            let fh = (flags & wire::GETATTR_FH != 0).then_some(fh);
            reply.with(view.getattr(ino, fh), wire::attr_out)
        }
        op::SETATTR => {
            let valid = f.u32();
            f.skip(4);
            let fh = f.u64();
            let size = f.u64();
            let _lock_owner = f.u64();
            let (atime, mtime, _ctime) = (f.u64(), f.u64(), f.u64());
            let (atimensec, mtimensec, _ctimensec) = (f.u32(), f.u32(), f.u32());
            let mode = f.u32();
            let uid = f.skip(4).u32();
            let gid = f.u32();
            let has = |b| valid & b != 0;
            let r = SetAttrReq {
                mode: has(fattr::MODE).then_some(mode),
                uid: has(fattr::UID).then_some(uid),
                gid: has(fattr::GID).then_some(gid),
                size: has(fattr::SIZE).then_some(size),
                atime: has(fattr::ATIME).then(|| set_time(has(fattr::ATIME_NOW), atime, atimensec)),
                mtime: has(fattr::MTIME).then(|| set_time(has(fattr::MTIME_NOW), mtime, mtimensec)),
                fh: has(fattr::FH).then_some(fh),
            };
            view.setattr(caller(h), ino, r, move |r| reply.with(r, wire::attr_out))
        }
        op::READLINK => reply.with(view.readlink(ino), |t| t.clone()),
        op::SYMLINK => {
            match wire::name(payload).and_then(|(n, rest)| Some((n, wire::name(rest)?.0))) {
                Some((name, target)) => entry(
                    reply,
                    view.symlink(&caller(h), ino, name, Path::new(target)),
                ),
                None => reply.error(Errno::EINVAL),
            }
        }
        op::MKNOD => {
            let (mode, rdev, umask) = (f.u32(), f.u32(), f.u32());
            named!(n => entry(reply, view.mknod(&caller(h), ino, n, mode, umask, rdev)))
        }
        op::MKDIR => {
            let (mode, umask) = (f.u32(), f.u32());
            named!(n => entry(reply, view.mkdir(&caller(h), ino, n, mode, umask)))
        }
        op::UNLINK => named!(n => reply.empty(view.unlink(ino, n))),
        op::RMDIR => named!(n => reply.empty(view.rmdir(ino, n))),
        op::RENAME | op::RENAME2 => {
            let newdir = f.u64();
            let flags = if h.opcode == op::RENAME2 { f.u32() } else { 0 };
            match wire::name(payload).and_then(|(a, rest)| Some((a, wire::name(rest)?.0))) {
                Some((name, newname)) => {
                    view.rename(ino, name, newdir, newname, flags, move |r| reply.empty(r))
                }
                None => reply.error(Errno::EINVAL),
            }
        }
        op::LINK => {
            let old = f.u64();
            named!(n => view.link(old, ino, n, move |r| entry(reply, r)))
        }
        op::OPEN => {
            let flags = f.i32();
            view.open(caller(h), ino, flags, reply)
        }
        op::READ => {
            let (fh, offset, size) = (f.u64(), f.u64(), f.u32());
            // Straight from the reading thread's buffer into the ring's payload: no Vec per
            // READ (one of 128 KiB or more is a fresh mmap, zeroed by page faults).
            view.read_with(fh, offset, size, |r| match r {
                Ok(buf) => reply.data(buf),
                Err(e) => reply.error(e),
            })
        }
        op::WRITE => {
            let (fh, offset, size, write_flags) = (f.u64(), f.u64(), f.u32(), f.u32());
            match payload.get(..size as usize) {
                Some(data) => {
                    let kill = write_flags & wire::WRITE_KILL_SUIDGID != 0;
                    let r = view.write(&caller(h), fh, offset, data, kill);
                    reply.with(r, |n| wire::write_out(*n))
                }
                None => reply.error(Errno::EINVAL),
            }
        }
        op::STATFS => reply.with(view.statfs(), wire::statfs_out),
        op::RELEASE => {
            view.release(f.u64());
            reply.empty(Ok(()))
        }
        op::FSYNC => {
            let (fh, flags) = (f.u64(), f.u32());
            reply.empty(view.fsync(fh, flags & wire::FSYNC_FDATASYNC != 0))
        }
        op::SETXATTR => {
            // fuse_setxattr_in without FUSE_SETXATTR_EXT (not asked for): size, flags.
            let (size, flags) = (f.u32(), f.i32());
            match wire::name(payload) {
                Some((n, rest)) if rest.len() >= size as usize => {
                    let value = &rest[..size as usize];
                    view.setxattr(ino, n, value, flags, move |r| reply.empty(r))
                }
                _ => reply.error(Errno::EINVAL),
            }
        }
        op::GETXATTR => {
            let size = f.u32();
            named!(n => xattr(reply, view.getxattr(ino, n, size)))
        }
        op::LISTXATTR => xattr(reply, view.listxattr(ino, f.u32())),
        op::REMOVEXATTR => {
            named!(n => view.removexattr(ino, n, move |r| reply.empty(r)))
        }
        op::FLUSH => reply.empty(view.flush()),
        op::OPENDIR => match view.opendir(ino) {
            Ok(o) => {
                let (flags, id) = open_fields(&o);
                reply.data(&wire::open_out(o.fh, flags, id))
            }
            Err(e) => reply.error(e),
        },
        op::READDIR | op::READDIRPLUS => {
            let (fh, offset, size) = (f.u64(), f.u64(), f.u32());
            let mut buf = DirBuf::new(size as usize);
            let r = if h.opcode == op::READDIR {
                view.readdir(ino, fh, offset, &mut |i, off, k, name| {
                    buf.add(i, off, k, name)
                })
            } else {
                view.readdirplus(ino, fh, offset, &mut |name, off, e| {
                    buf.add_plus(name, off, e)
                })
            };
            match r {
                Ok(()) => reply.data(&buf.buf),
                Err(e) => reply.error(e),
            }
        }
        op::RELEASEDIR => {
            view.releasedir(f.u64());
            reply.empty(Ok(()))
        }
        op::FSYNCDIR => {
            let flags = f.skip(8).u32();
            reply.empty(view.fsyncdir(ino, flags & wire::FSYNC_FDATASYNC != 0))
        }
        op::ACCESS => {
            let mask = f.i32();
            reply.empty(view.access(&caller(h), ino, mask))
        }
        op::CREATE => {
            let (flags, mode, umask) = (f.i32(), f.u32(), f.u32());
            let Some(name) = one_name() else {
                return reply.error(Errno::EINVAL);
            };
            match view.create(&caller(h), ino, name, mode, umask, flags, &reply) {
                Ok(c) => {
                    let (oflags, id) = open_fields(&c.open);
                    reply.data(&wire::create_out(&c.entry, c.open.fh, oflags, id))
                }
                Err(e) => reply.error(e),
            }
        }
        op::FALLOCATE => {
            let (fh, offset, length, mode) = (f.u64(), f.u64(), f.u64(), f.i32());
            reply.empty(view.fallocate(fh, offset, length, mode))
        }
        op::LSEEK => {
            let (fh, offset, whence) = (f.u64(), f.i64(), f.i32());
            reply.with(view.lseek(fh, offset, whence), |o| wire::lseek_out(*o))
        }
        op::COPY_FILE_RANGE => {
            let (fh_in, off_in) = (f.u64(), f.u64());
            let (_ino_out, fh_out, off_out, len) = (f.u64(), f.u64(), f.u64(), f.u64());
            let r = view.copy_file_range(fh_in, off_in, fh_out, off_out, len);
            reply.with(r, |n| wire::write_out(*n))
        }
        // FORGET and BATCH_FORGET travel on /dev/fuse; should one come here, it has no
        // answer, but its slot must go back to the kernel.
        op::FORGET | op::BATCH_FORGET => {
            tracing::warn!(opcode = h.opcode, "forget over the ring: not expected");
            reply.error(Errno::ENOSYS)
        }
        // What the fuser transport answers ENOSYS too (locks, ioctl, poll, bmap, tmpfile,
        // statx, syncfs...).
        other => {
            tracing::debug!(opcode = other, "not implemented");
            reply.error(Errno::ENOSYS)
        }
    }
}
