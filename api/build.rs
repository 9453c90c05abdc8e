//! Embeds the built dashboard (`web-dashboard/dist`, committed, rebuilt by `npm run build`) so
//! the one binary serves it with no files beside it and no Node.js on the machine.

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
    let mut code = String::from("pub static DASHBOARD: &[(&str, &[u8])] = &[\n");
    for f in &found {
        let rel = f.strip_prefix(&dist).expect("under dist");
        let route = format!("/{}", rel.to_string_lossy().replace('\\', "/"));
        let abs = f.canonicalize().expect("readable asset");
        code.push_str(&format!(
            "    ({route:?}, include_bytes!({:?})),\n",
            abs.to_string_lossy()
        ));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("dashboard.rs");
    std::fs::write(out, code).expect("write dashboard.rs");
}
