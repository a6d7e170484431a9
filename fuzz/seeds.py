#!/usr/bin/env python3
"""Write the seed inputs of every fuzz target into fuzz/corpus/TARGET/seed-*.

The input formats are described at the top of each target in src/fuzzing/. Run again after a
format change; the fuzzer's own finds sit beside the seeds under their sha1 names.
"""
import io
import json
import os
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))


def tar(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            name, kind = e[0], e[1]
            info = tarfile.TarInfo(name)
            info.mtime = 1000
            info.mode = 0o644
            data = b""
            if kind == "file":
                data = e[2]
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "sym":
                info.type = tarfile.SYMTYPE
                info.linkname = e[2]
            elif kind == "hard":
                info.type = tarfile.LNKTYPE
                info.linkname = e[2]
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
                info.devmajor, info.devminor = e[2]
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            if len(e) > 3:
                info.pax_headers = e[3]
            t.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


BASIC = [
    ("etc/", "dir"),
    ("etc/hostname", "file", b"box\n"),
    ("etc/link", "sym", "hostname"),
    ("etc/hard", "hard", "etc/hostname"),
    ("bin/", "dir"),
    ("bin/sh", "file", b"\x7fELF"),
]
WHITEOUTS = [
    ("etc/", "dir"),
    ("etc/.wh.passwd", "file", b""),
    ("opaque/", "dir"),
    ("opaque/.wh..wh..opq", "file", b""),
    ("opaque/new", "file", b"n"),
    (".wh.top", "file", b""),
]
SPECIAL = [
    ("dev/", "dir"),
    ("dev/null", "chr", (1, 3)),
    ("dev/zero-wh", "chr", (0, 0)),
    ("run/fifo", "fifo"),
    ("x" * 120 + "/" + "y" * 120, "file", b"long"),
]
XATTRS = [
    ("f", "file", b"x", {"SCHILY.xattr.user.a": "1", "SCHILY.xattr.trusted.overlay.opaque": "y"}),
    ("d/", "dir"),
]
HOSTILE = [
    ("../escape", "file", b"e"),
    ("/abs", "file", b"a"),
    ("link-out/x", "file", b"through"),
    ("s", "sym", "../outside"),
    ("s/x", "file", b"via symlink"),
    ("h", "hard", "../outside/top"),
    ("etc", "file", b"file over dir"),
]

TARS = {
    "basic": tar(BASIC),
    "whiteouts": tar(WHITEOUTS),
    "special": tar(SPECIAL, tarfile.PAX_FORMAT),
    "xattrs": tar(XATTRS, tarfile.PAX_FORMAT),
    "hostile": tar(HOSTILE),
}

for name, data in TARS.items():
    write("tar_apply", name + "-layer", b"\x00" + data)
    write("tar_apply", name + "-merged", b"\x01" + data)

# image_archive: docker save, OCI layout, raw and gzipped.
SEP = b"\n%%\n"
layer = TARS["basic"]
cfg = json.dumps({"architecture": "amd64", "os": "linux",
                  "rootfs": {"type": "layers", "diff_ids": ["sha256:@0"]},
                  "config": {}}).encode()
docker = SEP.join([
    b"abc/layer.tar\n" + layer,
    b"@1.json\n" + cfg,
    b"manifest.json\n" + json.dumps([{"Config": "@1.json", "RepoTags": ["x:1"],
                                       "Layers": ["abc/layer.tar"]}]).encode(),
])
write("image_archive", "docker", b"\x00" + docker)
write("image_archive", "docker-gz", b"\x40" + docker)
write("image_archive", "docker-tag", b"\x06" + docker)
manifest = json.dumps({"schemaVersion": 2,
                       "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:@1", "size": 1},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                   "digest": "sha256:@0", "size": 1}]}).encode()
manifest = manifest.replace(b'"size": 1}, "layers"', b'"size": #1}, "layers"').replace(
    b'"size": 1}]', b'"size": #0}]')
index = json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:@2",
     "size": 1, "platform": {"os": "linux", "architecture": "amd64"},
     "annotations": {"org.opencontainers.image.ref.name": "x:1"}}]}).encode().replace(
    b'"size": 1', b'"size": #2')
