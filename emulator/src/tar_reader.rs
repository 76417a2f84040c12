//! A small streaming tar reader (ustar, GNU and PAX), written for expansion.
//!
//! Why not the `tar` crate's reader: it splits PAX records on newlines, so binary xattr values
//! containing `\n` (e.g. `security.capability`) are rejected; and expansion needs exact control of
//! the end-of-archive rules. Records are length-delimited here, as POSIX says.

use std::io::{self, Read};

/// One member of the archive, extensions (PAX `x`, GNU `L`/`K`) already applied.
#[derive(Debug, Default)]
pub struct Member {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub typeflag: u8,
    pub mode: u64,
    pub uid: u64,
    pub gid: u64,
    /// Seconds; PAX may make it negative.
    pub mtime: i64,
    pub size: u64,
    pub dev_major: u64,
    pub dev_minor: u64,
    /// PAX `SCHILY.xattr.*` records, in order (name without the prefix).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why reading failed.
#[derive(Debug)]
pub enum TarError {
    /// The underlying stream failed (decompression, limits, source).
    Io(io::Error),
    /// The stream is not a well-formed tar (or ends early).
    Malformed(String),
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

type TResult<T> = std::result::Result<T, TarError>;

fn bad<T>(msg: impl Into<String>) -> TResult<T> {
    Err(TarError::Malformed(msg.into()))
}

/// Extension records (long names, PAX headers) bigger than this are refused.
const MAX_EXT: u64 = 1 << 20;

pub struct TarReader<R> {
    r: R,
    /// Bytes of the current member's data not yet consumed, then its padding.
    left: u64,
    pad: u64,
    done: bool,
}

/// Fill `buf`; `Ok(false)` if the stream ended before the first byte, error if it ended inside.
fn read_block<R: Read>(r: &mut R, buf: &mut [u8; 512]) -> TResult<bool> {
    let mut got = 0;
    while got < 512 {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return bad("stream ends inside a tar header"),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TarError::Io(e)),
        }
    }
    Ok(true)
}

