//! The fuser `Filesystem` over a [`Tree`]: read-only, every request answered from memory except
//! file reads, which go to the layer's chunked data.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};

use super::neighbour::NeighbourAhead;
use super::tree::{Node, NodeKind, Tree};
use crate::fetch::{Counters, LayerHandle};
use crate::timing::{FuseOp, OpTimer};
use crate::trace;

/// Largest read the kernel sends us (and readahead window).
pub(crate) const MAX_READ: u32 = 1 << 20;
const BLOCK: u64 = 4096;

pub(crate) struct TeleportFs {
    pub tree: Tree,
    /// Layer slots the tree's `data` refers to.
    pub layers: Vec<LayerHandle>,
    pub counters: Arc<Counters>,
    pub ttl: Duration,
    pub prefetch_on_open: bool,
    pub prefetch_on_open_max: u64,
    pub read_ahead: u64,
    pub neighbours: NeighbourAhead,
    /// This mount's index in the start trace, when tracing is on ([`crate::trace`]).
    pub trace_mount: Option<u32>,
}

fn time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let t = time(n.mtime);
    let (size, blocks) = match n.kind {
        NodeKind::Dir => (BLOCK, BLOCK / 512),
        NodeKind::File => (n.size, n.size.div_ceil(BLOCK) * (BLOCK / 512)),
        _ => (n.size, 0),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(n.kind),
        // invariant: perm is masked to 07777 when the tree is built.
        perm: (n.perm & 0o7777) as u16,
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        rdev: n.rdev,
        blksize: BLOCK as u32,
        flags: 0,
    }
}

impl TeleportFs {
    fn get(&self, ino: INodeNo) -> Result<&Node, Errno> {
        self.tree.node(ino.0).ok_or(Errno::ENOENT)
    }

    /// Whether a read's first and last bytes are in the cache already (the trace's hit test).
    fn is_cached(&self, n: &Node, offset: u64, size: u32) -> bool {
        let len = u64::from(size).min(n.size.saturating_sub(offset));
        match n.data {
            None => true,
            Some(_) if len == 0 => true,
            Some((slot, base)) => self.layers.get(slot).is_some_and(|l| {
                l.is_cached(base.saturating_add(offset))
                    && l.is_cached(base.saturating_add(offset + len - 1))
            }),
        }
    }

    /// Bytes `offset..offset+size` of file `ino`, clamped to its size.
    fn read_file(&self, n: &Node, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        if offset >= n.size {
            return Ok(Vec::new());
        }
        let len = u64::from(size).min(n.size - offset);
        let Some((slot, base)) = n.data else {
            // Sized file without data (only an inconsistent index can do that): zeros.
            return Ok(vec![0; len as usize]);
        };
        let layer = self.layers.get(slot).ok_or(Errno::EIO)?;
        let start = base.checked_add(offset).ok_or(Errno::EIO)?;
        let mut buf = vec![0u8; len as usize];
        // Read-ahead stays inside this file: past its end lie other files' bytes — except on a
        // small file's first, missing read, where those bytes are the files a start is likely
        // to open next (the same directory, in tar order), worth one request instead of many
        // to a reader that waits alone ([`NeighbourAhead`]). A read whose bytes are missing
        // counts as waiting until it returns.
        let file_end = base.saturating_add(n.size);
        let wait = (!layer.is_cached(start)).then(|| self.neighbours.wait());
        let past = if offset == 0 && n.size <= self.read_ahead {
            self.neighbours.first_read(wait.as_ref())
        } else {
            0
        };
        let fetch_end = if past > 0 {
            file_end.saturating_add(past)
        } else {
            start
                .saturating_add(len)
                .saturating_add(self.read_ahead)
                .min(file_end)
        };
        layer
            .read_data_ahead(start, &mut buf, fetch_end, &self.counters)
            .map_err(|e| {
                tracing::warn!(error = %e, offset = start, len, "read failed");
                Errno::EIO
            })?;
        Ok(buf)
    }
}

