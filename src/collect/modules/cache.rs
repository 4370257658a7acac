//! What the module walk judged, remembered between scans, so that unchanged
//! files are not read, hashed or decompressed again.
//!
//! Kept in `/var/cache/quarry/modules.json` (root's alone: the folder 0700, the
//! file 0600, both owned by root and not links, checked on every load, else
//! ignored), keyed by device, inode, size, mtime and ctime (a change of content
//! or attributes moves ctime). Safe to delete at any time; ignored when it
//! cannot be read or parsed; written only by root on the live host.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::identify::{ModSig, ModuleFile};
use crate::host::Host;

/// Where the cache lives, unless `QUARRY_CACHE_DIR` says otherwise.
pub const CACHE_DIR: &str = "/var/cache/quarry";

/// The cache's folder: `QUARRY_CACHE_DIR` when set to an absolute path (the
/// test suite gives each run its own, so a machine's cache is neither read
/// into a test's verdicts nor changed), none when set empty (no cache), else
/// [`CACHE_DIR`]. The folder must still be root's alone.
pub fn cache_dir() -> Option<std::path::PathBuf> {
    // Unit tests walk real folders as root on a real machine: they never
    // read or write that machine's cache (the canaries caught modules.json
    // rewritten by a walk test, issue 28).
    if cfg!(test) {
        return None;
    }
    match std::env::var_os("QUARRY_CACHE_DIR") {
        None => Some(CACHE_DIR.into()),
        Some(v) => {
            let p = std::path::PathBuf::from(v);
            p.is_absolute().then_some(p)
        }
    }
}
const CACHE_FILE: &str = "modules.json";
/// Bumped when what is cached changes meaning.
const VERSION: u32 = 2;

/// The `.modinfo` keys a cached judgement keeps: those the findings quote
/// (detect::modules) and `vermagic` for the place. The rest (a driver's
/// hundreds of `alias` lines, `parm`) made a cache of two kernel trees 4.3 MB
/// of JSON, 25-35 ms to parse every scan.
pub const KEPT_MODINFO: &[&str] = &[
    "name",
    "vermagic",
    "license",
    "author",
    "description",
    "depends",
    "srcversion",
];

/// Device, inode, size, mtime and ctime (ns) of a file, from `lstat`.
pub type Key = [u64; 5];

pub fn key_of(st: &rustix::fs::Statx) -> Key {
    let ns = |t: &rustix::fs::StatxTimestamp| {
        (t.tv_sec as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(t.tv_nsec as u64)
    };
    [
        rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor),
        st.stx_ino,
        st.stx_size,
        ns(&st.stx_mtime),
        ns(&st.stx_ctime),
    ]
}

fn hash_key(k: &Key) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

/// What was judged of one module file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Judged {
    pub identification: String,
    pub compression: Option<String>,
    pub modinfo: BTreeMap<String, Vec<String>>,
    pub sha256: Option<String>,
    pub signature: Option<ModSig>,
    /// The file's immutable and append-only attributes (`chattr` changes
    /// the ctime, so the key), so a cached file needs no open to tell them.
    #[serde(default)]
    pub attrs: Option<(bool, bool)>,
}

#[derive(Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    modules: Vec<(Key, Judged)>,
    /// Hashes of the keys of files sniffed and found not to be modules.
    not_modules: Vec<u64>,
}

/// The cache as loaded, plus what this walk learned.
#[derive(Default)]
pub struct Cache {
    enabled: bool,
    modules: HashMap<Key, Judged>,
    /// Already SipHash values: hashed again only by a multiply.
    not_modules: HashSet<u64, std::hash::BuildHasherDefault<InodeHasher>>,
}

impl Cache {
    /// Loads the cache when Quarry runs as root on the live host; an empty,
    /// disabled cache otherwise.
    pub fn load(host: &Host) -> Cache {
        if !host.is_live() || !rustix::process::geteuid().is_root() {
            return Cache::default();
        }
        let mut c = Cache {
            enabled: true,
            ..Cache::default()
        };
        let Some(dir) = cache_dir() else {
            return Cache::default();
        };
        let Some(text) = read_private(&dir, CACHE_FILE) else {
            return c;
        };
        let Ok(s) = serde_json::from_slice::<Stored>(&text) else {
            return c;
        };
        if s.version != VERSION {
            return c;
        }
        c.modules = s.modules.into_iter().collect();
        c.not_modules = s.not_modules.into_iter().collect();
        c
    }

