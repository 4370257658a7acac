//! What a module file is: ELF identification as `file` words it, `.modinfo`,
//! and decompression (xz, zstd, gzip; every decoder capped).

use std::collections::BTreeMap;
use std::io::Read;

use object::{Object, ObjectSection};
use serde::Serialize;

use crate::host::{bytes_to_path, FileMeta, Host};

/// Largest file inspected (a kernel module is rarely over a few MiB).
pub(super) const MAX_MODULE_SIZE: u64 = 64 * 1024 * 1024;

/// A kernel module file found on disk.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleFile {
    #[serde(skip)]
    pub path: Vec<u8>,
    pub meta: FileMeta,
    /// What `file` would say, e.g. "ELF 64-bit LSB relocatable, x86-64".
    pub identification: String,
    /// `xz`, `zstd` or `gzip` for compressed modules.
    pub compression: Option<&'static str>,
    /// `.modinfo` fields (name, vermagic, license, author, description, depends, ...).
    pub modinfo: BTreeMap<String, Vec<String>>,
    pub sha256: Option<String>,
    /// True when the name ends in `.ko*`; false when found by content.
    pub named_as_module: bool,
    /// The appended module signature, if any.
    pub signature: Option<ModSig>,
    /// Where it lies (a kernel module tree, DKMS, a build directory), the
    /// package that owns it, and whether it was built for the running kernel.
    pub place: Place,
}

/// What is known of where a module file lies and who put it there.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Place {
    /// `tree` (a directory for one kernel version with modules.dep or
    /// modules.order), `dkms`, `build` (Module.symvers or .mod.c beside it),
    /// or `loose`.
    pub kind: &'static str,
    /// The tree's (or build's) root directory, escaped for display.
    pub root: Option<String>,
    /// Raw root path (for grouping).
    #[serde(skip)]
    pub root_raw: Option<Vec<u8>>,
    /// The kernel version of a tree (its directory name).
    pub version: Option<String>,
    /// The installed package that owns the file (dpkg).
    pub package: Option<String>,
    /// Whether a package database was read at all.
    pub packages_checked: bool,
    /// Whether its content matches the package's MD5 checksum; `None` when
    /// not checked.
    pub package_checksum_ok: Option<bool>,
    /// The vermagic release equals the running kernel's: it could be loaded here.
    pub built_for_running_kernel: bool,
    /// The signer's name is a key the running kernel holds (`/proc/keys`).
    pub signer_trusted: bool,
}

/// An appended module signature (`scripts/sign-file.c`, struct
/// `module_signature` in include/linux/module_signature.h): the signature
/// bytes, a 12-byte trailer (algorithm, hash, id type, signer and key-id
/// lengths, 3 bytes of padding, big-endian signature length), then the magic
/// string. For PKCS#7 (id type 2) the signer is in the CMS SignerInfo.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct ModSig {
    /// `PKCS#7`, or the id type number when it is another.
    pub kind: String,
    /// The signer (the issuer's common name).
    pub signer: Option<String>,
    /// The key identifier: the certificate serial number (issuer and serial)
    /// or the subject key identifier, in hex.
    pub key_id: Option<String>,
    pub length: usize,
    /// The trailer claims more signature bytes than the file holds, or the
    /// signature does not parse.
    pub damaged: bool,
}

/// The magic string that ends a signed module.
pub const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// The appended signature of a module's (decompressed) bytes, if it has one.
pub fn signature(data: &[u8]) -> Option<ModSig> {
    let body = data.strip_suffix(SIG_MAGIC)?;
    let mut sig = ModSig {
        kind: "unknown".into(),
        signer: None,
        key_id: None,
        length: 0,
        damaged: true,
    };
    let Some(split) = body.len().checked_sub(12) else {
        return Some(sig);
    };
    let (before, info) = body.split_at(split);
    sig.kind = match info[2] {
        2 => "PKCS#7".into(),
        n => format!("id type {n}"),
    };
    sig.length = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let Some(start) = before.len().checked_sub(sig.length) else {
        return Some(sig);
    };
    if info[2] == 2 {
        if let Some((signer, key_id)) = pkcs7_signer(&before[start..]) {
            sig.signer = signer;
            sig.key_id = Some(key_id);
            sig.damaged = false;
        }
    }
    Some(sig)
}

