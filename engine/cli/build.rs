//! Records the git revision the binary is built from (`TREX_GIT_REVISION`, read
//! by `trex_build_info`): `TREX_GIT_REVISION` from the environment if set (a
//! build from a tarball), else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TREX_GIT_REVISION");
    let rev = std::env::var("TREX_GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the
            // branch it names (a commit).
            if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
                println!("cargo:rerun-if-changed={head}");
            }
            // (A path that does not exist would rerun this script on every
            // build: a packed branch is watched through packed-refs.)
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                let loose = git(&["rev-parse", "--git-path", &r]);
                let packed = git(&["rev-parse", "--git-path", "packed-refs"]);
                let watch = [loose, packed].into_iter().flatten();
                for p in watch.filter(|p| std::path::Path::new(p).exists()).take(1) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TREX_GIT_REVISION={rev}");
}