    pub fn module(&self, k: &Key) -> Option<&Judged> {
        self.modules.get(k)
    }

    pub fn is_not_module(&self, k: &Key) -> bool {
        self.not_modules.contains(&hash_key(k))
    }

    /// Writes what this walk saw (and only that: files gone are forgotten).
    pub fn save(&self, seen_modules: Vec<(Key, Judged)>, seen_not: Vec<Key>) {
        if !self.enabled {
            return;
        }
        let mut not: Vec<u64> = seen_not.iter().map(hash_key).collect();
        not.sort_unstable();
        not.dedup();
        let s = Stored {
            version: VERSION,
            modules: seen_modules,
            not_modules: not,
        };
        let Ok(data) = serde_json::to_vec(&s) else {
            return;
        };
        // A cache: no fsync, as for dirs.bin (a torn file fails to parse and
        // is ignored; a new file in /tmp rewrites it on most scans).
        if let Some(dir) = cache_dir() {
            let _ = write_private(&dir, CACHE_FILE, &data);
        }
    }
}

impl Judged {
    pub fn of(m: &ModuleFile) -> Judged {
        Judged {
            identification: m.identification.clone(),
            compression: m.compression.map(str::to_string),
            modinfo: kept_modinfo(&m.modinfo),
            sha256: m.sha256.clone(),
            signature: m.signature.clone(),
            attrs: m
                .meta
                .exists
                .then_some((m.meta.immutable, m.meta.append_only)),
        }
    }

    /// Fills a module file from the cache.
    pub fn apply(&self, m: &mut ModuleFile) {
        m.identification = self.identification.clone();
        m.compression = match self.compression.as_deref() {
            Some("xz") => Some("xz"),
            Some("zstd") => Some("zstd"),
            Some("gzip") => Some("gzip"),
            _ => None,
        };
        m.modinfo = self.modinfo.clone();
        m.sha256 = self.sha256.clone();
        m.signature = self.signature.clone();
    }
}