impl Filesystem for TeleportFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Nearest allowed values are fine: these are performance hints.
        let _ = config
            .set_max_readahead(MAX_READ)
            .or_else(|max| config.set_max_readahead(max));
        let _ = config.set_max_write(MAX_READ);
        let _ = config.add_capabilities(
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_CACHE_SYMLINKS,
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _timer = OpTimer::start(FuseOp::Lookup);
        match self.tree.lookup(parent.0, name.as_bytes()) {
            Some(ino) => match self.tree.node(ino) {
                Some(n) => reply.entry(&self.ttl, &attr(ino, n), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            None => match self.tree.node(parent.0) {
                // Node id 0 is a cacheable "no such entry": the tree never changes, so the
                // kernel may remember misses (container starts probe many absent paths).
                Some(p) if p.kind == NodeKind::Dir => {
                    reply.entry(&self.ttl, &attr(0, p), Generation(0))
                }
                Some(_) => reply.error(Errno::ENOTDIR),
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _timer = OpTimer::start(FuseOp::Getattr);
        match self.get(ino) {
            Ok(n) => reply.attr(&self.ttl, &attr(ino.0, n)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.get(ino) {
            Ok(n) => match &n.symlink {
                Some(t) => reply.data(t.as_bytes()),
                None => reply.error(Errno::EINVAL),
            },
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _timer = OpTimer::start(FuseOp::Open);
        let span = self.trace_mount.map(|m| (m, trace::Span::start()));
        let n = match self.get(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        if n.kind == NodeKind::Dir {
            return reply.error(Errno::EISDIR);
        }
        // An opened file is usually read whole. The first read fetches up to `read_ahead` of
        // it itself (one round trip, no queueing behind other prefetches); only a larger file's
        // remainder is worth a background fetch that overlaps the reader's progress.
        if self.prefetch_on_open && n.size > self.read_ahead && n.size <= self.prefetch_on_open_max
        {
            if let Some((slot, base)) = n.data {
                if let Some(l) = self.layers.get(slot) {
                    l.prefetch(
                        base + self.read_ahead,
                        n.size - self.read_ahead,
                        &self.counters,
                    );
                }
            }
        }
        // Recorded before the answer: once the kernel has it, the caller may open the next
        // file, and the trace must keep the order the caller saw.
        if let Some((mount, span)) = span {
            span.finish(trace::Event {
                mount,
                op: trace::Op::Open,
                ino: ino.0,
                path: self.tree.path_of(ino.0),
                data: n.data.map(|(slot, base)| trace::DataAt {
                    layer: u32::try_from(slot).unwrap_or(u32::MAX),
                    offset: base,
                }),
                len: n.size,
                cached: n.data.is_none_or(|(slot, base)| {
                    self.layers.get(slot).is_some_and(|l| l.is_cached(base))
                }),
                ..trace::Event::blank()
            });
        }
        // Contents never change: let the page cache keep them across opens.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _timer = OpTimer::start(FuseOp::Read);
        let n = match self.get(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if n.kind != NodeKind::File {
            return reply.error(Errno::EINVAL);
        }
        let Some(mount) = self.trace_mount else {
            return match self.read_file(n, offset, size) {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(e),
            };
        };
        let span = trace::Span::start();
        let cached = self.is_cached(n, offset, size);
        let r = self.read_file(n, offset, size);
        // Recorded before the answer, as for opens: the trace keeps the order callers saw.
        span.finish(trace::Event {
            mount,
            op: trace::Op::Read,
            ino: ino.0,
            offset,
            len: u64::from(size).min(n.size.saturating_sub(offset)),
            cached,
            failed: r.is_err(),
            ..trace::Event::blank()
        });
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.get(ino) {
            Ok(n) if n.kind == NodeKind::Dir => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let n = match self.get(ino) {
            Ok(n) if n.kind == NodeKind::Dir => n,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        // Offsets: 0 ".", 1 "..", 2.. children; each entry carries the offset of the next.
        let total = n.children.len() as u64 + 2;
        for i in offset..total {
            let (name, child, kind): (&[u8], u64, FileType) = match i {
                0 => (b".", ino.0, FileType::Directory),
                1 => (b"..", n.parent, FileType::Directory),
                _ => {
                    let (name, c) = &n.children[(i - 2) as usize];
                    let k = self
                        .tree
                        .node(*c)
                        .map_or(FileType::RegularFile, |c| file_type(c.kind));
                    (name.as_bytes(), *c, k)
                }
            };
            if reply.add(INodeNo(child), i + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let n = match self.get(ino) {
            Ok(n) if n.kind == NodeKind::Dir => n,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        let total = n.children.len() as u64 + 2;
        for i in offset..total {
            let (name, child): (&[u8], u64) = match i {
                0 => (b".", ino.0),
                1 => (b"..", n.parent),
                _ => {
                    let (name, c) = &n.children[(i - 2) as usize];
                    (name.as_bytes(), *c)
                }
            };
            let Some(cn) = self.tree.node(child) else {
                continue;
            };
            if reply.add(
                INodeNo(child),
                i + 1,
                OsStr::from_bytes(name),
                &self.ttl,
                &attr(child, cn),
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.tree.total_bytes.div_ceil(BLOCK);
        let files = self.tree.nodes.len() as u64;
        reply.statfs(blocks, 0, 0, files, 0, BLOCK as u32, 255, BLOCK as u32);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let n = match self.get(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let Some((_, v)) = n
            .xattrs
            .iter()
            .find(|(k, _)| k.as_bytes() == name.as_bytes())
        else {
            return reply.error(Errno::NO_XATTR);
        };
        xattr_reply(v, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let n = match self.get(ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let mut list = Vec::new();
        for (k, _) in &n.xattrs {
            list.extend_from_slice(k.as_bytes());
            list.push(0);
        }
        xattr_reply(&list, size, reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (default_permissions); this only checks existence.
        match self.get(ino) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

fn xattr_reply(v: &[u8], size: u32, reply: ReplyXattr) {
    let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if size < len {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(v);
    }
}
