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

/// Where the cache lives.
pub const CACHE_DIR: &str = "/var/cache/quarry";
const CACHE_FILE: &str = "modules.json";
/// Bumped when what is cached changes meaning.
const VERSION: u32 = 1;

/// Device, inode, size, mtime and ctime (ns) of a file, from `lstat`.
pub type Key = [u64; 5];

pub fn key_of(st: &rustix::fs::Stat) -> Key {
    let ns = |s: i64, n: i64| {
        (s as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(n as u64)
    };
    [
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        ns(st.st_mtime, st.st_mtime_nsec as i64),
        ns(st.st_ctime, st.st_ctime_nsec as i64),
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
    not_modules: HashSet<u64>,
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
        let Some(text) = read_private(Path::new(CACHE_DIR), CACHE_FILE) else {
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
        let _ = write_private(Path::new(CACHE_DIR), CACHE_FILE, &data);
    }
}

impl Judged {
    pub fn of(m: &ModuleFile) -> Judged {
        Judged {
            identification: m.identification.clone(),
            compression: m.compression.map(str::to_string),
            modinfo: m.modinfo.clone(),
            sha256: m.sha256.clone(),
            signature: m.signature.clone(),
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

/// True when a folder or file is root's alone and not a link.
fn private(meta: &std::fs::Metadata) -> bool {
    !meta.file_type().is_symlink() && meta.uid() == 0 && meta.permissions().mode() & 0o077 == 0
}

fn read_private(dir: &Path, name: &str) -> Option<Vec<u8>> {
    if !private(&std::fs::symlink_metadata(dir).ok()?) {
        return None;
    }
    let p = dir.join(name);
    if !private(&std::fs::symlink_metadata(&p).ok()?) {
        return None;
    }
    crate::host::read_regular(&p, 64 * 1024 * 1024).ok()
}

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
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}