/// The [`KEPT_MODINFO`] keys of `all`; one other key when none of them is
/// there, so a file with a `.modinfo` section still has one.
fn kept_modinfo(all: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut kept: BTreeMap<String, Vec<String>> = all
        .iter()
        .filter(|(k, _)| KEPT_MODINFO.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if kept.is_empty() {
        if let Some((k, v)) = all.iter().next() {
            kept.insert(k.clone(), v.clone());
        }
    }
    kept
}

/// True when a folder or file is root's alone and not a link.
fn private(meta: &std::fs::Metadata) -> bool {
    !meta.file_type().is_symlink() && meta.uid() == 0 && meta.permissions().mode() & 0o077 == 0
}

/// Largest cache file read (a larger one is ignored).
const MAX_CACHE_FILE: u64 = 64 * 1024 * 1024;

/// Reads a root-only regular file of a root-only folder: opened without
/// following a link or blocking, judged on the descriptor it is read from,
/// and read in one call at its size (the directory cache is megabytes: a
/// read in 64 KiB steps, each growing the buffer, showed in the walk's time).
fn read_private(dir: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    if !private(&std::fs::symlink_metadata(dir).ok()?) {
        return None;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(name))
        .ok()?;
    let meta = f.metadata().ok()?;
    if !meta.is_file() || !private(&meta) || meta.len() > MAX_CACHE_FILE {
        return None;
    }
    let mut buf = Vec::with_capacity(meta.len() as usize + 1);
    f.take(MAX_CACHE_FILE).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// Writes a root-only file through a new temporary file and a rename.
/// Not synced: what it holds is a cache.
fn write_private(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    if !private(&std::fs::symlink_metadata(dir)?) {
        return Err(std::io::Error::other("cache folder is not root's alone"));
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(data)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// What one directory held when it was listed: its subdirectories and the
/// names worth a look, keyed by device and inode, valid while its mtime and
/// ctime are unchanged (adding, removing or renaming an entry moves both;
/// ctime cannot be set back by anyone). A directory whose times are within
/// [`RACY_SECONDS`] of the walk's start is never stored: a change in the same
/// clock tick after the listing would leave its times equal.
#[derive(Debug, Clone, PartialEq)]
pub struct DirRecord {
    pub mtime: u64,
    pub ctime: u64,
    /// Entries the listing had (for the walk's counts and limits).
    pub entries: u32,
    pub subdirs: Vec<Vec<u8>>,
    pub candidates: Vec<Vec<u8>>,
}

/// A directory a walk saw, by device and inode: its new listing, or `None`
/// when the stored one was reused as it is.
pub type SeenDir = ((u64, u64), Option<DirRecord>);

/// Seconds before the walk's start a directory's times must be to be stored.
pub const RACY_SECONDS: u64 = 2;

const DIRS_FILE: &str = "dirs.bin";
const DIRS_MAGIC: &[u8; 8] = b"QDIRS\x00\x00\x01";

/// A stored directory: its times and where its names are in the loaded file.
#[derive(Debug, Clone, Copy)]
struct StoredDir {
    mtime: u64,
    ctime: u64,
    entries: u32,
    /// Offset in `DirCache::buf` of its first name (each a u16 length and
    /// its bytes); subdirectories first, then candidates. The bounds were
    /// checked when the file was decoded.
    names_at: u32,
    subdirs: u32,
    candidates: u32,
}

/// A hasher for (device, inode) keys: the inode is already spread; one
/// multiply mixes in the device. (SipHash showed in profiles of the walk.)
#[derive(Default)]
pub struct InodeHasher(u64);

impl Hasher for InodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type InodeMap<V> = HashMap<(u64, u64), V, std::hash::BuildHasherDefault<InodeHasher>>;

/// The directory listings, loaded (root, live host) or empty. The file is
/// kept whole; records point into it (a few allocations, not one per name).
#[derive(Default)]
pub struct DirCache {
    enabled: bool,
    buf: Vec<u8>,
    dirs: InodeMap<StoredDir>,
}

/// A cached directory's listing, borrowed from the cache.
pub struct CachedDir<'a> {
    cache: &'a DirCache,
    d: StoredDir,
}

impl CachedDir<'_> {
    pub fn entries(&self) -> u32 {
        self.d.entries
    }
    /// Every name, parsed as it is read (a name list per record, not one
    /// allocation per name, made the cache quick to load).
    fn names(&self) -> impl Iterator<Item = &[u8]> {
        let buf = &self.cache.buf[..];
        let mut at = self.d.names_at as usize;
        (0..self.d.subdirs + self.d.candidates).map_while(move |_| {
            let len = u16::from_le_bytes(buf.get(at..at + 2)?.try_into().ok()?) as usize;
            let name = buf.get(at + 2..at + 2 + len)?;
            at += 2 + len;
            Some(name)
        })
    }
    pub fn subdirs(&self) -> impl Iterator<Item = &[u8]> {
        self.names().take(self.d.subdirs as usize)
    }
    pub fn candidates(&self) -> impl Iterator<Item = &[u8]> {
        self.names().skip(self.d.subdirs as usize)
    }
}

impl DirCache {
    pub fn load(host: &Host) -> DirCache {
        if !host.is_live() || !rustix::process::geteuid().is_root() {
            return DirCache::default();
        }
        let Some(dir) = cache_dir() else {
            return DirCache::default();
        };
        let mut c = read_private(&dir, DIRS_FILE)
            .and_then(decode_dirs)
            .unwrap_or_default();
        c.enabled = true;
        c
    }

    /// The listing of a directory whose device, inode and times match.
    pub fn get(&self, st: &rustix::fs::Statx) -> Option<CachedDir<'_>> {
        let k = key_of(st);
        let d = *self.dirs.get(&(k[0], k[1]))?;
        (d.mtime == k[3] && d.ctime == k[4]).then_some(CachedDir { cache: self, d })
    }

    /// Writes the directories this walk saw (forgetting the others) when a
    /// new listing was stored or many were forgotten. `None`: the loaded
    /// record was reused as it is.
    pub fn save(&self, seen: Vec<SeenDir>) {
        if !self.enabled {
            return;
        }
        let fresh = seen.iter().any(|(_, r)| r.is_some());
        if !fresh && seen.len() * 10 >= self.dirs.len() * 9 {
            return;
        }
        let mut out = Vec::with_capacity(self.buf.len() + 4096);
        out.extend_from_slice(DIRS_MAGIC);
        let count_at = out.len();
        out.extend(0u32.to_le_bytes());
        let mut count = 0u32;
        for (k, r) in &seen {
            match r {
                Some(r) => encode_record(&mut out, *k, r),
                None => {
                    let Some(d) = self.dirs.get(k) else { continue };
                    let c = CachedDir { cache: self, d: *d };
                    let subs: Vec<&[u8]> = c.subdirs().collect();
                    let cands: Vec<&[u8]> = c.candidates().collect();
                    encode_one(&mut out, *k, d.mtime, d.ctime, d.entries, &subs, &cands);
                }
            }
            count += 1;
        }
        out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        // A cache: no fsync (a torn file fails to decode and is ignored).
        if let Some(dir) = cache_dir() {
            let _ = write_private(&dir, DIRS_FILE, &out);
        }
    }
}

/// One directory in the binary form: dev, ino, mtime, ctime (u64), entries,
/// subdirectory count, candidate count (u32), then each name as a u16 length
/// and its bytes; little-endian. The file: magic, count (u32), directories.
fn encode_one<N: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    (dev, ino): (u64, u64),
    mtime: u64,
    ctime: u64,
    entries: u32,
    subdirs: &[N],
    candidates: &[N],
) {
    for v in [dev, ino, mtime, ctime] {
        out.extend(v.to_le_bytes());
    }
    out.extend(entries.to_le_bytes());
    out.extend((subdirs.len() as u32).to_le_bytes());
    out.extend((candidates.len() as u32).to_le_bytes());
    for n in subdirs.iter().chain(candidates) {
        let n = n.as_ref();
        let n = &n[..n.len().min(u16::MAX as usize)];
        out.extend((n.len() as u16).to_le_bytes());
        out.extend_from_slice(n);
    }
}

