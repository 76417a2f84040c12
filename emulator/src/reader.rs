//! Reading an expanded layer: random access to file bytes through any range source
//! (a local file, an HTTP Range client, a chunk cache).

use crate::entry::{Entry, EntryKind};
use crate::error::{Error, Result};
use crate::format::Index;

/// Something that can serve byte ranges of a data blob.
pub trait RangeSource {
    /// Fill `buf` from `offset`; short only at end of data.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl RangeSource for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

impl RangeSource for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// Read `len` bytes at `offset` within the file `entry` (clamped to its size).
/// `entry` must be a `File`: resolve a hardlink first ([`Index::resolve_hardlink`] or
/// [`read_entry_range`]). A data blob shorter than the index says is `Error::Corrupt`.
pub fn read_file_range<S: RangeSource + ?Sized>(
    src: &S,
    entry: &Entry,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    if entry.kind != EntryKind::File {
        return Err(Error::Format(format!(
            "{:?} is a {:?}, not a regular file",
            entry.path, entry.kind
        )));
    }
    if offset >= entry.size {
        return Ok(Vec::new());
    }
    let n = (entry.size - offset).min(len as u64) as usize;
    let abs = entry
        .data_offset
        .checked_add(offset)
        .ok_or_else(|| Error::Format(format!("{:?}: data offset overflows", entry.path)))?;
    let mut buf = vec![0u8; n];
    read_exact_at(src, abs, &mut buf)?;
    Ok(buf)
}

/// [`read_file_range`] for entry `i` of `index`, following hardlinks to the entry owning the bytes.
pub fn read_entry_range<S: RangeSource + ?Sized>(
    index: &Index,
    src: &S,
    i: usize,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>> {
    let (_, e) = index
        .resolve_hardlink(i)
        .ok_or_else(|| Error::Format(format!("entry {i} does not resolve to an entry")))?;
    read_file_range(src, e, offset, len)
}

/// Fill `buf` from `offset` of `src`, failing if the source ends first.
pub fn read_exact_at<S: RangeSource + ?Sized>(
    src: &S,
    mut offset: u64,
    mut buf: &mut [u8],
) -> Result<()> {
    while !buf.is_empty() {
        match src.read_at(offset, buf) {
            Ok(0) => {
                return Err(Error::Corrupt(format!(
                    "data blob ends before offset {offset}"
                )))
            }
            Ok(n) => {
                offset += n as u64;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Ok(())
}

/// `std::io::Read` over `len` bytes of a range source starting at `offset`.
pub struct RangeReader<'a, S: RangeSource + ?Sized> {
    src: &'a S,
    offset: u64,
    left: u64,
}

impl<'a, S: RangeSource + ?Sized> RangeReader<'a, S> {
    pub fn new(src: &'a S, offset: u64, len: u64) -> Self {
        RangeReader {
            src,
            offset,
            left: len,
        }
    }
}

impl<S: RangeSource + ?Sized> std::io::Read for RangeReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = self.left.min(buf.len() as u64) as usize;
        let n = self.src.read_at(self.offset, &mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "data blob ends early",
            ));
        }
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Rebuild a plain tar equivalent to the expanded layer (whiteouts back to `.wh.` names, opaque
/// dirs to `DIR/.wh..wh..opq`). Used by the round-trip property and by tools. Entries keep their
/// order, attributes and xattrs (as PAX `SCHILY.xattr.*`); re-expanding the output gives the same
/// entries and data layout (the diff_id differs: the tar bytes are not the original ones).
pub fn to_tar<S: RangeSource + ?Sized, W: std::io::Write>(
    index: &Index,
    src: &S,
    out: W,
) -> Result<()> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    for e in &index.entries {
        let mut pax: Vec<(String, Vec<u8>)> = e
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
            .collect();
        if e.mtime < 0 {
            pax.push(("mtime".into(), e.mtime.to_string().into_bytes()));
        }
        // Link targets are written byte for byte (the tar crate's helpers would normalise them).
        let link = e.link.as_deref().unwrap_or_default().as_bytes();
        if link.len() > 100 {
            pax.push(("linkpath".into(), link.to_vec()));
        }
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(u64::try_from(e.mtime).unwrap_or(0));
        h.set_size(0);
        match e.kind {
            EntryKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                let data = RangeReader::new(src, e.data_offset, e.size);
                b.append_data(&mut h, &e.path, data)?;
            }
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{}/", e.path), std::io::empty())?;
            }
            EntryKind::Symlink | EntryKind::Hardlink => {
                h.set_entry_type(if e.kind == EntryKind::Symlink {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                if link.len() <= 100 {
                    if let Some(g) = h.as_gnu_mut() {
                        g.linkname[..link.len()].copy_from_slice(link);
                    }
                }
                b.append_data(&mut h, &e.path, std::io::empty())?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                h.set_entry_type(match e.kind {
                    EntryKind::CharDevice => tar::EntryType::Char,
                    EntryKind::BlockDevice => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                h.set_device_major(e.rdev_major)?;
                h.set_device_minor(e.rdev_minor)?;
                b.append_data(&mut h, &e.path, std::io::empty())?;
            }
            EntryKind::Whiteout => {
                h.set_entry_type(tar::EntryType::Regular);
                let name = match e.path.rsplit_once('/') {
                    Some((dir, base)) => format!("{dir}/.wh.{base}"),
                    None => format!(".wh.{}", e.path),
                };
                b.append_data(&mut h, name, std::io::empty())?;
            }
            EntryKind::OpaqueDir => {
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, format!("{}/.wh..wh..opq", e.path), std::io::empty())?;
            }
        }
    }
    b.into_inner()?.flush()?;
    Ok(())
}