nested = json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:@3",
     "size": 1}]}).encode().replace(b'"size": 1', b'"size": #3')
oci = [
    b"blobs/sha256/@0\n" + layer,
    b"blobs/sha256/@1\n" + cfg,
    b"blobs/sha256/@2\n" + manifest,
    b"index.json\n" + index,
    b"oci-layout\n" + b'{"imageLayoutVersion": "1.0.0"}',
]
write("image_archive", "oci", b"\x00" + SEP.join(oci))
nested_oci = oci[:3] + [b"blobs/sha256/@3\n" + index, b"index.json\n" + nested, oci[4]]
write("image_archive", "oci-nested", b"\x03" + SEP.join(nested_oci))
write("image_archive", "oci-index1", b"\x05" + SEP.join(oci))
raw = tar([("manifest.json", "file", b'[{"Config":"c.json","Layers":["l.tar"]}]'),
           ("c.json", "file", cfg), ("l.tar", "file", layer)])
write("image_archive", "raw", b"\x80" + raw)

# mount_options: -o strings and command lines (NUL between arguments).
for i, s in enumerate([
    "lowerdir=/l/a:/l/b,upperdir=/u,workdir=/w,,volatile",
    r"lowerdir=/a\:b:/c\,d,context=x,nodev,noexec,ro",
    "lowerdir=/a,uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,squash_to_root,xattr_permissions=2,quota=10M,threads=4",
    "lowerdir=/a,fsname=x,subtype=y,allow_other,default_permissions,log=/l,pidfile=/p,nopassthrough",
    "-o\0lowerdir=/a:/b\0-o\0ro\0/m",
    "overlay\0/m\0-o\0lowerdir=/a,upperdir=/u,workdir=/w",
    "-f\0-olowerdir=/a\0--\0/m",
    "lowerdir=/a,quota=1.5G,squash_to_uid=7,squash_to_gid=8",
]):
    write("mount_options", str(i), s.encode())

# plugin_json: call sequences.
calls = [
    b"Plugin.Activate\n",
    b'Init\n{"Home":"/x","Opts":[],"UIDMaps":[{"ContainerID":0,"HostID":1000,"Size":1}],"GIDMaps":null}',
    b'Create\n{"ID":"a","Parent":"","MountLabel":""}',
    b"ApplyDiff?id=a&parent=\n" + TARS["whiteouts"],
    b'CreateReadWrite\n{"ID":"b","Parent":"a","StorageOpt":{}}',
    b'Get\n{"ID":"b"}',
    b'Changes\n{"ID":"b","Parent":"a"}',
    b'DiffSize\n{"ID":"a"}',
    b'Diff\n{"ID":"a"}',
    b'GetMetadata\n{"ID":"a"}',
    b'Exists\n{"ID":"b"}',
    b'Put\n{"ID":"b"}',
    b'Remove\n{"ID":"b"}',
    b"Status\n",
    b"Capabilities\n",
    b"Cleanup\n",
]
write("plugin_json", "calls", SEP.join(calls))
write("plugin_json", "hostile", SEP.join([
    b'Create\n{"ID":"../x","Parent":"../../outside"}',
    b'Create\n{"ID":"c","StorageOpt":{"size":"1G"}}',
    b"ApplyDiff?id=c\n" + TARS["hostile"],
    b'Remove\n{"ID":"../outside"}',
    b'Create\n{"ID":"/abs"}',
]))

# snapshotter: op byte (low nibble), then arguments (see the target).
write("snapshotter", "lifecycle", bytes([
    0, 0, 4, 0,        # prepare a on "" no labels
    2, 1, 0, 1, 0, 1,  # commit a as b, one label b=a
    0, 2, 1, 0,        # prepare extract- key on b
    1, 3, 1, 0,        # view c on b
    7, 3, 9,           # mounts c, restart
    5, 1, 1, 1, 0, 0, 2, 0, 1, 1, 0,  # update b
    6, 1, 3, 3, 3, 1, 3, 2, 3, 0, 8, 9, 10,
]))
write("snapshotter", "odd-keys", bytes([0, 0xc0, 3, 0x2e, 0x2e, 0x2f, 4, 0, 0, 5, 4, 0,
                                        0, 6, 4, 0, 2, 7, 6, 0, 9, 3, 7, 10]))
