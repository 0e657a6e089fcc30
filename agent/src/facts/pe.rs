//! The file version of a Windows executable, read from the `VS_FIXEDFILEINFO`
//! of its `VS_VERSIONINFO` resource (what Explorer shows as "File version").
//!
//! Contract: pure parsing over [`ReadAt`] — the caller supplies the bytes
//! (a file on Windows, a byte buffer in the tests), so the same code is
//! tested on every platform. A malformed image is a [`PeError`], never a
//! panic, and nothing is read or allocated on the strength of the image's
//! own sizes beyond these bounds: the DOS and NT headers (64 + 24 bytes),
//! an optional header of at most 4 KiB, at most [`MAX_SECTIONS`] section
//! headers, three resource directory levels of at most
//! [`MAX_DIR_ENTRIES`] entries each, and a version resource of at most
//! [`MAX_VERSION_BYTES`].
//!
//! The walk: DOS header (`MZ`, `e_lfanew`) → `PE\0\0` and the COFF header →
//! the optional header (PE32 or PE32+) → data directory 2 (resources) →
//! the section holding it (RVA to file offset) → the resource tree: type
//! `RT_VERSION` (16) → its first name → its first language → the data
//! entry → `VS_VERSIONINFO` (`wLength`, `wValueLength`, `wType`,
//! `"VS_VERSION_INFO"` in UTF-16, padding to 4 bytes) → `VS_FIXEDFILEINFO`,
//! signature `0xFEEF04BD`, `dwFileVersionMS`/`LS`.

use std::fmt;
use std::io;

/// The most section headers read (the Windows loader's limit).
pub const MAX_SECTIONS: usize = 96;
/// The most entries read of one resource directory.
pub const MAX_DIR_ENTRIES: usize = 4096;
/// The largest version resource read.
pub const MAX_VERSION_BYTES: u32 = 64 * 1024;
/// The largest optional header read.
const MAX_OPTIONAL_HEADER: usize = 4096;
/// `RT_VERSION`.
const RT_VERSION: u32 = 16;
/// `VS_FIXEDFILEINFO.dwSignature`.
pub const FIXED_SIGNATURE: u32 = 0xFEEF_04BD;
/// A directory entry's high bit: a name (first field), a subdirectory (second).
const HIGH_BIT: u32 = 0x8000_0000;

/// Reads bytes at an offset: a file, or a byte buffer.
pub trait ReadAt {
    /// Fills as much of `buf` as there are bytes at `offset`; returns how
    /// many (0 past the end).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAt for &[u8] {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let Some(rest) = usize::try_from(offset).ok().and_then(|o| self.get(o..)) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

impl ReadAt for std::fs::File {
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::io::{Read, Seek, SeekFrom};
        self.seek(SeekFrom::Start(offset))?;
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

/// `major.minor.build.revision`, as `VS_FIXEDFILEINFO` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileVersion {
    pub major: u16,
    pub minor: u16,
    pub build: u16,
    pub revision: u16,
}

impl fmt::Display for FileVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}.{}",
            self.major, self.minor, self.build, self.revision
        )
    }
}