/// The signer's common name and key identifier of a PKCS#7 SignedData.
fn pkcs7_signer(der: &[u8]) -> Option<(Option<String>, String)> {
    use cms::content_info::ContentInfo;
    use cms::signed_data::{SignedData, SignerIdentifier};
    use der::Decode;
    let ci = ContentInfo::from_der(der).ok()?;
    let sd: SignedData = ci.content.decode_as().ok()?;
    let si = sd.signer_infos.0.iter().next()?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Some(match &si.sid {
        SignerIdentifier::IssuerAndSerialNumber(isn) => {
            let name = isn.issuer.to_string();
            let cn = name
                .split(',')
                .find_map(|p| p.trim().strip_prefix("CN="))
                .map(crate::escape::escape_str);
            (cn, hex(isn.serial_number.as_bytes()))
        }
        SignerIdentifier::SubjectKeyIdentifier(k) => (None, hex(k.0.as_bytes())),
    })
}

/// The kernel release a module was built for (the first word of vermagic).
pub fn vermagic_release(m: &ModuleFile) -> Option<&str> {
    m.modinfo
        .get("vermagic")
        .and_then(|v| v.first())
        .and_then(|v| v.split_whitespace().next())
}

/// `e_type` of an ELF header (1 = relocatable).
pub(super) fn elf_type(h: &[u8]) -> Option<u16> {
    let b = [*h.get(16)?, *h.get(17)?];
    Some(if h.get(5) == Some(&2) {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    })
}

/// A module file's record before it is judged: path, metadata, name kind.
pub fn inspect_shell(host: &Host, path: &[u8], named: bool) -> ModuleFile {
    ModuleFile {
        path: path.to_vec(),
        meta: host.file_meta(bytes_to_path(path)),
        identification: String::new(),
        compression: None,
        modinfo: BTreeMap::new(),
        sha256: None,
        named_as_module: named,
        signature: None,
        place: Place::default(),
    }
}

/// [`inspect_shell`] for a file the walk has just `statx`ed, whose
/// attributes the cache kept: no open, no lookup (a warm walk of a kernel
/// tree does this for thousands of files).
pub fn shell_from_statx(
    path: &[u8],
    named: bool,
    st: &rustix::fs::Statx,
    attrs: (bool, bool),
) -> ModuleFile {
    let mut m = ModuleFile {
        path: path.to_vec(),
        meta: crate::host::FileMeta {
            exists: true,
            uid: Some(st.stx_uid),
            mode: Some(format!("{:o}", st.stx_mode as u32 & 0o7777)),
            size: Some(st.stx_size),
            immutable: attrs.0,
            append_only: attrs.1,
            mtime: Some(st.stx_mtime.tv_sec),
            ctime: Some(st.stx_ctime.tv_sec),
        },
        ..inspect_shell_empty(path, named)
    };
    m.named_as_module = named;
    m
}

fn inspect_shell_empty(path: &[u8], named: bool) -> ModuleFile {
    ModuleFile {
        path: path.to_vec(),
        meta: crate::host::FileMeta::default(),
        identification: String::new(),
        compression: None,
        modinfo: BTreeMap::new(),
        sha256: None,
        named_as_module: named,
        signature: None,
        place: Place::default(),
    }
}

/// Reads, decompresses and identifies one module file.
pub fn inspect(
    host: &Host,
    path: &[u8],
    compression: Option<&'static str>,
    named: bool,
) -> ModuleFile {
    let mut m = ModuleFile {
        path: path.to_vec(),
        meta: host.file_meta(bytes_to_path(path)),
        identification: String::new(),
        compression,
        modinfo: BTreeMap::new(),
        sha256: None,
        named_as_module: named,
        signature: None,
        place: Place::default(),
    };
    let raw = match host.read_prefix(bytes_to_path(path), MAX_MODULE_SIZE as usize) {
        Ok(r) => r,
        Err(e) => {
            m.identification = format!("unreadable: {e}");
            return m;
        }
    };
    m.sha256 = Some(sha256_hex(&raw));
    let data = match decompress(&raw, compression) {
        Ok(d) => d,
        Err(e) => {
            m.identification = format!(
                "{} data that does not decompress: {e}",
                compression.unwrap_or("?")
            );
            return m;
        }
    };
    m.identification = identify(&data);
    if let Some(c) = compression {
        m.identification = format!("{c}-compressed {}", m.identification);
    }
    m.modinfo = modinfo(&data);
    m.signature = signature(&data);
    m
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex(&Sha256::digest(data))
}