/// A numeric header field: octal (space/NUL terminated) or GNU base-256.
fn numeric(field: &[u8], what: &str) -> TResult<u64> {
    if let Some(&first) = field.first() {
        if first & 0x80 != 0 {
            if first == 0xff {
                return bad(format!("negative {what}"));
            }
            let mut v: u64 = u64::from(first & 0x7f);
            for &b in &field[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(b)))
                    .ok_or_else(|| TarError::Malformed(format!("{what} overflows")))?;
            }
            return Ok(v);
        }
    }
    let s: &[u8] = {
        let start = field
            .iter()
            .position(|&b| b != b' ' && b != 0)
            .unwrap_or(field.len());
        let rest = &field[start..];
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(rest.len());
        &rest[..end]
    };
    let mut v: u64 = 0;
    for &b in s {
        if !(b'0'..=b'7').contains(&b) {
            return bad(format!("bad octal {what}"));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or_else(|| TarError::Malformed(format!("{what} overflows")))?;
    }
    Ok(v)
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// PAX time: decimal seconds, optionally negative and fractional (rounded toward −∞).
pub fn parse_pax_time(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let has_frac = frac.bytes().any(|b| b != b'0');
    if secs < 0 && has_frac {
        secs.checked_sub(1)
    } else if int.starts_with('-') && secs == 0 && has_frac {
        Some(-1)
    } else {
        Some(secs)
    }
}

/// PAX extended header records, length-delimited (`"%d %s=%s\n"`): (key, value) pairs.
pub fn parse_pax(mut data: &[u8]) -> TResult<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        // Some writers pad the record block with NULs.
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| TarError::Malformed("PAX record without length".into()))?;
        let len = parse_decimal(&data[..sp])
            .ok_or_else(|| TarError::Malformed("bad PAX record length".into()))?;
        let len =
            usize::try_from(len).map_err(|_| TarError::Malformed("PAX record too long".into()))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return bad("malformed PAX record");
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| TarError::Malformed("PAX record without '='".into()))?;
        out.push((&rec[..eq], &rec[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}

impl<R: Read> TarReader<R> {
    pub fn new(r: R) -> Self {
        TarReader {
            r,
            left: 0,
            pad: 0,
            done: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.r
    }

    /// Skip what is left of the current member (data and padding).
    fn skip_rest(&mut self) -> TResult<()> {
        // Saturating: a hostile size then simply runs into the end of the stream (an error).
        let n = self.left.saturating_add(self.pad);
        if n > 0 {
            let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
            if copied != n {
                return bad("stream ends inside member data");
            }
        }
        self.left = 0;
        self.pad = 0;
        Ok(())
    }

    fn read_ext(&mut self, size: u64) -> TResult<Vec<u8>> {
        if size > MAX_EXT {
            return bad(format!("extension record of {size} bytes"));
        }
        let mut v = Vec::with_capacity(size as usize);
        (&mut self.r).take(size).read_to_end(&mut v)?;
        if v.len() as u64 != size {
            return bad("stream ends inside an extension record");
        }
        self.left = 0;
        self.pad = (512 - size % 512) % 512;
        self.skip_rest()?;
        Ok(v)
    }

    /// Next member, or `None` at a proper end of archive (a zero block, optionally followed by a
    /// second one; Go's archive/tar rules). A stream that ends where a header should be is an error.
    pub fn next_member(&mut self) -> TResult<Option<Member>> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        let mut blk = [0u8; 512];
        loop {
            if !read_block(&mut self.r, &mut blk)? {
                return bad("tar stream ends without an end-of-archive block");
            }
            if blk.iter().all(|&b| b == 0) {
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return bad("extension header without a member");
                }
                let mut second = [0u8; 512];
                if read_block(&mut self.r, &mut second)? && second.iter().any(|&b| b != 0) {
                    return bad("non-zero block after the end-of-archive block");
                }
                self.done = true;
                return Ok(None);
            }
            let stored = numeric(&blk[148..156], "checksum")?;
            let sum: u64 = blk
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            if stored != sum {
                return bad("tar header checksum mismatch");
            }
            let typeflag = blk[156];
            let size = numeric(&blk[124..136], "size")?;
            match typeflag {
                b'L' => {
                    let mut v = self.read_ext(size)?;
                    if v.last() == Some(&0) {
                        v.truncate(cstr(&v).len());
                    }
                    long_name = Some(v);
                    continue;
                }
                b'K' => {
                    let mut v = self.read_ext(size)?;
                    v.truncate(cstr(&v).len());
                    long_link = Some(v);
                    continue;
                }
                b'x' | b'X' => {
                    let v = self.read_ext(size)?;
                    // Validate now so the member sees only well-formed records.
                    parse_pax(&v)?;
                    pax = Some(v);
                    continue;
                }
                b'g' => {
                    // Global headers set defaults for later members; layer tools do not rely on them.
                    self.read_ext(size)?;
                    continue;
                }
                _ => {}
            }

            let is_ustar = &blk[257..263] == b"ustar\0";
            let mut path = cstr(&blk[0..100]).to_vec();
            if is_ustar {
                let prefix = cstr(&blk[345..500]);
                if !prefix.is_empty() {
                    let mut p = prefix.to_vec();
                    p.push(b'/');
                    p.extend_from_slice(&path);
                    path = p;
                }
            }
            let mut m = Member {
                path,
                link: cstr(&blk[157..257]).to_vec(),
                typeflag,
                mode: numeric(&blk[100..108], "mode")?,
                uid: numeric(&blk[108..116], "uid")?,
                gid: numeric(&blk[116..124], "gid")?,
                mtime: i64::try_from(numeric(&blk[136..148], "mtime")?).unwrap_or(i64::MAX),
                size,
                dev_major: 0,
                dev_minor: 0,
                xattrs: Vec::new(),
            };
            if matches!(typeflag, b'3' | b'4') {
                m.dev_major = numeric(&blk[329..337], "devmajor")?;
                m.dev_minor = numeric(&blk[337..345], "devminor")?;
            }
            if let Some(n) = long_name.take() {
                m.path = n;
            }
            if let Some(l) = long_link.take() {
                m.link = l;
            }
            if let Some(p) = pax.take() {
                for (k, v) in parse_pax(&p)? {
                    match k {
                        b"path" if !v.is_empty() => m.path = v.to_vec(),
                        b"linkpath" if !v.is_empty() => m.link = v.to_vec(),
                        b"size" => {
                            m.size = parse_decimal(v)
                                .ok_or_else(|| TarError::Malformed("bad PAX size".into()))?
                        }
                        b"uid" => {
                            m.uid = parse_decimal(v)
                                .ok_or_else(|| TarError::Malformed("bad PAX uid".into()))?
                        }
                        b"gid" => {
                            m.gid = parse_decimal(v)
                                .ok_or_else(|| TarError::Malformed("bad PAX gid".into()))?
                        }
                        b"mtime" => {
                            m.mtime = parse_pax_time(v)
                                .ok_or_else(|| TarError::Malformed("bad PAX mtime".into()))?
                        }
                        _ => {
                            if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                                m.xattrs.push((name.to_vec(), v.to_vec()));
                            }
                        }
                    }
                }
            }
            // Links, directories, devices and fifos carry no data whatever the size field says
            // (like Go's archive/tar); everything else is followed by `size` bytes.
            let has_data = !matches!(typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
            if !has_data {
                m.size = 0;
            }
            self.left = m.size;
            self.pad = (512 - m.size % 512) % 512;
            return Ok(Some(m));
        }
    }

    /// Read the current member's data. Returns `Ok(0)` once it is exhausted; a stream ending
    /// inside the data is an error.
    pub fn read_data(&mut self, buf: &mut [u8]) -> TResult<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = self.left.min(buf.len() as u64) as usize;
        loop {
            match self.r.read(&mut buf[..want]) {
                Ok(0) => return bad("stream ends inside member data"),
                Ok(n) => {
                    self.left -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
    }

    /// Bytes of the current member's data not read yet.
    pub fn data_left(&self) -> u64 {
        self.left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(numeric(b"0000644\0", "m").unwrap(), 0o644);
        assert_eq!(numeric(b"  755 \0\0", "m").unwrap(), 0o755);
        assert_eq!(numeric(b"\0\0\0\0\0\0\0\0", "m").unwrap(), 0);
        assert_eq!(numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0], "m").unwrap(), 256);
        assert!(numeric(b"0009\0", "m").is_err());
        assert!(numeric(&[0xff; 8], "m").is_err());
        assert!(numeric(
            &[0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            "m"
        )
        .is_err());
    }

    #[test]
    fn pax_records_are_length_delimited() {
        let v = b"30 SCHILY.xattr.user.a=x\ny\nzz\n12 path=a/b\n";
        let recs = parse_pax(v).unwrap();
        assert_eq!(
            recs,
            vec![
                (&b"SCHILY.xattr.user.a"[..], &b"x\ny\nzz"[..]),
                (&b"path"[..], &b"a/b"[..])
            ]
        );
        assert!(parse_pax(b"99 path=a\n").is_err());
        assert!(parse_pax(b"x path=a\n").is_err());
        assert!(parse_pax(b"9 patha\n").is_err());
        assert!(parse_pax(b"6 k=v\n\0\0\0").unwrap().len() == 1);
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some(1_700_000_000));
        assert_eq!(parse_pax_time(b"1700000000.999"), Some(1_700_000_000));
        assert_eq!(parse_pax_time(b"-5.5"), Some(-6));
        assert_eq!(parse_pax_time(b"-0.5"), Some(-1));
        assert_eq!(parse_pax_time(b"1.x"), None);
        assert_eq!(parse_pax_time(b""), None);
    }
}