/// Why no file version was found.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    #[error("{0}")]
    Io(io::Error),
    #[error("not a Windows executable ({0})")]
    NotPe(&'static str),
    #[error("the executable ends inside its {0}")]
    Truncated(&'static str),
    #[error("malformed executable: {0}")]
    Malformed(String),
    #[error("the executable has no version resource")]
    NoVersion,
    #[error("the version resource has no fixed file info ({0})")]
    NoFixedInfo(&'static str),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Exactly `len` bytes at `offset`, or `Truncated(what)`.
fn read_exact<R: ReadAt + ?Sized>(
    r: &mut R,
    offset: u64,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, PeError> {
    let mut buf = vec![0; len];
    let n = r.read_at(offset, &mut buf).map_err(PeError::Io)?;
    if n < len {
        return Err(PeError::Truncated(what));
    }
    Ok(buf)
}

#[derive(Debug, Clone, Copy)]
struct Section {
    va: u32,
    raw_size: u32,
    raw_ptr: u32,
}

/// The file offset of `len` bytes at `rva`, when one section's raw data
/// holds all of them.
fn file_offset(sections: &[Section], rva: u32, len: u32) -> Result<u64, PeError> {
    let end = rva
        .checked_add(len)
        .ok_or_else(|| PeError::Malformed(format!("address {rva:#x} + {len} overflows")))?;
    sections
        .iter()
        .find(|s| rva >= s.va && u64::from(end) <= u64::from(s.va) + u64::from(s.raw_size))
        .map(|s| u64::from(s.raw_ptr) + u64::from(rva - s.va))
        .ok_or_else(|| {
            PeError::Malformed(format!(
                "address {rva:#x} ({len} bytes) is in no section's data"
            ))
        })
}

/// One resource directory entry: (id or name, target).
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: u32,
    data: u32,
}

impl Entry {
    fn id(self) -> Option<u32> {
        (self.name & HIGH_BIT == 0).then_some(self.name)
    }

    fn subdir(self) -> Option<u32> {
        (self.data & HIGH_BIT != 0).then_some(self.data & !HIGH_BIT)
    }

    fn leaf(self) -> Option<u32> {
        (self.data & HIGH_BIT == 0).then_some(self.data)
    }
}

/// The resource section: where it is, and how to read a directory of it.
struct Resources<'a> {
    sections: &'a [Section],
    base: u32,
}

impl Resources<'_> {
    /// The entries (at most [`MAX_DIR_ENTRIES`]) of the directory at
    /// offset `off` of the resource section.
    fn dir<R: ReadAt + ?Sized>(&self, r: &mut R, off: u32) -> Result<Vec<Entry>, PeError> {
        let rva = self
            .base
            .checked_add(off)
            .ok_or_else(|| PeError::Malformed("resource offset overflows".into()))?;
        let head = read_exact(
            r,
            file_offset(self.sections, rva, 16)?,
            16,
            "resource directory",
        )?;
        let named = usize::from(u16_at(&head, 12).unwrap_or(0));
        let ids = usize::from(u16_at(&head, 14).unwrap_or(0));
        let n = (named + ids).min(MAX_DIR_ENTRIES);
        if n == 0 {
            return Ok(Vec::new());
        }
        let bytes = (n * 8) as u32;
        let at = file_offset(self.sections, rva + 16, bytes)?;
        let raw = read_exact(r, at, n * 8, "resource directory")?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| Entry {
                name: u32_at(c, 0).unwrap_or(0),
                data: u32_at(c, 4).unwrap_or(0),
            })
            .collect())
    }
}

