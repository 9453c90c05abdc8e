//! Embeds the built dashboard (`web-dashboard/dist`, committed, rebuilt by `npm run build`) so
//! the one binary serves it with no files beside it and no Node.js on the machine. Text assets
//! are also compressed here, once, with brotli (quality 11) and gzip (level 9): served as they
//! are to browsers that accept them, at no CPU per request.

use std::io::Write;

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../web-dashboard/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut found = Vec::new();
    files(&dist, &mut found);
    found.sort();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // (route, identity, brotli, gzip): the compressed forms empty when compressing would not
    // pay (images, fonts) or would not shrink the file.
    let mut code = String::from(
        "pub type Embedded = (&'static str, &'static [u8], &'static [u8], &'static [u8]);\n\
         pub static DASHBOARD: &[Embedded] = &[\n",
    );
    for (i, f) in found.iter().enumerate() {
        let rel = f.strip_prefix(&dist).expect("under dist");
        let route = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
        let abs = f.canonicalize().expect("readable asset");
        let raw = std::fs::read(&abs).expect("readable asset");
        let text = matches!(
            abs.extension().and_then(|e| e.to_str()),
            Some("js" | "css" | "html" | "svg" | "json" | "txt" | "map")
        );
        let (br, gz) = if text {
            (brotli_of(&raw), gzip_of(&raw))
        } else {
            (Vec::new(), Vec::new())
        };
        let keep = |v: Vec<u8>| if v.len() < raw.len() { v } else { Vec::new() };
        let (br_path, gz_path) = (
            out_dir.join(format!("asset-{i}.br")),
            out_dir.join(format!("asset-{i}.gz")),
        );
        std::fs::write(&br_path, keep(br)).expect("write brotli asset");
        std::fs::write(&gz_path, keep(gz)).expect("write gzip asset");
        code.push_str(&format!(
            "    ({route:?}, include_bytes!({:?}), include_bytes!({:?}), include_bytes!({:?})),\n",
            abs.to_string_lossy(),
            br_path.to_string_lossy(),
            gz_path.to_string_lossy()
        ));
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("dashboard.rs"), code).expect("write dashboard.rs");
}

fn brotli_of(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 11, 22);
        w.write_all(raw).expect("brotli");
    }
    out
}

fn gzip_of(raw: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    w.write_all(raw).expect("gzip");
    w.finish().expect("gzip")
}
