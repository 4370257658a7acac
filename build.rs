//! Stores the built-in rules (`rules/default.toml`, `rules/miner.yar`)
//! deflated in the binary, so that the names and strings they look for (pool
//! protocol, miner identities, algorithm tables) never appear in Quarry's own
//! file: no scanner, Quarry included, may take Quarry for a miner by them.
use std::io::Write;

fn main() {
    for name in ["default.toml", "miner.yar"] {
        println!("cargo:rerun-if-changed=rules/{name}");
        let src = std::fs::read(format!("rules/{name}")).expect("rules file");
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&src).unwrap();
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap())
            .join(format!("{name}.deflate"));
        std::fs::write(out, z.finish().unwrap()).unwrap();
    }
}