/// The file version of the PE image `r`.
pub fn file_version<R: ReadAt + ?Sized>(r: &mut R) -> Result<FileVersion, PeError> {
    let dos = read_exact(r, 0, 64, "DOS header").map_err(|e| match e {
        PeError::Truncated(_) => PeError::NotPe("shorter than a DOS header"),
        e => e,
    })?;
    if &dos[..2] != b"MZ" {
        return Err(PeError::NotPe("no MZ signature"));
    }
    let nt = u64::from(u32_at(&dos, 0x3C).unwrap_or(0));
    let coff = read_exact(r, nt, 24, "PE header")?;
    if &coff[..4] != b"PE\0\0" {
        return Err(PeError::NotPe("no PE signature"));
    }
    let nsections = usize::from(u16_at(&coff, 6).unwrap_or(0));
    let opt_size = usize::from(u16_at(&coff, 20).unwrap_or(0));
    if nsections > MAX_SECTIONS {
        return Err(PeError::Malformed(format!(
            "{nsections} sections; at most {MAX_SECTIONS}"
        )));
    }
    if !(2..=MAX_OPTIONAL_HEADER).contains(&opt_size) {
        return Err(PeError::Malformed(format!(
            "optional header of {opt_size} bytes"
        )));
    }
    let opt = read_exact(r, nt + 24, opt_size, "optional header")?;
    // (where NumberOfRvaAndSizes is, where the data directories start)
    let (count_at, dirs_at) = match u16_at(&opt, 0) {
        Some(0x10b) => (92, 96),
        Some(0x20b) => (108, 112),
        Some(m) => {
            return Err(PeError::Malformed(format!("optional header magic {m:#x}")));
        }
        None => return Err(PeError::Truncated("optional header")),
    };
    let ndirs = u32_at(&opt, count_at).ok_or(PeError::Truncated("optional header"))?;
    if ndirs < 3 {
        return Err(PeError::NoVersion);
    }
    let (Some(rsrc_rva), Some(_)) = (u32_at(&opt, dirs_at + 16), u32_at(&opt, dirs_at + 20)) else {
        return Err(PeError::Truncated("data directories"));
    };
    if rsrc_rva == 0 {
        return Err(PeError::NoVersion);
    }
    let table = read_exact(
        r,
        nt + 24 + opt_size as u64,
        nsections * 40,
        "section table",
    )?;
    let sections: Vec<Section> = table
        .chunks_exact(40)
        .map(|s| Section {
            va: u32_at(s, 12).unwrap_or(0),
            raw_size: u32_at(s, 16).unwrap_or(0),
            raw_ptr: u32_at(s, 20).unwrap_or(0),
        })
        .collect();
    let res = Resources {
        sections: &sections,
        base: rsrc_rva,
    };
    // Type RT_VERSION → its first name → its first language.
    let types = res.dir(r, 0)?;
    let Some(names_at) = types
        .iter()
        .find(|e| e.id() == Some(RT_VERSION))
        .and_then(|e| e.subdir())
    else {
        return Err(PeError::NoVersion);
    };
    let Some(langs_at) = res.dir(r, names_at)?.iter().find_map(|e| e.subdir()) else {
        return Err(PeError::NoVersion);
    };
    let Some(leaf_at) = res.dir(r, langs_at)?.iter().find_map(|e| e.leaf()) else {
        return Err(PeError::NoVersion);
    };
    let leaf_rva = rsrc_rva
        .checked_add(leaf_at)
        .ok_or_else(|| PeError::Malformed("resource offset overflows".into()))?;
    let leaf = read_exact(
        r,
        file_offset(&sections, leaf_rva, 16)?,
        16,
        "resource data entry",
    )?;
    let (data_rva, size) = (u32_at(&leaf, 0).unwrap_or(0), u32_at(&leaf, 4).unwrap_or(0));
    if size > MAX_VERSION_BYTES {
        return Err(PeError::Malformed(format!(
            "a version resource of {size} bytes; at most {MAX_VERSION_BYTES}"
        )));
    }
    let data = read_exact(
        r,
        file_offset(&sections, data_rva, size)?,
        size as usize,
        "version resource",
    )?;
    fixed_file_version(&data)
}

/// `"VS_VERSION_INFO"` and its terminating NUL, in UTF-16LE.
fn version_key() -> impl Iterator<Item = u16> {
    "VS_VERSION_INFO\0".encode_utf16()
}