/// Lower-case hexadecimal of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decompress(raw: &[u8], compression: Option<&str>) -> Result<Vec<u8>, String> {
    let limit = MAX_MODULE_SIZE;
    let mut out = Vec::new();
    match compression {
        None => return Ok(raw.to_vec()),
        Some("gzip") => {
            flate2::read::GzDecoder::new(raw)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        Some("zstd") => {
            let mut input = raw;
            let dec =
                ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| e.to_string())?;
            dec.take(limit)
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
        }
        Some("xz") => {
            // lzma-rs has no output limit of its own: a writer that refuses
            // past the limit stops it (a 1 MiB bomb unpacks to gigabytes).
            let mut input = std::io::BufReader::new(raw);
            let mut w = Capped {
                out: &mut out,
                limit: limit as usize,
            };
            if let Err(e) = lzma_rs::xz_decompress(&mut input, &mut w) {
                if w.out.len() < limit as usize {
                    return Err(format!("{e:?}"));
                }
            }
        }
        Some(other) => return Err(format!("unknown compression {other}")),
    }
    Ok(out)
}

/// A writer that keeps at most `limit` bytes and then fails, which stops a
/// decompressor that has no limit of its own.
struct Capped<'a> {
    out: &'a mut Vec<u8>,
    limit: usize,
}

impl std::io::Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = self.limit - self.out.len();
        if room == 0 {
            return Err(std::io::Error::other("decompressed size limit reached"));
        }
        let n = buf.len().min(room);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Identifies a file from its header, in the words `file` uses.
pub fn identify(data: &[u8]) -> String {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return "not an ELF object".into();
    }
    let class = match data[4] {
        1 => "32-bit",
        2 => "64-bit",
        _ => "unknown-class",
    };
    let order = match data[5] {
        1 => "LSB",
        2 => "MSB",
        _ => "unknown-endian",
    };
    let be = data[5] == 2;
    let half = |i: usize| {
        let b = [data[i], data[i + 1]];
        if be {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }
    };
    let kind = match half(16) {
        1 => "relocatable",
        2 => "executable",
        3 => "shared object",
        4 => "core file",
        _ => "unknown type",
    };
    let machine = match half(18) {
        3 => "Intel 80386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "64-bit PowerPC",
        22 => "IBM S/390",
        40 => "ARM",
        62 => "x86-64",
        183 => "ARM aarch64",
        243 => "UCB RISC-V",
        258 => "LoongArch",
        _ => "unknown machine",
    };
    format!("ELF {class} {order} {kind}, {machine}")
}

/// The `.modinfo` section as key → values.
pub fn modinfo(data: &[u8]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(obj) = object::File::parse(data) else {
        return out;
    };
    let Some(sec) = obj.section_by_name(".modinfo") else {
        return out;
    };
    let Ok(bytes) = sec.data() else { return out };
    for item in bytes.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let s = crate::escape::escape(item);
        if let Some((k, v)) = s.split_once('=') {
            out.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_trailers() {
        assert_eq!(signature(b"\x7fELF no signature"), None);
        // A trailer that claims more signature bytes than the file holds.
        let mut d = b"\x7fELF body".to_vec();
        d.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x10, 0]);
        d.extend_from_slice(SIG_MAGIC);
        let s = signature(&d).unwrap();
        assert!(s.damaged);
        assert_eq!((s.kind.as_str(), s.length), ("PKCS#7", 4096));
        // Only the magic, no trailer at all.
        assert!(signature(SIG_MAGIC).unwrap().damaged);
        // Bytes that fit but are not PKCS#7.
        let mut d = vec![0x30, 0x03, 0x02, 0x01, 0x00];
        d.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        d.extend_from_slice(SIG_MAGIC);
        assert!(signature(&d).unwrap().damaged);
    }

    #[test]
    fn identifies_elf_headers() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2;
        h[5] = 1;
        h[16] = 1;
        h[18] = 62;
        assert_eq!(identify(&h), "ELF 64-bit LSB relocatable, x86-64");
        assert_eq!(identify(b"#!/bin/sh\n"), "not an ELF object");
    }
}