fn encode_record(out: &mut Vec<u8>, k: (u64, u64), r: &DirRecord) {
    encode_one(
        out,
        k,
        r.mtime,
        r.ctime,
        r.entries,
        &r.subdirs,
        &r.candidates,
    );
}

/// Encodes records (tests, and the shape [`DirCache::save`] writes).
pub fn encode_dirs(dirs: &[((u64, u64), DirRecord)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(DIRS_MAGIC);
    out.extend((dirs.len() as u32).to_le_bytes());
    for (k, r) in dirs {
        encode_record(&mut out, *k, r);
    }
    out
}

/// Decodes the file, keeping it whole; `None` for anything malformed (the
/// cache is then ignored).
fn decode_dirs(buf: Vec<u8>) -> Option<DirCache> {
    let b = &buf[..];
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<usize> {
        let start = at;
        b.get(at..at.checked_add(n)?)?;
        at += n;
        Some(start)
    };
    let magic = take(8)?;
    if &b[magic..magic + 8] != DIRS_MAGIC {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let n = u32_at(take(4)?) as usize;
    let mut dirs: InodeMap<StoredDir> = InodeMap::default();
    dirs.reserve(n.min(1 << 20));
    for _ in 0..n {
        let h = take(44)?;
        let (nsub, ncand) = (u32_at(h + 36), u32_at(h + 40));
        let names_at = u32::try_from(h + 44).ok()?;
        for _ in 0..nsub.checked_add(ncand)? {
            let len = u16::from_le_bytes(b[take(2)?..][..2].try_into().unwrap());
            take(len as usize)?;
        }
        dirs.insert(
            (u64_at(h), u64_at(h + 8)),
            StoredDir {
                mtime: u64_at(h + 16),
                ctime: u64_at(h + 24),
                entries: u32_at(h + 32),
                names_at,
                subdirs: nsub,
                candidates: ncand,
            },
        );
    }
    (at == b.len()).then_some(DirCache {
        enabled: false,
        buf,
        dirs,
    })
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn dirs_round_trip_and_reject_garbage() {
        let rec = DirRecord {
            mtime: 1,
            ctime: 2,
            entries: 7,
            subdirs: vec![b"a".to_vec(), b"\xff\xfe".to_vec()],
            candidates: vec![b"x.ko".to_vec()],
        };
        let enc = encode_dirs(&[((3, 4), rec.clone())]);
        let dec = decode_dirs(enc.clone()).unwrap();
        let d = CachedDir {
            cache: &dec,
            d: dec.dirs[&(3, 4)],
        };
        assert_eq!(d.entries(), 7);
        assert_eq!(
            d.subdirs().collect::<Vec<_>>(),
            vec![&b"a"[..], &b"\xff\xfe"[..]]
        );
        assert_eq!(d.candidates().collect::<Vec<_>>(), vec![&b"x.ko"[..]]);
        assert!(decode_dirs(enc[..enc.len() - 1].to_vec()).is_none());
        assert!(decode_dirs(b"garbage".to_vec()).is_none());
        let mut extra = enc.clone();
        extra.push(0);
        assert!(decode_dirs(extra).is_none());
    }
}