/// The file version in a `VS_VERSIONINFO` block. Pure.
pub fn fixed_file_version(b: &[u8]) -> Result<FileVersion, PeError> {
    let length = usize::from(u16_at(b, 0).ok_or(PeError::Truncated("version resource"))?);
    let value_len = usize::from(u16_at(b, 2).ok_or(PeError::Truncated("version resource"))?);
    if length > b.len() {
        return Err(PeError::Truncated("version resource"));
    }
    let b = &b[..length];
    let key_ok = version_key()
        .enumerate()
        .all(|(i, c)| u16_at(b, 6 + 2 * i) == Some(c));
    if !key_ok {
        return Err(PeError::NoFixedInfo("its key is not VS_VERSION_INFO"));
    }
    // The header (6 bytes) and the key (16 UTF-16 units), padded to 4 bytes.
    let value_at = (6 + 2 * version_key().count()).next_multiple_of(4);
    if value_len < 52 {
        return Err(PeError::NoFixedInfo("no VS_FIXEDFILEINFO"));
    }
    let (Some(sig), Some(ms), Some(ls)) = (
        u32_at(b, value_at),
        u32_at(b, value_at + 8),
        u32_at(b, value_at + 12),
    ) else {
        return Err(PeError::Truncated("VS_FIXEDFILEINFO"));
    };
    if b.len() < value_at + 52 {
        return Err(PeError::Truncated("VS_FIXEDFILEINFO"));
    }
    if sig != FIXED_SIGNATURE {
        return Err(PeError::NoFixedInfo("signature is not 0xFEEF04BD"));
    }
    Ok(FileVersion {
        major: (ms >> 16) as u16,
        minor: ms as u16,
        build: (ls >> 16) as u16,
        revision: ls as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `VS_VERSIONINFO` with a fixed file info of `file` (MS, LS), and a
    /// child block after it (as real ones have `StringFileInfo`).
    fn version_info(file: (u32, u32), signature: u32) -> Vec<u8> {
        let mut b = vec![0u8; 6];
        for c in version_key() {
            b.extend_from_slice(&c.to_le_bytes());
        }
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        for v in [
            signature,
            0x0001_0000,
            file.0,
            file.1,
            0x0009_0008, // product version: not the file version
            0x0007_0006,
            0x3f,
            0,
            0x0004_0004,
            1,
            0,
            0,
            0,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[0xAA; 24]); // a child block
        let len = b.len() as u16;
        b[0..2].copy_from_slice(&len.to_le_bytes());
        b[2..4].copy_from_slice(&52u16.to_le_bytes());
        b
    }

    /// Knobs for [`image`].
    #[derive(Clone)]
    struct Img {
        pe32plus: bool,
        /// Resource type ids in the root directory (16 is RT_VERSION).
        types: Vec<u32>,
        info: Vec<u8>,
        /// The data entry's size (default: the info's length).
        size: Option<u32>,
        ndirs: u32,
    }

    impl Default for Img {
        fn default() -> Self {
            Img {
                pe32plus: true,
                types: vec![3, 16, 24],
                info: version_info((0x0007_0004, 0x0001_0002), FIXED_SIGNATURE),
                size: None,
                ndirs: 16,
            }
        }
    }

    const LFANEW: usize = 0x80;
    const RAW: usize = 0x400;
    const VA: u32 = 0x3000;

    /// A minimal PE image: DOS header, PE header, one `.rsrc` section at
    /// file offset 0x400 / RVA 0x3000 holding the resource tree.
    fn image(o: &Img) -> Vec<u8> {
        // The resource section: root, one name dir, one language dir, the
        // data entry, the data.
        let mut rs = Vec::new();
        let dir = |rs: &mut Vec<u8>, entries: &[(u32, u32)]| {
            rs.extend_from_slice(&[0; 12]);
            rs.extend_from_slice(&0u16.to_le_bytes());
            rs.extend_from_slice(&(entries.len() as u16).to_le_bytes());
            for (n, d) in entries {
                rs.extend_from_slice(&n.to_le_bytes());
                rs.extend_from_slice(&d.to_le_bytes());
            }
        };
        let root_len = 16 + 8 * o.types.len() as u32;
        let names_at = root_len;
        let langs_at = names_at + 24;
        let leaf_at = langs_at + 24;
        let data_at = leaf_at + 16;
        let root: Vec<(u32, u32)> = o.types.iter().map(|t| (*t, HIGH_BIT | names_at)).collect();
        dir(&mut rs, &root);
        dir(&mut rs, &[(1, HIGH_BIT | langs_at)]);
        dir(&mut rs, &[(0x409, leaf_at)]);
        let size = o.size.unwrap_or(o.info.len() as u32);
        for v in [VA + data_at, size, 0, 0] {
            rs.extend_from_slice(&v.to_le_bytes());
        }
        rs.extend_from_slice(&o.info);

        let mut b = vec![0u8; RAW];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3C..0x40].copy_from_slice(&(LFANEW as u32).to_le_bytes());
        b[LFANEW..LFANEW + 4].copy_from_slice(b"PE\0\0");
        let coff = LFANEW + 4;
        let opt_size: u16 = if o.pe32plus { 240 } else { 224 };
        b[coff..coff + 2]
            .copy_from_slice(&(if o.pe32plus { 0x8664u16 } else { 0x14c }).to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&opt_size.to_le_bytes());
        let opt = coff + 20;
        let (magic, count_at, dirs_at) = if o.pe32plus {
            (0x20bu16, 108, 112)
        } else {
            (0x10b, 92, 96)
        };
        b[opt..opt + 2].copy_from_slice(&magic.to_le_bytes());
        b[opt + count_at..opt + count_at + 4].copy_from_slice(&o.ndirs.to_le_bytes());
        let rd = opt + dirs_at + 16;
        b[rd..rd + 4].copy_from_slice(&VA.to_le_bytes());
        b[rd + 4..rd + 8].copy_from_slice(&(rs.len() as u32).to_le_bytes());
        let sec = opt + usize::from(opt_size);
        b[sec..sec + 8].copy_from_slice(b".rsrc\0\0\0");
        let raw_size = (rs.len() as u32).next_multiple_of(0x200);
        for (at, v) in [
            (8, rs.len() as u32),
            (12, VA),
            (16, raw_size),
            (20, RAW as u32),
        ] {
            b[sec + at..sec + at + 4].copy_from_slice(&v.to_le_bytes());
        }
        rs.resize(raw_size as usize, 0);
        b.extend_from_slice(&rs);
        b
    }

    fn version(b: &[u8]) -> Result<String, String> {
        let mut r: &[u8] = b;
        file_version(&mut r)
            .map(|v| v.to_string())
            .map_err(|e| e.to_string())
    }

    fn set_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn file_versions_of_images_and_why_not() {
        let good = image(&Img::default());
        assert_eq!(version(&good), Ok("7.4.1.2".into()));
        let pe32 = image(&Img {
            pe32plus: false,
            ..Img::default()
        });
        assert_eq!(version(&pe32), Ok("7.4.1.2".into()));
        let only = image(&Img {
            types: vec![16],
            info: version_info((0xFFFF_0000, 0x0000_FFFF), FIXED_SIGNATURE),
            ..Img::default()
        });
        assert_eq!(version(&only), Ok("65535.0.0.65535".into()));

        let sec = LFANEW + 24 + 240;
        let rd = LFANEW + 24 + 112 + 16;
        // (what, the image, a fragment of the error)
        let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", Vec::new(), "shorter than a DOS header"),
            ("not MZ", b"ZM".repeat(64), "no MZ signature"),
            ("text", b"7.4.1\n".repeat(20), "no MZ signature"),
            (
                "no version type",
                image(&Img {
                    types: vec![3, 14, 24],
                    ..Img::default()
                }),
                "no version resource",
            ),
            (
                "no data directories",
                image(&Img {
                    ndirs: 2,
                    ..Img::default()
                }),
                "no version resource",
            ),
            (
                "bad fixed signature",
                image(&Img {
                    info: version_info((1, 2), 0xFEEF_04BC),
                    ..Img::default()
                }),
                "0xFEEF04BD",
            ),
            (
                "no fixed info",
                image(&Img {
                    info: {
                        let mut i = version_info((1, 2), FIXED_SIGNATURE);
                        i[2..4].copy_from_slice(&0u16.to_le_bytes());
                        i
                    },
                    ..Img::default()
                }),
                "no VS_FIXEDFILEINFO",
            ),
            (
                "another key",
                image(&Img {
                    info: {
                        let mut i = version_info((1, 2), FIXED_SIGNATURE);
                        i[6] = b'X';
                        i
                    },
                    ..Img::default()
                }),
                "not VS_VERSION_INFO",
            ),
            (
                "wLength past the data",
                image(&Img {
                    info: {
                        let mut i = version_info((1, 2), FIXED_SIGNATURE);
                        i[0..2].copy_from_slice(&4000u16.to_le_bytes());
                        i
                    },
                    ..Img::default()
                }),
                "ends inside its version resource",
            ),
            (
                "wLength cuts the fixed info",
                image(&Img {
                    info: {
                        let mut i = version_info((1, 2), FIXED_SIGNATURE);
                        i[0..2].copy_from_slice(&60u16.to_le_bytes());
                        i
                    },
                    ..Img::default()
                }),
                "ends inside its VS_FIXEDFILEINFO",
            ),
            (
                "a huge resource",
                image(&Img {
                    size: Some(MAX_VERSION_BYTES + 1),
                    ..Img::default()
                }),
                "at most 65536",
            ),
            (
                "a resource past its section",
                image(&Img {
                    size: Some(0x1000),
                    ..Img::default()
                }),
                "in no section's data",
            ),
        ];
        let mut b = good.clone();
        b[LFANEW + 1] = b'X';
        cases.push(("no PE signature", b, "no PE signature"));
        let mut b = good.clone();
        set_u32(&mut b, 0x3C, 1 << 30);
        cases.push(("e_lfanew past the end", b, "ends inside its PE header"));
        let mut b = good.clone();
        b[LFANEW + 6..LFANEW + 8].copy_from_slice(&97u16.to_le_bytes());
        cases.push(("97 sections", b, "97 sections"));
        let mut b = good.clone();
        b[LFANEW + 24..LFANEW + 26].copy_from_slice(&0x107u16.to_le_bytes());
        cases.push(("a ROM image", b, "magic 0x107"));
        let mut b = good.clone();
        b[LFANEW + 20..LFANEW + 22].copy_from_slice(&0u16.to_le_bytes());
        cases.push(("no optional header", b, "optional header of 0 bytes"));
        let mut b = good.clone();
        set_u32(&mut b, rd, 0);
        cases.push(("no resource directory", b, "no version resource"));
        let mut b = good.clone();
        set_u32(&mut b, rd, 0x9000);
        cases.push(("resources outside every section", b, "in no section's data"));
        let mut b = good.clone();
        set_u32(&mut b, sec + 16, 8);
        cases.push(("a section shorter than its tree", b, "in no section's data"));
        let mut b = good.clone();
        b.truncate(RAW + 40);
        cases.push((
            "cut inside the tree",
            b,
            "ends inside its resource directory",
        ));
        let mut b = good.clone();
        b.truncate(b.len() - 0x200 + 8);
        cases.push(("cut inside the section", b, "ends inside"));
        // The language level's entry points at a subdirectory (itself):
        // the walk has three levels and never follows a fourth.
        let mut b = good.clone();
        let langs = RAW + (16 + 8 * 3) + 24 + 16 + 4;
        let at = u32::from_le_bytes(b[langs..langs + 4].try_into().unwrap());
        set_u32(&mut b, langs, at | HIGH_BIT);
        cases.push(("a loop", b, "no version resource"));
        // An entry count far past the section.
        let mut b = good.clone();
        b[RAW + 14..RAW + 16].copy_from_slice(&u16::MAX.to_le_bytes());
        cases.push(("65535 entries", b, "in no section's data"));
        for (what, img, frag) in cases {
            let e = version(&img).expect_err(what);
            assert!(e.contains(frag), "{what}: {e:?} lacks {frag:?}");
        }
    }

    #[test]
    fn every_prefix_of_an_image_is_an_error_not_a_panic() {
        let good = image(&Img::default());
        for n in 0..good.len() {
            let _ = version(&good[..n]);
        }
        // And every byte flipped.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xFF;
            let _ = version(&b);
        }
    }

    #[test]
    fn the_fixed_info_alone() {
        let info = version_info((0x000A_0000, 0x0000_0001), FIXED_SIGNATURE);
        assert_eq!(fixed_file_version(&info).unwrap().to_string(), "10.0.0.1");
        assert!(matches!(
            fixed_file_version(&info[..3]),
            Err(PeError::Truncated(_))
        ));
    }
}
